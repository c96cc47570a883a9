//! The bridge's Prometheus metrics (`GET /metrics`, no token: nothing in it
//! is secret). Counters and histograms are updated where things happen;
//! gauges of the farm's state (calls per state, workers, queues, running
//! PC1s, ticket headroom) are filled from the status snapshot at each scrape
//! ([`super::exposition`]: this module knows nothing of the snapshot, so
//! the code that counts does not depend on the views).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sealfarm_runtime::metrics::{histograms, Histograms, Labels, NamedRegistry};

/// Label pairs of one series.
pub(crate) type FloatGauge = Gauge<f64, AtomicU64>;

/// Everything the bridge exports.
pub struct Metrics {
    pub(super) registry: NamedRegistry,
    pub calls_accepted: Family<Labels, Counter>,
    pub(super) calls: Family<Labels, Gauge>,
    pub results: Family<Labels, Counter>,
    pub stage_duration: Histograms,
    pub queue_wait: Histograms,
    pub redispatches: Family<Labels, Counter>,
    pub lease_expiries: Counter,
    pub dead_letters: Family<Labels, Counter>,
    pub(super) dead_letters_waiting: Gauge,
    pub(super) pc1_layers_done: Family<Labels, Gauge>,
    pub(super) pc1_layers: Family<Labels, Gauge>,
    pub(super) job_since_progress: Family<Labels, FloatGauge>,
    pub(super) ticket_headroom: Family<Labels, FloatGauge>,
    pub return_latency: Histograms,
    pub return_failures: Family<Labels, Counter>,
    pub(super) miner_up: Gauge,
    pub(super) miner_last_contact: FloatGauge,
    pub(super) worker_up: Family<Labels, Gauge>,
    pub(super) worker_heartbeat_age: Family<Labels, FloatGauge>,
    pub(super) worker_draining: Family<Labels, Gauge>,
    pub(super) worker_warming: Family<Labels, Gauge>,
    pub(super) worker_cores: Family<Labels, Gauge>,
    pub(super) worker_memory: Family<Labels, Gauge>,
    pub(super) worker_memory_used: Family<Labels, Gauge>,
    pub(super) worker_gpus: Family<Labels, Gauge>,
    pub(super) worker_slots: Family<Labels, Gauge>,
    pub(super) worker_jobs: Family<Labels, Gauge>,
    pub(super) queue_messages: Family<Labels, Gauge>,
    pub(super) queue_held: Family<Labels, Gauge>,
    pub(super) queue_consumers: Family<Labels, Gauge>,
    pub refused_messages: Family<Labels, Counter>,
    pub undecodable_messages: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::for_miner(None)
    }

    /// The metrics of the bridge of one miner: every series carries
    /// `miner="<bridge id>"`, so one Prometheus sums or splits a farm's miners.
    pub fn for_miner(miner: Option<&str>) -> Self {
        let mut registry = match miner {
            Some(miner) => NamedRegistry::with_labels("sealfarm", &[("miner", miner.to_string())]),
            None => NamedRegistry::new("sealfarm"),
        };
        macro_rules! metric {
            ($name:literal, $help:literal, $metric:expr) => {
                registry.add($name, $help, $metric)
            };
        }
        Metrics {
            calls_accepted: metric!("calls_accepted", "Calls accepted from the miner, by stage", Family::default()),
            calls: metric!(
                "calls",
                "Calls by stage and state: the open ones and those closed within the last hour",
                Family::default()
            ),
            results: metric!("results", "Results of calls, by stage and outcome (done, failed)", Family::default()),
            stage_duration: metric!("stage_duration_seconds", "Time a worker computed a stage", histograms()),
            queue_wait: metric!("queue_wait_seconds", "Time from a call's arrival to a worker's claim", histograms()),
            redispatches: metric!(
                "redispatches",
                "Tasks dispatched again, by stage and reason (lease_expired, released, worker_gone, operator)",
                Family::default()
            ),
            lease_expiries: metric!("lease_expiries", "Leases that expired (a worker went silent)", Counter::default()),
            refused_messages: metric!(
                "refused_messages",
                "Messages refused because of who sent them, by kind (result, event, dead_letter) and reason \
                 (no_user_id, wrong_user, not_the_holder, files_url)",
                Family::default()
            ),
            undecodable_messages: metric!(
                "undecodable_messages",
                "Messages the bridge could not decode, dead-lettered with their reason, by queue and reason \
                 (malformed, unsupported-schema)",
                Family::default()
            ),
            dead_letters: metric!("dead_letters", "Tasks the farm dead-lettered, by stage", Family::default()),
            dead_letters_waiting: metric!(
                "dead_letters_waiting",
                "Messages waiting in sealfarm.dead-letters for an operator",
                Gauge::default()
            ),
            pc1_layers_done: metric!("pc1_layers_done", "Finished SDR layers of each running PC1", Family::default()),
            pc1_layers: metric!("pc1_layers", "SDR layers of each running PC1, in all", Family::default()),
            job_since_progress: metric!(
                "job_since_progress_seconds",
                "Seconds since a held job started or last reported progress",
                Family::default()
            ),
            ticket_headroom: metric!(
                "pc1_ticket_headroom_seconds",
                "Seconds left before the ticket of an open PC1 call is too old to land on chain",
                Family::default()
            ),
            return_latency: metric!(
                "return_latency_seconds",
                "Time from a result to the miner accepting its Return",
                histograms()
            ),
            return_failures: metric!(
                "return_failures",
                "Return calls the miner did not accept (retried), by method",
                Family::default()
            ),
            miner_up: metric!("miner_up", "1 while the last call to the miner got an answer", Gauge::default()),
            miner_last_contact: metric!(
                "miner_last_contact_seconds",
                "Seconds since a call to the miner last got an answer",
                FloatGauge::default()
            ),
            worker_up: metric!(
                "farm_worker_up",
                "1 while a worker's heartbeats arrive within the lease timeout",
                Family::default()
            ),
            worker_heartbeat_age: metric!(
                "farm_worker_heartbeat_age_seconds",
                "Seconds since a worker's last heartbeat",
                Family::default()
            ),
            worker_draining: metric!("farm_worker_draining", "1 while a worker is drained", Family::default()),
            worker_warming: metric!(
                "farm_worker_warming",
                "1 while a worker warms up (its GPU stages are not taken yet)",
                Family::default()
            ),
            worker_cores: metric!("farm_worker_cores", "CPU cores of a worker", Family::default()),
            worker_memory: metric!("farm_worker_memory_bytes", "Memory of a worker", Family::default()),
            worker_memory_used: metric!(
                "farm_worker_memory_used_bytes",
                "Memory in use on a worker's machine",
                Family::default()
            ),
            worker_gpus: metric!("farm_worker_gpus", "GPUs of a worker", Family::default()),
            worker_slots: metric!(
                "farm_worker_slots",
                "Jobs of a stage and size a worker runs at once",
                Family::default()
            ),
            worker_jobs: metric!("farm_worker_jobs", "Jobs a worker holds, by stage", Family::default()),
            queue_messages: metric!(
                "queue_messages",
                "Ready messages in a sealfarm queue (stage queues also carry stage and sector_size)",
                Family::default()
            ),
            queue_consumers: metric!("queue_consumers", "Consumers of a sealfarm queue", Family::default()),
            queue_held: metric!(
                "queue_held",
                "This miner's calls for a stage queue held in the bridge beyond its --fair-share: its backlog \
                 beyond what the queue shows",
                Family::default()
            ),
            registry,
        }
    }

    /// Every sample name these metrics can expose.
    pub fn names(&self) -> &[String] {
        self.registry.names()
    }
}

/// Labels of a stage and sector size.
pub(crate) fn stage_size(stage: impl ToString, size: impl ToString) -> Labels {
    vec![("stage", stage.to_string()), ("sector_size", size.to_string())]
}
