//! Dispatching a call's task again, and the operator's controls over a
//! call: requeue, abort, replay of a dead letter; telling a worker its
//! attempt was superseded; failing a call without a worker's result.

use std::sync::Arc;

use anyhow::{Context, Result};
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::topology;
use sealfarm_schemas::{CallError, Control, ControlMessage, ErrorCode, TaskMessage};

use super::lifecycle::{Call, FailedBy};
use super::store::Durability;
use super::Calls;

impl Calls {
    /// Dispatches an open call's task again with the next attempt number (its
    /// holder's lease expired, or the holder released it) and tells the old
    /// holder to drop it. A PC1 whose ticket can no longer land fails instead.
    /// `kind` names the cause in the metrics: `lease_expired`, `released`,
    /// `worker_gone` or `operator`.
    pub async fn redispatch(self: &Arc<Self>, call: &Call, kind: &str, reason: &str) -> Result<()> {
        let queued_at = call.queue.as_deref().and_then(topology::worker_of_queue);
        let away_from = call.holder.as_ref().map(|h| h.worker.as_str()).or(queued_at);
        let Some(task) = call.task() else { return Ok(()) };
        if !call.is_open() {
            return Ok(());
        }
        if let Some(deadline) = task.ticket_deadline_ms.filter(|d| now_ms() > *d) {
            let hours = now_ms().saturating_sub(call.arrived_at_ms) as f64 / 3_600_000.0;
            let error = CallError::new(
                ErrorCode::UNKNOWN,
                format!(
                    "ticket expired: the PC1 call for {} arrived {hours:.1} h ago, past its ticket's window ({} ms ago); \
                     not dispatching it again ({reason}) - the miner draws a new ticket",
                    call.sector.id,
                    now_ms() - deadline
                ),
            );
            self.fail(call, task.attempt, error, FailedBy::Bridge);
            return Ok(());
        }
        if kind != "operator" && task.attempt >= self.max_attempts {
            let error = CallError::new(
                ErrorCode::UNKNOWN,
                format!(
                    "sealfarm gave up on {} of {} after {} attempts (--max-attempts); the last ended: {reason}",
                    task.stage(),
                    call.sector.id,
                    task.attempt
                ),
            );
            tracing::error!(call_id = %call.call_id, attempts = task.attempt, reason, "no more attempts: the call fails");
            self.fail(call, task.attempt, error, FailedBy::Bridge);
            return Ok(());
        }
        let next = task.next_attempt();
        let queue = match self.route(&next, away_from) {
            Ok(queue) => queue,
            Err(error) => {
                let message = format!("{} ({reason})", error.message);
                self.fail(call, task.attempt, CallError::new(error.code, message), FailedBy::Bridge);
                return Ok(());
            }
        };
        // Publish first: a crash before the store update only repeats this at the next lease expiry.
        self.publish_to(&queue, &next).await?;
        let old_holder = call.holder.clone();
        let id = call.call_id.id.to_string();
        let moved = self.store.apply(&id, Durability::Flushed, |c| c.supersede(task.attempt, next.clone(), &queue))?;
        if let Err(stale) = moved {
            // The published attempt is dropped by whoever claims it (the call moved on).
            tracing::info!(call_id = %call.call_id, %stale, "the call moved on while it was dispatched again");
            return Ok(());
        }
        tracing::warn!(call_id = %call.call_id, sector = %call.sector.id, stage = %next.stage(), attempt = next.attempt, reason, "task dispatched again");
        let labels = vec![("stage", next.stage().to_string()), ("reason", kind.to_string())];
        self.metrics.redispatches.get_or_create(&labels).inc();
        if let Some(holder) = old_holder {
            self.supersede(&holder.worker, next.call_id, holder.attempt, reason).await;
        }
        Ok(())
    }

    /// The operator's `abort`: the call fails with a CallError the miner
    /// receives; the worker holding it is told to drop it, and a copy still
    /// queued is dropped by whoever claims it.
    pub async fn abort(self: &Arc<Self>, call: &Call, reason: &str) -> Result<String> {
        let Some(task) = call.task() else {
            anyhow::bail!("call {} ({}) is not a farm task", call.call_id.id, call.method)
        };
        if !call.is_open() {
            anyhow::bail!("call {} already has its result; nothing to abort", call.call_id.id);
        }
        let error = CallError::new(ErrorCode::UNKNOWN, format!("aborted by the operator: {reason}"));
        self.fail(call, task.attempt, error, FailedBy::Operator);
        if let Some(holder) = &call.holder {
            self.supersede(&holder.worker, call.call_id.id, holder.attempt, "aborted by the operator").await;
        }
        Ok(format!(
            "call {} ({} of {}) aborted; the miner gets a CallError",
            call.call_id.id,
            task.stage(),
            call.sector.id
        ))
    }

    /// The operator's `requeue`: an open call's task is dispatched again now
    /// with the next attempt number; its holder, if any, drops the old attempt.
    pub async fn requeue(self: &Arc<Self>, call: &Call) -> Result<String> {
        let Some(task) = call.task() else {
            anyhow::bail!("call {} ({}) is not a farm task", call.call_id.id, call.method)
        };
        if !call.is_open() {
            anyhow::bail!(
                "call {} already has its result; a dead-lettered task is replayed with `sealfarm-bridge dead-letters replay`",
                call.call_id.id
            );
        }
        if let Some(holder) = &call.holder {
            let computing =
                self.farm.get(&holder.worker).filter(|_| !self.farm.is_gone(&holder.worker)).is_some_and(|w| {
                    w.running.iter().any(|j| {
                        j.call_id == call.call_id.id && j.attempt == holder.attempt && j.running_since_ms.is_some()
                    })
                });
            if computing {
                anyhow::bail!(
                    "call {} is running on worker {} (alive): a second attempt would compute the same sector twice, \
                     on the same files. If the job is stuck, restart that worker (its jobs resume; with --on-stop \
                     redispatch they go elsewhere) or abort the call",
                    call.call_id.id,
                    holder.worker
                );
            }
        }
        self.redispatch(call, "operator", "requeued by the operator").await?;
        let now = self.store.get(&call.call_id.id.to_string())?.context("call vanished")?;
        Ok(format!(
            "call {} ({} of {}) dispatched again as attempt {} to {}",
            call.call_id.id,
            task.stage(),
            call.sector.id,
            task.attempt + 1,
            now.queue.unwrap_or_default()
        ))
    }

    /// Replays a dead-lettered task: its call is opened again (a call the
    /// miner re-issues with the same inputs attaches to it) and the task
    /// dispatched as the call's next attempt; its result is returned to the
    /// miner like any other.
    pub async fn replay(self: &Arc<Self>, dead: &TaskMessage) -> Result<String> {
        let id = dead.call_id.to_string();
        if let Some(other) = dead.bridge.as_deref().filter(|b| *b != self.bridge_id) {
            anyhow::bail!("call {id} is bridge {other}'s (another miner's): replay it with that bridge");
        }
        let Some(call) = self.store.get(&id)? else {
            anyhow::bail!("call {id} is not in this bridge's store: replaying it would compute a result nobody takes");
        };
        // Only the attempt that made the call fail: a stale dead letter of an
        // earlier attempt, of a call still running or already answered, stays put.
        let failed_here = call.run.as_ref().is_some_and(|r| r.dead && r.attempt == dead.attempt);
        if call.is_open() || !failed_here {
            anyhow::bail!(
                "call {id} has moved on since attempt {} was dead-lettered (it is {}): nothing to replay; purge this dead letter",
                dead.attempt,
                if call.is_open() { "running again" } else { "answered by another attempt" }
            );
        }
        if let Some(blob) = call.blobs().into_iter().find(|b| !self.blobs.contains(b)) {
            anyhow::bail!(
                "call {id}'s input {blob} was removed when the call was returned to the miner: nothing to replay \
                 (the miner issues the call again itself); purge this dead letter"
            );
        }
        if let Some(piece) = dead.task.piece_id() {
            if !self.pieces.contains(piece) {
                anyhow::bail!(
                    "call {id}'s piece data was removed when the call failed: nothing to replay (the miner \
                     sends the piece again with a new call); purge this dead letter"
                );
            }
        }
        if !self.store.claim_digest(&call)? {
            anyhow::bail!(
                "the miner already re-issued call {id} (another open call has the same inputs): purge this dead letter"
            );
        }
        let next = TaskMessage { attempt: dead.attempt + 1, ..dead.clone() };
        let queue = self.route(&next, None).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        // Recorded before it is published, as a new call is: the worker's
        // claim of the new attempt must find the call open.
        if let Err(stale) = self.store.apply(&id, Durability::Flushed, |c| c.reopen(next.clone(), &queue))? {
            anyhow::bail!(
                "call {id} changed while it was being replayed ({stale}); look at `sealfarm-bridge jobs` and try again"
            );
        }
        if let Err(err) = self.publish_to(&queue, &next).await {
            self.store.restore(&call)?;
            return Err(err.context("the replayed task could not be published; the call is as it was"));
        }
        let _ = self.store.apply(&id, Durability::Lazy, |c| c.dispatched(next.attempt, &queue))?;
        tracing::warn!(call_id = %call.call_id, sector = %call.sector.id, stage = %next.stage(), attempt = next.attempt, queue, "dead letter replayed");
        Ok(format!(
            "call {} ({} of {}) replayed as attempt {} on {queue}",
            call.call_id.id,
            next.stage(),
            call.sector.id,
            next.attempt
        ))
    }

    /// Tells a worker to drop an attempt that was dispatched again.
    pub async fn supersede(&self, worker: &str, call_id: uuid::Uuid, attempt: u32, reason: &str) {
        let message = ControlMessage {
            schema: sealfarm_schemas::SCHEMA_VERSION,
            control: Control::Supersede { call_id, attempt, reason: reason.to_string() },
        };
        if let Err(err) = self.link.publish_json("", &topology::worker_queue(worker), &message, &[]).await {
            tracing::warn!(worker, %call_id, error = %format!("{err:#}"), "cannot tell the worker its attempt was superseded");
        }
    }

    /// Fails an open call (if `attempt` is still its current one) and returns
    /// the error to the miner.
    pub fn fail(self: &Arc<Self>, call: &Call, attempt: u32, error: CallError, by: FailedBy) {
        let id = call.call_id.id.to_string();
        let text = error.to_string();
        match self.store.apply(&id, Durability::Flushed, |c| c.fail(attempt, error, by, now_ms())) {
            Ok(Err(_moved_on)) => {}
            Ok(Ok(call)) => {
                tracing::warn!(call_id = %call.call_id, sector = %call.sector.id, error = %text, "call failed");
                if let Some(task) = call.task() {
                    let labels = vec![("stage", task.stage().to_string()), ("outcome", "failed".to_string())];
                    self.metrics.results.get_or_create(&labels).inc();
                }
                self.release_piece(&call);
                self.spawn_deliver(call);
            }
            Err(err) => {
                tracing::error!(call_id = %call.call_id, error = %format!("{err:#}"), "cannot record a failure")
            }
        }
    }
}
