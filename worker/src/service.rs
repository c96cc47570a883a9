//! The worker service: consume the stage queues this worker serves, claim
//! each task durably, run it, publish its result.
//!
//! Life of a task here (DESIGN.md, "Life of a call"):
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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sealfarm_schemas::messages::{now_ms, RunningJob};
use sealfarm_schemas::topology::{self, QueueSpec};
use sealfarm_schemas::{
    CallError, DeadLetterReason, ErrorCode, EventKind, EventMessage, Outcome, ResultMessage, SectorSize, Stage,
    TaskMessage, SCHEMA_VERSION,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::executor::Executor;
use crate::job_store::{Claim, JobState, JobStore};
use crate::proofs;
use crate::sector_files::SealingPath;
use sealfarm_schemas::broker::BrokerLink;
use sealfarm_schemas::shutdown::Shutdown;

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
    pub state_dir: PathBuf,
    pub stages: Vec<Stage>,
    pub sector_sizes: Vec<SectorSize>,
    /// Jobs run at the same time.
    pub slots: usize,
    pub heartbeat_interval: Duration,
    /// How long SIGTERM waits for running jobs before leaving them for the next start.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    /// The queues this worker consumes: one per served stage and size, and its own.
    pub fn queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = self
            .stages
            .iter()
            .flat_map(|stage| self.sector_sizes.iter().map(move |size| topology::task_queue(*stage, *size)))
            .collect();
        queues.push(topology::worker_queue(&self.worker_id));
        queues
    }
}

struct Worker {
    config: WorkerConfig,
    store: JobStore,
    link: BrokerLink,
    executor: Executor,
    slots: Arc<Semaphore>,
    running: Mutex<BTreeMap<String, RunningJob>>,
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
        slots: Arc::new(Semaphore::new(config.slots.max(1))),
        config,
        store,
        link,
        running: Mutex::new(BTreeMap::new()),
        shutdown: shutdown.clone(),
    });
    let mut jobs = JoinSet::new();

    for record in worker.store.unfinished()? {
        let key = record.task.job_key();
        match record.state {
            JobState::Claimed { .. } => {
                tracing::info!(call_id = %record.task.call_id, sector = %record.task.sector.id, stage = %record.task.stage(), "resuming claimed job");
                let worker = worker.clone();
                jobs.spawn(async move {
                    if let Some(permit) = worker.slot().await {
                        worker.run_job(record.task, permit).await;
                    }
                });
            }
            JobState::Finished { result } => {
                tracing::info!(call_id = %result.call_id, "republishing a result the broker never confirmed");
                let worker = worker.clone();
                jobs.spawn(async move { worker.publish_result(&key, *result).await });
            }
            JobState::Done { .. } => {}
        }
    }

    let heartbeat = tokio::spawn(worker.clone().heartbeats());
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

    tracing::info!(running = worker.running.lock().unwrap().len(), grace = ?worker.config.shutdown_grace, "stopping: no new tasks");
    let drained =
        tokio::time::timeout(worker.config.shutdown_grace, async { while jobs.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("jobs still running after the grace period stay claimed and resume at the next start");
    }
    heartbeat.abort();
    worker.executor.stop().await;
    worker.link.close().await;
    Ok(())
}

impl Worker {
    /// One consuming session on one connection; returns Ok at shutdown.
    async fn consume(self: Arc<Self>, jobs: &mut JoinSet<()>, delay: &mut Duration) -> Result<()> {
        let broker = self.link.get().await?;
        let channel = broker.connection.create_channel().await?;
        // One delivery per queue at a time: a task waits in its queue, where
        // other workers can take it, rather than here.
        channel.basic_qos(1, BasicQosOptions::default()).await?;
        QueueSpec::work(topology::worker_queue(&self.config.worker_id)).declare(&channel).await?;
        let mut streams = Vec::new();
        for queue in self.config.queues() {
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("{}:{queue}", self.config.worker_id).as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming {queue}"))?;
            streams.push(consumer.map(move |delivery| (queue.clone(), delivery)));
        }
        tracing::info!(worker = %self.config.worker_id, queues = ?self.config.queues(), "consuming");
        // Announce at once: a heartbeat also tells watchers this worker now takes tasks.
        self.heartbeat().await;
        *delay = Duration::from_millis(200);
        let mut deliveries = futures_util::stream::select_all(streams);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.wait() => {
                    // Deliveries not yet claimed go back to their queues.
                    let _ = channel.close(200, "worker stopping".into()).await;
                    return Ok(());
                }
                next = deliveries.next() => match next {
                    Some((queue, Ok(delivery))) => {
                        let worker = self.clone();
                        jobs.spawn(async move { worker.handle_delivery(queue, delivery).await });
                    }
                    Some((queue, Err(err))) => bail!("consumer of {queue} failed: {err}"),
                    None => bail!("the broker closed every consumer"),
                },
            }
            while jobs.try_join_next().is_some() {}
        }
    }

    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            permit = self.slots.clone().acquire_owned() => permit.ok(),
            _ = shutdown.wait() => None,
        }
    }

    async fn handle_delivery(self: Arc<Self>, queue: String, delivery: Delivery) {
        let task = match self.check(&queue, &delivery.data) {
            Ok(task) => task,
            Err(Rejection { reason, task }) => {
                return self.dead_letter(&queue, delivery, reason, task.as_deref()).await
            }
        };
        let Some(permit) = self.slot().await else {
            return;
        };
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
        self.event(EventKind::Claim {
            call_id: task.call_id,
            attempt: task.attempt,
            sector: task.sector,
            stage: task.stage(),
        })
        .await;
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
        if !self.config.sector_sizes.contains(&info.sector_size) {
            return reject(DeadLetterReason::wrong_sector_size(format!(
                "sector {} is a {} sector ({}); this worker serves {}",
                task.sector.id,
                info.sector_size,
                info.name,
                list(&self.config.sector_sizes)
            )));
        }
        if let Some(expected) = self.config.stages.iter().find_map(|s| {
            self.config.sector_sizes.iter().find(|z| topology::task_queue(*s, **z) == queue).map(|z| (*s, *z))
        }) {
            if expected != (stage, info.sector_size) {
                return reject(DeadLetterReason::wrong_sector_size(format!(
                    "a {stage} task for a {} sector arrived on {queue}, the queue for {} {} tasks",
                    info.sector_size, expected.0, expected.1
                )));
            }
        }
        if !self.config.stages.contains(&stage) {
            return reject(DeadLetterReason::wrong_stage(format!(
                "{stage} is not a stage this worker serves ({})",
                list(&self.config.stages)
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
        let headers = [
            (topology::REASON_HEADER, reason.to_string()),
            (topology::SOURCE_QUEUE_HEADER, queue.to_string()),
            (topology::WORKER_HEADER, self.config.worker_id.clone()),
        ];
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

    async fn run_job(&self, task: TaskMessage, permit: OwnedSemaphorePermit) {
        let key = task.job_key();
        let started = now_ms();
        let outcome = match self.store.start_run(&key) {
            Err(err) => Outcome::Failed(CallError::new(ErrorCode::TEMP_UNKNOWN, format!("job store failed: {err:#}"))),
            Ok(runs) if runs > MAX_RUNS => Outcome::Failed(CallError::new(
                ErrorCode::UNKNOWN,
                format!(
                    "{} of {} was started {runs} times without finishing; it keeps stopping the worker",
                    task.stage(),
                    task.sector.id
                ),
            )),
            Ok(_) => {
                let running = RunningJob {
                    call_id: task.call_id,
                    attempt: task.attempt,
                    sector: task.sector,
                    stage: task.stage(),
                    started_at_ms: started,
                };
                self.running.lock().unwrap().insert(key.clone(), running);
                let outcome = self.execute(&key, &task).await;
                self.running.lock().unwrap().remove(&key);
                outcome
            }
        };
        drop(permit);
        let elapsed = now_ms().saturating_sub(started);
        match &outcome {
            Outcome::Done(_) => {
                tracing::info!(call_id = %task.call_id, sector = %task.sector.id, stage = %task.stage(), elapsed_ms = elapsed, "job done")
            }
            Outcome::Failed(error) => {
                tracing::warn!(call_id = %task.call_id, sector = %task.sector.id, stage = %task.stage(), elapsed_ms = elapsed, error = %error, "job failed")
            }
        }
        let result = self.result(&task, started, outcome);
        if let Err(err) = self.store.finish(&result) {
            tracing::error!(call_id = %task.call_id, error = %format!("{err:#}"), "cannot store the result; publishing it anyway");
        }
        self.publish_result(&key, result).await;
    }

    /// Runs the job in the executor; if the executor ends under it (another
    /// job made the library panic), runs it again, up to `MAX_RUNS` starts.
    async fn execute(&self, key: &str, task: &TaskMessage) -> Outcome {
        loop {
            if let Ok(outcome) = self.executor.run(key, task).await {
                return outcome;
            }
            match self.store.start_run(key) {
                Ok(runs) if runs <= MAX_RUNS => {
                    tracing::warn!(call_id = %task.call_id, run = runs, "executor ended under the job; running it again")
                }
                Ok(runs) => {
                    return Outcome::Failed(CallError::new(
                        ErrorCode::UNKNOWN,
                        format!("{} of {} lost its executor {runs} times", task.stage(), task.sector.id),
                    ))
                }
                Err(err) => {
                    return Outcome::Failed(CallError::new(
                        ErrorCode::TEMP_UNKNOWN,
                        format!("job store failed: {err:#}"),
                    ))
                }
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
            started_at_ms,
            finished_at_ms: now_ms(),
            outcome,
        }
    }

    async fn publish_result(&self, key: &str, result: ResultMessage) {
        match self.link.publish_until_confirmed("", topology::RESULTS_QUEUE, &result, &self.shutdown).await {
            Ok(()) => {
                if let Err(err) = self.store.done(key) {
                    tracing::error!(call_id = %result.call_id, error = %format!("{err:#}"), "result published but not marked done");
                }
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
        let running = self.running.lock().unwrap().values().cloned().collect();
        self.event(EventKind::Heartbeat {
            hostname: self.config.hostname.clone(),
            stages: self.config.stages.clone(),
            sector_sizes: self.config.sector_sizes.clone(),
            slots: self.config.slots as u32,
            running,
        })
        .await;
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
