//! A worker's Prometheus metrics (`GET /metrics` on `--metrics-listen`):
//! jobs by outcome, their durations and queue waits, redeliveries, dead
//! letters, executor restarts, and gauges of what the machine holds now
//! (running jobs, slots, PC1 layers, memory, threads, GPUs, free space).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sealfarm_runtime::metrics::{histograms, Histograms, Labels, NamedRegistry};
use sealfarm_runtime::shutdown::Shutdown;
use sealfarm_schemas::hardware::Hardware;
use sealfarm_schemas::messages::{ResourceUse, RunningJob, StageSlots, TaskMessage};
use sealfarm_schemas::{SectorRef, Stage};

/// The labels of a task's stage and sector size.
pub fn of_task(task: &TaskMessage) -> Labels {
    let size = task.sector.proof_type.info().map_or("unknown".to_string(), |i| i.sector_size.to_string());
    vec![("stage", task.stage().to_string()), ("sector_size", size), ("miner", miner(&task.sector))]
}

/// The miner a job is for (`t0<actor>`): a worker serves every miner of the farm.
fn miner(sector: &SectorRef) -> String {
    format!("t0{}", sector.id.miner)
}

/// What the gauges are filled from at each scrape.
pub struct Now {
    pub running: Vec<RunningJob>,
    pub capacity: Vec<StageSlots>,
    pub draining: bool,
    /// The warm-up is not over yet.
    pub warming: bool,
    pub hardware: Hardware,
    pub in_use: ResourceUse,
}

pub struct Metrics {
    registry: NamedRegistry,
    jobs: Family<Labels, Counter>,
    pub job_duration: Histograms,
    pub queue_wait: Histograms,
    pub redeliveries: Family<Labels, Counter>,
    pub refused_controls: Family<Labels, Counter>,
    pub dead_lettered: Family<Labels, Counter>,
    pub executor_restarts: Family<Labels, Counter>,
    running_jobs: Family<Labels, Gauge>,
    slots: Family<Labels, Gauge>,
    draining: Gauge,
    warming: Gauge,
    pub warm_up_seconds: Gauge<f64, AtomicU64>,
    pc1_layers_done: Family<Labels, Gauge>,
    pc1_layers: Family<Labels, Gauge>,
    cpu_cores: Gauge,
    memory: Gauge,
    memory_used: Gauge,
    threads_in_use: Gauge,
    memory_reserved: Gauge,
    gpus_in_use: Gauge<f64, AtomicU64>,
    storage_available: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = NamedRegistry::new("sealfarm_worker");
        macro_rules! metric {
            ($name:literal, $help:literal, $metric:expr) => {
                registry.add($name, $help, $metric)
            };
        }
        Metrics {
            jobs: metric!(
                "jobs",
                "Jobs that ended here, by stage, size and outcome (done, failed, superseded, released)",
                Family::default()
            ),
            job_duration: metric!("job_duration_seconds", "Time a job computed", histograms()),
            queue_wait: metric!(
                "queue_wait_seconds",
                "Time from the miner's call to this worker's claim",
                histograms()
            ),
            redeliveries: metric!(
                "redeliveries",
                "Deliveries the broker had handed out before (a consumer died or gave them back)",
                Family::default()
            ),
            refused_controls: metric!(
                "refused_controls",
                "Control messages refused, by reason (not_the_bridge: another broker user sent it; \
                 not_own_queue: it came on a stage queue)",
                Family::default()
            ),
            dead_lettered: metric!("dead_lettered", "Messages this worker dead-lettered, by reason", Family::default()),
            executor_restarts: metric!(
                "executor_restarts",
                "Runs of a job after a run that ended without a result",
                Family::default()
            ),
            running_jobs: metric!("running_jobs", "Jobs computing now", Family::default()),
            slots: metric!("slots", "Jobs of a stage and size this worker runs at once", Family::default()),
            draining: metric!("draining", "1 while the operator has this worker drained", Gauge::default()),
            warming: metric!(
                "warming",
                "1 while the warm-up runs (its GPU stages are not taken yet)",
                Gauge::default()
            ),
            warm_up_seconds: metric!("warm_up_seconds", "How long the warm-up took", Gauge::default()),
            pc1_layers_done: metric!("pc1_layers_done", "Finished SDR layers of each running PC1", Family::default()),
            pc1_layers: metric!("pc1_layers", "SDR layers of each running PC1, in all", Family::default()),
            cpu_cores: metric!("cpu_cores", "Logical CPUs", Gauge::default()),
            memory: metric!("memory_bytes", "Physical memory", Gauge::default()),
            memory_used: metric!("memory_used_bytes", "Memory in use on the machine", Gauge::default()),
            threads_in_use: metric!("threads_in_use", "Threads the running jobs hold", Gauge::default()),
            memory_reserved: metric!("memory_reserved_bytes", "Memory the running jobs hold", Gauge::default()),
            gpus_in_use: metric!("gpus_in_use", "GPUs the running jobs hold", Gauge::default()),
            storage_available: metric!(
                "storage_available_bytes",
                "Free space of the sealing path and the state directory",
                Family::default()
            ),
            registry,
        }
    }

    /// A job of `stage` for `sector` ended here with `outcome`.
    pub fn job_ended(&self, stage: Stage, sector: &SectorRef, outcome: &str) {
        let size = sector.proof_type.info().map_or("unknown".to_string(), |i| i.sector_size.to_string());
        let labels = vec![
            ("stage", stage.to_string()),
            ("sector_size", size),
            ("outcome", outcome.to_string()),
            ("miner", miner(sector)),
        ];
        self.jobs.get_or_create(&labels).inc();
    }

    /// Every sample name these metrics can expose.
    pub fn names(&self) -> &[String] {
        self.registry.names()
    }

    pub fn render(&self, now: &Now) -> String {
        for family in
            [&self.running_jobs, &self.slots, &self.pc1_layers_done, &self.pc1_layers, &self.storage_available]
        {
            family.clear();
        }
        for job in now.running.iter().filter(|j| j.running_since_ms.is_some()) {
            let size = job.sector.proof_type.info().map_or("unknown".to_string(), |i| i.sector_size.to_string());
            self.running_jobs.get_or_create(&vec![("stage", job.stage.to_string()), ("sector_size", size)]).inc();
            if let Some(progress) = job.progress.as_ref().filter(|p| p.step == "layer") {
                let labels = vec![("sector", job.sector.id.file_name())];
                self.pc1_layers_done.get_or_create(&labels).set(progress.done as i64);
                self.pc1_layers.get_or_create(&labels).set(progress.total as i64);
            }
        }
        for c in &now.capacity {
            let labels = vec![("stage", c.stage.to_string()), ("sector_size", c.sector_size.to_string())];
            self.slots.get_or_create(&labels).set(i64::from(c.slots));
        }
        self.draining.set(i64::from(now.draining));
        self.warming.set(i64::from(now.warming));
        self.cpu_cores.set(now.hardware.cores as i64);
        self.memory.set(now.hardware.memory_bytes as i64);
        self.memory_used.set(now.hardware.memory_used_bytes as i64);
        for space in &now.hardware.storage {
            let labels = vec![("path", space.path.display().to_string())];
            self.storage_available.get_or_create(&labels).set(space.available_bytes as i64);
        }
        self.threads_in_use.set(now.in_use.threads as i64);
        self.memory_reserved.set(now.in_use.memory_bytes as i64);
        self.gpus_in_use.set(now.in_use.gpus);
        self.registry.encode()
    }
}

/// Serves `GET /metrics` on `listener` until shutdown; `now` gives the gauges' state.
pub fn serve(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    now: impl Fn() -> Now + Send + Sync + 'static,
    shutdown: Shutdown,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener).context("metrics listener")?;
    let now = Arc::new(now);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, now) = (metrics.clone(), now.clone());
            async move {
                let text = tokio::task::spawn_blocking(move || metrics.render(&now())).await.unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, sealfarm_runtime::metrics::CONTENT_TYPE)], text)
            }
        }),
    );
    crate::files::spawn_server(listener, app, shutdown, "metrics server");
    Ok(())
}
