//! Taking tasks: consuming this worker's own queue and, one per free slot,
//! the stage queues; checking each delivery, claiming it durably (written to
//! the job store before it is acknowledged) and dead-lettering what can
//! never run.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sealfarm_runtime::queues::QueueSpec;
use sealfarm_runtime::retry::Backoff;
use sealfarm_schemas::messages::{now_ms, PieceData};
use sealfarm_schemas::topology;
use sealfarm_schemas::{CallError, DeadLetterReason, ErrorCode, EventKind, Outcome, Task, TaskMessage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::control::control_message;
use super::job_store::Claim;
use super::{list, Worker};
use crate::sealing::proofs;

/// How many location-bound tasks may wait on this worker's own queue for a
/// delivery at once; they are claimed at once and wait for their slot here.
const OWN_QUEUE_PREFETCH: u16 = 32;

impl Worker {
    /// One consuming session on one connection; returns Ok at shutdown.
    pub(super) async fn consume(self: Arc<Self>, jobs: &mut JoinSet<()>, pauses: &mut Backoff) -> Result<()> {
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
        pauses.reset();
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
                    .with_context(|| {
                        format!("consuming {queue} (the bridge declares the farm's queues: has one run on this vhost?)")
                    })?;
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

    /// Waits for a slot of the task's stage and size (None: stopping), in
    /// turns with the jobs of other miners that wait for one too.
    pub(super) async fn slot(&self, task: &TaskMessage) -> Option<OwnedSemaphorePermit> {
        let size = task.sector.proof_type.info()?.sector_size;
        let semaphore = self.slots.get(&(task.stage(), size))?.clone();
        let queue = self.slot_queues.get(&(task.stage(), size))?.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            permit = queue.acquire(semaphore, task.sector.id.miner) => permit.ok(),
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
            let control = match control {
                Ok(control) => control,
                Err(reason) => return self.dead_letter(&queue, delivery, reason, None).await,
            };
            let own_queue = topology::worker_queue(&self.config.worker_id);
            let bridges = match self.config.bridge_users.as_slice() {
                [] => vec![self.link.user()],
                users => users.iter().map(String::as_str).collect(),
            };
            let publisher = sealfarm_runtime::broker::publisher(&delivery);
            let refused = if queue != own_queue {
                Some(("not_own_queue", format!("a control message came on {queue}, not on {own_queue}")))
            } else if !publisher.is_some_and(|p| bridges.contains(&p)) {
                Some((
                    "not_the_bridge",
                    format!(
                        "broker user {publisher:?} sent a control message; only the bridges' ({}) are obeyed",
                        bridges.join(", ")
                    ),
                ))
            } else {
                None
            };
            if let Some((reason, detail)) = refused {
                tracing::warn!(reason, ?control, "{detail}; control message refused");
                self.metrics.refused_controls.get_or_create(&vec![("reason", reason.to_string())]).inc();
                let _ = delivery.ack(BasicAckOptions::default()).await;
                return;
            }
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
        let task: TaskMessage = sealfarm_schemas::messages::decode(body, "a task message")?;
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
                broker.publish_json(topology::RESULTS_EXCHANGE, task.reply_key(), &result, &[]).await?;
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

    /// The headers of a task this worker dead-letters: why, from where, by whom.
    pub(super) fn dead_letter_headers(&self, reason: &DeadLetterReason, queue: &str) -> [(&'static str, String); 3] {
        [
            (topology::REASON_HEADER, reason.to_string()),
            (topology::SOURCE_QUEUE_HEADER, queue.to_string()),
            (topology::WORKER_HEADER, self.config.worker_id.clone()),
        ]
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
