//! A process's link to RabbitMQ (bridge and workers alike): one connection, a publishing channel in
//! confirm mode, and reconnection with backoff when the broker goes away.
//!
//! Every publish waits for the broker's confirm; a message the broker could
//! not route (mandatory flag) or refused is an error, never a silent loss.
//!
//! A farm's broker may be a cluster: the link takes every node's URL and,
//! when its connection is lost or a node cannot be reached, connects to the
//! next one ([`BrokerLink::get`]). `amqps://` URLs connect with TLS (rustls)
//! and only with TLS: the CA file given (or the system's bundle) is the only
//! trust, and the certificate must name the host of the URL.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
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

/// The CA bundle an `amqps://` URL is checked against when no `--amqp-ca` is given.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long one node may take to accept a connection (TCP, TLS and the AMQP
/// handshake) before the next node is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and how to reach RabbitMQ, as the bridge and the workers take it on
/// their command lines.
#[derive(clap::Args, Clone, Debug)]
pub struct BrokerArgs {
    /// RabbitMQ URL (amqp:// or amqps://). For a cluster give every node,
    /// repeated or comma-separated: the next one is used when the current one
    /// fails. An amqps:// URL never falls back to a plain connection.
    #[arg(
        long = "amqp",
        env = "SEALFARM_AMQP_URL",
        value_delimiter = ',',
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true
    )]
    pub urls: Vec<String>,
    /// PEM file of the CA certificate(s) the brokers' TLS certificates must
    /// chain to (amqps:// only); nothing else is trusted. Default: the
    /// system's bundle, /etc/ssl/certs/ca-certificates.crt.
    #[arg(long = "amqp-ca", env = "SEALFARM_AMQP_CA")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate to present to the broker (amqps:// only), for a
    /// listener that asks for one or for RabbitMQ's x509 login
    /// (`?auth_mechanism=external` in the URL). Needs --amqp-key.
    #[arg(long = "amqp-cert", env = "SEALFARM_AMQP_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --amqp-cert (PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[arg(long = "amqp-key", env = "SEALFARM_AMQP_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl BrokerArgs {
    /// One plain URL and no TLS files.
    pub fn url(url: &str) -> BrokerArgs {
        BrokerArgs { urls: vec![url.to_string()], ca: None, cert: None, key: None }
    }

    /// Checks the URLs and reads the TLS files; every problem is named here,
    /// at start-up, rather than at the first connect.
    pub fn config(&self) -> Result<BrokerConfig> {
        let urls: Vec<String> = self.urls.iter().map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
        if urls.is_empty() {
            bail!("no RabbitMQ URL given (--amqp)");
        }
        let mut tls_wanted = false;
        let mut users = Vec::new();
        for url in &urls {
            let parsed: lapin::uri::AMQPUri =
                url.parse().map_err(|err| anyhow!("{} is not a RabbitMQ URL: {err}", redact(url)))?;
            match parsed.scheme {
                lapin::uri::AMQPScheme::AMQPS => tls_wanted = true,
                lapin::uri::AMQPScheme::AMQP => {}
            }
            let external = parsed.query.auth_mechanism == Some(lapin::uri::SASLMechanism::External);
            if external
                && !url.split("://").nth(1).is_some_and(|rest| rest.split('/').next().unwrap_or("").contains('@'))
            {
                bail!(
                    "{}: with the x509 login (auth_mechanism=external) write the broker user the certificate logs \
                     in as before the host (amqps://USER@host/…): sealfarm stamps its messages with it",
                    redact(url)
                );
            }
            users.push(parsed.authority.userinfo.username);
        }
        users.dedup();
        if users.len() > 1 {
            bail!("every --amqp URL must log in as the same broker user (they are nodes of one cluster): {users:?}");
        }
        let user = users.remove(0);
        let mut tls = OwnedTLSConfig::default();
        if tls_wanted {
            install_crypto_provider();
            let ca = self.ca.clone().unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
            let chain = read_pem(&ca, "CERTIFICATE", "the CA file (--amqp-ca)")?;
            tls.cert_chain = Some(chain);
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                let pem = read_pem(cert, "CERTIFICATE", "the client certificate (--amqp-cert)")?;
                let key = read_pem(key, "PRIVATE KEY", "the client key (--amqp-key)")?;
                tls.identity = Some(OwnedIdentity::PKCS8 { pem: pem.into_bytes(), key: key.into_bytes() });
            }
        } else if self.ca.is_some() || self.cert.is_some() {
            bail!("--amqp-ca/--amqp-cert are for amqps:// URLs, and every --amqp URL is plain amqp://");
        }
        Ok(BrokerConfig { urls, tls, user })
    }
}

/// Reads a PEM file and checks it holds what it should (a `BEGIN ... what` block).
fn read_pem(path: &Path, what: &str, role: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {role} {}", path.display()))?;
    if !text.lines().any(|line| line.starts_with("-----BEGIN ") && line.contains(what)) {
        bail!("{role} {} holds no PEM {what}", path.display());
    }
    Ok(text)
}

/// rustls needs one process-wide crypto provider; sealfarm uses ring (the
/// one its HTTP clients already build). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The checked form of [`BrokerArgs`].
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Every node's URL, tried in turn.
    pub urls: Vec<String>,
    tls: OwnedTLSConfig,
    /// The broker user the URLs log in as: every message this process
    /// publishes carries it as `user_id`, which RabbitMQ checks.
    pub user: String,
}

impl BrokerConfig {
    /// The URLs without passwords, for logs.
    pub fn redacted(&self) -> String {
        self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(", ")
    }
}

/// What a process may set up on the broker. The bridge declares the farm's
/// exchanges, queues and bindings; a worker declares only its own queue
/// (where it consumes) and needs no right to configure anything else: a
/// worker's broker user can be kept to the least it needs
/// (deploy/rabbitmq/definitions.json).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The farm's exchanges and shared queues, and with an id that bridge's
    /// own queues (`queues::declare_bridge`).
    Bridge(Option<String>),
    Worker,
}

/// One open connection with its confirm-mode publishing channel.
pub struct Broker {
    pub connection: Connection,
    publisher: Channel,
    /// The `user_id` of every message published here: the connection's user.
    user: ShortString,
    /// The URL this connection was made to (with its password).
    pub url: String,
}

impl Broker {
    /// Connects to one node, enables publisher confirms and declares the topology.
    pub async fn connect(url: &str, tls: &OwnedTLSConfig, user: &str, name: &str, role: &Role) -> Result<Broker> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let runtime = lapin::runtime::default_runtime()?;
        let connecting = Connection::connect_with_config(url, properties, tls.clone(), runtime);
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
            .and_then(|connected| connected.map_err(anyhow::Error::from))
            .with_context(|| format!("cannot connect to RabbitMQ at {}", redact(url)))?;
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        if let Role::Bridge(id) = role {
            topology::declare(&publisher).await.context("declaring the sealfarm topology")?;
            if let Some(id) = id {
                topology::declare_bridge(&publisher, id)
                    .await
                    .with_context(|| format!("declaring the queues of bridge {id}"))?;
            }
        }
        Ok(Broker { connection, publisher, user: user.into(), url: url.to_string() })
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
            .with_user_id(self.user.clone())
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

/// A broker connection that is re-established on demand, to the next node
/// of the cluster when the current one is gone.
pub struct BrokerLink {
    config: BrokerConfig,
    name: String,
    role: Role,
    current: Mutex<Option<Arc<Broker>>>,
    /// The index of the URL the next connect tries first.
    next: AtomicUsize,
}

impl BrokerLink {
    pub fn new(config: BrokerConfig, name: String, role: Role) -> Self {
        BrokerLink { config, name, role, current: Mutex::new(None), next: AtomicUsize::new(0) }
    }

    /// The current connection, or a new one: each node is tried once, starting
    /// after the one last connected to (a lost connection usually means a lost
    /// node); the error names every node's failure.
    pub async fn get(&self) -> Result<Arc<Broker>> {
        let mut current = self.current.lock().await;
        if let Some(broker) = current.as_ref() {
            if broker.is_connected() {
                return Ok(broker.clone());
            }
        }
        let urls = &self.config.urls;
        let first = self.next.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..urls.len() {
            let index = (first + i) % urls.len();
            match Broker::connect(&urls[index], &self.config.tls, &self.config.user, &self.name, &self.role).await {
                Ok(broker) => {
                    if current.is_some() || i > 0 {
                        tracing::info!(node = %redact(&urls[index]), "connected to RabbitMQ");
                    }
                    self.next.store((index + 1) % urls.len(), Ordering::Relaxed);
                    let broker = Arc::new(broker);
                    *current = Some(broker.clone());
                    return Ok(broker);
                }
                Err(err) => {
                    if urls.len() > 1 {
                        tracing::warn!(node = %redact(&urls[index]), error = %format!("{err:#}"), "RabbitMQ node unreachable; trying the next");
                    }
                    failures.push(format!("{err:#}"));
                }
            }
        }
        self.next.store((first + 1) % urls.len(), Ordering::Relaxed);
        match failures.len() {
            1 => Err(anyhow!(failures.remove(0))),
            n => Err(anyhow!("none of the {n} RabbitMQ nodes could be reached: {}", failures.join("; "))),
        }
    }

    /// The broker user this process logs in as (and stamps its messages with).
    /// The id of the bridge this link belongs to (None: a worker's, or the farm's alone).
    pub fn bridge_id(&self) -> Option<&str> {
        match &self.role {
            Role::Bridge(id) => id.as_deref(),
            Role::Worker => None,
        }
    }

    pub fn user(&self) -> &str {
        &self.config.user
    }

    /// The broker URLs this link uses, without passwords.
    pub fn redacted(&self) -> String {
        self.config.redacted()
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

/// The broker user that published a delivery, as RabbitMQ validated it
/// (None: the publisher set no `user_id`, which no sealfarm process does).
pub fn publisher(delivery: &lapin::message::Delivery) -> Option<&str> {
    delivery.properties.user_id().as_ref().map(|user| user.as_str())
}

/// A string header of a delivery.
pub fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A URL without its password, for logs and errors.
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
