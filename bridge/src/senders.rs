//! Who sent a message, and whether they may say it.
//!
//! RabbitMQ refuses a message whose `user_id` property is not the user of
//! the connection that publishes it, so a message that carries `user_id` X
//! was published by someone logged in as X. Every sealfarm process sets it
//! (`sealfarm_runtime::broker`). The bridge takes a worker's heartbeats,
//! claims, progress, releases, results and dead letters only from the
//! broker user bound to that worker id: `--worker-user ID=USER`, else the
//! rule `--worker-user-rule` (`worker-{id}`). A farm on one shared account
//! (a test rig, the demo) works too: the bridge's own user may speak for any
//! worker, since whoever holds that account could do anything anyway.
//!
//! A worker's `files_url` is where the bridge sends the files token when
//! the miner fetches a sector from it, so it is taken only inside the
//! networks the operator allows (`--worker-networks`).
//!
//! A result must also come from whoever received its attempt's task: each
//! task is published with an `attempt_token`, a MAC of its call and attempt
//! under a key only the bridge has (`attempt-key` in its state directory),
//! and the result must hand it back. A worker account can then return
//! results only for the tasks it was given, not for any open call.
//!
//! What is refused is logged with its reason and counted in
//! `sealfarm_refused_messages_total{kind, reason}`.

use std::collections::HashMap;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use ipnet::IpNet;
use lapin::message::Delivery;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sealfarm_runtime::metrics::Labels;
use sealfarm_schemas::{ResultMessage, TaskMessage};

/// The networks a worker's file server may be in unless told otherwise:
/// loopback, the private ranges (RFC 1918, carrier-grade NAT, IPv6 ULA) and
/// link-local, where a farm's machines live.
pub const DEFAULT_WORKER_NETWORKS: &str =
    "127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,169.254.0.0/16,::1/128,fc00::/7,fe80::/10";

/// How worker ids map to broker users.
#[derive(Clone, Debug)]
pub struct WorkerUsers {
    /// The bridge's own broker user.
    pub bridge_user: String,
    /// A user name with `{id}` for the worker id.
    pub rule: String,
    /// Explicit bindings, worker id → user (they win over the rule).
    pub bound: HashMap<String, String>,
}

impl WorkerUsers {
    /// The broker user that may speak for `worker`.
    pub fn user_of(&self, worker: &str) -> String {
        match self.bound.get(worker) {
            Some(user) => user.clone(),
            None => self.rule.replace("{id}", worker),
        }
    }
}

/// Why a message was refused: the metric's `reason` label and the log's words.
#[derive(Debug)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// The bridge's checks of who sent what.
pub struct Senders {
    pub users: WorkerUsers,
    /// The key of the attempt tokens.
    attempt_key: Vec<u8>,
    pub networks: Vec<IpNet>,
    /// `sealfarm_refused_messages_total{kind, reason}`.
    pub refused: Family<Labels, Counter>,
    /// This bridge's id, stamped on every task: the routing key its result
    /// comes back with.
    bridge_id: Option<String>,
}

impl Senders {
    pub fn new(users: WorkerUsers, attempt_key: &str, networks: Vec<IpNet>, refused: Family<Labels, Counter>) -> Self {
        Senders { users, attempt_key: attempt_key.as_bytes().to_vec(), networks, refused, bridge_id: None }
    }

    /// The same, for the bridge `id`: its tasks name it.
    pub fn for_bridge(self, id: &str) -> Self {
        Senders { bridge_id: Some(id.to_string()), ..self }
    }

    /// The token of one attempt of one call.
    fn token(&self, call_id: uuid::Uuid, attempt: u32) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.attempt_key).expect("HMAC takes any key");
        mac.update(call_id.as_bytes());
        mac.update(&attempt.to_be_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// `task` as it is published: with its attempt's token and this bridge's id.
    pub fn stamped(&self, task: &TaskMessage) -> TaskMessage {
        TaskMessage {
            attempt_token: Some(self.token(task.call_id, task.attempt)),
            bridge: self.bridge_id.clone(),
            ..task.clone()
        }
    }

    /// Whether `token` is the one handed out with that attempt's task.
    fn holds(&self, call_id: uuid::Uuid, attempt: u32, token: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        let expected = self.token(call_id, attempt);
        token.is_some_and(|t| bool::from(t.as_bytes().ct_eq(expected.as_bytes())))
    }

    /// A result: from the broker user of the worker it names, carrying the
    /// token of the attempt it answers.
    pub fn check_result(&self, delivery: &Delivery, result: &ResultMessage) -> Result<(), Refusal> {
        self.check_worker(delivery, &result.worker)?;
        if !self.holds(result.call_id, result.attempt, result.attempt_token.as_deref()) {
            return Err(Refusal {
                reason: "not_the_holder",
                detail: format!(
                    "worker {} sent a result for attempt {} of call {} without that attempt's token (it was never \
                     handed that task)",
                    result.worker, result.attempt, result.call_id
                ),
            });
        }
        Ok(())
    }

    /// A task a worker dead-lettered: from that worker's user, and a task it was handed.
    pub fn check_dead_letter(&self, delivery: &Delivery, worker: &str, task: &TaskMessage) -> Result<(), Refusal> {
        self.check_worker(delivery, worker)?;
        if !self.holds(task.call_id, task.attempt, task.attempt_token.as_deref()) {
            return Err(Refusal {
                reason: "not_the_holder",
                detail: format!(
                    "worker {worker} dead-lettered attempt {} of call {} without that attempt's token",
                    task.attempt, task.call_id
                ),
            });
        }
        Ok(())
    }

    /// Checks that `delivery` was published by the broker user of `worker`
    /// (or by the bridge's own user).
    pub fn check_worker(&self, delivery: &Delivery, worker: &str) -> Result<(), Refusal> {
        let Some(publisher) = sealfarm_runtime::broker::publisher(delivery) else {
            return Err(Refusal {
                reason: "no_user_id",
                detail: format!("a message for worker {worker} carries no user_id (sealfarm always sets it)"),
            });
        };
        let expected = self.users.user_of(worker);
        if publisher == expected || publisher == self.users.bridge_user {
            return Ok(());
        }
        Err(Refusal {
            reason: "wrong_user",
            detail: format!(
                "broker user {publisher:?} spoke for worker {worker}, which only {expected:?} may \
                 (--worker-user {worker}={publisher} binds them if that is right)"
            ),
        })
    }

    /// Checks that `delivery` was published by the bridge's own user: the
    /// broker dead-lettering one of this bridge's tasks keeps its user_id.
    pub fn is_bridge(&self, delivery: &Delivery) -> bool {
        sealfarm_runtime::broker::publisher(delivery) == Some(self.users.bridge_user.as_str())
    }

    /// Checks that a worker's file server address lies inside the allowed networks.
    pub async fn check_files_url(&self, worker: &str, url: &str) -> Result<(), Refusal> {
        let refuse = |detail: String| Refusal { reason: "files_url", detail };
        let parsed =
            reqwest::Url::parse(url).map_err(|e| refuse(format!("worker {worker}: files_url {url:?}: {e}")))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addresses: Vec<IpAddr> = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => vec![ip.into()],
            Some(url::Host::Ipv6(ip)) => vec![ip.into()],
            Some(url::Host::Domain(name)) => match tokio::net::lookup_host((name, port)).await {
                Ok(found) => found.map(|a| a.ip()).collect(),
                Err(e) => {
                    return Err(refuse(format!("worker {worker}: files_url host {name:?} does not resolve: {e}")))
                }
            },
            None => return Err(refuse(format!("worker {worker}: files_url {url:?} names no host"))),
        };
        if addresses.is_empty() {
            return Err(refuse(format!("worker {worker}: files_url {url:?} resolves to no address")));
        }
        if let Some(outside) = addresses.iter().find(|ip| !self.networks.iter().any(|n| n.contains(*ip))) {
            return Err(refuse(format!(
                "worker {worker}: files_url {url} is at {outside}, outside the networks allowed for workers \
                 (--worker-networks)"
            )));
        }
        Ok(())
    }

    /// Logs and counts a refused message of `kind` (result, event, dead_letter).
    pub fn refuse(&self, kind: &str, refusal: &Refusal) {
        tracing::warn!(kind, reason = refusal.reason, "{}; message refused", refusal.detail);
        self.refused.get_or_create(&vec![("kind", kind.to_string()), ("reason", refusal.reason.to_string())]).inc();
    }
}

/// Parses `--worker-networks`: CIDR blocks (`10.0.0.0/8`) or single addresses.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a network (e.g. 10.0.0.0/8) or an address"))
}

/// Parses `--worker-user ID=USER`.
pub fn parse_binding(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((id, user)) if !id.trim().is_empty() && !user.trim().is_empty() => {
            Ok((id.trim().to_string(), user.trim().to_string()))
        }
        _ => Err(format!("{text:?}: expected WORKER_ID=BROKER_USER")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn senders() -> Senders {
        let users = WorkerUsers {
            bridge_user: "sealfarm-bridge".into(),
            rule: "worker-{id}".into(),
            bound: [("gpu-7".to_string(), "prover".to_string())].into(),
        };
        let networks = DEFAULT_WORKER_NETWORKS.split(',').map(|n| parse_network(n).unwrap()).collect();
        Senders::new(users, "a key of the tests", networks, Family::default())
    }

    #[test]
    fn a_worker_id_maps_to_its_bound_user_or_the_rule() {
        let s = senders();
        assert_eq!(s.users.user_of("w1"), "worker-w1");
        assert_eq!(s.users.user_of("gpu-7"), "prover");
    }

    #[tokio::test]
    async fn files_urls_outside_the_allowed_networks_are_refused() {
        let s = senders();
        for inside in ["http://10.1.2.3:3457", "http://192.168.0.9:80/", "http://127.0.0.1:1", "http://[fd00::1]:3457"]
        {
            assert!(s.check_files_url("w", inside).await.is_ok(), "{inside}");
        }
        for outside in ["http://8.8.8.8:3457", "http://[2001:db8::1]:1", "not a url", "http://172.32.0.1:3457"] {
            let refusal = s.check_files_url("w", outside).await.expect_err(outside);
            assert_eq!(refusal.reason, "files_url");
        }
        assert!(s.check_files_url("w", "http://localhost:3457").await.is_ok(), "a name is resolved");
    }

    #[test]
    fn an_attempt_token_is_the_bridges_and_names_one_attempt_of_one_call() {
        let s = senders();
        let sector = sealfarm_schemas::SectorRef {
            id: sealfarm_schemas::SectorId { miner: 1000, number: 1 },
            proof_type: sealfarm_schemas::RegisteredSealProof::STACKED_DRG_2KIB_V1_1,
        };
        let task = TaskMessage::new(sector, sealfarm_schemas::Task::Fin {});
        let stamped = s.stamped(&task);
        let token = stamped.attempt_token.as_deref();
        assert!(s.holds(task.call_id, task.attempt, token));
        assert!(!s.holds(task.call_id, task.attempt + 1, token), "another attempt");
        assert!(!s.holds(uuid::Uuid::new_v4(), task.attempt, token), "another call");
        assert!(!s.holds(task.call_id, task.attempt, None), "no token");
        let other = Senders::new(s.users.clone(), "another bridge's key", vec![], Family::default());
        assert!(!other.holds(task.call_id, task.attempt, token), "another key");
    }

    #[test]
    fn bindings_and_networks_are_checked_when_parsed() {
        assert_eq!(parse_binding("w1=alice").unwrap(), ("w1".to_string(), "alice".to_string()));
        assert!(parse_binding("w1").is_err());
        assert!(parse_network("10.0.0.0/8").is_ok());
        assert!(parse_network("10.0.0.7").is_ok());
        assert!(parse_network("ten").is_err());
    }
}
