//! The farm's queues as operators watch them: ready messages, unacked,
//! consumers and rates per stage and size. From RabbitMQ's management API
//! when the bridge is given one (`--rabbitmq-management`; its figures are
//! sampled every few seconds), else — or while it does not answer — from the
//! broker protocol (a passive declare: ready messages and consumers, exact).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sealfarm_runtime::broker::BrokerLink;
use sealfarm_schemas::topology;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::ops::snapshot::{queue_row, QueueStatus, WorkerStatus};

/// A snapshot is reused for this long (every view and scrape asks).
const FRESH: Duration = Duration::from_secs(2);
/// After the management API failed, the broker protocol is used for this long.
const MANAGEMENT_BACKOFF: Duration = Duration::from_secs(60);

/// Reads queue figures, caching them briefly.
pub struct QueueWatch {
    management: Option<Management>,
    cache: Mutex<Option<(Instant, Vec<QueueStatus>, u64)>>,
    management_failed: std::sync::Mutex<Option<Instant>>,
}

struct Management {
    base: String,
    vhost: String,
    user: String,
    password: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ManagementQueue {
    name: String,
    #[serde(default)]
    messages_ready: u64,
    #[serde(default)]
    messages_unacknowledged: u64,
    #[serde(default)]
    consumers: u32,
    #[serde(default)]
    message_stats: Option<MessageStats>,
}

#[derive(Deserialize)]
struct MessageStats {
    publish_details: Option<Rate>,
    deliver_get_details: Option<Rate>,
}

#[derive(Deserialize)]
struct Rate {
    rate: f64,
}

impl QueueWatch {
    /// `management`: the management API's base URL (`http://host:15672`),
    /// read with the AMQP URL's account; None: the broker protocol only.
    pub fn new(amqp_url: &str, management: Option<&str>) -> Arc<Self> {
        let parsed = reqwest::Url::parse(amqp_url).ok();
        let base = management.map(|m| m.trim_end_matches('/').to_string());
        let management = base.map(|base| {
            let (user, password, vhost) = match &parsed {
                Some(url) => {
                    let decode = percent_decode;
                    let vhost = url.path().trim_start_matches('/');
                    let vhost = if vhost.is_empty() { "/".to_string() } else { decode(vhost) };
                    let user = if url.username().is_empty() { "guest".into() } else { decode(url.username()) };
                    (user, decode(url.password().unwrap_or("guest")), vhost)
                }
                None => ("guest".into(), "guest".into(), "/".into()),
            };
            let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("HTTP client");
            Management { base, vhost, user, password, http }
        });
        Arc::new(QueueWatch { management, cache: Mutex::new(None), management_failed: Default::default() })
    }

    /// Drops the cached figures (a control just changed them).
    pub async fn forget(&self) {
        *self.cache.lock().await = None;
    }

    /// The sealfarm queues (stage queues, the workers' own queues, results
    /// and dead letters) and the number of dead letters waiting.
    pub async fn snapshot(&self, link: &BrokerLink, workers: &[WorkerStatus]) -> (Vec<QueueStatus>, u64) {
        let mut cache = self.cache.lock().await;
        if let Some((at, queues, dead)) = cache.as_ref() {
            if at.elapsed() < FRESH {
                return (queues.clone(), *dead);
            }
        }
        let mut names: Vec<String> = sealfarm_runtime::queues::shared_queues().into_iter().map(|q| q.name).collect();
        // This bridge's results (its copies of events and dead letters are not work).
        names.extend(link.bridge_id().map(topology::bridge_results_queue));
        // Own queues only of workers that take or hold something: a worker
        // that reports no stage has none to look at, and a flood of made-up
        // ids (up to 10,000) must not cost a failed lookup each per refresh.
        let serving = workers.iter().filter(|w| !w.capacity.is_empty() || !w.jobs.is_empty());
        names.extend(serving.map(|w| topology::worker_queue(&w.id)));
        let queues = match self.read_management(&names).await {
            Some(queues) => queues,
            None => read_protocol(link, &names).await,
        };
        let dead = queues.iter().find(|q| q.name == topology::DEAD_LETTER_QUEUE).map_or(0, |q| q.ready);
        *cache = Some((Instant::now(), queues.clone(), dead));
        (queues, dead)
    }

    async fn read_management(&self, names: &[String]) -> Option<Vec<QueueStatus>> {
        let management = self.management.as_ref()?;
        if self.management_failed.lock().unwrap().is_some_and(|at| at.elapsed() < MANAGEMENT_BACKOFF) {
            return None;
        }
        let url = format!(
            "{}/api/queues/{}?columns=name,messages_ready,messages_unacknowledged,consumers,message_stats",
            management.base,
            percent_encode(&management.vhost)
        );
        let answer = async {
            let response = management
                .http
                .get(&url)
                .basic_auth(&management.user, Some(&management.password))
                .send()
                .await?
                .error_for_status()?;
            response.json::<Vec<ManagementQueue>>().await
        };
        match answer.await {
            Ok(listed) => Some(
                names
                    .iter()
                    .map(|name| {
                        let mut row = queue_row(name);
                        if let Some(q) = listed.iter().find(|q| &q.name == name) {
                            row.ready = q.messages_ready;
                            row.unacked = Some(q.messages_unacknowledged);
                            row.consumers = q.consumers;
                            let stats = q.message_stats.as_ref();
                            row.publish_rate =
                                Some(stats.and_then(|s| s.publish_details.as_ref()).map_or(0.0, |r| r.rate));
                            row.deliver_rate =
                                Some(stats.and_then(|s| s.deliver_get_details.as_ref()).map_or(0.0, |r| r.rate));
                        }
                        row
                    })
                    .collect(),
            ),
            Err(err) => {
                tracing::warn!(url = %management.base, error = %err, "RabbitMQ management API unreachable; queue figures from the broker protocol for a minute");
                *self.management_failed.lock().unwrap() = Some(Instant::now());
                None
            }
        }
    }
}

/// Ready messages and consumers by passive declares; a queue that does not
/// exist (yet) shows zeros.
async fn read_protocol(link: &BrokerLink, names: &[String]) -> Vec<QueueStatus> {
    let mut rows: Vec<QueueStatus> = names.iter().map(|n| queue_row(n)).collect();
    let Ok(broker) = link.get().await else { return rows };
    let mut channel = None;
    for row in &mut rows {
        if channel.is_none() {
            channel = broker.connection.create_channel().await.ok();
        }
        let Some(open) = &channel else { break };
        let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        match open.queue_declare(row.name.as_str().into(), options, Default::default()).await {
            Ok(queue) => {
                row.ready = u64::from(queue.message_count());
                row.consumers = queue.consumer_count();
            }
            // A passive declare of a missing queue closes the channel.
            Err(_) => channel = None,
        }
    }
    if let Some(open) = channel {
        let _ = open.close(200, "done".into()).await;
    }
    rows
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_and_credentials_come_from_the_amqp_url() {
        assert_eq!(percent_decode("%2f"), "/");
        assert_eq!(percent_decode("farm%2Fa"), "farm/a");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_encode("/"), "%2F");
        assert!(QueueWatch::new("amqp://sf:p%40ss@rabbit.lan:5672/farm", None).management.is_none());
        let watch = QueueWatch::new("amqp://sf:p%40ss@rabbit.lan:5672/farm", Some("http://rabbit.lan:15672"));
        let management = watch.management.as_ref().unwrap();
        assert_eq!(management.base, "http://rabbit.lan:15672");
        assert_eq!((management.user.as_str(), management.password.as_str()), ("sf", "p@ss"));
        assert_eq!(management.vhost, "farm");
        let watch = QueueWatch::new("amqp://guest:guest@127.0.0.1:5672/%2f", Some("http://mq:15672/"));
        assert_eq!(watch.management.as_ref().unwrap().vhost, "/");
        assert_eq!(watch.management.as_ref().unwrap().base, "http://mq:15672");
    }
}
