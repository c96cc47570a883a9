//! The life of a job on a worker: where it stands and the named changes
//! that move it.
//!
//! ```text
//!           start_run / forgive_run
//!              ┌────┐
//!   claim ──▶ Claimed ──finish──▶ Finished ──done──▶ Done
//!              │  │
//!              │  └──release───▶ Released      (given back to the bridge)
//!              └─────supersede─▶ Superseded    (the bridge dispatched it again)
//! ```
//!
//! The durable state is [`JobState`], stored with the job
//! ([`super::job_store::JobStore::apply`] applies a change atomically). A
//! change refused because the job moved on is a [`Stale`]: a superseded job
//! whose run ends anyway cannot be finished, so its result is discarded; a
//! job that finished cannot be superseded, so its result is still published
//! (the bridge keeps the first result of a call). What the worker holds in
//! memory while jobs run ([`Held`]) is a view of the claimed jobs, for
//! heartbeats and metrics: it never decides what happens to a job.

use std::collections::BTreeMap;
use std::sync::Mutex;

use sealfarm_schemas::messages::{now_ms, JobProgress, RunningJob};
use sealfarm_schemas::{ResultMessage, TaskMessage};
use serde::{Deserialize, Serialize};

use crate::sealing::layers::LayerRecord;

/// Where a job is in its life on this worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Recorded and acknowledged; not finished. `runs` counts the times a
    /// run of it was started (a job that keeps killing the worker stops).
    Claimed { runs: u32 },
    /// Computed; the result is not yet confirmed by the broker.
    Finished { result: Box<ResultMessage> },
    /// The broker confirmed the result.
    Done { finished_at_ms: u64 },
    /// Given back without a result (SIGTERM with `--on-stop redispatch`, or
    /// restarted with a configuration that no longer takes it): the bridge
    /// dispatches it again; this worker does not resume it.
    Released { at_ms: u64, reason: String },
    /// The bridge dispatched this call again (this attempt's lease expired,
    /// or the operator requeued or aborted it): not resumed here, and its
    /// result, if one comes, is discarded.
    Superseded { at_ms: u64, reason: String },
}

impl JobState {
    /// Whether the job still needs this worker (to run it or publish its result).
    pub fn is_open(&self) -> bool {
        matches!(self, JobState::Claimed { .. } | JobState::Finished { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            JobState::Claimed { .. } => "claimed",
            JobState::Finished { .. } => "finished",
            JobState::Done { .. } => "done",
            JobState::Released { .. } => "released",
            JobState::Superseded { .. } => "superseded",
        }
    }
}

/// One job: the task as it arrived and where it stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub task: TaskMessage,
    pub claimed_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(flatten)]
    pub state: JobState,
    /// PC1: the layers finished so far, with their checksums.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerRecord>,
    /// What happened to the job on this worker, one line per event
    /// ("run 2: layer 1 verified and kept", …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
}

/// The named changes of a job (what [`Stale`] reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    StartRun,
    ForgiveRun,
    Finish,
    Done,
    Release,
    Supersede,
}

/// A change refused because the job is not where the change expects it.
/// Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("job {key}: {transition:?} refused: the job is {found}")]
pub struct Stale {
    pub key: String,
    pub transition: Transition,
    pub found: &'static str,
}

impl JobRecord {
    /// A job just claimed.
    pub fn claimed(task: TaskMessage, now_ms: u64) -> JobRecord {
        JobRecord {
            task,
            claimed_at_ms: now_ms,
            updated_at_ms: now_ms,
            state: JobState::Claimed { runs: 0 },
            layers: Vec::new(),
            history: Vec::new(),
        }
    }

    fn stale(&self, transition: Transition) -> Stale {
        Stale { key: self.task.job_key(), transition, found: self.state.name() }
    }

    fn runs_mut(&mut self, transition: Transition) -> Result<&mut u32, Stale> {
        let stale = self.stale(transition);
        match &mut self.state {
            JobState::Claimed { runs } => Ok(runs),
            _ => Err(stale),
        }
    }

    /// One more run starts; how many have started, this one included.
    pub fn start_run(&mut self) -> Result<u32, Stale> {
        let runs = self.runs_mut(Transition::StartRun)?;
        *runs += 1;
        Ok(*runs)
    }

    /// Takes back the count of a run stopped on purpose (worker shutdown),
    /// so that only crashes count towards giving up.
    pub fn forgive_run(&mut self) -> Result<(), Stale> {
        let runs = self.runs_mut(Transition::ForgiveRun)?;
        *runs = runs.saturating_sub(1);
        Ok(())
    }

    /// The job has its result, to publish. Refused once the job was
    /// released or superseded: that result is discarded.
    pub fn finish(&mut self, result: ResultMessage) -> Result<(), Stale> {
        self.runs_mut(Transition::Finish)?;
        self.state = JobState::Finished { result: Box::new(result) };
        Ok(())
    }

    /// The broker confirmed the result.
    pub fn done(&mut self, at_ms: u64) -> Result<(), Stale> {
        if !matches!(self.state, JobState::Finished { .. }) {
            return Err(self.stale(Transition::Done));
        }
        self.state = JobState::Done { finished_at_ms: at_ms };
        Ok(())
    }

    /// Given back to the bridge without a result.
    pub fn release(&mut self, reason: String, at_ms: u64) -> Result<(), Stale> {
        self.runs_mut(Transition::Release)?;
        self.state = JobState::Released { at_ms, reason };
        Ok(())
    }

    /// The bridge dispatched this call again: this attempt is dropped.
    pub fn supersede(&mut self, reason: String, at_ms: u64) -> Result<(), Stale> {
        self.runs_mut(Transition::Supersede)?;
        self.state = JobState::Superseded { at_ms, reason };
        Ok(())
    }
}

/// The jobs this worker holds in memory (claimed, waiting for their share
/// of the machine or running), by job key: what heartbeats list and the
/// metrics count. A view of the claimed jobs of the store, kept by the
/// service as jobs start and end.
#[derive(Default)]
pub struct Held {
    jobs: Mutex<BTreeMap<String, RunningJob>>,
}

impl Held {
    /// Lists a claimed job (waiting for its share of the machine).
    pub fn hold(&self, task: &TaskMessage) {
        let job = RunningJob {
            call_id: task.call_id,
            attempt: task.attempt,
            sector: task.sector,
            stage: task.stage(),
            started_at_ms: now_ms(),
            running_since_ms: None,
            progress: None,
        };
        self.jobs.lock().unwrap().insert(task.job_key(), job);
    }

    /// The job got its share of the machine and computes since `at_ms`.
    pub fn running(&self, key: &str, at_ms: u64) {
        if let Some(job) = self.jobs.lock().unwrap().get_mut(key) {
            job.running_since_ms = Some(at_ms);
        }
    }

    pub fn progress(&self, key: &str, progress: JobProgress) {
        if let Some(job) = self.jobs.lock().unwrap().get_mut(key) {
            job.progress = Some(progress);
        }
    }

    /// The job ended here; what was listed.
    pub fn end(&self, key: &str) -> Option<RunningJob> {
        self.jobs.lock().unwrap().remove(key)
    }

    /// Drops a job that does not compute yet (superseded while it waited);
    /// a computing one stays listed, holding its share, until its run ends.
    pub fn end_if_waiting(&self, key: &str) -> Option<RunningJob> {
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.get(key).is_some_and(|j| j.running_since_ms.is_none()) {
            return jobs.remove(key);
        }
        None
    }

    pub fn list(&self) -> Vec<RunningJob> {
        self.jobs.lock().unwrap().values().cloned().collect()
    }

    pub fn keyed(&self) -> Vec<(String, RunningJob)> {
        self.jobs.lock().unwrap().iter().map(|(k, j)| (k.clone(), j.clone())).collect()
    }

    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A finished result of `task`, for the tests of the job and its store.
#[cfg(test)]
pub(crate) fn done_result(task: &TaskMessage) -> ResultMessage {
    ResultMessage {
        schema: sealfarm_schemas::SCHEMA_VERSION,
        call_id: task.call_id,
        attempt: task.attempt,
        sector: task.sector,
        stage: task.stage(),
        worker: "w-a".into(),
        storage_id: None,
        started_at_ms: 1,
        finished_at_ms: 2,
        outcome: sealfarm_schemas::Outcome::Done(sealfarm_schemas::StageOutput::Fin {}),
        attempt_token: task.attempt_token.clone(),
    }
}

#[cfg(test)]
mod tests {
    use sealfarm_schemas::{RegisteredSealProof, SectorId, SectorRef, Task};

    use super::*;

    fn record(state: &str) -> JobRecord {
        let sector = SectorRef { id: SectorId { miner: 1000, number: 1 }, proof_type: RegisteredSealProof(5) };
        let task = TaskMessage::new(sector, Task::Fin {});
        let mut record = JobRecord::claimed(task, 1);
        record.state = match state {
            "claimed" => JobState::Claimed { runs: 1 },
            "finished" => JobState::Finished { result: Box::new(super::done_result(&record.task)) },
            "done" => JobState::Done { finished_at_ms: 2 },
            "released" => JobState::Released { at_ms: 2, reason: "stop".into() },
            "superseded" => JobState::Superseded { at_ms: 2, reason: "lease".into() },
            other => panic!("no fixture {other}"),
        };
        record
    }

    type Change = fn(&mut JobRecord) -> Result<(), Stale>;

    /// Every change from every state: the state it leaves, or "-" where it
    /// is refused (and the record left as it was).
    #[test]
    fn every_transition_from_every_state() {
        let states = ["claimed", "finished", "done", "released", "superseded"];
        let table: [(&str, Change, [&str; 5]); 6] = [
            ("start_run", |r| r.start_run().map(drop), ["claimed", "-", "-", "-", "-"]),
            ("forgive_run", |r| r.forgive_run(), ["claimed", "-", "-", "-", "-"]),
            ("finish", |r| r.finish(super::done_result(&r.task.clone())), ["finished", "-", "-", "-", "-"]),
            ("done", |r| r.done(3), ["-", "done", "-", "-", "-"]),
            ("release", |r| r.release("stop".into(), 3), ["released", "-", "-", "-", "-"]),
            ("supersede", |r| r.supersede("lease".into(), 3), ["superseded", "-", "-", "-", "-"]),
        ];
        for (name, change, expected) in table {
            for (state, want) in states.iter().zip(expected) {
                let mut job = record(state);
                let before = serde_json::to_value(&job).unwrap();
                match (want, change(&mut job)) {
                    ("-", Err(stale)) => {
                        assert_eq!(serde_json::to_value(&job).unwrap(), before, "{name} from {state} changed the job");
                        assert_eq!(stale.found, *state);
                    }
                    ("-", Ok(())) => panic!("{name} from {state} must be refused"),
                    (want, Ok(())) => assert_eq!(job.state.name(), want, "{name} from {state}"),
                    (want, Err(stale)) => panic!("{name} from {state} must give {want}: {stale}"),
                }
            }
        }
    }

    #[test]
    fn runs_are_counted_and_forgiven() {
        let mut job = record("claimed");
        assert_eq!(job.start_run(), Ok(2));
        job.forgive_run().unwrap();
        assert_eq!(job.state, JobState::Claimed { runs: 1 });
    }
}
