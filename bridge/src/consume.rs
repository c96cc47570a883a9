//! The one way the bridge consumes a queue: reconnecting with backoff,
//! acknowledging each delivery only after its handler succeeded.

use std::future::Future;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sealfarm_runtime::broker::BrokerLink;
use sealfarm_runtime::retry::{self, Backoff};
use sealfarm_runtime::shutdown::Shutdown;

/// Consumes `queue` until shutdown, reconnecting with backoff; each delivery
/// is acknowledged after `handle` returns Ok (an Err reconnects, and the
/// broker hands the message out again).
pub async fn consume<F, Fut>(link: &BrokerLink, shutdown: &Shutdown, queue: &'static str, prefetch: u16, handle: F)
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
