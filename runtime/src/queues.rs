//! The queues' arguments and their idempotent declaration: whoever
//! connects first declares everything; declaring again with the same
//! arguments is a no-op. The names are `sealfarm_schemas::topology`'s.

use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
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

/// Every queue of the topology except the per-worker and per-bridge ones.
pub fn shared_queues() -> Vec<QueueSpec> {
    let mut queues = vec![QueueSpec::quorum(RESULTS_QUEUE), QueueSpec::quorum(DEAD_LETTER_QUEUE)];
    for stage in Stage::ALL {
        for size in SectorSize::ALL {
            queues.push(QueueSpec::work(task_queue(stage, size)));
        }
    }
    queues
}

/// One bridge's own queues: its results, its copy of the events, its copy
/// of the dead letters.
pub fn bridge_queues(bridge: &str) -> Vec<QueueSpec> {
    vec![
        QueueSpec::quorum(bridge_results_queue(bridge)),
        QueueSpec::quorum(bridge_dead_queue(bridge)),
        QueueSpec::bounded(bridge_events_queue(bridge), BRIDGE_EVENTS_MAX),
    ]
}

/// Declares exchanges, shared queues and bindings. Safe to call from every
/// process at every connect.
pub async fn declare(channel: &Channel) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel.exchange_declare(EVENTS_EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    channel.exchange_declare(DEAD_LETTER_EXCHANGE.into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    channel.exchange_declare(RESULTS_EXCHANGE.into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    channel.exchange_declare(REPLIES_EXCHANGE.into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    // Every result published to the fanout reaches the direct exchange with
    // its routing key (the task's bridge), which picks the bridge's queue.
    channel
        .exchange_bind(
            REPLIES_EXCHANGE.into(),
            RESULTS_EXCHANGE.into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for queue in shared_queues() {
        queue.declare(channel).await?;
    }
    // Before results were routed by bridge, `sealfarm.results` was bound to
    // the fanout and got every result; now it gets those of tasks that name
    // no bridge. (Unbinding a binding that is not there is not an error.)
    channel.queue_unbind(RESULTS_QUEUE.into(), RESULTS_EXCHANGE.into(), "".into(), FieldTable::default()).await?;
    let bindings = [(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, ""), (RESULTS_QUEUE, REPLIES_EXCHANGE, "")];
    for (queue, exchange, key) in bindings {
        channel
            .queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    Ok(())
}

/// Declares one bridge's own queues and binds them: results by its id,
/// every event, every dead letter. Declaring them never touches another
/// bridge's queues.
pub async fn declare_bridge(channel: &Channel, bridge: &str) -> lapin::Result<()> {
    for queue in bridge_queues(bridge) {
        queue.declare(channel).await?;
    }
    let bindings = [
        (bridge_results_queue(bridge), REPLIES_EXCHANGE, bridge),
        (bridge_dead_queue(bridge), DEAD_LETTER_EXCHANGE, ""),
        (bridge_events_queue(bridge), EVENTS_EXCHANGE, "worker.#"),
    ];
    for (queue, exchange, key) in bindings {
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
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
        // Results of tasks naming no bridge, dead letters; 15 stages × 5 sector sizes.
        assert_eq!(shared_queues().len(), 2 + 15 * 5);
        let own: Vec<String> = bridge_queues("t01000").into_iter().map(|q| q.name).collect();
        assert_eq!(
            own,
            ["sealfarm.bridge.t01000.results", "sealfarm.bridge.t01000.dead", "sealfarm.bridge.t01000.events"]
        );
    }
}
