//! The broker topology: the names of exchanges, queues and headers.
//!
//! * `sealfarm.task.<stage>.<size>` — one durable quorum queue per stage and
//!   sector size, published to through the default exchange;
//! * `sealfarm.worker.<worker-id>` — a worker's own queue for location-bound
//!   stages (the sector's files are on that worker);
//! * `sealfarm.results` (fanout) → `sealfarm.replies` (direct, by the
//!   task's bridge id) → `sealfarm.bridge.<bridge-id>.results` — each
//!   result to the bridge whose call it answers (several miners, each with
//!   its bridge, share one farm);
//! * `sealfarm.events` — topic exchange for heartbeats, claims, progress and
//!   releases (`worker.<id>.<kind>`), copied to every bridge's
//!   `sealfarm.bridge.<bridge-id>.events`;
//! * `sealfarm.dead` → `sealfarm.dead-letters` (operators) and every
//!   bridge's `sealfarm.bridge.<bridge-id>.dead` — poison tasks with the reason.
//!
//! Work queues carry a delivery limit and dead-letter at-least-once into
//! `sealfarm.dead`, so a task that crashes its consumers again and again ends
//! up with operators instead of looping. The names are here; the queues'
//! arguments and their declaration are the runtime's
//! (`sealfarm_runtime::queues`).

use crate::lotus::SectorSize;
use crate::messages::{Stage, TaskMessage};

pub const EVENTS_EXCHANGE: &str = "sealfarm.events";
pub const DEAD_LETTER_EXCHANGE: &str = "sealfarm.dead";
pub const DEAD_LETTER_QUEUE: &str = "sealfarm.dead-letters";
/// The single bridge's copy of every worker event, before several bridges
/// shared a farm; a bridge of this version drains it, then deletes it.
pub const LEGACY_BRIDGE_EVENTS_QUEUE: &str = "sealfarm.bridge.events";
/// The single bridge's copy of every dead-lettered task, before several
/// bridges shared a farm; drained and deleted like the events.
pub const LEGACY_BRIDGE_DEAD_QUEUE: &str = "sealfarm.bridge.dead";
/// Events kept for a bridge that is away; older ones are dropped first
/// (heartbeats repeat, so only the newest matter).
pub const BRIDGE_EVENTS_MAX: i64 = 100_000;
/// Results of tasks that name no bridge (published by a bridge from before
/// several miners shared a farm, or by a test without a bridge): bound to
/// [`REPLIES_EXCHANGE`] with the empty routing key.
pub const RESULTS_QUEUE: &str = "sealfarm.results";
/// Where workers publish results, with the task's bridge id as routing key
/// (a fanout, bound to [`REPLIES_EXCHANGE`]): an exchange of its own, so a
/// worker's broker user needs no right to publish through the default
/// exchange, which reaches every queue (the stage queues too). It is a
/// fanout because it was one before results were routed by bridge, and an
/// exchange's type cannot change.
pub const RESULTS_EXCHANGE: &str = "sealfarm.results";
/// Routes each result to its bridge's results queue by the routing key.
pub const REPLIES_EXCHANGE: &str = "sealfarm.replies";

/// How often RabbitMQ may hand a work message out before dead-lettering it
/// with reason `delivery_limit`.
pub const DELIVERY_LIMIT: i64 = 5;

/// Header a consumer sets on a message it dead-letters itself: `<code>: <detail>`.
pub const REASON_HEADER: &str = "x-sealfarm-reason";
/// Header naming the queue a self-dead-lettered message came from.
pub const SOURCE_QUEUE_HEADER: &str = "x-sealfarm-source-queue";
/// Header naming the worker that dead-lettered a message.
pub const WORKER_HEADER: &str = "x-sealfarm-worker";

/// One bridge's results: those of the tasks it published.
pub fn bridge_results_queue(bridge: &str) -> String {
    format!("sealfarm.bridge.{bridge}.results")
}

/// One bridge's copy of every worker event (claims, heartbeats, progress,
/// releases): what its leases and its view of the workers are built from.
pub fn bridge_events_queue(bridge: &str) -> String {
    format!("sealfarm.bridge.{bridge}.events")
}

/// One bridge's copy of every dead-lettered task: it fails those of its own
/// calls, so its miner hears of them, and ignores the others.
pub fn bridge_dead_queue(bridge: &str) -> String {
    format!("sealfarm.bridge.{bridge}.dead")
}

/// The shared queue for one stage and sector size.
pub fn task_queue(stage: Stage, size: SectorSize) -> String {
    format!("sealfarm.task.{stage}.{size}")
}

/// The shared queue a task goes to; `None` for a proof type lotus does not define.
pub fn queue_of(task: &TaskMessage) -> Option<String> {
    task.sector.proof_type.info().map(|info| task_queue(task.stage(), info.sector_size))
}

/// A worker's own queue for location-bound stages.
pub fn worker_queue(worker_id: &str) -> String {
    format!("sealfarm.worker.{worker_id}")
}

/// The worker whose own queue this is; None for any other queue.
pub fn worker_of_queue(queue: &str) -> Option<&str> {
    queue.strip_prefix("sealfarm.worker.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_design() {
        assert_eq!(task_queue(Stage::Pc1, SectorSize::GIB32), "sealfarm.task.pc1.32GiB");
        assert_eq!(worker_queue("box-7"), "sealfarm.worker.box-7");
        assert_eq!(worker_of_queue(&worker_queue("box-7")), Some("box-7"));
        assert_eq!(worker_of_queue("sealfarm.task.pc1.32GiB"), None);
        assert_eq!(bridge_results_queue("t01000"), "sealfarm.bridge.t01000.results");
        assert_eq!(bridge_events_queue("t01000"), "sealfarm.bridge.t01000.events");
        assert_eq!(bridge_dead_queue("t01000"), "sealfarm.bridge.t01000.dead");
    }
}
