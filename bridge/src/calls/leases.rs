//! Leases: which worker holds each dispatched call, and for how long.
//!
//! A worker claims a task (records it, acks it) and says so with a `claim`
//! event; its heartbeats list every job it holds, and PC1 progress events
//! come as layers finish. Each of these renews the holder's lease on that
//! call. A lease that is not renewed within `--lease-timeout` expires: the
//! bridge dispatches the task again with the next attempt number and tells
//! the old holder to drop its copy. A `release` event (a worker stopping with
//! `--on-stop redispatch`) re-dispatches at once. Leases live in memory; the
//! holder is also in the call store, so after a bridge restart every held
//! call gets a fresh lease.
//!
//! Silence from the whole farm is not taken as the death of every worker: a
//! broker outage or a cut link looks the same. While the bridge hears no
//! event at all, no lease expires; when events come back after such a
//! silence, every lease gets a short grace so that live workers renew theirs
//! before anything is dispatched twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use sealfarm_runtime::shutdown::Shutdown;
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::topology;
use sealfarm_schemas::{EventKind, EventMessage};
use uuid::Uuid;

use crate::calls::store::{Call, CallState, Durability, RowState};
use crate::calls::Calls;
use crate::consume::{consume, dead_letter_undecodable};
use crate::senders::Refusal;
use crate::workers::WorkerView;

/// What the bridge knows of a held call.
#[derive(Clone, Debug)]
pub struct Lease {
    pub worker: String,
    pub attempt: u32,
    pub expires: Instant,
}

/// No event from any worker for this long: the bridge is cut off, not the farm dead.
const SILENCE: Duration = Duration::from_secs(15);
/// What every lease gets when events come back after a silence.
const GRACE: Duration = Duration::from_secs(30);
/// How long the bridge remembers having told a superseded attempt to stop.
const TOLD_KEPT: Duration = Duration::from_secs(3600);

pub struct Leases {
    calls: Arc<Calls>,
    timeout: Duration,
    held: Mutex<HashMap<Uuid, Lease>>,
    /// When the last event from any worker arrived.
    last_event: Mutex<Instant>,
    /// Superseded attempts already told to their worker: (call, attempt),
    /// and when. Entries older than [`TOLD_KEPT`] are dropped (an attempt
    /// still running after that is told again: harmless).
    told: Mutex<HashMap<(Uuid, u32), Instant>>,
}

/// Events handed to the bridge ahead of the one it handles: enough to keep
/// the consumer busy, few enough that a burst of heartbeats from a large farm
/// does not sit in the connection's buffers.
const EVENTS_PREFETCH: u16 = 64;

impl Leases {
    /// Leases for every call the store says is held, each fresh from now.
    pub fn new(calls: Arc<Calls>, timeout: Duration) -> Result<Arc<Self>> {
        let mut held = HashMap::new();
        for call in calls.store.rows(false)? {
            if let (true, Some(holder)) = (call.is_open(), &call.holder) {
                held.insert(
                    call.call_id,
                    Lease { worker: holder.worker.clone(), attempt: holder.attempt, expires: Instant::now() + timeout },
                );
            }
        }
        if !held.is_empty() {
            tracing::info!(calls = held.len(), ?timeout, "held calls from the last run get fresh leases");
        }
        Ok(Arc::new(Leases {
            calls,
            timeout,
            held: Mutex::new(held),
            last_event: Mutex::new(Instant::now()),
            told: Default::default(),
        }))
    }

    /// Consumes worker events (this bridge's copy: `queue`) until `shutdown`.
    pub async fn consume_events(self: Arc<Self>, queue: String, shutdown: Shutdown) {
        let this = self.clone();
        let name = queue.clone();
        consume(&self.calls.link, &shutdown, &name, EVENTS_PREFETCH, move |delivery| {
            let this = this.clone();
            let queue = queue.clone();
            async move {
                let decoded = sealfarm_schemas::messages::decode::<EventMessage>(&delivery.data, "an event message")
                    .and_then(|event| event.check_bounds().map(|()| event));
                match decoded {
                    Ok(event) => match this.check_sender(&delivery, &event).await {
                        Ok(()) => this.on_event(event).await?,
                        Err(refusal) => this.calls.senders.refuse("event", &refusal),
                    },
                    Err(reason) => {
                        let calls = &this.calls;
                        dead_letter_undecodable(&calls.link, &calls.metrics, &queue, &delivery, &reason).await?
                    }
                }
                Ok(())
            }
        })
        .await
    }

    /// Notes that the farm is heard; after a silence, grants every lease a grace.
    fn heard(&self) {
        let mut last = self.last_event.lock().unwrap();
        if last.elapsed() > SILENCE {
            let floor = Instant::now() + GRACE.min(self.timeout);
            for lease in self.held.lock().unwrap().values_mut() {
                lease.expires = lease.expires.max(floor);
            }
            tracing::info!(silent_for = ?last.elapsed(), "worker events again after a silence; leases get a grace");
        }
        *last = Instant::now();
    }

    /// The event's publisher may speak for its worker, and a heartbeat's
    /// file server is where workers may be.
    async fn check_sender(&self, delivery: &lapin::message::Delivery, event: &EventMessage) -> Result<(), Refusal> {
        let senders = &self.calls.senders;
        senders.check_worker(delivery, &event.worker)?;
        if let EventKind::Heartbeat { files_url: Some(url), .. } = &event.event {
            senders.check_files_url(&event.worker, url).await?;
        }
        Ok(())
    }

    async fn on_event(self: &Arc<Self>, event: EventMessage) -> Result<()> {
        self.heard();
        let worker = event.worker.clone();
        // An old event (queued while the bridge was away) renews only for what is left of it.
        let age = Duration::from_millis(now_ms().saturating_sub(event.at_ms)).min(self.timeout);
        match event.event {
            EventKind::Claim { call_id, attempt, .. } => {
                self.note_progress(call_id, event.at_ms)?;
                self.note_queue_wait(call_id, &worker, event.at_ms);
                self.renew(&worker, call_id, attempt, age).await
            }
            EventKind::Heartbeat {
                hostname,
                running,
                capacity,
                hardware,
                storage_id,
                files_url,
                draining,
                warming,
                in_use,
                ..
            } => {
                self.calls.farm.heartbeat(WorkerView {
                    id: worker.clone(),
                    hostname,
                    last_seen: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                    capacity,
                    hardware,
                    storage_id,
                    files_url,
                    running: running.clone(),
                    draining,
                    warming,
                    in_use,
                });
                for job in running {
                    self.renew(&worker, job.call_id, job.attempt, age).await?;
                }
                Ok(())
            }
            EventKind::Progress { call_id, attempt, .. } => {
                self.note_progress(call_id, event.at_ms)?;
                self.renew(&worker, call_id, attempt, age).await
            }
            EventKind::Release { call_id, attempt, reason } => {
                let Some(call) = self.current(call_id, attempt)? else { return Ok(()) };
                self.held.lock().unwrap().remove(&call_id);
                self.calls.redispatch(&call, "released", &format!("released by worker {worker}: {reason}")).await
            }
        }
    }

    /// Notes a call's progress, for open calls only: made-up call ids grow nothing.
    fn note_progress(&self, call_id: Uuid, at_ms: u64) -> Result<()> {
        if self.calls.store.get(&call_id.to_string())?.is_some_and(|call| call.is_open()) {
            self.calls.farm.progressed(call_id, at_ms);
        }
        Ok(())
    }

    /// The call, if `attempt` is its current, open attempt.
    fn current(&self, call_id: Uuid, attempt: u32) -> Result<Option<Call>> {
        let Some(call) = self.calls.store.get(&call_id.to_string())? else { return Ok(None) };
        let current = call.task().map(|t| t.attempt);
        Ok((call.is_open() && current == Some(attempt)).then_some(call))
    }

    /// True the first time (within [`TOLD_KEPT`]) an attempt is to be told
    /// to stop; forgets what is older as it goes.
    fn tell_once(&self, call_id: Uuid, attempt: u32) -> bool {
        let mut told = self.told.lock().unwrap();
        if told.len() > 1024 {
            told.retain(|_, at| at.elapsed() <= TOLD_KEPT);
        }
        match told.entry((call_id, attempt)) {
            std::collections::hash_map::Entry::Occupied(mut seen) if seen.get().elapsed() > TOLD_KEPT => {
                seen.insert(Instant::now());
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(new) => {
                new.insert(Instant::now());
                true
            }
        }
    }

    /// A sign of life from `worker` for one attempt of a call.
    async fn renew(&self, worker: &str, call_id: Uuid, attempt: u32, age: Duration) -> Result<()> {
        let Some(call) = self.calls.store.get(&call_id.to_string())? else { return Ok(()) };
        let current = call.task().map(|t| t.attempt).unwrap_or(attempt);
        if attempt < current && call.is_open() {
            // An old attempt still running somewhere: tell it once to stop.
            if self.tell_once(call_id, attempt) {
                self.calls.supersede(worker, call_id, attempt, &format!("attempt {current} was dispatched")).await;
            }
            return Ok(());
        }
        if attempt > current {
            return Ok(()); // an attempt being dispatched right now: the store catches up
        }
        let answered_by = call.run.as_ref().map(|r| (r.worker.as_str(), r.attempt));
        if !call.is_open() && answered_by != Some((worker, attempt)) {
            // The call has its result from elsewhere (another attempt, or the
            // operator aborted it): this copy's work is wasted.
            if self.tell_once(call_id, attempt) {
                self.calls.supersede(worker, call_id, attempt, "the call already has its result").await;
            }
            return Ok(());
        }
        if attempt != current || !call.is_open() {
            return Ok(());
        }
        if call.holder.as_ref().is_none_or(|h| h.worker != worker || h.attempt != attempt) {
            let id = call_id.to_string();
            let _ = self.calls.store.apply(&id, Durability::Lazy, |c| c.claim(worker, attempt, now_ms()))?;
            // Claimed: a call held for this miner's share may go out.
            self.calls.shares.claimed();
        }
        let mut held = self.held.lock().unwrap();
        let lease = held.entry(call_id).or_insert_with(|| Lease {
            worker: worker.to_string(),
            attempt,
            expires: Instant::now(),
        });
        lease.worker = worker.to_string();
        lease.attempt = attempt;
        lease.expires = lease.expires.max(Instant::now() + (self.timeout - age));
        Ok(())
    }

    /// The time from a call's arrival to its first claim (queue wait).
    fn note_queue_wait(&self, call_id: Uuid, worker: &str, at_ms: u64) {
        let Ok(Some(call)) = self.calls.store.get(&call_id.to_string()) else { return };
        let (Some(task), None) = (call.task(), &call.holder) else { return };
        let Some(info) = task.sector.proof_type.info() else { return };
        // From its arrival, or for a later attempt from when it was dispatched again.
        let since = if task.attempt > 1 { call.updated_at_ms } else { call.arrived_at_ms };
        let waited = at_ms.saturating_sub(since) as f64 / 1000.0;
        let labels = crate::ops::metrics::stage_size(task.stage(), info.sector_size);
        self.calls.metrics.queue_wait.get_or_create(&labels).observe(waited);
        tracing::debug!(%call_id, worker, waited, "claimed");
    }

    /// A task waiting, unclaimed, in the own queue of a worker that is gone
    /// has no lease to expire: it is dispatched again where it can run now
    /// (shared storage: the stage queue), or its call fails (worker-local
    /// storage: its files went with the worker).
    async fn unclaimed_on_gone_workers(&self) {
        let Ok(rows) = self.calls.store.rows(false) else { return };
        let mut emptied = std::collections::BTreeSet::new();
        for row in rows {
            if row.state != RowState::Dispatched || row.holder.is_some() {
                continue;
            }
            let Some(worker) = row.queue.as_deref().and_then(topology::worker_of_queue) else {
                continue;
            };
            if !self.calls.farm.is_gone(worker) {
                continue;
            }
            let Ok(Some(call)) = self.calls.store.get(&row.call_id.to_string()) else { continue };
            if !matches!(call.state, CallState::Dispatched) || call.holder.is_some() {
                continue; // moved on since the row was read
            }
            let reason = format!(
                "its task waited in the queue of worker {worker}, which sent no heartbeat for {}",
                humantime::format_duration(self.timeout)
            );
            match self.calls.redispatch(&call, "worker_gone", &reason).await {
                Ok(()) => {
                    emptied.insert(worker.to_string());
                }
                Err(err) => {
                    tracing::warn!(call_id = %call.call_id, error = %format!("{err:#}"), "cannot dispatch again yet")
                }
            }
        }
        // The old attempts left in those queues must not run if the worker
        // comes back (in shared storage next to the new attempts).
        for worker in emptied {
            let queue = topology::worker_queue(&worker);
            let purged = async { self.calls.link.get().await?.purge_queue(&queue).await };
            match purged.await {
                Ok(count) => tracing::warn!(worker, queue, count, "emptied the queue of a gone worker"),
                Err(err) => {
                    tracing::warn!(queue, error = %format!("{err:#}"), "cannot empty the queue of a gone worker")
                }
            }
        }
    }

    /// Re-dispatches the calls whose leases expired, until shutdown.
    pub async fn expire(self: Arc<Self>) {
        let every = (self.timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
        while !self.calls.shutdown.wait_for(every).await {
            if self.last_event.lock().unwrap().elapsed() > SILENCE {
                continue; // cut off from the farm: no lease can be judged
            }
            let expired: Vec<(Uuid, Lease)> = {
                let mut held = self.held.lock().unwrap();
                let now = Instant::now();
                let ids: Vec<Uuid> = held.iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| *id).collect();
                ids.into_iter().filter_map(|id| held.remove(&id).map(|l| (id, l))).collect()
            };
            self.unclaimed_on_gone_workers().await;
            for (call_id, lease) in expired {
                let Ok(Some(call)) = self.current(call_id, lease.attempt) else { continue };
                let reason = format!(
                    "worker {} held attempt {} and sent no sign of life for {}",
                    lease.worker,
                    lease.attempt,
                    humantime::format_duration(self.timeout)
                );
                self.calls.metrics.lease_expiries.inc();
                if let Err(err) = self.calls.redispatch(&call, "lease_expired", &reason).await {
                    tracing::warn!(%call_id, error = %format!("{err:#}"), "cannot dispatch again yet; retrying soon");
                    let mut held = self.held.lock().unwrap();
                    held.insert(call_id, Lease { expires: Instant::now() + every, ..lease });
                }
            }
        }
    }
}
