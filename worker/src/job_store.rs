//! The worker's durable record of every job it claimed (sled).
//!
//! A task's delivery is acknowledged only after its job is written here and
//! flushed, so a claimed job survives a crash of the worker: on restart the
//! worker runs every `Claimed` job again and republishes every `Finished`
//! result the broker never confirmed. A job is `Done` once the broker
//! confirmed its result; done records make a redelivered task a no-op.

use std::path::Path;

use anyhow::{Context, Result};
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::{ResultMessage, TaskMessage};
use serde::{Deserialize, Serialize};

use crate::layers::LayerRecord;

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
    /// Given back without a result (SIGTERM with `--on-stop redispatch`):
    /// the bridge dispatches it again; this worker does not resume it.
    Released { at_ms: u64, reason: String },
    /// The bridge dispatched this call again (this attempt's lease expired):
    /// not resumed here, and its result, if one comes, is discarded.
    Superseded { at_ms: u64, reason: String },
}

impl JobState {
    /// Whether the job still needs this worker (to run it or publish its result).
    pub fn is_open(&self) -> bool {
        matches!(self, JobState::Claimed { .. } | JobState::Finished { .. })
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

/// What [`JobStore::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// The job is new and now recorded.
    New,
    /// This call and attempt is already known (a redelivery).
    Known(JobState),
}

const DRAINED_KEY: &[u8] = b"drained";

/// Jobs by `<call-id>/<attempt>`, in a sled database under the state directory.
#[derive(Clone)]
pub struct JobStore {
    db: sled::Db,
    jobs: sled::Tree,
}

impl JobStore {
    pub fn open(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
        let path = state_dir.join("jobs.sled");
        // Rewritten at start when removed jobs left most of it empty (sled
        // does not give that space back by itself).
        let db = sealfarm_schemas::sled_rewrite::open_compacted(&path, |path| {
            sled::open(path).with_context(|| {
                format!("cannot open job store {} (is another worker using this --state-dir?)", path.display())
            })
        })?;
        let jobs = db.open_tree("jobs")?;
        Ok(JobStore { db, jobs })
    }

    /// Removes the records of jobs that ended (done, released, superseded)
    /// more than `retain` ago; how many went. Open jobs are never removed.
    pub fn prune(&self, retain: std::time::Duration) -> Result<usize> {
        let cutoff = now_ms().saturating_sub(retain.as_millis() as u64);
        let mut removed = 0;
        for entry in self.jobs.iter() {
            let (key, bytes) = entry?;
            let Ok(record) = serde_json::from_slice::<JobRecord>(&bytes) else { continue };
            if !record.state.is_open() && record.updated_at_ms < cutoff {
                // Only if unchanged since it was read.
                if self.jobs.compare_and_swap(&key, Some(bytes), None::<&[u8]>)?.is_ok() {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            self.db.flush()?;
        }
        Ok(removed)
    }

    /// Why the operator drained this worker, while it is drained (kept across restarts).
    pub fn drained(&self) -> Result<Option<String>> {
        Ok(self.db.get(DRAINED_KEY)?.map(|reason| String::from_utf8_lossy(&reason).into_owned()))
    }

    /// Records a drain (Some) or its end (None).
    pub fn set_drained(&self, reason: Option<&str>) -> Result<()> {
        match reason {
            Some(reason) => self.db.insert(DRAINED_KEY, reason.as_bytes())?,
            None => self.db.remove(DRAINED_KEY)?,
        };
        self.db.flush()?;
        Ok(())
    }

    /// Records a new job durably, or reports what is known of it already.
    pub fn claim(&self, task: &TaskMessage) -> Result<Claim> {
        let key = task.job_key();
        if let Some(existing) = self.get(&key)? {
            return Ok(Claim::Known(existing.state));
        }
        let now = now_ms();
        let record = JobRecord {
            task: task.clone(),
            claimed_at_ms: now,
            updated_at_ms: now,
            state: JobState::Claimed { runs: 0 },
            layers: Vec::new(),
            history: Vec::new(),
        };
        self.put(&key, &record)?;
        Ok(Claim::New)
    }

    /// Counts one more start of a claimed job and returns how many there were
    /// (0: the job is not claimed here any more).
    pub fn start_run(&self, key: &str) -> Result<u32> {
        let mut record = self.get(key)?.with_context(|| format!("job {key} is not in the store"))?;
        let runs = match &mut record.state {
            JobState::Claimed { runs } => {
                *runs += 1;
                *runs
            }
            _ => return Ok(0),
        };
        self.update(key, record)?;
        Ok(runs)
    }

    /// Takes back the count of a run that was stopped on purpose (worker
    /// shutdown), so that only crashes count towards giving up.
    pub fn forgive_run(&self, key: &str) -> Result<()> {
        self.modify(key, |record| {
            if let JobState::Claimed { runs } = &mut record.state {
                *runs = runs.saturating_sub(1);
            }
        })
    }

    /// Stores a job's result before it is published.
    pub fn finish(&self, result: &ResultMessage) -> Result<()> {
        let key = format!("{}/{}", result.call_id, result.attempt);
        let mut record = self.get(&key)?.with_context(|| format!("job {key} is not in the store"))?;
        record.state = JobState::Finished { result: Box::new(result.clone()) };
        self.update(&key, record)
    }

    /// Marks a job done once the broker confirmed its result. Not flushed:
    /// sled writes it out within half a second and a clean stop flushes it; a
    /// crash before that only publishes the result once more at start (the
    /// bridge keeps the first).
    pub fn done(&self, key: &str) -> Result<()> {
        let mut record = self.get(key)?.with_context(|| format!("job {key} is not in the store"))?;
        record.state = JobState::Done { finished_at_ms: now_ms() };
        record.updated_at_ms = now_ms();
        self.write(key, &record)
    }

    /// Replaces the job's layer records (after a resume check).
    pub fn set_layers(&self, key: &str, layers: Vec<LayerRecord>) -> Result<()> {
        self.modify(key, |record| record.layers = layers)
    }

    /// Adds layer records (as layers finish).
    pub fn add_layers(&self, key: &str, layers: &[LayerRecord]) -> Result<()> {
        self.modify(key, |record| {
            record.layers.extend_from_slice(layers);
            record.layers.sort_by_key(|l| l.layer);
        })
    }

    /// Adds a line to the job's history.
    pub fn note(&self, key: &str, line: impl Into<String>) -> Result<()> {
        let line = line.into();
        self.modify(key, |record| record.history.push(line))
    }

    /// Ends a claimed job without a result (released or superseded); a job
    /// already finished keeps its state. Returns whether it was claimed.
    pub fn drop_claim(&self, key: &str, state: JobState) -> Result<bool> {
        let Some(record) = self.get(key)? else { return Ok(false) };
        if !matches!(record.state, JobState::Claimed { .. }) {
            return Ok(false);
        }
        self.modify(key, |record| record.state = state)?;
        Ok(true)
    }

    fn modify(&self, key: &str, change: impl FnOnce(&mut JobRecord)) -> Result<()> {
        let mut record = self.get(key)?.with_context(|| format!("job {key} is not in the store"))?;
        change(&mut record);
        self.update(key, record)
    }

    /// Writes out everything stored so far (also what [`done`](Self::done) left unflushed).
    pub fn flush(&self) -> Result<()> {
        self.db.flush().context("flushing the job store")?;
        Ok(())
    }

    /// Drops a job whose claim did not take (its delivery could not be acknowledged).
    pub fn forget(&self, key: &str) -> Result<()> {
        self.jobs.remove(key.as_bytes())?;
        self.flush()
    }

    pub fn get(&self, key: &str) -> Result<Option<JobRecord>> {
        match self.jobs.get(key.as_bytes())? {
            Some(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("job record {key} is corrupt"))?))
            }
            None => Ok(None),
        }
    }

    /// Every job not yet done, oldest claim first.
    pub fn unfinished(&self) -> Result<Vec<JobRecord>> {
        let mut records = Vec::new();
        for entry in self.jobs.iter() {
            let (_, bytes) = entry?;
            let record: JobRecord = serde_json::from_slice(&bytes).context("a job record is corrupt")?;
            if record.state.is_open() {
                records.push(record);
            }
        }
        records.sort_by_key(|r| r.claimed_at_ms);
        Ok(records)
    }

    /// Every job, for inspection.
    pub fn all(&self) -> Result<Vec<JobRecord>> {
        self.jobs
            .iter()
            .map(|entry| {
                let (_, bytes) = entry?;
                serde_json::from_slice(&bytes).context("a job record is corrupt")
            })
            .collect()
    }

    fn update(&self, key: &str, mut record: JobRecord) -> Result<()> {
        record.updated_at_ms = now_ms();
        self.put(key, &record)
    }

    fn put(&self, key: &str, record: &JobRecord) -> Result<()> {
        self.write(key, record)?;
        // fsync before anything that depends on this record (an ack, a publish).
        self.flush()
    }

    /// Stores a record without flushing it.
    fn write(&self, key: &str, record: &JobRecord) -> Result<()> {
        self.jobs.insert(key.as_bytes(), serde_json::to_vec(record)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealfarm_schemas::{RegisteredSealProof, SectorId, SectorRef, Task};

    fn task() -> TaskMessage {
        let sector = SectorRef { id: SectorId { miner: 1000, number: 1 }, proof_type: RegisteredSealProof(5) };
        TaskMessage::new(sector, Task::Fin {})
    }

    #[test]
    fn a_claimed_job_survives_reopening_and_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let task = task();
        {
            let store = JobStore::open(dir.path()).unwrap();
            assert!(matches!(store.claim(&task).unwrap(), Claim::New));
            assert_eq!(store.start_run(&task.job_key()).unwrap(), 1);
        }
        let store = JobStore::open(dir.path()).unwrap();
        match store.claim(&task).unwrap() {
            Claim::Known(JobState::Claimed { runs }) => assert_eq!(runs, 1),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(store.unfinished().unwrap().len(), 1);
        store.done(&task.job_key()).unwrap();
        assert!(store.unfinished().unwrap().is_empty());
        assert!(matches!(store.claim(&task).unwrap(), Claim::Known(JobState::Done { .. })));
    }

    /// Ended jobs past the retention go; open ones stay whatever their age.
    #[test]
    fn prune_removes_only_jobs_that_ended_before_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let (ended, open) = (task(), task());
        store.claim(&ended).unwrap();
        store.claim(&open).unwrap();
        store.done(&ended.job_key()).unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(store.prune(hour).unwrap(), 0, "a job that ended just now is kept");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(store.prune(std::time::Duration::from_millis(10)).unwrap(), 1);
        assert!(store.get(&ended.job_key()).unwrap().is_none());
        assert_eq!(store.unfinished().unwrap().len(), 1, "the open job is kept");
    }
}
