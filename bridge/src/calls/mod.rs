//! Accepting the miner's sealing calls and returning their results.
//!
//! A call is recorded in the [`CallStore`], its task published with a broker
//! confirm, and only then is its `CallID` answered. Results arrive on
//! `sealfarm.results`; each is stored durably, acknowledged, and delivered to
//! the miner as the matching `Return*`, retried with backoff until the miner
//! accepts it. At start, every stored result not yet returned is delivered.

pub mod dispatch;
mod index;
pub mod leases;
pub mod lifecycle;
pub mod results;
pub mod returns;
pub mod routing;
pub mod shares;
pub mod store;
pub mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use sealfarm_runtime::broker::BrokerLink;
use sealfarm_runtime::shutdown::Shutdown;
use sealfarm_schemas::messages::{now_ms, PieceData};
use sealfarm_schemas::{CallId, SectorRef, Stage, Task, TaskMessage};

use self::lifecycle::{Call, CallKind, CallState, FailedBy};
use self::store::{input_digest, CallStore, Durability, Opened};
use crate::miner::client::Miner;
use crate::miner::rpc::RpcError;
use crate::ops::metrics::Metrics;
use crate::workers::Farm;

/// Accepts calls and returns results.
pub struct Calls {
    pub store: CallStore,
    /// Large inputs and outputs (C1 outputs), kept until their call is returned.
    pub blobs: Arc<crate::blobs::Blobs>,
    pub link: Arc<BrokerLink>,
    pub miner: Arc<Miner>,
    pub shutdown: Shutdown,
    /// This bridge's id on the farm (`--bridge-id`): its queues are
    /// `sealfarm.bridge.<id>.*`, its tasks name it.
    pub bridge_id: String,
    /// How long after a PC1 call arrives its ticket can still land on chain.
    pub ticket_window: Duration,
    /// Attempts a call gets before the bridge fails it instead of
    /// dispatching it again on its own (`--max-attempts`).
    pub max_attempts: u32,
    /// The live workers, from their heartbeats.
    pub farm: Arc<Farm>,
    /// Ids of the storage paths the bridge mounts itself (shared storage).
    pub shared_storage: Vec<String>,
    pub metrics: Arc<Metrics>,
    /// Who may publish for which worker.
    pub senders: Arc<crate::senders::Senders>,
    /// Returns the miner did not accept yet, per call: failed tries.
    pub return_failures: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, u32>>,
    /// Piece data received for AddPiece calls, removed once their result is stored.
    pub pieces: Arc<crate::miner::pieces::PieceInbox>,
    /// One `Return*` carrying a large output (a C1 output read from its blob) is sent at a time.
    pub large_returns: tokio::sync::Semaphore,
    /// This miner's share of each stage queue (`--fair-share`).
    pub shares: shares::Shares,
    /// Every task the bridge spawns (deliveries, consumers, loops): a clean
    /// stop waits for them before the store is flushed.
    pub tasks: tokio_util::task::TaskTracker,
}

impl Calls {
    /// Accepts a farm call: record, publish, answer the CallID. A re-issued
    /// call (same method, sector and inputs) gets the open call's CallID.
    pub async fn accept(self: &Arc<Self>, method: &str, sector: SectorRef, task: Task) -> Result<CallId, RpcError> {
        if sector.proof_type.info().is_none() {
            return Err(RpcError::method(format!(
                "unknown seal proof type {} for sector {}",
                sector.proof_type.0, sector.id
            )));
        }
        let inputs = serde_json::to_value(&task).map_err(|e| RpcError::method(e.to_string()))?;
        let digest = input_digest(method, &sector, &inputs);
        let issued_at_ms = now_ms();
        if let Task::Ap { data: PieceData::Piece { .. }, .. } = &task {
            self.store.mark_deal(sector.id).map_err(internal)?;
        }
        let message = TaskMessage {
            schema: sealfarm_schemas::SCHEMA_VERSION,
            call_id: CallId::new(sector.id).id,
            attempt: 1,
            sector,
            issued_at_ms,
            ticket_deadline_ms: (task.stage() == Stage::Pc1)
                .then(|| issued_at_ms + self.ticket_window.as_millis() as u64),
            deal: self.store.is_deal(sector.id),
            attempt_token: None,
            bridge: None,
            task,
        };
        let routed = self.route(&message, None);
        let mut call = Call::new_task(method, message.clone(), digest, routed.as_ref().ok().cloned());
        if let Err(error) = &routed {
            // The miner hears it as the call's result: its FSM handles failed stages.
            tracing::warn!(sector = %sector.id, method, error = %error, "call cannot run on the farm");
            call.fail(1, error.clone(), FailedBy::Bridge, issued_at_ms).expect("a new call is open");
        }
        if let Opened::Attached(open) = self.store.open_or_attach(&call).map_err(internal)? {
            tracing::info!(call_id = %open.call_id, sector = %sector.id, method, "re-issued call attaches to the open one");
            return Ok(open.call_id);
        }
        let call_id = call.call_id;
        self.metrics.calls_accepted.get_or_create(&vec![("stage", message.stage().to_string())]).inc();
        let Ok(queue) = routed else {
            self.deliver_soon(call);
            return Ok(call_id);
        };
        // This miner's share of a stage queue (`--fair-share`): counted and
        // published in one step; a full share holds the call here.
        let _admission = match self.shares.bounds(&queue) {
            true => Some(self.shares.admission().await),
            false => None,
        };
        if _admission.is_some() {
            let still_accepted = self.store.row(call_id.id).is_some_and(|r| r.state == lifecycle::RowState::Accepted);
            if !still_accepted {
                return Ok(call_id); // its turn came while it waited for the lock
            }
            if !self.has_room(&queue) {
                tracing::info!(call_id = %call_id, sector = %sector.id, stage = %message.stage(), queue, "call held: this miner's share of the queue is full (--fair-share)");
                return Ok(call_id);
            }
        }
        if let Err(err) = self.publish_to(&queue, &message).await {
            let _ = self.store.remove(&call);
            tracing::error!(sector = %sector.id, method, error = %format!("{err:#}"), "cannot publish the task");
            return Err(RpcError::method(format!("sealfarm-bridge cannot reach the broker: {err:#}")));
        }
        // Lazy: a crash before it is on disk publishes the task once more at start.
        let _ = self
            .store
            .apply(&call_id.id.to_string(), Durability::Lazy, |c| c.dispatched(1, &queue))
            .map_err(internal)?;
        tracing::info!(call_id = %call_id, sector = %sector.id, stage = %message.stage(), queue, "call dispatched");
        Ok(call_id)
    }

    /// Accepts a call the bridge completes itself (Fetch, MoveStorage in
    /// shared storage): answered now, returned right after.
    pub fn accept_local(self: &Arc<Self>, method: &str, sector: SectorRef, kind: CallKind) -> Result<CallId, RpcError> {
        let call = Call::new_local(method, sector, kind, now_ms());
        let call_id = call.call_id;
        self.store.open_or_attach(&call).map_err(internal)?;
        self.deliver_soon(call);
        Ok(call_id)
    }

    /// Returns a call that has its result right after the CallID answer has
    /// left (the safe order, docs/LOTUS.md §4.4).
    fn deliver_soon(self: &Arc<Self>, call: Call) {
        let this = self.clone();
        self.tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            this.deliver(call).await;
        });
    }

    /// Delivers a call's result in a task of its own (tracked: a clean stop waits for it).
    pub(super) fn spawn_deliver(self: &Arc<Self>, call: Call) {
        let this = self.clone();
        self.tasks.spawn(async move { this.deliver(call).await });
    }

    /// Publishes the task of a call still `Accepted` (until the broker
    /// confirms it, or shutdown) and marks the call dispatched (lazily).
    pub(super) async fn publish_accepted(&self, task: &TaskMessage, queue: &str) -> Result<()> {
        let stamped = self.senders.stamped(task);
        self.link.publish_until_confirmed("", queue, &stamped, &[], &self.shutdown).await?;
        let id = task.call_id.to_string();
        let _ = self.store.apply(&id, Durability::Lazy, |c| c.dispatched(task.attempt, queue));
        Ok(())
    }

    /// At start: delivers every stored result the miner has not accepted
    /// yet, and publishes every call whose task the broker never confirmed
    /// (the bridge died in between; the miner's re-issued call attaches to it).
    pub async fn redeliver_pending(self: &Arc<Self>) -> Result<()> {
        let calls = self.store.unreturned()?;
        // Blobs and piece data that no unreturned call needs any more.
        let keep = calls.iter().flat_map(|c| c.blobs()).map(|b| b.sha256).collect();
        let swept = self.blobs.sweep(&keep, crate::blobs::ORPHAN_AGE);
        let pieces =
            calls.iter().filter(|c| c.is_open()).filter_map(|c| c.task().and_then(|t| t.task.piece_id())).collect();
        let dropped = self.pieces.sweep(&pieces);
        if swept + dropped > 0 {
            tracing::info!(blobs = swept, pieces = dropped, "removed inputs no open call needs");
        }
        for call in calls {
            match call.state {
                CallState::Resulted { .. } => self.spawn_deliver(call),
                CallState::Accepted => {
                    let Some(task) = call.task().cloned() else { continue };
                    if call.queue.as_deref().is_some_and(|q| self.shares.bounds(q)) {
                        continue; // held for its share: `release_held` publishes it in turn
                    }
                    let this = self.clone();
                    self.tasks.spawn(async move {
                        let queue = match this.route(&task, None) {
                            Ok(queue) => queue,
                            Err(error) => return this.fail(&call, task.attempt, error, FailedBy::Bridge),
                        };
                        if let Err(err) = this.declare_worker_queue(&queue).await {
                            tracing::warn!(error = %format!("{err:#}"), "task not published");
                            return;
                        }
                        match this.publish_accepted(&task, &queue).await {
                            Ok(()) => tracing::info!(call_id = %task.call_id, "unconfirmed task published again"),
                            Err(err) => tracing::warn!(error = %format!("{err:#}"), "task not published"),
                        }
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn internal(err: anyhow::Error) -> RpcError {
    RpcError::method(format!("sealfarm-bridge call store: {err:#}"))
}
