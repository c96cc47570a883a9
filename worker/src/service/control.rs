//! The bridge's control messages (supersede, drain, resume), and giving held
//! jobs back to the bridge (a claim this worker cannot run, `--on-stop
//! redispatch`).

use std::time::Duration;

use sealfarm_schemas::messages::RunningJob;
use sealfarm_schemas::topology;
use sealfarm_schemas::{Control, ControlMessage, DeadLetterReason, EventKind, EventMessage};

use super::{OnStop, Worker};

impl Worker {
    /// A control message from the bridge.
    pub(super) fn control(&self, message: ControlMessage) {
        match message.control {
            Control::Supersede { call_id, attempt, reason } => {
                let key = format!("{call_id}/{attempt}");
                match self.store.supersede(&key, reason.clone()) {
                    Ok(true) => {
                        tracing::warn!(%call_id, attempt, reason, "this attempt was dispatched again elsewhere; dropping it")
                    }
                    Ok(false) => tracing::info!(%call_id, attempt, "superseded attempt is not held here"),
                    Err(err) => {
                        tracing::error!(%call_id, error = %format!("{err:#}"), "cannot record a superseded job")
                    }
                }
                // A job still computing stays listed (it holds its share of the
                // machine) until it ends; its result is discarded then.
                if let Some(job) = self.held.end_if_waiting(&key) {
                    self.metrics.job_ended(job.stage, &job.sector, "superseded");
                }
            }
            Control::Drain { reason } => {
                if let Err(err) = self.store.set_drained(Some(&reason)) {
                    tracing::error!(error = %format!("{err:#}"), "cannot record the drain; it lasts until a restart");
                }
                tracing::warn!(
                    reason,
                    held = self.held.len(),
                    "drained: no new tasks from the stage queues; finishing the held ones"
                );
                self.enabled.send_replace(false);
            }
            Control::Resume {} => {
                if let Err(err) = self.store.set_drained(None) {
                    tracing::error!(error = %format!("{err:#}"), "cannot record the resume");
                }
                tracing::info!("resumed: taking tasks from the stage queues again");
                self.enabled.send_replace(true);
            }
        }
    }

    /// At stop, after the grace period: with `--on-stop redispatch`, gives
    /// every held job back to the bridge; otherwise they stay claimed.
    pub(super) async fn release_held(&self) {
        let held: Vec<(String, RunningJob)> = self.held.keyed();
        if self.config.on_stop == OnStop::Resume {
            if !held.is_empty() {
                tracing::warn!(
                    jobs = held.len(),
                    "jobs still running after the grace period stay claimed and resume at the next start"
                );
            }
            return;
        }
        for (key, job) in held {
            let reason = format!("worker {} stopped (SIGTERM) before the job finished", self.config.worker_id);
            self.release(&key, job.call_id, job.attempt, reason).await;
        }
    }

    /// Gives a claimed job back to the bridge, which dispatches it again at once.
    pub(super) async fn release(&self, key: &str, call_id: uuid::Uuid, attempt: u32, reason: String) {
        if !matches!(self.store.release(key, reason.clone()), Ok(true)) {
            return;
        }
        if let Ok(Some(record)) = self.store.get(key) {
            self.metrics.job_ended(record.task.stage(), &record.task.sector, "released");
        }
        let message = EventMessage::new(&self.config.worker_id, EventKind::Release { call_id, attempt, reason });
        let released = tokio::time::timeout(
            Duration::from_secs(10),
            self.link.publish_json(topology::EVENTS_EXCHANGE, &message.routing_key(), &message, &[]),
        )
        .await;
        match released {
            Ok(Ok(())) => tracing::info!(%call_id, attempt, "released to the bridge for dispatch elsewhere"),
            _ => {
                tracing::warn!(%call_id, "could not tell the bridge; it dispatches the job again when the lease expires")
            }
        }
    }
}

/// A control message, if the body is one (JSON with a `control` field):
/// decoded, or the reason to dead-letter it with.
pub(super) fn control_message(body: &[u8]) -> Option<Result<ControlMessage, DeadLetterReason>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("control")?;
    Some(sealfarm_schemas::messages::decode(body, "a control message"))
}
