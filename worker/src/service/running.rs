//! Running a claimed job: its share of the machine, the executor run (again
//! after a run that ended without a result, until the task is poison), and
//! its result — stored, then published, or discarded when the bridge
//! dispatched the call again meanwhile.

use std::sync::Arc;

use sealfarm_runtime::retry::{self, Backoff};
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::topology;
use sealfarm_schemas::{
    CallError, DeadLetterReason, ErrorCode, Outcome, ResultMessage, Stage, TaskMessage, SCHEMA_VERSION,
};
use tokio::sync::OwnedSemaphorePermit;

use super::simulated::simulated;
use super::Worker;

/// A job started this many times without finishing is failed instead of
/// started again: it is taking the worker down with it.
const MAX_RUNS: u32 = 3;

impl Worker {
    pub(super) async fn run_job(self: &Arc<Self>, task: TaskMessage, permit: OwnedSemaphorePermit) {
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
        let outcome = crate::transfer::payloads::keep_output(&self.config, outcome);
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
        self.publish_result(&key, task.bridge.clone(), result).await;
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

    /// Runs the job in the executor until it has an outcome. A run that ends
    /// without one (the executor or the whole worker died under it) is
    /// started again after a growing pause; after `MAX_RUNS` starts the task
    /// is poison: dead-lettered, and its call failed. `None`: the job ended
    /// here without an outcome (superseded, or the worker is stopping).
    async fn execute(self: &Arc<Self>, key: &str, task: &TaskMessage) -> Option<Outcome> {
        if self.config.simulate_compute {
            return Some(simulated(task));
        }
        let resolved = match crate::transfer::payloads::resolve_inputs(&self.config, task, &self.shutdown).await {
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
            if self.shutdown.is_set() {
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
                let policy = retry::RERUN.starting_at(self.config.retry_backoff);
                let pause = Backoff::nth(policy, runs - 1);
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

    pub(super) fn result(&self, task: &TaskMessage, started_at_ms: u64, outcome: Outcome) -> ResultMessage {
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
            attempt_token: task.attempt_token.clone(),
        }
    }

    /// Publishes a result for the bridge `bridge` (the task's: its routing key).
    pub(super) async fn publish_result(&self, key: &str, bridge: Option<String>, result: ResultMessage) {
        // A C1 output goes to the bridge first; the result only names it.
        let bridge_key = bridge.as_deref().unwrap_or("");
        let handed = crate::transfer::payloads::hand_over(&self.config, bridge.as_deref(), &result, &self.shutdown);
        if let Err(err) = handed.await {
            tracing::warn!(call_id = %result.call_id, error = %format!("{err:#}"), "result kept for the next start");
            return;
        }
        match self
            .link
            .publish_until_confirmed(topology::RESULTS_EXCHANGE, bridge_key, &result, &[], &self.shutdown)
            .await
        {
            Ok(()) => {
                if let Err(err) = self.store.done(key) {
                    tracing::error!(call_id = %result.call_id, error = %format!("{err:#}"), "result published but not marked done");
                }
                crate::transfer::payloads::forget_output(&self.config, &result);
            }
            Err(err) => {
                tracing::warn!(call_id = %result.call_id, error = %format!("{err:#}"), "result kept for the next start")
            }
        }
    }
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
