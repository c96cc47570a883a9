//! The one way the bridge consumes a queue: reconnecting with backoff,
//! acknowledging each delivery only after its handler succeeded; and what
//! it does with a message it cannot decode (dead-letters it with the reason).

use std::future::Future;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sealfarm_runtime::broker::BrokerLink;
use sealfarm_runtime::retry::{self, Backoff};
use sealfarm_runtime::shutdown::Shutdown;
use sealfarm_schemas::{topology, DeadLetterReason};

use crate::ops::metrics::Metrics;

/// Consumes `queue` until shutdown, reconnecting with backoff; each delivery
/// is acknowledged after `handle` returns Ok (an Err reconnects, and the
/// broker hands the message out again).
pub async fn consume<F, Fut>(link: &BrokerLink, shutdown: &Shutdown, queue: &str, prefetch: u16, handle: F)
where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut pauses = Backoff::new(retry::BROKER);
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
            pauses.reset();
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
                let delay = pauses.next_pause().unwrap_or(retry::BROKER.max);
                tracing::warn!(queue, error = %format!("{err:#}"), retry_in = ?delay, "consumer lost the broker; reconnecting");
                if shutdown.wait_for(delay).await {
                    break;
                }
            }
        }
    }
}

/// Moves a message the bridge cannot decode from `queue` to the dead-letter
/// exchange with its reason (an operator reads it in `sealfarm.dead-letters`)
/// and counts it. An Err (the broker did not take it) leaves the message
/// unacknowledged, to be tried again.
pub async fn dead_letter_undecodable(
    link: &BrokerLink,
    metrics: &Metrics,
    queue: &str,
    delivery: &Delivery,
    reason: &DeadLetterReason,
) -> Result<()> {
    tracing::warn!(queue, %reason, publisher = ?sealfarm_runtime::broker::publisher(delivery), "undecodable message dead-lettered");
    metrics
        .undecodable_messages
        .get_or_create(&vec![("queue", queue.to_string()), ("reason", reason.code.to_string())])
        .inc();
    let headers = [(topology::REASON_HEADER, reason.to_string()), (topology::SOURCE_QUEUE_HEADER, queue.to_string())];
    link.get().await?.publish_bytes(topology::DEAD_LETTER_EXCHANGE, queue, &delivery.data, &headers).await
}
