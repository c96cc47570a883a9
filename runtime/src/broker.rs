//! A process's link to RabbitMQ (bridge and workers alike): one connection, a publishing channel in
//! confirm mode, and reconnection with backoff when the broker goes away.
//!
//! Every publish waits for the broker's confirm; a message the broker could
//! not route (mandatory flag) or refused is an error, never a silent loss.

use anyhow::{anyhow, bail, Context, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::queues as topology;
use crate::shutdown::Shutdown;

/// The broker every sealfarm process uses unless told otherwise: a local
/// RabbitMQ with its default account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One open connection with its confirm-mode publishing channel.
pub struct Broker {
    pub connection: Connection,
    publisher: Channel,
}

impl Broker {
    /// Connects, enables publisher confirms and declares the topology.
    pub async fn connect(url: &str, name: &str) -> Result<Broker> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect(url, properties)
            .await
            .with_context(|| format!("cannot connect to RabbitMQ at {}", redact(url)))?;
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        topology::declare(&publisher).await.context("declaring the sealfarm topology")?;
        Ok(Broker { connection, publisher })
    }

    /// Declares a queue (idempotent), e.g. a worker's own queue before the
    /// first task is routed to it.
    pub async fn declare_queue(&self, queue: &topology::QueueSpec) -> Result<()> {
        queue.declare(&self.publisher).await.with_context(|| format!("declaring queue {}", queue.name))
    }

    /// Removes every message waiting in a queue; returns how many there were.
    pub async fn purge_queue(&self, queue: &str) -> Result<u32> {
        self.publisher
            .queue_purge(queue.into(), lapin::options::QueuePurgeOptions::default())
            .await
            .with_context(|| format!("purging queue {queue}"))
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    /// Publishes JSON persistently and waits for the broker's confirm.
    pub async fn publish_json<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
        headers: &[(&str, String)],
    ) -> Result<()> {
        let body = serde_json::to_vec(message)?;
        self.publish_bytes(exchange, routing_key, &body, headers).await
    }

    /// Publishes an event: persistent and confirmed, but not mandatory (an
    /// event nobody listens to yet is not an error).
    pub async fn publish_event<T: Serialize>(&self, exchange: &str, routing_key: &str, message: &T) -> Result<()> {
        let body = serde_json::to_vec(message)?;
        self.publish(exchange, routing_key, &body, &[], false).await
    }

    /// Publishes bytes that must reach a queue (mandatory), with headers.
    pub async fn publish_bytes(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> Result<()> {
        self.publish(exchange, routing_key, body, headers, true).await
    }

    /// One publish, confirmed. A negative confirm is retried a few times
    /// (see [`crate::retry::NACK`]); an unroutable mandatory message is not.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: &[(&str, String)],
        mandatory: bool,
    ) -> Result<()> {
        let mut table = FieldTable::default();
        for (key, value) in headers {
            table.insert(ShortString::from(*key), AMQPValue::LongString(LongString::from(value.as_str())));
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(table);
        let mut pauses = crate::retry::Backoff::new(crate::retry::NACK);
        for attempt in 1.. {
            let confirm = self
                .publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions { mandatory, ..BasicPublishOptions::default() },
                    body,
                    properties.clone(),
                )
                .await
                .with_context(|| format!("publishing to {routing_key:?}"))?
                .await
                .with_context(|| format!("waiting for the broker to confirm a message to {routing_key:?}"))?;
            match confirm {
                Confirmation::Ack(None) => return Ok(()),
                Confirmation::Ack(Some(returned)) => {
                    bail!("the broker could not route a message to {routing_key:?}: {}", returned.reply_text)
                }
                Confirmation::Nack(_) => match pauses.next_pause() {
                    Some(pause) => {
                        tracing::debug!(
                            queue = routing_key,
                            attempt,
                            "the broker refused a message; publishing it again"
                        );
                        tokio::time::sleep(pause).await;
                    }
                    None => bail!(
                        "the broker refused a message to {routing_key:?} {attempt} times (a quorum queue refuses while \
                         it has no leader or cannot register the publisher in time; see RabbitMQ's log)"
                    ),
                },
                Confirmation::NotRequested => {
                    return Err(anyhow!("publisher confirms are off on the publishing channel"))
                }
            }
        }
        unreachable!("the loop ends by returning")
    }
}

/// A broker connection that is re-established on demand.
pub struct BrokerLink {
    url: String,
    name: String,
    current: Mutex<Option<std::sync::Arc<Broker>>>,
}

impl BrokerLink {
    pub fn new(url: String, name: String) -> Self {
        BrokerLink { url, name, current: Mutex::new(None) }
    }

    /// The current connection, or a new one (one attempt).
    pub async fn get(&self) -> Result<std::sync::Arc<Broker>> {
        let mut current = self.current.lock().await;
        if let Some(broker) = current.as_ref() {
            if broker.is_connected() {
                return Ok(broker.clone());
            }
        }
        let broker = std::sync::Arc::new(Broker::connect(&self.url, &self.name).await?);
        *current = Some(broker.clone());
        Ok(broker)
    }

    /// Publishes JSON once on the current connection (connecting if needed).
    pub async fn publish_json<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
        headers: &[(&str, String)],
    ) -> Result<()> {
        self.get().await?.publish_json(exchange, routing_key, message, headers).await
    }

    /// Publishes, reconnecting and retrying with backoff until it succeeds or
    /// `give_up` says stop (shutdown).
    pub async fn publish_until_confirmed<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
        headers: &[(&str, String)],
        give_up: &Shutdown,
    ) -> Result<()> {
        let mut pauses = crate::retry::Backoff::new(crate::retry::PUBLISH);
        loop {
            match self.publish_json(exchange, routing_key, message, headers).await {
                Ok(()) => return Ok(()),
                Err(err) => {
                    let delay = pauses.next_pause().unwrap_or(crate::retry::PUBLISH.max);
                    tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "publish failed; retrying");
                    if give_up.wait_for(delay).await {
                        return Err(err.context("gave up publishing: shutting down"));
                    }
                }
            }
        }
    }

    pub async fn close(&self) {
        if let Some(broker) = self.current.lock().await.take() {
            let _ = broker.connection.close(200, "sealfarm stopping".into()).await;
        }
    }
}

/// A URL without its password, for logs and errors.
/// A string header of a delivery.
pub fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(super::redact("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(super::redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
