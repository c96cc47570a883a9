//! The bridge's Prometheus metrics (`GET /metrics`, no token: nothing in it
//! is secret). Counters and histograms are updated where things happen;
//! gauges of the farm's state (calls per state, workers, queues, running
//! PC1s, ticket headroom) are filled from the status snapshot at each scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sealfarm_schemas::metrics::{histograms, Histograms, Labels, NamedRegistry};

use crate::ops::snapshot::Overview;

/// Label pairs of one series.
pub(crate) type FloatGauge = Gauge<f64, AtomicU64>;

/// Everything the bridge exports.
pub struct Metrics {
    registry: NamedRegistry,
    pub calls_accepted: Family<Labels, Counter>,
    calls: Family<Labels, Gauge>,
    pub results: Family<Labels, Counter>,
    pub stage_duration: Histograms,
    pub queue_wait: Histograms,
    pub redispatches: Family<Labels, Counter>,
    pub lease_expiries: Counter,
    pub dead_letters: Family<Labels, Counter>,
    dead_letters_waiting: Gauge,
    pc1_layers_done: Family<Labels, Gauge>,
    pc1_layers: Family<Labels, Gauge>,
    job_since_progress: Family<Labels, FloatGauge>,
    ticket_headroom: Family<Labels, FloatGauge>,
    pub return_latency: Histograms,
    pub return_failures: Family<Labels, Counter>,
    miner_up: Gauge,
    miner_last_contact: FloatGauge,
    worker_up: Family<Labels, Gauge>,
    worker_heartbeat_age: Family<Labels, FloatGauge>,
    worker_draining: Family<Labels, Gauge>,
    worker_warming: Family<Labels, Gauge>,
    worker_cores: Family<Labels, Gauge>,
    worker_memory: Family<Labels, Gauge>,
    worker_memory_used: Family<Labels, Gauge>,
    worker_gpus: Family<Labels, Gauge>,
    worker_slots: Family<Labels, Gauge>,
    worker_jobs: Family<Labels, Gauge>,
    queue_messages: Family<Labels, Gauge>,
    queue_consumers: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = NamedRegistry::new("sealfarm");
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
            registry,
        }
    }

    /// The text exposition, with the state gauges taken from `overview`.
    /// Every sample name these metrics can expose.
    pub fn names(&self) -> &[String] {
        self.registry.names()
    }

    pub(crate) fn render(&self, overview: &Overview) -> String {
        self.fill(overview);
        self.registry.encode()
    }

    fn fill(&self, overview: &Overview) {
        let now = overview.bridge.now_ms;
        let secs = |ms: u64| ms as f64 / 1000.0;
        for family in [
            &self.calls,
            &self.pc1_layers_done,
            &self.pc1_layers,
            &self.worker_up,
            &self.worker_draining,
            &self.worker_warming,
            &self.worker_cores,
            &self.worker_memory,
            &self.worker_memory_used,
            &self.worker_gpus,
            &self.worker_slots,
            &self.worker_jobs,
            &self.queue_messages,
            &self.queue_consumers,
        ] {
            family.clear();
        }
        self.job_since_progress.clear();
        self.ticket_headroom.clear();
        self.worker_heartbeat_age.clear();

        for (stage, state, count) in overview.call_counts() {
            self.calls.get_or_create(&vec![("stage", stage), ("state", state.to_string())]).set(count as i64);
        }
        for job in overview.jobs.iter().filter(|j| j.is_open()) {
            if let Some(deadline) = job.ticket_deadline_ms {
                let labels = vec![("sector", job.sector_name()), ("call_id", job.call_id.to_string())];
                self.ticket_headroom.get_or_create(&labels).set((deadline as f64 - now as f64) / 1000.0);
            }
        }
        for worker in &overview.workers {
            let id = || ("worker", worker.id.clone());
            self.worker_up
                .get_or_create(&vec![id(), ("hostname", worker.hostname.clone())])
                .set(i64::from(worker.state != "gone"));
            self.worker_heartbeat_age.get_or_create(&vec![id()]).set(secs(worker.last_seen_ms_ago));
            self.worker_draining.get_or_create(&vec![id()]).set(i64::from(worker.state == "draining"));
            self.worker_warming.get_or_create(&vec![id()]).set(i64::from(!worker.warming.is_empty()));
            if let Some(hardware) = &worker.hardware {
                self.worker_cores.get_or_create(&vec![id()]).set(hardware.cores as i64);
                self.worker_memory.get_or_create(&vec![id()]).set(hardware.memory_bytes as i64);
                self.worker_memory_used.get_or_create(&vec![id()]).set(hardware.memory_used_bytes as i64);
                self.worker_gpus.get_or_create(&vec![id()]).set(hardware.gpus().count() as i64);
            }
            for slots in &worker.capacity {
                let labels =
                    vec![id(), ("stage", slots.stage.to_string()), ("sector_size", slots.sector_size.to_string())];
                self.worker_slots.get_or_create(&labels).set(i64::from(slots.slots));
            }
            for job in &worker.jobs {
                self.worker_jobs.get_or_create(&vec![id(), ("stage", job.stage.to_string())]).inc();
                let size = job
                    .sector_ref
                    .and_then(|s| s.proof_type.info())
                    .map_or("unknown".into(), |i| i.sector_size.to_string());
                let sector = job.sector.name();
                let labels = vec![
                    id(),
                    ("stage", job.stage.to_string()),
                    ("sector_size", size),
                    ("sector", sector.clone()),
                    ("call_id", job.call_id.to_string()),
                ];
                let since = job.last_progress_ms.max(job.started_at_ms);
                self.job_since_progress.get_or_create(&labels).set(secs(now.saturating_sub(since)));
                if let Some(progress) = job.progress.as_ref().filter(|p| p.step == "layer") {
                    let labels = vec![id(), ("sector", sector)];
                    self.pc1_layers_done.get_or_create(&labels).set(progress.done as i64);
                    self.pc1_layers.get_or_create(&labels).set(progress.total as i64);
                }
            }
        }
        for queue in &overview.queues {
            let mut labels = vec![("queue", queue.name.clone())];
            if let (Some(stage), Some(size)) = (queue.stage, queue.sector_size) {
                labels.extend(stage_size(stage, size));
            }
            self.queue_messages.get_or_create(&labels).set(queue.ready as i64);
            self.queue_consumers.get_or_create(&labels).set(i64::from(queue.consumers));
        }
        self.dead_letters_waiting.set(overview.dead_letters as i64);
        let miner = &overview.bridge.miner;
        self.miner_up.set(i64::from(miner.up));
        if let Some(ok) = miner.last_ok_ms {
            self.miner_last_contact.set(secs(now.saturating_sub(ok)));
        }
    }
}

/// Labels of a stage and sector size.
pub(crate) fn stage_size(stage: impl ToString, size: impl ToString) -> Labels {
    vec![("stage", stage.to_string()), ("sector_size", size.to_string())]
}
