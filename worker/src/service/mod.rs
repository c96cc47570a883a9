//! The worker service: consume the stage queues this worker serves, claim
//! each task durably, run it, publish its result.
//!
//! Life of a task here (docs/ARCHITECTURE.md, "The life of a call"):
//! 1. a delivery arrives on a stage queue or on this worker's own queue;
//! 2. it is parsed and checked — a task that can never run is dead-lettered
//!    with a readable reason (and, when its call is known, a failed result is
//!    published so the miner hears of it); other jobs are unaffected;
//! 3. it waits for a free slot, is written to the job store (fsync) and only
//!    then acknowledged: the worker has claimed it;
//! 4. the proof runs in the executor process (`crate::sealing::executor`);
//!    a panic of the library fails only this job;
//! 5. the result is stored, published with a confirm, and the job is marked
//!    done. A result the broker never confirmed is republished at restart.
//!
//! A lost broker connection is re-established with backoff; running jobs go
//! on and publish once it is back. SIGTERM stops consuming, lets running jobs
//! finish within the grace period, and leaves the rest claimed for the next
//! start.
//!
//! Here: [`WorkerConfig`], the `Worker` and [`run`]. The `Worker`'s methods
//! live beside it, one concern a file: `intake` (steps 1-3, dead letters),
//! `running` (4-5, reruns, giving up), `checkpoints` (PC1 layers),
//! `heartbeat`, `control` (supersede, drain, resume, release), `warm_up`
//! and `simulated` (`--simulate-compute`). A job's lifecycle is [`job`], its
//! durable record [`job_store`].

pub mod job;
pub mod job_store;

mod checkpoints;
mod control;
mod heartbeat;
mod intake;
mod running;
mod simulated;
mod warm_up;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use sealfarm_runtime::broker::{BrokerLink, Role};
use sealfarm_runtime::retry::{self, Backoff};
use sealfarm_runtime::shutdown::Shutdown;
use sealfarm_schemas::hardware::Hardware;
use sealfarm_schemas::messages::StageSlots;
use sealfarm_schemas::topology;
use sealfarm_schemas::{EventKind, EventMessage, SectorSize, Stage, TaskMessage};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use self::job::Held;
use self::job_store::{JobState, JobStore};
use crate::files::FilesConfig;
use crate::placement::budget::{Budget, Need};
use crate::sealing::executor::Executor;
use crate::sealing::layout::SealingPath;

/// Everything a worker needs to know to run.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub worker_id: String,
    pub hostname: String,
    pub broker: sealfarm_runtime::broker::BrokerConfig,
    /// The bridges' broker users, whose control messages are obeyed (none
    /// given: this worker's own).
    pub bridge_users: Vec<String>,
    pub sealing: SealingPath,
    /// The id of the sealing path (its `sectorstore.json`).
    pub storage_id: String,
    pub state_dir: PathBuf,
    /// Each stage and sector size this worker takes, with its slots (jobs at once).
    pub capacity: Vec<StageSlots>,
    /// What one job of each stage and size takes from the machine while it runs.
    pub needs: BTreeMap<(Stage, SectorSize), Need>,
    /// The probe at start; memory in use and free space are refreshed for each heartbeat.
    pub hardware: Hardware,
    /// Worker-local storage: the file server. None: shared storage.
    pub files: Option<FilesConfig>,
    /// The bridges' blob and piece paths (`--bridge`, `--worker-token`):
    /// C2 inputs, C1 outputs and piece data travel there, never on the broker.
    pub bridges: crate::transfer::bridge_client::Bridges,
    /// How long the records of ended jobs are kept (`--retain-done`).
    pub retain_done: Duration,
    pub heartbeat_interval: Duration,
    /// How long SIGTERM waits for running jobs before stopping them.
    pub shutdown_grace: Duration,
    /// What happens to jobs still running when the grace period ends.
    pub on_stop: OnStop,
    /// BENCHMARK ONLY (`--simulate-compute`): no proof is computed; an
    /// AddPiece answers at once with a placeholder piece, every other stage
    /// fails. Measures the farm's own cost (dispatch, broker, bridge).
    pub simulate_compute: bool,
    /// Where `/metrics` is served (bound already, so the start-up table
    /// shows the real port); None: no metrics endpoint.
    pub metrics_listener: Option<Arc<std::net::TcpListener>>,
    /// Wait before the second run of a job whose run ended without a result;
    /// doubled for each further run.
    pub retry_backoff: Duration,
    /// What the executor seals before this worker takes its GPU stages
    /// (`crate::sealing::warm_up`); None: they start at once.
    pub warm_up: Option<crate::sealing::warm_up::Plan>,
}

/// What a stopping worker does with the jobs it still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStop {
    /// Keep them claimed; they resume (PC1 from its last finished layer) when
    /// this worker starts again. The bridge re-dispatches them only if the
    /// worker stays away longer than the lease.
    Resume,
    /// Give them back to the bridge, which dispatches them again at once.
    Redispatch,
}

impl WorkerConfig {
    /// The queues this worker consumes: one per stage and size it takes, and its own.
    pub fn queues(&self) -> Vec<String> {
        let mut queues: Vec<String> =
            self.capacity.iter().map(|c| topology::task_queue(c.stage, c.sector_size)).collect();
        queues.push(topology::worker_queue(&self.worker_id));
        queues
    }

    /// The slots of a stage and size; 0 when this worker does not take it.
    pub fn slots(&self, stage: Stage, size: SectorSize) -> u32 {
        self.capacity.iter().find(|c| c.stage == stage && c.sector_size == size).map_or(0, |c| c.slots)
    }

    /// The stages it takes, in stage order.
    pub fn stages(&self) -> Vec<Stage> {
        Stage::ALL.into_iter().filter(|s| self.capacity.iter().any(|c| c.stage == *s)).collect()
    }

    /// The sector sizes it takes.
    pub fn sector_sizes(&self) -> Vec<SectorSize> {
        SectorSize::ALL.into_iter().filter(|z| self.capacity.iter().any(|c| c.sector_size == *z)).collect()
    }
}

struct Worker {
    config: WorkerConfig,
    store: JobStore,
    link: BrokerLink,
    executor: Executor,
    /// One per stage and sector size taken, with its slots.
    slots: BTreeMap<(Stage, SectorSize), Arc<Semaphore>>,
    /// Claimed jobs waiting for those slots, in turns by miner.
    slot_queues: BTreeMap<(Stage, SectorSize), Arc<crate::placement::budget::SlotQueue>>,
    /// The machine's memory, cores and GPUs, shared by all running jobs.
    budget: Arc<Budget>,
    /// Jobs this worker holds (claimed, running or waiting for a slot): a
    /// view of the claimed jobs, for heartbeats and metrics.
    held: Held,
    /// False while the operator has the worker drained: the stage queues are
    /// not consumed (its own queue is: tasks bound to its files, controls).
    enabled: tokio::sync::watch::Sender<bool>,
    /// The stages still waiting for the warm-up, as heartbeats report them.
    warming: Mutex<Vec<Stage>>,
    /// True once the warm-up is over (at once without one): the warm-up's
    /// stages are taken from then on.
    warmed: tokio::sync::watch::Sender<bool>,
    metrics: Arc<crate::metrics::Metrics>,
    /// When the last heartbeat went out.
    last_heartbeat: Mutex<std::time::Instant>,
    /// A heartbeat is scheduled (see `heartbeat_soon`).
    heartbeat_pending: std::sync::atomic::AtomicBool,
    /// Held from a heartbeat's reading of the state to its publishing.
    heartbeat_lock: tokio::sync::Mutex<()>,
    shutdown: Shutdown,
}

/// Runs the worker until `shutdown` fires.
pub async fn run(config: WorkerConfig, shutdown: Shutdown) -> Result<()> {
    let store = JobStore::open(&config.state_dir)?;
    let link = BrokerLink::new(config.broker.clone(), format!("sealfarm-worker {}", config.worker_id), Role::Worker);
    let executor = Executor::new(config.sealing.clone())?;
    executor.warm().await?;
    let worker = Arc::new(Worker {
        executor,
        slots: config
            .capacity
            .iter()
            .map(|c| ((c.stage, c.sector_size), Arc::new(Semaphore::new(c.slots.max(1) as usize))))
            .collect(),
        slot_queues: config.capacity.iter().map(|c| ((c.stage, c.sector_size), Arc::default())).collect(),
        budget: Budget::new(
            config.hardware.memory_bytes,
            config.hardware.cores.max(1) as u64,
            config.hardware.gpus().count() as f64,
        ),
        warming: Mutex::new(config.warm_up.as_ref().map(|p| p.stages()).unwrap_or_default()),
        warmed: tokio::sync::watch::Sender::new(config.warm_up.is_none()),
        config,
        store,
        link,
        held: Held::default(),
        enabled: tokio::sync::watch::Sender::new(true),
        metrics: Arc::new(crate::metrics::Metrics::new()),
        last_heartbeat: Mutex::new(std::time::Instant::now()),
        heartbeat_pending: Default::default(),
        heartbeat_lock: Default::default(),
        shutdown: shutdown.clone(),
    });
    if let Some(reason) = worker.store.drained()? {
        tracing::warn!(
            reason,
            "drained by the operator: no new tasks from the stage queues until `sealfarm-bridge resume-worker`"
        );
        worker.enabled.send_replace(false);
    }
    // Warm up the executor while the other stages are taken.
    let warm_up = worker.config.warm_up.clone().map(|plan| tokio::spawn(worker.clone().warm_up(plan)));
    let mut jobs = JoinSet::new();

    for record in worker.store.unfinished()? {
        let key = record.task.job_key();
        match record.state {
            JobState::Claimed { .. } if !worker.takes(&record.task) => {
                // Claimed under another configuration; this one cannot run it.
                let reason = format!(
                    "worker {} no longer takes {} of {} sectors (restarted with other stages, sizes or resources)",
                    worker.config.worker_id,
                    record.task.stage(),
                    record.task.sector.proof_type.info().map_or("unknown".into(), |i| i.sector_size.to_string())
                );
                tracing::warn!(call_id = %record.task.call_id, reason, "giving a claimed job back");
                worker.release(&key, record.task.call_id, record.task.attempt, reason).await;
            }
            JobState::Claimed { .. } => {
                tracing::info!(call_id = %record.task.call_id, sector = %record.task.sector.id, stage = %record.task.stage(), "resuming claimed job");
                worker.held.hold(&record.task);
                let worker = worker.clone();
                let span = record.task.span();
                jobs.spawn(
                    async move {
                        if let Some(permit) = worker.slot(&record.task).await {
                            worker.run_job(record.task, permit).await;
                        }
                    }
                    .instrument(span),
                );
            }
            JobState::Finished { result } => {
                tracing::info!(call_id = %result.call_id, "republishing a result the broker never confirmed");
                let (worker, bridge) = (worker.clone(), record.task.bridge.clone());
                jobs.spawn(async move { worker.publish_result(&key, bridge, *result).await });
            }
            JobState::Done { .. } | JobState::Released { .. } | JobState::Superseded { .. } => {}
        }
    }

    if let Some(files) = &worker.config.files {
        crate::files::serve(files, &worker.config.sealing, shutdown.clone()).await?;
    }
    if let Some(listener) = &worker.config.metrics_listener {
        let this = worker.clone();
        let now = move || crate::metrics::Now {
            running: this.held.list(),
            capacity: this.config.capacity.clone(),
            draining: !*this.enabled.borrow(),
            warming: !*this.warmed.borrow(),
            hardware: this.hardware_now(),
            in_use: this.budget.in_use(),
        };
        crate::metrics::serve(listener.try_clone()?, worker.metrics.clone(), now, shutdown.clone())?;
    }
    let heartbeat = tokio::spawn(worker.clone().heartbeats());
    let pruning = tokio::spawn(prune_ended(worker.store.clone(), worker.config.retain_done, shutdown.clone()));
    let mut pauses = Backoff::new(retry::BROKER);
    while !shutdown.is_set() {
        match worker.clone().consume(&mut jobs, &mut pauses).await {
            Ok(()) => break,
            Err(err) => {
                let delay = pauses.next_pause().unwrap_or(retry::BROKER.max);
                tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "lost the broker; reconnecting");
                if shutdown.wait_for(delay).await {
                    break;
                }
            }
        }
    }

    tracing::info!(running = worker.held.len(), grace = ?worker.config.shutdown_grace, "stopping: no new tasks");
    let drained =
        tokio::time::timeout(worker.config.shutdown_grace, async { while jobs.join_next().await.is_some() {} }).await;
    if let Some(warm_up) = warm_up {
        warm_up.abort();
    }
    // Jobs still running stop here; a PC1 keeps its finished layers (checkpoints).
    worker.executor.stop().await;
    if drained.is_err() {
        // Give the stopped jobs a moment to notice (their executor is gone).
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while jobs.join_next().await.is_some() {} }).await;
    }
    worker.release_held().await;
    heartbeat.abort();
    pruning.abort();
    // The marks written without a flush (done) are on disk before a clean
    // stop ends: a restart republishes nothing the broker confirmed.
    if let Err(err) = worker.store.flush() {
        tracing::error!(error = %format!("{err:#}"), "cannot flush the job store at stop");
    }
    worker.link.close().await;
    Ok(())
}

impl Worker {
    /// Whether this worker takes the task's stage and size.
    fn takes(&self, task: &TaskMessage) -> bool {
        task.sector.proof_type.info().is_some_and(|i| self.config.slots(task.stage(), i.sector_size) > 0)
    }

    /// Publishes an event (claim, progress, heartbeat); one that cannot be
    /// sent is dropped.
    async fn event(&self, event: EventKind) {
        let message = EventMessage::new(&self.config.worker_id, event);
        let sent = async {
            let broker = self.link.get().await?;
            broker.publish_event(topology::EVENTS_EXCHANGE, &message.routing_key(), &message).await
        };
        if let Err(err) = sent.await {
            tracing::debug!(error = %format!("{err:#}"), "event not sent");
        }
    }
}

/// Removes the records of jobs that ended longer than `retain` ago, at
/// start and hourly, so the job store does not grow with the worker's history.
async fn prune_ended(store: JobStore, retain: Duration, shutdown: Shutdown) {
    loop {
        let jobs = store.clone();
        match tokio::task::spawn_blocking(move || jobs.prune(retain)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::info!(removed, "records of jobs that ended long ago removed"),
            Ok(Err(err)) => tracing::warn!(error = %format!("{err:#}"), "cannot prune the job store"),
            Err(err) => tracing::warn!(error = %err, "cannot prune the job store"),
        }
        if shutdown.wait_for((retain / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))).await {
            return;
        }
    }
}

/// `a, b, c`.
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}
