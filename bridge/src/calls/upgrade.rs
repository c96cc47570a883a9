//! Upgrading a bridge from the single-bridge queues (before several miners
//! shared a farm) without losing what is in flight.
//!
//! Before, one bridge consumed `sealfarm.results`, `sealfarm.bridge.events`
//! and `sealfarm.bridge.dead`; now each bridge has `sealfarm.bridge.<id>.*`
//! and tasks name their bridge. Tasks published before the upgrade name
//! none, so their results (from a worker of either version) still arrive in
//! `sealfarm.results`, and events and dead letters queued while the bridge
//! was down wait in the old queues.
//!
//! The first start of this version on a state directory that already holds
//! open calls writes `legacy-queues` (the time of the upgrade). While that
//! file is there the bridge also consumes the three old queues, with the
//! same handlers as its own. The old events and dead-letter queues are
//! unbound at once (its own queues, declared before, get everything from
//! then on), so they only hold what was queued before. Once no open call
//! arrived before the upgrade, it stops, deletes those two queues and
//! removes the file. `sealfarm.results` stays: it is where results of tasks
//! that name no bridge go.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::topology;

use super::leases::Leases;
use super::Calls;

/// The file that says the old queues are still being drained, holding the
/// time of the upgrade (Unix milliseconds).
pub const MARKER: &str = "legacy-queues";

/// How often the drain looks whether calls from before the upgrade are left.
const LOOK_EVERY: Duration = Duration::from_secs(10);

/// Notes an upgrade at the first start of this version: `first_start` is
/// true when the state directory had no bridge id yet. Returns the time of
/// the upgrade while the old queues are to be drained.
pub fn note(state_dir: &Path, first_start: bool, calls: &Calls) -> Result<Option<u64>> {
    let marker = state_dir.join(MARKER);
    if first_start && calls.store.rows(false)?.iter().any(|r| r.is_open()) {
        std::fs::write(&marker, now_ms().to_string()).with_context(|| format!("cannot write {}", marker.display()))?;
    }
    match std::fs::read_to_string(&marker) {
        Ok(text) => Ok(Some(text.trim().parse().with_context(|| format!("{} holds no time", marker.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", marker.display())),
    }
}

/// Consumes the old shared queues until no open call arrived before
/// `upgraded_at_ms`, then deletes the old events and dead-letter queues and
/// the marker.
pub async fn drain(calls: Arc<Calls>, leases: Arc<Leases>, state_dir: PathBuf, upgraded_at_ms: u64) {
    let (stop, until) = calls.shutdown.child();
    let old_queues = [topology::LEGACY_BRIDGE_EVENTS_QUEUE, topology::LEGACY_BRIDGE_DEAD_QUEUE];
    let mut present = Vec::new();
    for queue in old_queues {
        if exists(&calls, queue).await {
            // Its own copy gets everything from here on.
            if let Err(err) = unbind(&calls, queue).await {
                tracing::warn!(queue, error = %format!("{err:#}"), "cannot unbind an old shared queue");
            }
            present.push(queue);
        }
    }
    tracing::info!(
        upgraded_at_ms,
        queues = ?present,
        "calls from before this bridge had queues of its own are open: draining the old shared queues too"
    );
    let tasks = calls.tasks.clone();
    tasks.spawn(calls.clone().consume_results(topology::RESULTS_QUEUE.into(), until.clone()));
    if present.contains(&topology::LEGACY_BRIDGE_EVENTS_QUEUE) {
        tasks.spawn(leases.consume_events(topology::LEGACY_BRIDGE_EVENTS_QUEUE.into(), until.clone()));
    }
    if present.contains(&topology::LEGACY_BRIDGE_DEAD_QUEUE) {
        tasks.spawn(calls.clone().consume_dead_letters(topology::LEGACY_BRIDGE_DEAD_QUEUE.into(), until.clone()));
    }
    loop {
        if calls.shutdown.wait_for(LOOK_EVERY).await {
            return;
        }
        let left = match calls.store.rows(false) {
            Ok(rows) => rows.iter().filter(|r| r.is_open() && r.arrived_at_ms < upgraded_at_ms).count(),
            Err(_) => continue,
        };
        if left == 0 {
            break;
        }
        tracing::debug!(left, "calls from before the upgrade still open");
    }
    // Whatever reached the old queues reached this bridge's own too since
    // they were declared: what is left there is a copy.
    stop.fire();
    for queue in present {
        match delete(&calls, queue).await {
            Ok(count) => tracing::info!(queue, messages = count, "old shared queue deleted"),
            Err(err) => {
                tracing::warn!(queue, error = %format!("{err:#}"), "cannot delete an old shared queue; trying at the next start");
                return;
            }
        }
    }
    match std::fs::remove_file(state_dir.join(MARKER)) {
        Ok(()) => tracing::info!("every call from before the upgrade is answered: the old shared queues are done with"),
        Err(err) => tracing::warn!(error = %err, "cannot remove {MARKER}"),
    }
}

/// Whether a queue exists (a passive declare, on a channel of its own: a
/// missing queue closes the channel).
async fn exists(calls: &Calls, queue: &str) -> bool {
    let Ok(broker) = calls.link.get().await else { return false };
    let Ok(channel) = broker.connection.create_channel().await else { return false };
    let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let found = channel.queue_declare(queue.into(), options, FieldTable::default()).await.is_ok();
    let _ = channel.close(200, "".into()).await;
    found
}

/// Unbinds an old queue from the exchange that fed it.
async fn unbind(calls: &Calls, queue: &str) -> Result<()> {
    let broker = calls.link.get().await?;
    let channel = broker.connection.create_channel().await?;
    let (exchange, key) = match queue {
        topology::LEGACY_BRIDGE_EVENTS_QUEUE => (topology::EVENTS_EXCHANGE, "worker.#"),
        _ => (topology::DEAD_LETTER_EXCHANGE, ""),
    };
    channel.queue_unbind(queue.into(), exchange.into(), key.into(), FieldTable::default()).await?;
    let _ = channel.close(200, "".into()).await;
    Ok(())
}

/// Deletes an old queue; how many messages it still held.
async fn delete(calls: &Calls, queue: &str) -> Result<u32> {
    let broker = calls.link.get().await?;
    let channel = broker.connection.create_channel().await?;
    let count = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
    let _ = channel.close(200, "".into()).await;
    Ok(count)
}
