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
//! 4. the proof runs in the executor process (`executor.rs`); a panic of the
//!    library fails only this job;
//! 5. the result is stored, published with a confirm, and the job is marked
//!    done. A result the broker never confirmed is republished at restart.
//!
//! A lost broker connection is re-established with backoff; running jobs go
//! on and publish once it is back. SIGTERM stops consuming, lets running jobs
//! finish within the grace period, and leaves the rest claimed for the next
//! start.

pub mod job;
pub mod job_store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sealfarm_schemas::hardware::Hardware;
use sealfarm_schemas::messages::{now_ms, JobProgress, PieceData, RunningJob, StageSlots};
use sealfarm_schemas::topology::{self, QueueSpec};
use sealfarm_schemas::{
    CallError, Control, ControlMessage, DeadLetterReason, ErrorCode, EventKind, EventMessage, Outcome, ResultMessage,
    SectorSize, Stage, StageOutput, Task, TaskMessage, SCHEMA_VERSION,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use self::job::Held;
use self::job_store::{Claim, JobState, JobStore};
use crate::budget::{Budget, Need};
use crate::executor::Executor;
use crate::layers::{self, LayerRecord};
use crate::proofs;
use crate::sector_files::SealingPath;
use sealfarm_schemas::broker::BrokerLink;
use sealfarm_schemas::shutdown::Shutdown;

/// The longest a warm-up holds back the GPU stages: compiling the kernels
/// took 2.5–3.5 min on an H100 with an empty cache; reading 32/64 GiB
/// parameters into the page cache takes minutes more from slow disks.
const WARM_UP_LIMIT: Duration = Duration::from_secs(20 * 60);

/// The least time between a job's end-of-job heartbeat and the one before.
const HEARTBEAT_GAP: Duration = Duration::from_millis(500);

/// A job started this many times without finishing is failed instead of
/// started again: it is taking the worker down with it.
const MAX_RUNS: u32 = 3;

/// Everything a worker needs to know to run.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub worker_id: String,
    pub hostname: String,
    pub amqp_url: String,
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
    /// The bridge's blob and piece path (`--bridge`, `--worker-token`):
    /// C2 inputs, C1 outputs and piece data travel there, never on the broker.
    pub bridge: Option<crate::bridge_client::BridgeClient>,
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
    /// (`warm_up.rs`); None: they start at once.
    pub warm_up: Option<crate::warm_up::Plan>,
}

/// The file server of a worker with worker-local storage.
#[derive(Clone, Debug)]
pub struct FilesConfig {
    pub listen: std::net::SocketAddr,
    /// How the bridge reaches it.
    pub url: String,
    /// The secret the bridge presents.
    pub token: String,
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

/// How many location-bound tasks may wait on this worker's own queue for a
/// delivery at once; they are claimed at once and wait for their slot here.
const OWN_QUEUE_PREFETCH: u16 = 32;

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
    let link = BrokerLink::new(config.amqp_url.clone(), format!("sealfarm-worker {}", config.worker_id));
    let executor = Executor::new(config.sealing.clone())?;
    executor.warm().await?;
    let worker = Arc::new(Worker {
        executor,
        slots: config
            .capacity
            .iter()
            .map(|c| ((c.stage, c.sector_size), Arc::new(Semaphore::new(c.slots.max(1) as usize))))
            .collect(),
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
                let worker = worker.clone();
                jobs.spawn(async move { worker.publish_result(&key, *result).await });
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
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_set() {
        match worker.clone().consume(&mut jobs, &mut delay).await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "lost the broker; reconnecting");
                if shutdown.wait_for(delay).await {
                    break;
                }
                delay = (delay * 2).min(Duration::from_secs(15));
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
    /// One consuming session on one connection; returns Ok at shutdown.
    async fn consume(self: Arc<Self>, jobs: &mut JoinSet<()>, delay: &mut Duration) -> Result<()> {
        let broker = self.link.get().await?;
        // This worker's own queue: tasks bound to its files (claimed at once,
        // they wait for their slot here) and control messages.
        let own_queue = topology::worker_queue(&self.config.worker_id);
        let own = broker.connection.create_channel().await?;
        own.basic_qos(OWN_QUEUE_PREFETCH, BasicQosOptions::default()).await?;
        QueueSpec::work(&own_queue).declare(&own).await?;
        let mut own_deliveries = own
            .basic_consume(
                own_queue.as_str().into(),
                format!("{}:{own_queue}", self.config.worker_id).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {own_queue}"))?;
        // The stage queues: each pulled only while it has a free slot.
        let mut channels = vec![own];
        let mut pullers = JoinSet::new();
        let (sender, mut pulled) = tokio::sync::mpsc::channel(16);
        for c in &self.config.capacity {
            let queue = topology::task_queue(c.stage, c.sector_size);
            let semaphore = self.slots[&(c.stage, c.sector_size)].clone();
            let channel = broker.connection.create_channel().await?;
            channel.basic_qos(1, BasicQosOptions::default()).await?;
            channels.push(channel.clone());
            let this = self.clone();
            let sender = sender.clone();
            let stage = c.stage;
            pullers.spawn(async move {
                // A stage the warm-up is for is not consumed until it is over.
                this.until_warm(stage).await;
                this.pull(channel, queue, semaphore, sender).await
            });
        }
        tracing::info!(worker = %self.config.worker_id, queues = ?self.config.queues(), "consuming");
        // Announce at once: a heartbeat also tells watchers this worker now takes tasks.
        self.heartbeat().await;
        *delay = Duration::from_millis(200);
        let mut shutdown = self.shutdown.clone();
        let outcome = loop {
            tokio::select! {
                _ = shutdown.wait() => break Ok(()),
                next = own_deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let (worker, queue) = (self.clone(), own_queue.clone());
                        jobs.spawn(async move { worker.handle_delivery(queue, delivery, None).await });
                    }
                    Some(Err(err)) => break Err(anyhow::anyhow!("consumer of {own_queue} failed: {err}")),
                    None => break Err(anyhow::anyhow!("the broker closed the consumer of {own_queue}")),
                },
                Some((queue, delivery, permit)) = pulled.recv() => {
                    let worker = self.clone();
                    jobs.spawn(async move { worker.handle_delivery(queue, delivery, Some(permit)).await });
                }
                Some(ended) = pullers.join_next() => match ended {
                    Ok(Err(err)) => break Err(err),
                    _ => break Err(anyhow::anyhow!("a queue consumer ended")),
                },
            }
            while jobs.try_join_next().is_some() {}
        };
        pullers.abort_all();
        // Deliveries not yet claimed go back to their queues.
        for channel in &channels {
            let _ = channel.close(200, "worker stopping".into()).await;
        }
        outcome
    }

    /// Takes tasks from one stage queue, one per free slot of its stage and
    /// size: while every slot is busy this worker does not consume the queue
    /// at all, so the next task stays where another worker can take it (and
    /// no delivery waits here unacknowledged).
    async fn pull(
        self: Arc<Self>,
        channel: lapin::Channel,
        queue: String,
        slots: Arc<Semaphore>,
        pulled: tokio::sync::mpsc::Sender<(String, Delivery, OwnedSemaphorePermit)>,
    ) -> Result<()> {
        let tag = format!("{}:{queue}", self.config.worker_id);
        let mut consumer: Option<lapin::Consumer> = None;
        let mut enabled = self.enabled.subscribe();
        loop {
            if !*enabled.borrow() || slots.available_permits() == 0 {
                // Drained, or every slot busy: no consumer, so no delivery
                // waits here unacknowledged while another worker could run it.
                stop_consuming(&channel, &tag, &mut consumer).await?;
            }
            // Drained: nothing from the stage queues until resumed.
            enabled.wait_for(|on| *on).await.map(|_| ())?;
            // Wait for a free slot without holding it while the queue is empty
            // (a task from this worker's own queue may need it meanwhile).
            drop(slots.clone().acquire_owned().await?);
            if !*enabled.borrow() {
                continue;
            }
            if consumer.is_none() {
                let started = channel
                    .basic_consume(
                        queue.as_str().into(),
                        tag.as_str().into(),
                        Default::default(),
                        FieldTable::default(),
                    )
                    .await
                    .with_context(|| format!("consuming {queue}"))?;
                consumer = Some(started);
            }
            let next = tokio::select! {
                next = consumer.as_mut().expect("consuming").next() => next,
                // Drained while waiting: the top of the loop stops consuming.
                _ = async { enabled.wait_for(|on| !*on).await.map(|_| ()) } => continue,
            };
            let delivery = next
                .with_context(|| format!("the broker closed the consumer of {queue}"))?
                .with_context(|| format!("consumer of {queue} failed"))?;
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // A job from this worker's own queue took the last slot
                // meanwhile: the task goes back for another worker.
                stop_consuming(&channel, &tag, &mut consumer).await?;
                delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
                continue;
            };
            if pulled.send((queue.clone(), delivery, permit)).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Waits for a slot of the task's stage and size (None: stopping).
    async fn slot(&self, task: &TaskMessage) -> Option<OwnedSemaphorePermit> {
        let size = task.sector.proof_type.info()?.sector_size;
        let semaphore = self.slots.get(&(task.stage(), size))?.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            permit = semaphore.acquire_owned() => permit.ok(),
            _ = shutdown.wait() => None,
        }
    }

    /// Handles one delivery; `permit` is its slot when it came from a stage
    /// queue (one from this worker's own queue waits for its slot after the claim).
    async fn handle_delivery(self: Arc<Self>, queue: String, delivery: Delivery, permit: Option<OwnedSemaphorePermit>) {
        if delivery.redelivered {
            self.metrics.redeliveries.get_or_create(&vec![("queue", queue.clone())]).inc();
        }
        if let Some(control) = control_message(&delivery.data) {
            self.control(control);
            let _ = delivery.ack(BasicAckOptions::default()).await;
            // Watchers (the bridge's views) see a drain or resume at once.
            self.heartbeat().await;
            return;
        }
        let task = match self.check(&queue, &delivery.data) {
            Ok(task) => task,
            Err(Rejection { reason, task }) => {
                return self.dead_letter(&queue, delivery, reason, task.as_deref()).await
            }
        };
        let span = task.span();
        self.claim_and_run(queue, delivery, task, permit).instrument(span).await
    }

    /// Claims a checked task and runs it.
    async fn claim_and_run(
        self: Arc<Self>,
        queue: String,
        delivery: Delivery,
        task: TaskMessage,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let key = task.job_key();
        match self.store.claim(&task) {
            Ok(Claim::New) => {}
            Ok(Claim::Known(state)) => {
                tracing::info!(call_id = %task.call_id, attempt = task.attempt, ?state, "task delivered again; already claimed here");
                let _ = delivery.ack(BasicAckOptions::default()).await;
                return;
            }
            Err(err) => {
                tracing::error!(call_id = %task.call_id, error = %format!("{err:#}"), "cannot record the job; returning the task to its queue");
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                return;
            }
        }
        if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
            // The broker will hand the task out again; this claim never happened.
            tracing::warn!(call_id = %task.call_id, error = %err, "ack failed; leaving the task to the broker");
            let _ = self.store.forget(&key);
            return;
        }
        tracing::info!(call_id = %task.call_id, sector = %task.sector.id, stage = %task.stage(), attempt = task.attempt, queue, "claimed");
        let waited = now_ms().saturating_sub(task.issued_at_ms) as f64 / 1000.0;
        self.metrics.queue_wait.get_or_create(&crate::metrics::of_task(&task)).observe(waited);
        self.held.hold(&task);
        self.event(EventKind::Claim {
            call_id: task.call_id,
            attempt: task.attempt,
            sector: task.sector,
            stage: task.stage(),
        })
        .await;
        let permit = match permit {
            Some(permit) => permit,
            None => match self.slot(&task).await {
                Some(permit) => permit,
                None => return, // stopping: stays claimed
            },
        };
        self.run_job(task, permit).await;
    }

    /// Parses and checks a delivery; a rejection carries the reason and, when
    /// the message parsed, the task (so its call can be failed).
    fn check(&self, queue: &str, body: &[u8]) -> Result<TaskMessage, Rejection> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| DeadLetterReason::malformed(format!("not JSON: {e}")))?;
        match value.get("schema").and_then(|v| v.as_u64()) {
            Some(version) if version == u64::from(SCHEMA_VERSION) => {}
            Some(version) => return Err(DeadLetterReason::unsupported_schema(version as u32).into()),
            None => return Err(DeadLetterReason::malformed("no \"schema\" version field").into()),
        }
        let task: TaskMessage = serde_json::from_value(value)
            .map_err(|e| DeadLetterReason::malformed(format!("not a task message: {e}")))?;
        let reject = |reason| Err(Rejection { reason, task: Some(Box::new(task.clone())) });
        let Some(info) = task.sector.proof_type.info() else {
            return reject(DeadLetterReason::unknown_proof_type(format!(
                "sector {} names seal proof type {}, which lotus does not define (known: 0-19)",
                task.sector.id, task.sector.proof_type.0
            )));
        };
        let stage = task.stage();
        let sizes = self.config.sector_sizes();
        if !sizes.contains(&info.sector_size) {
            return reject(DeadLetterReason::wrong_sector_size(format!(
                "sector {} is a {} sector ({}); this worker serves {}",
                task.sector.id,
                info.sector_size,
                info.name,
                list(&sizes)
            )));
        }
        if let Some(expected) =
            self.config.capacity.iter().find(|c| topology::task_queue(c.stage, c.sector_size) == queue)
        {
            if (expected.stage, expected.sector_size) != (stage, info.sector_size) {
                return reject(DeadLetterReason::wrong_sector_size(format!(
                    "a {stage} task for a {} sector arrived on {queue}, the queue for {} {} tasks",
                    info.sector_size, expected.stage, expected.sector_size
                )));
            }
        }
        if self.config.slots(stage, info.sector_size) == 0 {
            let takes: Vec<String> =
                self.config.capacity.iter().map(|c| format!("{} {}", c.stage, c.sector_size)).collect();
            return reject(DeadLetterReason::wrong_stage(format!(
                "{stage} of {} sectors is not a stage this worker takes (it takes {})",
                info.sector_size,
                takes.join(", ")
            )));
        }
        if let Task::Ap { data: PieceData::File { path }, .. } = &task.task {
            // Never opened: anyone who can publish to the broker could name any file.
            return reject(DeadLetterReason::malformed(format!(
                "AddPiece of {} names its piece data by file path ({path:?}); workers read piece data only by id \
                 under their sealing path",
                task.sector.id
            )));
        }
        if let Err(problem) = proofs::check_inputs(&self.config.sealing, &task) {
            return reject(DeadLetterReason::missing_input(format!("{stage} of {}: {problem}", task.sector.id)));
        }
        Ok(task)
    }

    /// Moves a task to `sealfarm.dead` with its reason, fails its call, and
    /// acknowledges it. If the broker cannot take it, the task stays queued.
    async fn dead_letter(&self, queue: &str, delivery: Delivery, reason: DeadLetterReason, task: Option<&TaskMessage>) {
        tracing::warn!(queue, reason = %reason, call_id = ?task.map(|t| t.call_id), "dead-lettering a task");
        self.metrics.dead_lettered.get_or_create(&vec![("reason", reason.code.to_string())]).inc();
        let headers = self.dead_letter_headers(&reason, queue);
        let published = async {
            let broker = self.link.get().await?;
            broker.publish_bytes(topology::DEAD_LETTER_EXCHANGE, queue, &delivery.data, &headers).await?;
            if let Some(task) = task {
                let error = CallError::new(
                    ErrorCode::UNKNOWN,
                    format!("task rejected by sealfarm worker {}: {reason}", self.config.worker_id),
                );
                let result = self.result(task, now_ms(), Outcome::Failed(error));
                broker.publish_json("", topology::RESULTS_QUEUE, &result, &[]).await?;
            }
            anyhow::Ok(())
        };
        match published.await {
            Ok(()) => {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "cannot dead-letter; returning the task to its queue");
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            }
        }
    }

    async fn run_job(self: &Arc<Self>, task: TaskMessage, permit: OwnedSemaphorePermit) {
        let key = task.job_key();
        // Its share of the machine, in lotus' order among waiting jobs.
        let need = task
            .sector
            .proof_type
            .info()
            .and_then(|i| self.config.needs.get(&(task.stage(), i.sector_size)).copied())
            .unwrap_or_default();
        let priority = self.budget.priority(&task);
        let mut stop = self.shutdown.clone();
        let grant = tokio::select! {
            // A job of a warming stage (resumed, or bound to this worker's
            // files) waits for the warm-up, then for its share.
            grant = async {
                self.until_warm(task.stage()).await;
                self.budget.acquire(need, priority).await
            } => grant,
            _ = stop.wait() => return, // stays held: released or resumed per --on-stop
        };
        let started = now_ms();
        self.held.running(&key, started);
        let outcome = self.execute(&key, &task).await;
        drop(grant);
        drop(permit);
        let Some(outcome) = outcome else {
            // Superseded (dropped), or stopping: then it stays held, for
            // `release_held` to give back or keep for the next start.
            if !self.shutdown.is_set() || self.store.is_superseded(&key) {
                self.held.end(&key);
            }
            return;
        };
        if self.store.is_superseded(&key) {
            self.discard(&task);
            return;
        }
        let outcome = crate::payloads::keep_output(&self.config, outcome);
        let elapsed = now_ms().saturating_sub(started);
        let ended = if matches!(outcome, Outcome::Done(_)) { "done" } else { "failed" };
        self.metrics.job_ended(task.stage(), &task.sector, ended);
        self.metrics.job_duration.get_or_create(&crate::metrics::of_task(&task)).observe(elapsed as f64 / 1000.0);
        match &outcome {
            Outcome::Done(_) => {
                tracing::info!(call_id = %task.call_id, sector = %task.sector.id, stage = %task.stage(), elapsed_ms = elapsed, "job done")
            }
            Outcome::Failed(error) => {
                tracing::warn!(call_id = %task.call_id, sector = %task.sector.id, stage = %task.stage(), elapsed_ms = elapsed, error = %error, "job failed")
            }
        }
        let result = self.result(&task, started, outcome);
        match self.store.finish(&result) {
            Ok(Ok(())) => {}
            // Superseded (or released) while it ended: the bridge has another attempt.
            Ok(Err(_moved_on)) => return self.discard(&task),
            Err(err) => {
                tracing::error!(call_id = %task.call_id, error = %format!("{err:#}"), "cannot store the result; publishing it anyway")
            }
        }
        self.held.end(&key);
        self.publish_result(&key, result).await;
        // Watchers see the freed share of the machine at once.
        self.heartbeat_soon().await;
    }

    /// A job that finished after the bridge dispatched its call again: its
    /// result is not published.
    fn discard(&self, task: &TaskMessage) {
        self.metrics.job_ended(task.stage(), &task.sector, "superseded");
        tracing::info!(call_id = %task.call_id, attempt = task.attempt, "job finished after it was dispatched again; result discarded");
        self.held.end(&task.job_key());
    }

    /// Returns once `stage` is warm: at once for a stage the warm-up is not
    /// for, or when it is over.
    async fn until_warm(&self, stage: Stage) {
        if self.config.warm_up.as_ref().is_some_and(|plan| plan.stages().contains(&stage)) {
            let mut warmed = self.warmed.subscribe();
            let _ = warmed.wait_for(|warm| *warm).await;
        }
    }

    /// Has the executor seal the warm-up sector, then opens the warming
    /// stages — whatever happens: a failed, panicking or overlong warm-up
    /// opens them too (their first task starts cold).
    async fn warm_up(self: Arc<Self>, plan: crate::warm_up::Plan) {
        let stages = list(&plan.stages());
        tracing::info!(plan = plan.describe(), "warming up; {stages} wait for it");
        let started = std::time::Instant::now();
        let warming = std::panic::AssertUnwindSafe(self.warm_up_in_executor(&plan, &stages));
        match tokio::time::timeout(WARM_UP_LIMIT, futures_util::FutureExt::catch_unwind(warming)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("the warm-up panicked; taking {stages} cold"),
            Err(_) => tracing::warn!(
                limit = ?WARM_UP_LIMIT,
                "the warm-up did not end in time; taking {stages} cold (it goes on in the executor)"
            ),
        }
        self.metrics.warm_up_seconds.set(started.elapsed().as_secs_f64());
        self.warming.lock().unwrap().clear();
        // Watchers hear it is warm before it takes a task of those stages
        // (not waiting long for a broker that is away: nothing is taken then).
        let _ = tokio::time::timeout(Duration::from_secs(10), self.heartbeat()).await;
        self.warmed.send_replace(true);
    }

    async fn warm_up_in_executor(&self, plan: &crate::warm_up::Plan, stages: &str) {
        let mut warmed = self.executor.warm_up(plan).await;
        if warmed.as_ref().is_err_and(|lost| lost.after_panic) && !self.shutdown.is_set() {
            // Another job's library panic ended the executor under it.
            tracing::warn!("another job's panic ended the executor during the warm-up; warming up in a new one");
            warmed = self.executor.warm_up(plan).await;
        }
        match warmed {
            Ok(Ok(report)) => {
                for t in &report.stages {
                    let on = if t.gpu { "on the GPU" } else { "on the CPU" };
                    tracing::info!(
                        "warm-up {} of its {} sector: {} {on}",
                        t.stage,
                        t.sector_size,
                        crate::bench::duration(t.millis)
                    );
                }
                for p in &report.preloaded {
                    tracing::info!(
                        "warm-up: the {} parameters ({} bytes) read into the page cache in {}",
                        p.sector_size,
                        p.bytes,
                        crate::bench::duration(p.millis)
                    );
                }
                tracing::info!(seconds = format!("{:.1}", report.millis / 1e3), "warmed up; taking {stages}");
            }
            Ok(Err(error)) => {
                tracing::warn!(
                    error,
                    "the warm-up failed; taking {stages} cold (its first task builds the GPU kernels)"
                )
            }
            // Not tried again: a crash of the warm-up itself (driver, OOM)
            // would cost every job running beside it a run each time.
            Err(_) => tracing::warn!("the executor ended during the warm-up; taking {stages} cold"),
        }
    }

    /// A heartbeat now, or, if one went out less than `HEARTBEAT_GAP` ago,
    /// one when that gap ends (short jobs would otherwise heartbeat per job).
    async fn heartbeat_soon(self: &Arc<Self>) {
        let since = self.last_heartbeat.lock().unwrap().elapsed();
        if since >= HEARTBEAT_GAP {
            return self.heartbeat().await;
        }
        if self.heartbeat_pending.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return; // one is on its way and will show this job's end too
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HEARTBEAT_GAP - since).await;
            this.heartbeat_pending.store(false, std::sync::atomic::Ordering::SeqCst);
            this.heartbeat().await;
        });
    }

    /// Runs the job in the executor until it has an outcome. A run that ends
    /// without one (the executor or the whole worker died under it) is
    /// started again after a growing pause; after `MAX_RUNS` starts the task
    /// is poison: dead-lettered, and its call failed. `None`: the job ended
    /// here without an outcome (superseded, or the worker is stopping).
    async fn execute(self: &Arc<Self>, key: &str, task: &TaskMessage) -> Option<Outcome> {
        if self.config.simulate_compute {
            return Some(simulated(task));
        }
        let resolved = match crate::payloads::resolve_inputs(&self.config, task, &self.shutdown).await {
            Ok(resolved) => resolved,
            Err(_) if self.shutdown.is_set() => return None,
            Err(error) => return Some(Outcome::Failed(error)),
        };
        let outcome = self.execute_resolved(key, &resolved.task).await;
        if let Some(downloaded) = resolved.downloaded {
            let _ = std::fs::remove_file(downloaded);
        }
        outcome
    }

    /// Runs a task whose inputs are in place, again if the executor dies under it.
    async fn execute_resolved(self: &Arc<Self>, key: &str, task: &TaskMessage) -> Option<Outcome> {
        let mut first = true;
        loop {
            if self.store.is_superseded(key) || self.shutdown.is_set() {
                return None;
            }
            let runs = match self.store.start_run(key) {
                Ok(0) => return None, // no longer claimed here (released or superseded)
                Ok(runs) => runs,
                Err(err) => return Some(store_failure(err)),
            };
            if runs > MAX_RUNS {
                return Some(self.give_up(task, runs - 1).await);
            }
            if runs > 1 {
                self.metrics.executor_restarts.get_or_create(&vec![("stage", task.stage().to_string())]).inc();
            }
            // A rerun in this process waits, longer each time; a job resumed
            // at start does not (the restart was the pause).
            if runs > 1 && !first {
                let pause = self.config.retry_backoff * 2u32.pow(runs - 2);
                tracing::warn!(call_id = %task.call_id, run = runs, ?pause, "the last run of this job ended without a result; running it again after a pause");
                if self.shutdown.wait_for(pause).await {
                    let _ = self.store.forgive_run(key); // this run never started
                    return None;
                }
            }
            if let Some(deadline) = task.ticket_deadline_ms.filter(|d| now_ms() > *d) {
                return Some(Outcome::Failed(ticket_expired(task, deadline)));
            }
            let watcher = if task.stage() == Stage::Pc1 {
                if let Err(err) = self.check_layers(key, task, runs).await {
                    return Some(Outcome::Failed(CallError::new(
                        ErrorCode::TEMP_WORKER_RESTART,
                        format!("cannot check the PC1 checkpoints of {}: {err:#}", task.sector.id),
                    )));
                }
                Some(tokio::spawn(self.clone().watch_layers(key.to_string(), task.clone(), runs, now_ms())))
            } else {
                None
            };
            let run_started_ms = now_ms();
            first = false;
            let ran = self.executor.run(key, task).await;
            if let Some(watcher) = watcher {
                watcher.abort();
                let _ = watcher.await;
                // Layers finished between the last look and the end of the run.
                self.record_layers(key, task, runs, run_started_ms).await;
            }
            match ran {
                Ok(outcome) => return Some(outcome),
                Err(_) if self.shutdown.is_set() => {
                    // Stopped on purpose: this run does not count against the job.
                    let _ = self.store.note(key, format!("run {runs}: stopped with the worker"));
                    let _ = self.store.forgive_run(key);
                    return None;
                }
                Err(_) => {
                    let _ = self.store.note(key, format!("run {runs}: ended without a result (executor lost)"));
                    tracing::warn!(call_id = %task.call_id, run = runs, "the executor ended under the job");
                }
            }
        }
    }

    /// Before a PC1 run: keeps the layers whose checksums still match and
    /// removes the rest, so the library resumes from the last good layer.
    async fn check_layers(&self, key: &str, task: &TaskMessage, run: u32) -> Result<()> {
        let record = self.store.get(key)?.context("job not in the store")?;
        let cache = self.config.sealing.cache(task.sector.id);
        let total = layer_total(task);
        let records = record.layers.clone();
        let check = {
            let cache = cache.clone();
            tokio::task::spawn_blocking(move || layers::check_for_resume(&cache, &records, total)).await??
        };
        let mut lines = Vec::new();
        if !check.kept.is_empty() {
            let kept: Vec<String> = check.kept.iter().map(|l| l.layer.to_string()).collect();
            lines.push(format!("run {run}: layers {} verified (blake3) and kept", kept.join(", ")));
        }
        for (layer, why) in &check.removed {
            lines.push(format!("run {run}: layer {layer} removed and recomputed: {why}"));
        }
        for line in &lines {
            tracing::info!(call_id = %task.call_id, sector = %task.sector.id, "{line}");
            self.store.note(key, line.clone())?;
        }
        self.store.set_layers(key, check.kept.clone())?;
        for layer in &check.kept {
            self.progress(task, layer, total, None, "kept").await;
        }
        Ok(())
    }

    /// While PC1 runs: checksums and records each layer as the library
    /// finishes it, and reports progress.
    async fn watch_layers(self: Arc<Self>, key: String, task: TaskMessage, run: u32, run_started_ms: u64) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let (recorded, total) = self.record_layers(&key, &task, run, run_started_ms).await;
            if recorded >= u64::from(total) {
                return;
            }
        }
    }

    /// Records the layers that appeared since the last look; returns how
    /// many layers are recorded and the total.
    async fn record_layers(&self, key: &str, task: &TaskMessage, run: u32, run_started_ms: u64) -> (u64, u32) {
        let total = layer_total(task);
        let Ok(Some(record)) = self.store.get(key) else { return (0, total) };
        let cache = self.config.sealing.cache(task.sector.id);
        let known = record.layers.clone();
        let found = tokio::task::spawn_blocking(move || layers::record_new(&cache, &known, total, run)).await;
        let new = match found {
            Ok(Ok(new)) => new,
            Ok(Err(err)) => {
                tracing::warn!(call_id = %task.call_id, error = %format!("{err:#}"), "cannot checksum a layer");
                return (record.layers.len() as u64, total);
            }
            Err(_) => return (record.layers.len() as u64, total),
        };
        if new.is_empty() {
            return (record.layers.len() as u64, total);
        }
        if let Err(err) = self.store.add_layers(key, &new) {
            tracing::error!(call_id = %task.call_id, error = %format!("{err:#}"), "cannot record a layer checksum");
            return (record.layers.len() as u64, total);
        }
        // ETA from the pace of this run: time per layer computed in it.
        let computed_here = record.layers.iter().chain(&new).filter(|l| l.computed_in_run == run).count() as u64;
        let done = (record.layers.len() + new.len()) as u64;
        let per_layer_ms = now_ms().saturating_sub(run_started_ms) / computed_here.max(1);
        let eta_s = per_layer_ms * u64::from(total).saturating_sub(done) / 1000;
        for layer in &new {
            let _ = self.store.note(key, format!("run {run}: layer {} computed ({} bytes)", layer.layer, layer.bytes));
            tracing::info!(call_id = %task.call_id, sector = %task.sector.id, layer = layer.layer, total, run, "PC1 layer finished");
            self.progress(task, layer, total, Some(eta_s), "computed").await;
        }
        (done, total)
    }

    async fn progress(&self, task: &TaskMessage, layer: &LayerRecord, total: u32, eta_s: Option<u64>, how: &str) {
        let progress = JobProgress {
            step: "layer".into(),
            done: u64::from(layer.layer),
            total: u64::from(total),
            bytes: layer.bytes * u64::from(layer.layer),
            eta_s,
        };
        self.held.progress(&task.job_key(), progress);
        self.event(EventKind::Progress {
            call_id: task.call_id,
            attempt: task.attempt,
            stage: task.stage(),
            step: "layer".into(),
            done: u64::from(layer.layer),
            total: u64::from(total),
            bytes: layer.bytes * u64::from(layer.layer),
            eta_s,
            how: how.into(),
        })
        .await;
    }

    /// The headers of a task this worker dead-letters: why, from where, by whom.
    fn dead_letter_headers(&self, reason: &DeadLetterReason, queue: &str) -> [(&'static str, String); 3] {
        [
            (topology::REASON_HEADER, reason.to_string()),
            (topology::SOURCE_QUEUE_HEADER, queue.to_string()),
            (topology::WORKER_HEADER, self.config.worker_id.clone()),
        ]
    }

    /// A task whose runs keep ending without a result: dead-lettered with
    /// its reason, and its call failed.
    async fn give_up(&self, task: &TaskMessage, runs: u32) -> Outcome {
        let reason = DeadLetterReason::poison(format!(
            "{} of {} was started {runs} times and every run ended without a result (the process running it died)",
            task.stage(),
            task.sector.id
        ));
        tracing::error!(call_id = %task.call_id, reason = %reason, "giving up on a task");
        let queue = topology::queue_of(task).unwrap_or_default();
        let headers = self.dead_letter_headers(&reason, &queue);
        let sent = self
            .link
            .publish_until_confirmed(topology::DEAD_LETTER_EXCHANGE, &queue, task, &headers, &self.shutdown)
            .await;
        if let Err(err) = sent {
            tracing::warn!(error = %format!("{err:#}"), "task not dead-lettered");
        }
        Outcome::Failed(CallError::new(
            ErrorCode::UNKNOWN,
            format!("sealfarm worker {}: task dead-lettered: {reason}", self.config.worker_id),
        ))
    }

    /// A control message from the bridge.
    fn control(&self, message: ControlMessage) {
        match message.control {
            Control::Supersede { call_id, attempt, reason } => {
                let key = format!("{call_id}/{attempt}");
                match self.store.supersede(&key, reason.clone()) {
                    Ok(true) => {
                        tracing::warn!(%call_id, attempt, reason, "this attempt was dispatched again elsewhere; dropping it")
                    }
                    Ok(false) => tracing::info!(%call_id, attempt, "superseded attempt is not held here"),
                    Err(err) => {
                        tracing::error!(%call_id, error = %format!("{err:#}"), "cannot record a superseded job")
                    }
                }
                // A job still computing stays listed (it holds its share of the
                // machine) until it ends; its result is discarded then.
                if let Some(job) = self.held.end_if_waiting(&key) {
                    self.metrics.job_ended(job.stage, &job.sector, "superseded");
                }
            }
            Control::Drain { reason } => {
                if let Err(err) = self.store.set_drained(Some(&reason)) {
                    tracing::error!(error = %format!("{err:#}"), "cannot record the drain; it lasts until a restart");
                }
                tracing::warn!(
                    reason,
                    held = self.held.len(),
                    "drained: no new tasks from the stage queues; finishing the held ones"
                );
                self.enabled.send_replace(false);
            }
            Control::Resume {} => {
                if let Err(err) = self.store.set_drained(None) {
                    tracing::error!(error = %format!("{err:#}"), "cannot record the resume");
                }
                tracing::info!("resumed: taking tasks from the stage queues again");
                self.enabled.send_replace(true);
            }
        }
    }

    /// At stop, after the grace period: with `--on-stop redispatch`, gives
    /// every held job back to the bridge; otherwise they stay claimed.
    async fn release_held(&self) {
        let held: Vec<(String, RunningJob)> = self.held.keyed();
        if self.config.on_stop == OnStop::Resume {
            if !held.is_empty() {
                tracing::warn!(
                    jobs = held.len(),
                    "jobs still running after the grace period stay claimed and resume at the next start"
                );
            }
            return;
        }
        for (key, job) in held {
            let reason = format!("worker {} stopped (SIGTERM) before the job finished", self.config.worker_id);
            self.release(&key, job.call_id, job.attempt, reason).await;
        }
    }

    /// Whether this worker takes the task's stage and size.
    fn takes(&self, task: &TaskMessage) -> bool {
        task.sector.proof_type.info().is_some_and(|i| self.config.slots(task.stage(), i.sector_size) > 0)
    }

    /// Gives a claimed job back to the bridge, which dispatches it again at once.
    async fn release(&self, key: &str, call_id: uuid::Uuid, attempt: u32, reason: String) {
        if !matches!(self.store.release(key, reason.clone()), Ok(true)) {
            return;
        }
        if let Ok(Some(record)) = self.store.get(key) {
            self.metrics.job_ended(record.task.stage(), &record.task.sector, "released");
        }
        let message = EventMessage::new(&self.config.worker_id, EventKind::Release { call_id, attempt, reason });
        let released = tokio::time::timeout(
            Duration::from_secs(10),
            self.link.publish_json(topology::EVENTS_EXCHANGE, &message.routing_key(), &message, &[]),
        )
        .await;
        match released {
            Ok(Ok(())) => tracing::info!(%call_id, attempt, "released to the bridge for dispatch elsewhere"),
            _ => {
                tracing::warn!(%call_id, "could not tell the bridge; it dispatches the job again when the lease expires")
            }
        }
    }

    fn result(&self, task: &TaskMessage, started_at_ms: u64, outcome: Outcome) -> ResultMessage {
        ResultMessage {
            schema: SCHEMA_VERSION,
            call_id: task.call_id,
            attempt: task.attempt,
            sector: task.sector,
            stage: task.stage(),
            worker: self.config.worker_id.clone(),
            storage_id: Some(self.config.storage_id.clone()),
            started_at_ms,
            finished_at_ms: now_ms(),
            outcome,
        }
    }

    async fn publish_result(&self, key: &str, result: ResultMessage) {
        // A C1 output goes to the bridge first; the result only names it.
        if let Err(err) = crate::payloads::hand_over(&self.config, &result, &self.shutdown).await {
            tracing::warn!(call_id = %result.call_id, error = %format!("{err:#}"), "result kept for the next start");
            return;
        }
        match self.link.publish_until_confirmed("", topology::RESULTS_QUEUE, &result, &[], &self.shutdown).await {
            Ok(()) => {
                if let Err(err) = self.store.done(key) {
                    tracing::error!(call_id = %result.call_id, error = %format!("{err:#}"), "result published but not marked done");
                }
                crate::payloads::forget_output(&self.config, &result);
            }
            Err(err) => {
                tracing::warn!(call_id = %result.call_id, error = %format!("{err:#}"), "result kept for the next start")
            }
        }
    }

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

    async fn heartbeats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        loop {
            tick.tick().await;
            self.heartbeat().await;
        }
    }

    async fn heartbeat(&self) {
        // One at a time: a heartbeat that read the state before a change must
        // not be published after one that read it after (the warm-up's end).
        let _one = self.heartbeat_lock.lock().await;
        *self.last_heartbeat.lock().unwrap() = std::time::Instant::now();
        let running = self.held.list();
        let draining = !*self.enabled.borrow();
        let warming = self.warming.lock().unwrap().clone();
        self.event(EventKind::Heartbeat {
            hostname: self.config.hostname.clone(),
            stages: self.config.stages(),
            sector_sizes: self.config.sector_sizes(),
            slots: self.config.capacity.iter().map(|c| c.slots).sum(),
            running,
            capacity: self.config.capacity.clone(),
            hardware: Some(self.hardware_now()),
            storage_id: Some(self.config.storage_id.clone()),
            files_url: self.config.files.as_ref().map(|f| f.url.clone()),
            draining,
            warming,
            in_use: Some(self.budget.in_use()),
        })
        .await;
    }
}

impl Worker {
    /// The start-up probe with memory in use and free space as they are now
    /// (the GPUs are not probed again).
    fn hardware_now(&self) -> Hardware {
        let paths = [self.config.sealing.root(), self.config.state_dir.as_path()];
        crate::hardware::refresh(&self.config.hardware, &paths)
    }
}

/// The simulated compute backend (`--simulate-compute`, benchmarks only):
/// an AddPiece "fills" the sector with a placeholder piece at once; nothing
/// else is computed.
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

fn simulated(task: &TaskMessage) -> Outcome {
    match (&task.task, task.sector.proof_type.info()) {
        (Task::Ap { .. }, Some(info)) => Outcome::Done(StageOutput::Ap {
            piece: sealfarm_schemas::PieceInfo {
                size: info.sector_size.0,
                piece_cid: sealfarm_schemas::commitment::Commitment::Data.to_cid(&[0u8; 32]),
            },
        }),
        _ => Outcome::Failed(CallError::new(
            ErrorCode::UNKNOWN,
            format!(
                "this worker runs the simulated compute backend (--simulate-compute, a benchmark mode): it answers \
                 AddPiece with a placeholder and computes no {}",
                task.stage()
            ),
        )),
    }
}

/// Cancels a stage-queue consumer; deliveries already on their way go back
/// to the queue (the stream ends once the broker confirmed the cancel).
async fn stop_consuming(channel: &lapin::Channel, tag: &str, consumer: &mut Option<lapin::Consumer>) -> Result<()> {
    let Some(mut cancelled) = consumer.take() else { return Ok(()) };
    channel.basic_cancel(tag.into(), Default::default()).await?;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_secs(2), cancelled.next()).await {
        delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
    }
    Ok(())
}

/// The number of SDR layers of a task's sector.
fn layer_total(task: &TaskMessage) -> u32 {
    task.sector.proof_type.info().map_or(2, |i| layers::layer_count(i.sector_size))
}

fn store_failure(err: anyhow::Error) -> Outcome {
    // 101: lotus re-issues the call.
    Outcome::Failed(CallError::new(ErrorCode::TEMP_WORKER_RESTART, format!("worker job store failed: {err:#}")))
}

fn ticket_expired(task: &TaskMessage, deadline_ms: u64) -> CallError {
    let hours = |ms: u64| ms as f64 / 3_600_000.0;
    CallError::new(
        ErrorCode::UNKNOWN,
        format!(
            "ticket expired: the PC1 call for {} arrived {:.1} h ago and its ticket stopped being usable {:.1} h ago \
             (a precommit would be rejected); not sealing it - the miner draws a new ticket",
            task.sector.id,
            hours(now_ms().saturating_sub(task.issued_at_ms)),
            hours(now_ms().saturating_sub(deadline_ms)),
        ),
    )
}

/// A control message, if the body is one (it has a `control` field).
fn control_message(body: &[u8]) -> Option<ControlMessage> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("control")?;
    match serde_json::from_value(value) {
        Ok(message) => Some(message),
        Err(err) => {
            tracing::warn!(error = %err, "unreadable control message ignored");
            None
        }
    }
}

/// Why a delivery is dead-lettered, with its task when it parsed.
struct Rejection {
    reason: DeadLetterReason,
    task: Option<Box<TaskMessage>>,
}

impl From<DeadLetterReason> for Rejection {
    fn from(reason: DeadLetterReason) -> Self {
        Rejection { reason, task: None }
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}
