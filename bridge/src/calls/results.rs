//! Results from the farm (`sealfarm.results`) and dead-lettered tasks
//! (`sealfarm.bridge.dead`): each stored durably as its call's result before
//! the message is acknowledged, then delivered ([`super::returns`]).

use std::sync::Arc;

use anyhow::Result;
use lapin::message::Delivery;
use sealfarm_runtime::broker::header;
use sealfarm_runtime::shutdown::Shutdown;
use sealfarm_schemas::blob::Payload;
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::topology;
use sealfarm_schemas::{CallError, ErrorCode, Outcome, ResultMessage, StageOutput, TaskMessage};

use super::lifecycle::{Call, FailedBy, RunRecord};
use super::store::{Durability, Location};
use super::Calls;
use crate::consume::{consume, dead_letter_undecodable};

impl Calls {
    /// Consumes a results queue (this bridge's own, or `sealfarm.results`
    /// while calls from before it had one are open) until `shutdown`,
    /// reconnecting as needed.
    pub async fn consume_results(self: Arc<Self>, queue: String, shutdown: Shutdown) {
        let this = self.clone();
        let name = queue.clone();
        consume(&self.link, &shutdown, &name, 64, move |delivery| {
            let this = this.clone();
            let queue = queue.clone();
            async move {
                let decoded = sealfarm_schemas::messages::decode::<ResultMessage>(&delivery.data, "a result message")
                    .and_then(|result| {
                        sealfarm_schemas::messages::check_worker_id(&result.worker)
                            .map_err(sealfarm_schemas::DeadLetterReason::malformed)?;
                        Ok(result)
                    });
                match decoded {
                    Ok(result) => {
                        if let Err(refusal) = this.senders.check_result(&delivery, &result) {
                            this.senders.refuse("result", &refusal);
                            return Ok(());
                        }
                        // Durable first, then ack: a crash in between only repeats the store.
                        if let Some(call) = this.record_result(&result)? {
                            this.spawn_deliver(call);
                        }
                    }
                    Err(reason) => {
                        dead_letter_undecodable(&this.link, &this.metrics, &queue, &delivery, &reason).await?
                    }
                }
                Ok(())
            }
        })
        .await
    }

    /// Consumes the bridge's copy of every dead-lettered task (`queue`) until
    /// `shutdown`: the miner gets a CallError for a call of this bridge whose
    /// task the farm gave up on; another bridge's are not this one's business.
    pub async fn consume_dead_letters(self: Arc<Self>, queue: String, shutdown: Shutdown) {
        let this = self.clone();
        consume(&self.link, &shutdown, &queue, 16, move |delivery| {
            let this = this.clone();
            async move {
                let Ok(task) = serde_json::from_slice::<TaskMessage>(&delivery.data) else {
                    return Ok(()); // no call to fail: the operator reads it in sealfarm.dead-letters
                };
                // The broker dead-lettering one of this bridge's tasks keeps
                // its user_id; a worker dead-lettering one says who it is.
                if !this.senders.is_bridge(&delivery) {
                    let worker = header(&delivery, topology::WORKER_HEADER).unwrap_or_default();
                    if let Err(refusal) = this.senders.check_dead_letter(&delivery, &worker, &task) {
                        this.senders.refuse("dead_letter", &refusal);
                        return Ok(());
                    }
                }
                let Some(call) = this.store.get(&task.call_id.to_string())? else { return Ok(()) };
                let reason = dead_letter_reason(&delivery);
                this.metrics.dead_letters.get_or_create(&vec![("stage", task.stage().to_string())]).inc();
                if !call.is_open() {
                    // Failed already (the worker's own result came first): mark it dead.
                    let id = task.call_id.to_string();
                    let _ = this.store.apply(&id, Durability::Flushed, |c| c.mark_dead(task.attempt))?;
                    return Ok(());
                }
                let error = CallError::new(ErrorCode::UNKNOWN, format!("sealfarm dead-lettered the task: {reason}"));
                this.fail(&call, task.attempt, error, FailedBy::DeadLetter);
                Ok(())
            }
        })
        .await
    }

    /// Stores a result unless its call already has one; returns the call to deliver.
    fn record_result(&self, result: &ResultMessage) -> Result<Option<Call>> {
        let recorded = self.record_result_once(result);
        if let Some(blob) = result.outcome.output_blob() {
            // Pinned since its upload; from here on the store says whether a call needs it.
            self.blobs.unpin(&blob.sha256);
        }
        recorded
    }

    fn record_result_once(&self, result: &ResultMessage) -> Result<Option<Call>> {
        let id = result.call_id.to_string();
        let Some(call) = self.store.get(&id)? else {
            tracing::warn!(call_id = %id, "result for a call this bridge does not know; ignored");
            return Ok(None);
        };
        if !call.is_open() {
            tracing::info!(call_id = %id, attempt = result.attempt, "call already has a result; later one ignored");
            return Ok(None);
        }
        if let Outcome::Done(
            StageOutput::Ap { .. } | StageOutput::Pc1 { .. } | StageOutput::Update { .. } | StageOutput::Dl {},
        ) = &result.outcome
        {
            // The worker created the sector's files: later stages go there.
            let view = self.farm.get(&result.worker);
            let location = Location {
                worker: result.worker.clone(),
                storage_id: result.storage_id.clone().or_else(|| view.as_ref().and_then(|w| w.storage_id.clone())),
                files_url: view.as_ref().and_then(|w| w.files_url.clone()),
                since_ms: now_ms(),
            };
            self.store.set_location(result.sector.id, &location)?;
        }
        let mut outcome = result.outcome.clone();
        if let Outcome::Done(StageOutput::Pr1 { vanilla_proofs: Payload::Inline(text) }) = &outcome {
            // Returned as it is: it must be the JSON array lotus expects.
            if serde_json::from_slice::<Vec<sealfarm_schemas::Bytes>>(&text.0).is_err() {
                let message = format!(
                    "sealfarm: worker {} reported PR1 proofs of {} that are not a JSON array of base64 strings",
                    result.worker, result.sector.id
                );
                outcome = Outcome::Failed(CallError::new(ErrorCode::UNKNOWN, message));
            }
        }
        if let Some(blob) = outcome.output_blob() {
            if !self.blobs.contains(blob) {
                let stage = result.stage;
                let message = format!(
                    "sealfarm: worker {} reported the {stage} output of {} as blob {blob}, which never reached the \
                     bridge; run {stage} again",
                    result.worker, result.sector.id
                );
                tracing::error!(call_id = %id, %blob, "a {stage} result names a blob the bridge does not have");
                outcome = Outcome::Failed(CallError::new(ErrorCode::UNKNOWN, message));
            }
        }
        // Any attempt's result is taken while the call has none (a superseded
        // attempt that finishes first saves the new one's work).
        let error = match &outcome {
            Outcome::Failed(err) => Some(err.message.clone()),
            Outcome::Done(_) => None,
        };
        let ended = if error.is_some() { "failed" } else { "done" };
        let run = RunRecord {
            worker: result.worker.clone(),
            attempt: result.attempt,
            started_at_ms: result.started_at_ms,
            finished_at_ms: result.finished_at_ms,
            error,
            dead: false,
        };
        let stage = result.stage.to_string();
        self.metrics.results.get_or_create(&vec![("stage", stage.clone()), ("outcome", ended.to_string())]).inc();
        if let Some(info) = result.sector.proof_type.info() {
            let took = result.finished_at_ms.saturating_sub(result.started_at_ms) as f64 / 1000.0;
            self.metrics
                .stage_duration
                .get_or_create(&crate::ops::metrics::stage_size(stage, info.sector_size))
                .observe(took);
        }
        // Only while the call is open: a failure (abort, dead letter) may have come first.
        let recorded = self.store.apply(&id, Durability::Flushed, |c| c.result(outcome, run))?.ok();
        if let Some(call) = &recorded {
            self.release_piece(call);
        }
        Ok(recorded)
    }

    /// Removes the piece data of an AddPiece or DataCid call that has its
    /// result (no attempt reads it any more).
    pub(super) fn release_piece(&self, call: &Call) {
        if let Some(id) = call.task().and_then(|t| t.task.piece_id()) {
            self.pieces.remove(id);
        }
    }
}

/// The stage queue a task goes to.
/// Why a message was dead-lettered: the consumer's own header, or the
/// broker's `x-death` record (e.g. `delivery_limit`).
fn dead_letter_reason(delivery: &Delivery) -> String {
    let find = |name: &str| header(delivery, name);
    if let Some(reason) = find(topology::REASON_HEADER) {
        return reason;
    }
    match (find("x-first-death-reason"), find("x-first-death-queue")) {
        (Some(reason), Some(queue)) => {
            format!("broker: {reason} on {queue} (delivered too often: every consumer died on it)")
        }
        (Some(reason), None) => format!("broker: {reason}"),
        _ => "no reason recorded".into(),
    }
}
