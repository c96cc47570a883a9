//! The queues' arguments and their idempotent declaration: whoever
//! connects first declares everything; declaring again with the same
//! arguments is a no-op. The names are `sealfarm_schemas::topology`'s.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use sealfarm_schemas::topology::*;
use sealfarm_schemas::{SectorSize, Stage};

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
    channel.exchange_declare(RESULTS_EXCHANGE.into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    for queue in shared_queues() {
        queue.declare(channel).await?;
    }
    let bindings = [
        (DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, ""),
        (BRIDGE_DEAD_QUEUE, DEAD_LETTER_EXCHANGE, ""),
        (BRIDGE_EVENTS_QUEUE, EVENTS_EXCHANGE, "worker.#"),
        (RESULTS_QUEUE, RESULTS_EXCHANGE, ""),
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
    fn work_queues_are_quorum_queues_that_dead_letter() {
        let spec = QueueSpec::work("q");
        assert!(spec.arguments.contains(&("x-queue-type", text("quorum"))));
        assert!(spec.arguments.contains(&("x-dead-letter-exchange", text(DEAD_LETTER_EXCHANGE))));
        // Results, dead letters (two), bridge events; 15 stages × 5 sector sizes.
        assert_eq!(shared_queues().len(), 4 + 15 * 5);
    }
}
