//! Accepting the miner's sealing calls and returning their results.
//!
//! A call is recorded in the [`CallStore`], its task published with a broker
//! confirm, and only then is its `CallID` answered. Results arrive on
//! `sealfarm.results`; each is stored durably, acknowledged, and delivered to
//! the miner as the matching `Return*`, retried with backoff until the miner
//! accepts it. At start, every stored result not yet returned is delivered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sealfarm_schemas::blob::Payload;
use sealfarm_schemas::broker::{header, BrokerLink};
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::messages::PieceData;
use sealfarm_schemas::shutdown::Shutdown;
use sealfarm_schemas::topology;
use sealfarm_schemas::{
    CallError, CallId, Control, ControlMessage, ErrorCode, Outcome, ResultMessage, SectorCids, SectorRef, Stage,
    StageOutput, Task, TaskMessage,
};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::call_store::{input_digest, Call, CallKind, CallState, CallStore, Location, RunRecord};
use crate::farm::Farm;
use crate::metrics::Metrics;
use crate::registration::Miner;
use crate::rpc::RpcError;

/// Accepts calls and returns results.
pub struct Calls {
    pub store: CallStore,
    /// Large inputs and outputs (C1 outputs), kept until their call is returned.
    pub blobs: Arc<crate::blobs::Blobs>,
    pub link: Arc<BrokerLink>,
    pub miner: Arc<Miner>,
    pub shutdown: Shutdown,
    /// How long after a PC1 call arrives its ticket can still land on chain.
    pub ticket_window: Duration,
    /// The live workers, from their heartbeats.
    pub farm: Arc<Farm>,
    /// Ids of the storage paths the bridge mounts itself (shared storage).
    pub shared_storage: Vec<String>,
    pub metrics: Arc<Metrics>,
    /// Returns the miner did not accept yet, per call: failed tries.
    pub return_failures: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, u32>>,
    /// Piece data received for AddPiece calls, removed once their result is stored.
    pub pieces: Arc<crate::pieces::PieceInbox>,
    /// One `Return*` carrying a large output (a C1 output read from its blob) is sent at a time.
    pub large_returns: tokio::sync::Semaphore,
}

impl Calls {
    /// Accepts a farm call: record, publish, answer the CallID. A re-issued
    /// call (same method, sector and inputs) gets the open call's CallID.
    pub async fn accept(self: &Arc<Self>, method: &str, sector: SectorRef, task: Task) -> Result<CallId, RpcError> {
        let inputs = serde_json::to_value(&task).map_err(|e| RpcError::method(e.to_string()))?;
        let digest = input_digest(method, &sector, &inputs);
        if let Some(open) = self.store.open_call_with_digest(&digest).map_err(internal)? {
            tracing::info!(call_id = %open.call_id, sector = %sector.id, method, "re-issued call attaches to the open one");
            return Ok(open.call_id);
        }
        if sector.proof_type.info().is_none() {
            return Err(RpcError::method(format!(
                "unknown seal proof type {} for sector {}",
                sector.proof_type.0, sector.id
            )));
        }
        let call_id = CallId::new(sector.id);
        let issued_at_ms = now_ms();
        self.metrics.calls_accepted.get_or_create(&vec![("stage", task.stage().to_string())]).inc();
        if let Task::Ap { data: PieceData::Piece { .. }, .. } = &task {
            self.store.mark_deal(sector.id).map_err(internal)?;
        }
        let message = TaskMessage {
            schema: sealfarm_schemas::SCHEMA_VERSION,
            call_id: call_id.id,
            attempt: 1,
            sector,
            issued_at_ms,
            ticket_deadline_ms: (task.stage() == Stage::Pc1)
                .then(|| issued_at_ms + self.ticket_window.as_millis() as u64),
            deal: self.store.is_deal(sector.id),
            task,
        };
        let call = Call {
            call_id,
            sector,
            method: method.to_string(),
            kind: CallKind::Task { task: Box::new(message.clone()) },
            input_digest: digest,
            arrived_at_ms: message.issued_at_ms,
            updated_at_ms: message.issued_at_ms,
            state: CallState::Accepted,
            holder: None,
            queue: None,
            run: None,
        };
        let queue = match self.route(&message, None) {
            Ok(queue) => queue,
            Err(error) => {
                // The miner hears it as the call's result: its FSM handles failed stages.
                tracing::warn!(sector = %sector.id, method, error = %error, "call cannot run on the farm");
                let run = RunRecord {
                    worker: "bridge".into(),
                    attempt: 1,
                    started_at_ms: issued_at_ms,
                    finished_at_ms: issued_at_ms,
                    error: Some(error.message.clone()),
                    dead: false,
                };
                let state = CallState::Resulted { outcome: Box::new(Outcome::Failed(error)), worker: "bridge".into() };
                let call = Call { state, run: Some(run), ..call };
                self.store.insert(&call).map_err(internal)?;
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    this.deliver(call).await;
                });
                return Ok(call_id);
            }
        };
        let call = Call { queue: Some(queue.clone()), ..call };
        self.store.insert(&call).map_err(internal)?;
        if let Err(err) = self.publish_to(&queue, &message).await {
            let _ = self.store.remove(&call);
            tracing::error!(sector = %sector.id, method, error = %format!("{err:#}"), "cannot publish the task");
            return Err(RpcError::method(format!("sealfarm-bridge cannot reach the broker: {err:#}")));
        }
        self.store.confirm_dispatch(&call_id.id.to_string(), message.attempt, &queue).map_err(internal)?;
        tracing::info!(call_id = %call_id, sector = %sector.id, stage = %message.stage(), queue, "call dispatched");
        Ok(call_id)
    }

    /// Accepts a call the bridge completes itself (Fetch, MoveStorage in
    /// shared storage): answered now, returned right after.
    pub fn accept_local(self: &Arc<Self>, method: &str, sector: SectorRef, kind: CallKind) -> Result<CallId, RpcError> {
        let call_id = CallId::new(sector.id);
        let now = now_ms();
        let call = Call {
            call_id,
            sector,
            method: method.to_string(),
            kind,
            input_digest: format!("local:{}", call_id.id),
            arrived_at_ms: now,
            updated_at_ms: now,
            state: CallState::Resulted {
                outcome: Box::new(Outcome::Done(StageOutput::Fin {})),
                worker: "bridge".into(),
            },
            holder: None,
            queue: None,
            run: None,
        };
        self.store.insert(&call).map_err(internal)?;
        let this = self.clone();
        tokio::spawn(async move {
            // Return after the CallID answer has left (the safe order, PROTOCOL.md §7.3).
            tokio::time::sleep(Duration::from_millis(50)).await;
            this.deliver(call).await;
        });
        Ok(call_id)
    }

    /// At start: delivers every stored result the miner has not accepted
    /// yet, and publishes every call whose task the broker never confirmed
    /// (the bridge died in between; the miner's re-issued call attaches to it).
    pub async fn redeliver_pending(self: &Arc<Self>) -> Result<()> {
        let calls = self.store.unreturned()?;
        // Blobs and piece data that no unreturned call needs any more.
        let keep = calls.iter().flat_map(|c| c.blobs()).map(|b| b.sha256).collect();
        let swept = self.blobs.sweep(&keep, crate::blobs::ORPHAN_AGE);
        let pieces = calls
            .iter()
            .filter(|c| c.is_open())
            .filter_map(|c| match c.task() {
                Some(TaskMessage { task: Task::Ap { data: PieceData::Piece { id }, .. }, .. }) => Some(*id),
                _ => None,
            })
            .collect();
        let dropped = self.pieces.sweep(&pieces);
        if swept + dropped > 0 {
            tracing::info!(blobs = swept, pieces = dropped, "removed inputs no open call needs");
        }
        for call in calls {
            match call.state {
                CallState::Resulted { .. } => {
                    let this = self.clone();
                    tokio::spawn(async move { this.deliver(call).await });
                }
                CallState::Accepted => {
                    let Some(task) = call.task().cloned() else { continue };
                    let this = self.clone();
                    tokio::spawn(async move {
                        let queue = match this.route(&task, None) {
                            Ok(queue) => queue,
                            Err(error) => return this.fail(&call, task.attempt, error, "bridge"),
                        };
                        if let Err(err) = this.declare_worker_queue(&queue).await {
                            tracing::warn!(error = %format!("{err:#}"), "task not published");
                            return;
                        }
                        match this.link.publish_until_confirmed("", &queue, &task, &[], &this.shutdown).await {
                            Ok(()) => {
                                let _ = this.store.confirm_dispatch(&task.call_id.to_string(), task.attempt, &queue);
                                tracing::info!(call_id = %task.call_id, "unconfirmed task published again");
                            }
                            Err(err) => tracing::warn!(error = %format!("{err:#}"), "task not published"),
                        }
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Where a task goes. C2 and every task of a sector whose files no
    /// worker created yet: the stage's shared queue. A location-bound task
    /// (AddPiece of a further piece, PC1, PC2, C1, finalize, release): the
    /// own queue of the worker holding the sector's files, while it is alive
    /// and takes that stage; else, in shared storage (the bridge mounts the
    /// worker's sealing path), the shared queue. In worker-local storage a
    /// holder that is gone or does not take the stage fails the call: the
    /// files are nowhere else, so the miner must seal the sector again.
    ///
    /// `avoid`: a worker the task is being taken away from (its lease
    /// expired, it released the task, it is gone); in shared storage the task
    /// then goes to the stage queue even if that worker holds the files.
    pub fn route(&self, task: &TaskMessage, avoid: Option<&str>) -> Result<String, CallError> {
        let Some(info) = task.sector.proof_type.info() else {
            let message = format!("unknown seal proof type {}", task.sector.proof_type.0);
            return Err(CallError::new(ErrorCode::UNKNOWN, message));
        };
        let (shared, size) = (topology::task_queue(task.stage(), info.sector_size), info.sector_size);
        if task.stage() == Stage::C2 {
            return Ok(shared);
        }
        let location = match self.store.location(task.sector.id) {
            Ok(Some(location)) => location,
            Ok(None) => return Ok(shared),
            Err(err) => {
                return Err(CallError::new(
                    ErrorCode::TEMP_WORKER_RESTART,
                    format!("sealfarm-bridge call store: {err:#}"),
                ))
            }
        };
        let holder = &location.worker;
        let view = self.farm.get(holder);
        let storage = location.storage_id.clone().or_else(|| view.as_ref().and_then(|w| w.storage_id.clone()));
        let shared_storage = storage.is_some_and(|id| self.shared_storage.contains(&id));
        let gone = self.farm.is_gone(holder);
        // A holder not heard of since the bridge started (its heartbeat is on
        // the way) keeps its tasks in worker-local storage; in shared
        // storage any worker can take them.
        // A drained holder in shared storage gets nothing new, nor one still
        // warming up for this stage: others can reach the files. In
        // worker-local storage only it can (the task waits there).
        let takes = view.map_or(!shared_storage, |w| {
            let away = w.draining || w.warming.contains(&task.stage());
            w.slots(task.stage(), size) > 0 && !(away && shared_storage && !self.farm.is_gone(holder))
        });
        if !gone && takes && (avoid != Some(holder.as_str()) || !shared_storage) {
            return Ok(topology::worker_queue(holder));
        }
        if shared_storage {
            return Ok(shared);
        }
        let stage = task.stage();
        let sector = task.sector.id;
        let message = if gone {
            let silent = self.farm.silent_for(holder).map_or("since the bridge started".to_string(), |d| {
                format!("for {}", humantime::format_duration(Duration::from_secs(d.as_secs())))
            });
            format!(
                "sealfarm: the files of sector {sector} are on worker {holder} (worker-local storage), which has sent \
                 no heartbeat {silent}: {stage} cannot run anywhere else and the sector must be sealed again"
            )
        } else {
            format!(
                "sealfarm: the files of sector {sector} are on worker {holder} (worker-local storage), which does not \
                 take {stage} of {size} sectors: in worker-local storage every stage from AddPiece to finalize runs \
                 where the files are, so let {holder} take {stage} (or use shared storage)"
            )
        };
        Err(CallError::new(ErrorCode::UNKNOWN, message))
    }

    /// Publishes a task where [`Calls::route`] sends it and waits for the
    /// broker's confirm; a task that can no longer run is an Err.
    pub async fn publish_task(&self, task: &TaskMessage) -> Result<()> {
        let queue = self.route(task, None).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        self.publish_to(&queue, task).await
    }

    async fn publish_to(&self, queue: &str, task: &TaskMessage) -> Result<()> {
        self.declare_worker_queue(queue).await?;
        self.link.publish_json("", queue, task, &[]).await
    }

    /// A worker's own queue exists once the worker consumed it; declared
    /// here too so a task routed there is never unroutable. Other queues: nothing to do.
    async fn declare_worker_queue(&self, queue: &str) -> Result<()> {
        if topology::worker_of_queue(queue).is_some() {
            self.link.get().await?.declare_queue(&topology::QueueSpec::work(queue)).await?;
        }
        Ok(())
    }

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
            self.fail(call, task.attempt, error, "bridge");
            return Ok(());
        }
        let next = task.next_attempt();
        let queue = match self.route(&next, away_from) {
            Ok(queue) => queue,
            Err(error) => {
                let message = format!("{} ({reason})", error.message);
                self.fail(call, task.attempt, CallError::new(error.code, message), "bridge");
                return Ok(());
            }
        };
        // Publish first: a crash before the store update only repeats this at the next lease expiry.
        self.publish_to(&queue, &next).await?;
        let old_holder = call.holder.clone();
        let moved = self.store.update(&call.call_id.id.to_string(), |c| {
            // Only if nothing happened to the call meanwhile (a result, another dispatch).
            if !c.is_open() || c.task().map(|t| t.attempt) != Some(task.attempt) {
                return false;
            }
            c.kind = CallKind::Task { task: Box::new(next.clone()) };
            c.state = CallState::Dispatched;
            c.holder = None;
            c.queue = Some(queue.clone());
            true
        })?;
        if moved.is_none() {
            // The published attempt is dropped by whoever claims it (the call moved on).
            tracing::info!(call_id = %call.call_id, "the call moved on while it was dispatched again");
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

    /// How often the miner refused this call's Return so far (0 once returned).
    pub fn return_failures(&self, call_id: uuid::Uuid) -> u32 {
        self.return_failures.lock().unwrap().get(&call_id).copied().unwrap_or(0)
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
        self.fail(call, task.attempt, error, "operator");
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
        if let TaskMessage { task: Task::Ap { data: PieceData::Piece { id: piece }, .. }, .. } = dead {
            if !self.pieces.contains(*piece) {
                anyhow::bail!(
                    "call {id}'s piece data was removed when its AddPiece failed: nothing to replay (the miner \
                     sends the piece again with a new call); purge this dead letter"
                );
            }
        }
        if !self.store.reopen(&call)? {
            anyhow::bail!(
                "the miner already re-issued call {id} (another open call has the same inputs): purge this dead letter"
            );
        }
        let next = TaskMessage { attempt: dead.attempt + 1, ..dead.clone() };
        let queue = self.route(&next, None).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        // Recorded before it is published, as a new call is: the worker's
        // claim of the new attempt must find the call open.
        let reopened = self.store.update(&id, |c| {
            if c.is_open() || c.run.as_ref().map(|r| r.attempt) != Some(dead.attempt) {
                return false;
            }
            c.kind = CallKind::Task { task: Box::new(next.clone()) };
            c.state = CallState::Accepted;
            c.holder = None;
            c.queue = Some(queue.clone());
            c.run = None;
            true
        })?;
        if reopened.is_none() {
            anyhow::bail!(
                "call {id} changed while it was being replayed; look at `sealfarm-bridge jobs` and try again"
            );
        }
        if let Err(err) = self.publish_to(&queue, &next).await {
            self.store.restore(&call)?;
            return Err(err.context("the replayed task could not be published; the call is as it was"));
        }
        self.store.confirm_dispatch(&id, next.attempt, &queue)?;
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
    pub fn fail(self: &Arc<Self>, call: &Call, attempt: u32, error: CallError, by: &str) {
        if !call.is_open() || call.task().is_some_and(|t| t.attempt != attempt) {
            return;
        }
        tracing::warn!(call_id = %call.call_id, sector = %call.sector.id, error = %error, "call failed");
        let now = now_ms();
        let started = call.holder.as_ref().map_or(now, |h| h.since_ms);
        let run = RunRecord {
            worker: by.to_string(),
            attempt,
            started_at_ms: started,
            finished_at_ms: now,
            error: Some(error.message.clone()),
            dead: by == "dead-letter",
        };
        if let Some(task) = call.task() {
            let labels = vec![("stage", task.stage().to_string()), ("outcome", "failed".to_string())];
            self.metrics.results.get_or_create(&labels).inc();
        }
        let state = CallState::Resulted { outcome: Box::new(Outcome::Failed(error)), worker: by.to_string() };
        let recorded = self.store.update(&call.call_id.id.to_string(), |c| {
            if !c.is_open() || c.task().is_some_and(|t| t.attempt != attempt) {
                return false;
            }
            c.state = state;
            c.run = Some(run);
            true
        });
        match recorded {
            Ok(None) => {}
            Ok(Some(call)) => {
                self.release_piece(&call);
                let this = self.clone();
                tokio::spawn(async move { this.deliver(call).await });
            }
            Err(err) => {
                tracing::error!(call_id = %call.call_id, error = %format!("{err:#}"), "cannot record a failure")
            }
        }
    }

    /// Consumes `sealfarm.results` until shutdown, reconnecting as needed.
    pub async fn consume_results(self: Arc<Self>) {
        let this = self.clone();
        consume(&self.link, &self.shutdown, topology::RESULTS_QUEUE, 64, move |delivery| {
            let this = this.clone();
            async move {
                match serde_json::from_slice::<ResultMessage>(&delivery.data) {
                    Ok(result) => {
                        // Durable first, then ack: a crash in between only repeats the store.
                        if let Some(call) = this.record_result(&result)? {
                            tokio::spawn(async move { this.deliver(call).await });
                        }
                    }
                    Err(err) => tracing::error!(error = %err, "unreadable result message dropped"),
                }
                Ok(())
            }
        })
        .await
    }

    /// Consumes the bridge's copy of every dead-lettered task: the miner gets
    /// a CallError for a call whose task the farm gave up on.
    pub async fn consume_dead_letters(self: Arc<Self>) {
        let this = self.clone();
        consume(&self.link, &self.shutdown, topology::BRIDGE_DEAD_QUEUE, 16, move |delivery| {
            let this = this.clone();
            async move {
                let Ok(task) = serde_json::from_slice::<TaskMessage>(&delivery.data) else {
                    return Ok(()); // no call to fail: the operator reads it in sealfarm.dead-letters
                };
                let Some(call) = this.store.get(&task.call_id.to_string())? else { return Ok(()) };
                let reason = dead_letter_reason(&delivery);
                this.metrics.dead_letters.get_or_create(&vec![("stage", task.stage().to_string())]).inc();
                if !call.is_open() && call.run.as_ref().is_some_and(|r| r.attempt == task.attempt) {
                    // Failed already (the worker's own result came first): mark it dead.
                    this.store.modify(&task.call_id.to_string(), |c| {
                        if let Some(run) = c.run.as_mut() {
                            run.dead = true;
                        }
                    })?;
                    return Ok(());
                }
                let error = CallError::new(ErrorCode::UNKNOWN, format!("sealfarm dead-lettered the task: {reason}"));
                this.fail(&call, task.attempt, error, "dead-letter");
                Ok(())
            }
        })
        .await
    }

    /// Stores a result unless its call already has one; returns the call to deliver.
    fn record_result(&self, result: &ResultMessage) -> Result<Option<Call>> {
        let recorded = self.record_result_once(result);
        if let Outcome::Done(StageOutput::C1 { c1_out: Payload::Blob(blob) }) = &result.outcome {
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
        if let Outcome::Done(StageOutput::Ap { .. } | StageOutput::Pc1 { .. }) = &result.outcome {
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
        if let Outcome::Done(StageOutput::C1 { c1_out: Payload::Blob(blob) }) = &outcome {
            if !self.blobs.contains(blob) {
                let message = format!(
                    "sealfarm: worker {} reported the C1 output of {} as blob {blob}, which never reached the bridge; \
                     run C1 again",
                    result.worker, result.sector.id
                );
                tracing::error!(call_id = %id, %blob, "a C1 result names a blob the bridge does not have");
                outcome = Outcome::Failed(CallError::new(ErrorCode::UNKNOWN, message));
            }
        }
        // Any attempt's result is taken while the call has none (a superseded
        // attempt that finishes first saves the new one's work).
        let state = CallState::Resulted { outcome: Box::new(outcome.clone()), worker: result.worker.clone() };
        let error = match &outcome {
            Outcome::Failed(err) => Some(err.message.clone()),
            Outcome::Done(_) => None,
        };
        let outcome = if error.is_some() { "failed" } else { "done" };
        let run = RunRecord {
            worker: result.worker.clone(),
            attempt: result.attempt,
            started_at_ms: result.started_at_ms,
            finished_at_ms: result.finished_at_ms,
            error,
            dead: false,
        };
        let stage = result.stage.to_string();
        self.metrics.results.get_or_create(&vec![("stage", stage.clone()), ("outcome", outcome.to_string())]).inc();
        if let Some(info) = result.sector.proof_type.info() {
            let took = result.finished_at_ms.saturating_sub(result.started_at_ms) as f64 / 1000.0;
            self.metrics
                .stage_duration
                .get_or_create(&crate::metrics::stage_size(stage, info.sector_size))
                .observe(took);
        }
        // Only while the call is open: a failure (abort, dead letter) may have come first.
        let recorded = self.store.update(&id, |c| {
            if !c.is_open() {
                return false;
            }
            c.state = state;
            c.run = Some(run);
            true
        })?;
        if let Some(call) = &recorded {
            self.release_piece(call);
        }
        Ok(recorded)
    }

    /// Removes the piece data of an AddPiece call that has its result (no
    /// attempt reads it any more).
    fn release_piece(&self, call: &Call) {
        if let Some(TaskMessage { task: Task::Ap { data: PieceData::Piece { id }, .. }, .. }) = call.task() {
            self.pieces.remove(*id);
        }
    }

    /// Removes the blobs of a returned call (its C2 input, its C1 output)
    /// that no other unreturned call names.
    fn release_blobs(&self, call: &Call) {
        for blob in call.blobs() {
            self.blobs.release(&blob, || self.store.blob_in_use(&blob.sha256, call.call_id.id));
        }
    }

    /// Calls the matching `Return*` on the miner until it accepts it.
    async fn deliver(self: Arc<Self>, call: Call) {
        let span = match call.task() {
            Some(task) => task.span(),
            None => {
                tracing::info_span!("call", call_id = %call.call_id.id, sector = %call.sector.id, method = %call.method)
            }
        };
        self.deliver_in_span(call).instrument(span).await
    }

    async fn deliver_in_span(self: Arc<Self>, call: Call) {
        let CallState::Resulted { outcome, .. } = &call.state else { return };
        let (method, mut params) = return_call(&call, outcome);
        // A C1 output kept as a blob is checked, then streamed into the
        // output slot as the request is sent, one such Return at a time.
        let mut _large = None;
        let mut blob_file = None;
        if let Outcome::Done(StageOutput::C1 { c1_out: Payload::Blob(blob) }) = outcome.as_ref() {
            _large = self.large_returns.acquire().await.ok();
            match self.blobs.checked_path(blob).await {
                Ok(path) => blob_file = Some(path),
                Err(err) => {
                    // Nothing to return but the loss: the miner's state machine runs C1 again.
                    tracing::error!(call_id = %call.call_id, error = %format!("{err:#}"), "the C1 output is lost");
                    let error = CallError::new(ErrorCode::UNKNOWN, format!("sealfarm lost the C1 output: {err:#}"));
                    params[2] = serde_json::to_value(error).expect("CallError is JSON");
                }
            }
        }
        let mut delay = Duration::from_millis(500);
        let since = std::time::Instant::now();
        loop {
            let client = self.miner.client();
            let sent = match (&blob_file, params.as_array()) {
                (Some(path), Some(items)) if items.len() == 3 => {
                    let text = crate::blobs::Blobs::base64_stream(path.clone());
                    client.call_streamed::<Value>(method, &items[..1], text, &items[2..]).await
                }
                _ => client.call_with::<Value, _>(method, &params).await,
            };
            match sent {
                Ok(_) => break,
                Err(err) => {
                    let text = err.to_string();
                    if text.contains("already reported") || text.contains("already has a response") {
                        tracing::info!(call_id = %call.call_id, "the miner already has this result");
                        break;
                    }
                    *self.return_failures.lock().unwrap().entry(call.call_id.id).or_default() += 1;
                    self.metrics.return_failures.get_or_create(&vec![("method", method.to_string())]).inc();
                    tracing::warn!(call_id = %call.call_id, method, error = %text, retry_in = ?delay, "Return not accepted; retrying");
                    if self.shutdown.wait_for(delay).await {
                        return;
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.return_failures.lock().unwrap().remove(&call.call_id.id);
        let stage = call.task().map_or_else(|| call.method.clone(), |t| t.stage().to_string());
        self.metrics.return_latency.get_or_create(&vec![("stage", stage)]).observe(since.elapsed().as_secs_f64());
        let delivered = call.run.as_ref().map(|r| r.attempt);
        let recorded = self.store.update_soon(&call.call_id.id.to_string(), |c| {
            // Not if the call was opened again meanwhile (a replayed dead letter).
            if !matches!(c.state, CallState::Resulted { .. }) || c.run.as_ref().map(|r| r.attempt) != delivered {
                return false;
            }
            c.state = CallState::Returned { at_ms: now_ms() };
            true
        });
        match recorded {
            // The call as it was delivered still names its output blob.
            Ok(Some(_)) => self.release_blobs(&call),
            Ok(None) => {}
            Err(err) => {
                tracing::error!(call_id = %call.call_id, error = %format!("{err:#}"), "returned but not recorded")
            }
        }
        if let Outcome::Done(output) = outcome.as_ref() {
            self.miner.declare_outputs(call.sector, output).await;
        }
        tracing::info!(call_id = %call.call_id, sector = %call.sector.id, method, "returned to the miner");
    }
}

/// The `Return*` method and params for a call's outcome (PROTOCOL.md §7.1):
/// `[callID, output, error]`, or `[callID, error]` for error-only returns. A
/// failed call carries `null` as output (the zero SectorCids for PC2).
pub fn return_call(call: &Call, outcome: &Outcome) -> (&'static str, Value) {
    let id = serde_json::to_value(call.call_id).expect("CallID is JSON");
    let (output, error) = match outcome {
        Outcome::Done(output) => (output_slot(output), Value::Null),
        Outcome::Failed(err) => (Value::Null, serde_json::to_value(err).expect("CallError is JSON")),
    };
    use sealfarm_schemas::Stage::*;
    let stage = match &call.kind {
        CallKind::Fetch => return ("ReturnFetch", json!([id, error])),
        CallKind::MoveStorage => return ("ReturnMoveStorage", json!([id, error])),
        CallKind::Task { task } => task.stage(),
    };
    match stage {
        Ap => ("ReturnAddPiece", json!([id, output, error])),
        Pc1 => ("ReturnSealPreCommit1", json!([id, output, error])),
        Pc2 => {
            let cids = if output.is_null() { json!(SectorCids::default()) } else { output };
            ("ReturnSealPreCommit2", json!([id, cids, error]))
        }
        C1 => ("ReturnSealCommit1", json!([id, output, error])),
        C2 => ("ReturnSealCommit2", json!([id, output, error])),
        Fin => ("ReturnFinalizeSector", json!([id, error])),
        Ru => ("ReturnReleaseUnsealed", json!([id, error])),
    }
}

/// The value a stage's output puts in its `Return*` output slot (`null` for
/// a C1 output kept as a blob: it is put there when sent).
fn output_slot(output: &StageOutput) -> Value {
    let value = match output {
        StageOutput::Ap { piece } => serde_json::to_value(piece),
        StageOutput::Pc1 { pc1_out } => serde_json::to_value(pc1_out),
        StageOutput::Pc2 { cids } => serde_json::to_value(cids),
        StageOutput::C1 { c1_out: Payload::Inline(c1_out) } => serde_json::to_value(c1_out),
        StageOutput::C1 { c1_out: Payload::Blob(_) } => Ok(Value::Null),
        StageOutput::C2 { proof } => serde_json::to_value(proof),
        StageOutput::Fin {} | StageOutput::Ru {} => Ok(Value::Null),
    };
    value.expect("stage outputs are JSON")
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

/// Consumes `queue` until shutdown, reconnecting with backoff; each delivery
/// is acknowledged after `handle` returns Ok (an Err reconnects, and the
/// broker hands the message out again).
pub async fn consume<F, Fut>(link: &BrokerLink, shutdown: &Shutdown, queue: &'static str, prefetch: u16, handle: F)
where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_set() {
        let session = async {
            let broker = link.get().await?;
            let channel = broker.connection.create_channel().await?;
            channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let mut deliveries = channel
                .basic_consume(
                    queue.into(),
                    format!("sealfarm-bridge:{queue}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            delay = Duration::from_millis(200);
            let mut shutdown = shutdown.clone();
            loop {
                let delivery = tokio::select! {
                    _ = shutdown.wait() => return anyhow::Ok(()),
                    next = deliveries.next() => next.with_context(|| format!("the broker closed the consumer of {queue}"))??,
                };
                let acker = delivery.acker.clone();
                handle(delivery).await?;
                acker.ack(BasicAckOptions::default()).await?;
            }
        };
        match session.await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(queue, error = %format!("{err:#}"), retry_in = ?delay, "consumer lost the broker; reconnecting");
                if shutdown.wait_for(delay).await {
                    break;
                }
                delay = (delay * 2).min(Duration::from_secs(15));
            }
        }
    }
}

fn internal(err: anyhow::Error) -> RpcError {
    RpcError::method(format!("sealfarm-bridge call store: {err:#}"))
}
