//! Fair sharing of one farm among several miners (`--fair-share N`).
//!
//! Every miner's bridge publishes into the same stage queues, which are
//! first in, first out. Without a bound, a burst of 500 PC1s from one miner
//! puts 500 tasks ahead of the next miner's PC1, which then waits for all
//! of them. With `--fair-share N`, a bridge keeps at most N of its tasks
//! waiting unclaimed in each stage queue; its other calls wait in the
//! bridge (recorded, `Accepted`, in arrival order) and go out one by one as
//! workers claim the ones queued. Another miner's task therefore has at
//! most N of this miner's ahead of it: with a farm of S free slots for the
//! stage it is claimed within N/S slot turnovers (one, for N ≤ S). N is the
//! weight: a miner given 8 against another's 2 gets about four tasks
//! claimed to the other's one while both have a backlog.
//!
//! Priorities by stage are unchanged across miners: each stage has its own
//! queues and slots, and a worker gives its machine to waiting jobs in
//! lotus' order whoever's they are (`placement/budget.rs`).
//!
//! What is held is durable (the call store has it as `Accepted` with its
//! queue); at start the bridge publishes up to the share and holds the rest.
//! Calls dispatched again (an expired lease, a release, the operator's
//! requeue, a replay) are not held: they waited their turn once. Tasks for
//! a worker's own queue (its files) are not held either: they can only run
//! there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sealfarm_schemas::topology;
use tokio::sync::{Mutex, MutexGuard, Notify};

use super::lifecycle::RowState;
use super::Calls;

/// How often held calls are looked at without a claim to wake them (a call
/// that left a queue without being claimed: failed, aborted).
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The bound and the lock that makes "count, then publish" one step.
#[derive(Default)]
pub struct Shares {
    /// At most this many unclaimed tasks of this bridge per stage queue;
    /// None: no bound.
    pub per_queue: Option<u32>,
    admission: Mutex<()>,
    claimed: Notify,
}

impl Shares {
    pub fn new(per_queue: Option<u32>) -> Self {
        Shares { per_queue: per_queue.filter(|n| *n > 0), ..Shares::default() }
    }

    /// Whether tasks for `queue` are bounded (a stage queue, with a share set).
    pub fn bounds(&self, queue: &str) -> bool {
        self.per_queue.is_some() && topology::worker_of_queue(queue).is_none()
    }

    /// Held while a bounded task is counted and published.
    pub async fn admission(&self) -> MutexGuard<'_, ()> {
        self.admission.lock().await
    }

    /// A worker claimed a task: a held call may go out.
    pub fn claimed(&self) {
        self.claimed.notify_one();
    }
}

/// Per stage queue: this bridge's calls in it unclaimed, and those held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Share {
    pub queued: u64,
    pub held: u64,
}

impl Calls {
    /// This bridge's calls per stage queue: queued unclaimed, and held back.
    pub fn shares(&self) -> BTreeMap<String, Share> {
        self.store.rows(false).map(|rows| shares_of(&rows)).unwrap_or_default()
    }

    /// Whether one more task may go to `queue` now (call under the admission lock).
    pub(super) fn has_room(&self, queue: &str) -> bool {
        let Some(limit) = self.shares.per_queue.filter(|_| self.shares.bounds(queue)) else { return true };
        let queued = self.shares().get(queue).map_or(0, |s| s.queued);
        queued < u64::from(limit)
    }

    /// Publishes held calls, oldest first, while their queues have room;
    /// woken by claims, and every [`LOOK_EVERY`].
    pub async fn release_held(self: Arc<Self>) {
        if self.shares.per_queue.is_none() {
            return;
        }
        loop {
            self.release_once().await;
            tokio::select! {
                _ = self.shares.claimed.notified() => {}
                stop = self.shutdown.wait_for(LOOK_EVERY) => if stop { return },
            }
        }
    }

    async fn release_once(self: &Arc<Self>) {
        let Some(limit) = self.shares.per_queue else { return };
        let _admission = self.shares.admission().await;
        let Ok(rows) = self.store.rows(false) else { return };
        let mut shares = shares_of(&rows);
        // Oldest first (the rows come in arrival order).
        for row in rows.iter().filter(|r| r.state == RowState::Accepted) {
            let Some(queue) = row.queue.as_deref().filter(|q| self.shares.bounds(q)) else { continue };
            let share = shares.entry(queue.to_string()).or_default();
            if share.queued >= u64::from(limit) {
                continue;
            }
            let Ok(Some(call)) = self.store.get(&row.call_id.to_string()) else { continue };
            let Some(task) = call.task().filter(|_| call.state == super::lifecycle::CallState::Accepted) else {
                continue;
            };
            match self.publish_accepted(task, queue).await {
                Ok(()) => {
                    share.queued += 1;
                    tracing::info!(call_id = %task.call_id, sector = %task.sector.id, queue, "held call dispatched: its turn came");
                }
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "held call not published; trying again");
                    return;
                }
            }
        }
    }
}

/// Per stage queue, from the rows of the open calls: unclaimed and held.
fn shares_of(rows: &[super::index::CallRow]) -> BTreeMap<String, Share> {
    let mut shares: BTreeMap<String, Share> = BTreeMap::new();
    for row in rows {
        let Some(queue) = row.queue.as_deref().filter(|q| topology::worker_of_queue(q).is_none()) else {
            continue;
        };
        match row.state {
            RowState::Accepted => shares.entry(queue.to_string()).or_default().held += 1,
            RowState::Dispatched if row.holder.is_none() => shares.entry(queue.to_string()).or_default().queued += 1,
            _ => {}
        }
    }
    shares
}
