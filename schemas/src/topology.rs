//! The broker topology as data, and its idempotent declaration.
//!
//! * `sealfarm.task.<stage>.<size>` — one durable quorum queue per stage and
//!   sector size, published to through the default exchange;
//! * `sealfarm.worker.<worker-id>` — a worker's own queue for location-bound
//!   stages (the sector's files are on that worker);
//! * `sealfarm.results` — results for the bridge;
//! * `sealfarm.events` — topic exchange for heartbeats, claims, progress and
//!   releases (`worker.<id>.<kind>`);
//! * `sealfarm.dead` → `sealfarm.dead-letters` — poison tasks with the reason.
//!
//! Work queues carry a delivery limit and dead-letter at-least-once into
//! `sealfarm.dead`, so a task that crashes its consumers again and again ends
//! up with operators instead of looping. Whoever connects first declares
//! everything; declaring again with the same arguments is a no-op.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::lotus::SectorSize;
use crate::messages::{Stage, TaskMessage};

pub const EVENTS_EXCHANGE: &str = "sealfarm.events";
pub const DEAD_LETTER_EXCHANGE: &str = "sealfarm.dead";
pub const DEAD_LETTER_QUEUE: &str = "sealfarm.dead-letters";
/// The bridge's copy of every worker event (claims, heartbeats, progress,
/// releases): what its leases are built from.
pub const BRIDGE_EVENTS_QUEUE: &str = "sealfarm.bridge.events";
/// The bridge's copy of every dead-lettered task, so the miner hears of it.
pub const BRIDGE_DEAD_QUEUE: &str = "sealfarm.bridge.dead";
/// Events kept for a bridge that is away; older ones are dropped first
/// (heartbeats repeat, so only the newest matter).
const BRIDGE_EVENTS_MAX: i64 = 100_000;
pub const RESULTS_QUEUE: &str = "sealfarm.results";

/// How often RabbitMQ may hand a work message out before dead-lettering it
/// with reason `delivery_limit`.
pub const DELIVERY_LIMIT: i64 = 5;

/// Header a consumer sets on a message it dead-letters itself: `<code>: <detail>`.
pub const REASON_HEADER: &str = "x-sealfarm-reason";
/// Header naming the queue a self-dead-lettered message came from.
pub const SOURCE_QUEUE_HEADER: &str = "x-sealfarm-source-queue";
/// Header naming the worker that dead-lettered a message.
pub const WORKER_HEADER: &str = "x-sealfarm-worker";

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

/// A queue and the arguments it is declared with.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: Vec<(&'static str, AMQPValue)>,
}

impl QueueSpec {
    /// A queue of work: quorum, delivery limit, dead-lettered at least once.
    pub fn work(name: impl Into<String>) -> Self {
        QueueSpec {
            name: name.into(),
            arguments: vec![
                ("x-queue-type", text("quorum")),
                ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
                ("x-dead-letter-exchange", text(DEAD_LETTER_EXCHANGE)),
                ("x-dead-letter-strategy", text("at-least-once")),
                ("x-overflow", text("reject-publish")),
            ],
        }
    }

    /// A plain durable quorum queue (results, dead letters).
    pub fn quorum(name: impl Into<String>) -> Self {
        QueueSpec { name: name.into(), arguments: vec![("x-queue-type", text("quorum"))] }
    }

    /// A durable quorum queue that keeps at most `max` messages, dropping the oldest.
    pub fn bounded(name: impl Into<String>, max: i64) -> Self {
        QueueSpec {
            name: name.into(),
            arguments: vec![
                ("x-queue-type", text("quorum")),
                ("x-max-length", AMQPValue::LongLongInt(max)),
                ("x-overflow", text("drop-head")),
            ],
        }
    }

    fn field_table(&self) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in &self.arguments {
            table.insert(ShortString::from(*key), value.clone());
        }
        table
    }

    /// Declares the queue (durable); a no-op when it exists with the same arguments.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        channel
            .queue_declare(
                self.name.as_str().into(),
                QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
                self.field_table(),
            )
            .await
            .map(|_| ())
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Every queue of the topology except the per-worker ones.
pub fn shared_queues() -> Vec<QueueSpec> {
    let mut queues = vec![
        QueueSpec::quorum(RESULTS_QUEUE),
        QueueSpec::quorum(DEAD_LETTER_QUEUE),
        QueueSpec::quorum(BRIDGE_DEAD_QUEUE),
        QueueSpec::bounded(BRIDGE_EVENTS_QUEUE, BRIDGE_EVENTS_MAX),
    ];
    for stage in Stage::ALL {
        for size in SectorSize::ALL {
            queues.push(QueueSpec::work(task_queue(stage, size)));
        }
    }
    queues
}

/// Declares exchanges, shared queues and bindings. Safe to call from every
/// process at every connect.
pub async fn declare(channel: &Channel) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel.exchange_declare(EVENTS_EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    channel.exchange_declare(DEAD_LETTER_EXCHANGE.into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    for queue in shared_queues() {
        queue.declare(channel).await?;
    }
    let bindings = [
        (DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, ""),
        (BRIDGE_DEAD_QUEUE, DEAD_LETTER_EXCHANGE, ""),
        (BRIDGE_EVENTS_QUEUE, EVENTS_EXCHANGE, "worker.#"),
    ];
    for (queue, exchange, key) in bindings {
        channel
            .queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    Ok(())
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
        let spec = QueueSpec::work("q");
        assert!(spec.arguments.contains(&("x-queue-type", text("quorum"))));
        assert!(spec.arguments.contains(&("x-dead-letter-exchange", text(DEAD_LETTER_EXCHANGE))));
        assert_eq!(shared_queues().len(), 4 + 7 * 5);
    }
}
