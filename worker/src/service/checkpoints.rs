//! PC1 checkpoints: each SDR layer checksummed and recorded as the library
//! finishes it, checked before a PC1 runs again so it resumes from its last
//! good layer, and reported as progress.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sealfarm_schemas::messages::{now_ms, JobProgress};
use sealfarm_schemas::{EventKind, TaskMessage};

use super::Worker;
use crate::sealing::layers::{self, LayerRecord};

impl Worker {
    /// Before a PC1 run: keeps the layers whose checksums still match and
    /// removes the rest, so the library resumes from the last good layer.
    pub(super) async fn check_layers(&self, key: &str, task: &TaskMessage, run: u32) -> Result<()> {
        let record = self.store.get(key)?.context("job not in the store")?;
        let cache = self.config.sealing.cache(task.sector.id);
        let total = layer_total(task);
        let records = record.layers.clone();
        let check = {
            let cache = cache.clone();
            tokio::task::spawn_blocking(move || layers::check_for_resume(&cache, &records, total)).await??
        };
        let mut lines = Vec::new();
        if !check.kept.is_empty() {
            let kept: Vec<String> = check.kept.iter().map(|l| l.layer.to_string()).collect();
            lines.push(format!("run {run}: layers {} verified (blake3) and kept", kept.join(", ")));
        }
        for (layer, why) in &check.removed {
            lines.push(format!("run {run}: layer {layer} removed and recomputed: {why}"));
        }
        for line in &lines {
            tracing::info!(call_id = %task.call_id, sector = %task.sector.id, "{line}");
            self.store.note(key, line.clone())?;
        }
        self.store.set_layers(key, check.kept.clone())?;
        for layer in &check.kept {
            self.progress(task, layer, total, None, "kept").await;
        }
        Ok(())
    }

    /// While PC1 runs: checksums and records each layer as the library
    /// finishes it, and reports progress.
    pub(super) async fn watch_layers(self: Arc<Self>, key: String, task: TaskMessage, run: u32, run_started_ms: u64) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let (recorded, total) = self.record_layers(&key, &task, run, run_started_ms).await;
            if recorded >= u64::from(total) {
                return;
            }
        }
    }

    /// Records the layers that appeared since the last look; returns how
    /// many layers are recorded and the total.
    pub(super) async fn record_layers(
        &self,
        key: &str,
        task: &TaskMessage,
        run: u32,
        run_started_ms: u64,
    ) -> (u64, u32) {
        let total = layer_total(task);
        let Ok(Some(record)) = self.store.get(key) else { return (0, total) };
        let cache = self.config.sealing.cache(task.sector.id);
        let known = record.layers.clone();
        let found = tokio::task::spawn_blocking(move || layers::record_new(&cache, &known, total, run)).await;
        let new = match found {
            Ok(Ok(new)) => new,
            Ok(Err(err)) => {
                tracing::warn!(call_id = %task.call_id, error = %format!("{err:#}"), "cannot checksum a layer");
                return (record.layers.len() as u64, total);
            }
            Err(_) => return (record.layers.len() as u64, total),
        };
        if new.is_empty() {
            return (record.layers.len() as u64, total);
        }
        if let Err(err) = self.store.add_layers(key, &new) {
            tracing::error!(call_id = %task.call_id, error = %format!("{err:#}"), "cannot record a layer checksum");
            return (record.layers.len() as u64, total);
        }
        // ETA from the pace of this run: time per layer computed in it.
        let computed_here = record.layers.iter().chain(&new).filter(|l| l.computed_in_run == run).count() as u64;
        let done = (record.layers.len() + new.len()) as u64;
        let per_layer_ms = now_ms().saturating_sub(run_started_ms) / computed_here.max(1);
        let eta_s = per_layer_ms * u64::from(total).saturating_sub(done) / 1000;
        for layer in &new {
            let _ = self.store.note(key, format!("run {run}: layer {} computed ({} bytes)", layer.layer, layer.bytes));
            tracing::info!(call_id = %task.call_id, sector = %task.sector.id, layer = layer.layer, total, run, "PC1 layer finished");
            self.progress(task, layer, total, Some(eta_s), "computed").await;
        }
        (done, total)
    }

    async fn progress(&self, task: &TaskMessage, layer: &LayerRecord, total: u32, eta_s: Option<u64>, how: &str) {
        let progress = JobProgress {
            step: "layer".into(),
            done: u64::from(layer.layer),
            total: u64::from(total),
            bytes: layer.bytes * u64::from(layer.layer),
            eta_s,
        };
        self.held.progress(&task.job_key(), progress);
        self.event(EventKind::Progress {
            call_id: task.call_id,
            attempt: task.attempt,
            stage: task.stage(),
            step: "layer".into(),
            done: u64::from(layer.layer),
            total: u64::from(total),
            bytes: layer.bytes * u64::from(layer.layer),
            eta_s,
            how: how.into(),
        })
        .await;
    }
}

/// The number of SDR layers of a task's sector.
fn layer_total(task: &TaskMessage) -> u32 {
    task.sector.proof_type.info().map_or(2, |i| layers::layer_count(i.sector_size))
}
