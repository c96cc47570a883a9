//! The worker's durable record of every job it claimed (sled).
//!
//! A task's delivery is acknowledged only after its job is written here and
//! flushed, so a claimed job survives a crash of the worker: on restart the
//! worker runs every `Claimed` job again and republishes every `Finished`
//! result the broker never confirmed. A job is `Done` once the broker
//! confirmed its result; done records make a redelivered task a no-op.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::{ResultMessage, TaskMessage};

use crate::sealing::layers::LayerRecord;

pub use super::job::{JobRecord, JobState, Stale};

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
    /// Serialises read-change-write of a job: the run loop, the PC1 layer
    /// watcher and control messages (supersede) change jobs from different
    /// tasks.
    changes: Arc<Mutex<()>>,
}

impl JobStore {
    pub fn open(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
        let path = state_dir.join("jobs.sled");
        // Rewritten at start when removed jobs left most of it empty (sled
        // does not give that space back by itself).
        let db = sealfarm_runtime::sled_rewrite::open_compacted(&path, |path| {
            sled::open(path).with_context(|| {
                format!("cannot open job store {} (is another worker using this --state-dir?)", path.display())
            })
        })?;
        let jobs = db.open_tree("jobs")?;
        Ok(JobStore { db, jobs, changes: Default::default() })
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
        let _one_writer = self.changes.lock().unwrap();
        let key = task.job_key();
        if let Some(existing) = self.get(&key)? {
            return Ok(Claim::Known(existing.state));
        }
        self.put(&key, &JobRecord::claimed(task.clone(), now_ms()))?;
        Ok(Claim::New)
    }

    /// Applies a named change of the job's lifecycle (a method of
    /// [`JobRecord`]) atomically with respect to every other change, and
    /// flushes it; the value the change gave, or the [`Stale`] refusal when
    /// the job had moved on (nothing written).
    pub fn apply<T>(
        &self,
        key: &str,
        change: impl FnOnce(&mut JobRecord) -> Result<T, Stale>,
    ) -> Result<Result<T, Stale>> {
        self.apply_with(key, true, change)
    }

    fn apply_with<T>(
        &self,
        key: &str,
        flush: bool,
        change: impl FnOnce(&mut JobRecord) -> Result<T, Stale>,
    ) -> Result<Result<T, Stale>> {
        let _one_writer = self.changes.lock().unwrap();
        let mut record = self.get(key)?.with_context(|| format!("job {key} is not in the store"))?;
        let value = match change(&mut record) {
            Ok(value) => value,
            Err(stale) => return Ok(Err(stale)),
        };
        record.updated_at_ms = now_ms();
        self.write(key, &record)?;
        if flush {
            // fsync before anything that depends on this record (an ack, a publish).
            self.flush()?;
        }
        Ok(Ok(value))
    }

    /// Counts one more start of a claimed job and returns how many there were
    /// (0: the job is not claimed here any more).
    pub fn start_run(&self, key: &str) -> Result<u32> {
        Ok(self.apply(key, JobRecord::start_run)?.unwrap_or(0))
    }

    /// Takes back the count of a run that was stopped on purpose (worker
    /// shutdown), so that only crashes count towards giving up.
    pub fn forgive_run(&self, key: &str) -> Result<()> {
        let _ = self.apply(key, JobRecord::forgive_run)?;
        Ok(())
    }

    /// Stores a job's result before it is published; Stale when the job was
    /// released or superseded meanwhile (the result is then discarded).
    pub fn finish(&self, result: &ResultMessage) -> Result<Result<(), Stale>> {
        let key = format!("{}/{}", result.call_id, result.attempt);
        self.apply(&key, |record| record.finish(result.clone()))
    }

    /// Marks a job done once the broker confirmed its result. Not flushed:
    /// sled writes it out within half a second and a clean stop flushes it; a
    /// crash before that only publishes the result once more at start (the
    /// bridge keeps the first).
    pub fn done(&self, key: &str) -> Result<()> {
        let _ = self.apply_with(key, false, |record| record.done(now_ms()))?;
        Ok(())
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

    /// Ends a claimed job without a result: given back to the bridge.
    /// Whether it was claimed (a finished job keeps its result).
    pub fn release(&self, key: &str, reason: String) -> Result<bool> {
        Ok(self.apply(key, |record| record.release(reason, now_ms()))?.is_ok())
    }

    /// Ends a claimed job without a result: the bridge dispatched its call
    /// again. Whether it was claimed (a finished job keeps its result).
    pub fn supersede(&self, key: &str, reason: String) -> Result<bool> {
        Ok(self.apply(key, |record| record.supersede(reason, now_ms()))?.is_ok())
    }

    /// Whether the job was superseded (its result, if one comes, is discarded).
    pub fn is_superseded(&self, key: &str) -> bool {
        matches!(self.get(key), Ok(Some(JobRecord { state: JobState::Superseded { .. }, .. })))
    }

    /// Changes what a job records besides its state (layers, history).
    fn modify(&self, key: &str, change: impl FnOnce(&mut JobRecord)) -> Result<()> {
        let _ = self.apply(key, |record| {
            change(record);
            Ok(())
        })?;
        Ok(())
    }

    /// Writes out everything stored so far (also what [`done`](Self::done) left unflushed).
    pub fn flush(&self) -> Result<()> {
        self.db.flush().context("flushing the job store")?;
        Ok(())
    }

    /// Drops a job whose claim did not take (its delivery could not be acknowledged).
    pub fn forget(&self, key: &str) -> Result<()> {
        let _one_writer = self.changes.lock().unwrap();
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

    /// Finishes a claimed job and marks it done, as the service does once
    /// the broker confirmed its result.
    fn finish_and_done(store: &JobStore, task: &TaskMessage) {
        let result = super::super::job::done_result(task);
        store.finish(&result).unwrap().unwrap();
        store.done(&task.job_key()).unwrap();
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
        finish_and_done(&store, &task);
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
        finish_and_done(&store, &ended);
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(store.prune(hour).unwrap(), 0, "a job that ended just now is kept");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(store.prune(std::time::Duration::from_millis(10)).unwrap(), 1);
        assert!(store.get(&ended.job_key()).unwrap().is_none());
        assert_eq!(store.unfinished().unwrap().len(), 1, "the open job is kept");
    }

    /// A supersede that lands while the PC1 layer watcher records a layer is
    /// never written back to `claimed` by the watcher's read-change-write
    /// (which would resume the dropped attempt after a restart). The
    /// watcher's change is held open until the supersede has been issued.
    #[test]
    fn a_supersede_racing_a_layer_update_is_never_undone() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let task = task();
        let key = task.job_key();
        store.claim(&task).unwrap();
        let (entered, in_change) = std::sync::mpsc::channel();
        let watcher = {
            let (store, key) = (store.clone(), key.clone());
            std::thread::spawn(move || {
                // What `add_layers` does, with the change held open a moment.
                store
                    .apply(&key, |record| {
                        entered.send(()).unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        record.history.push("run 1: layer 1 computed".into());
                        Ok(())
                    })
                    .unwrap()
                    .unwrap();
            })
        };
        in_change.recv().unwrap();
        let superseded = store.supersede(&key, "attempt 2 was dispatched".into()).unwrap();
        watcher.join().unwrap();
        assert!(superseded);
        let record = store.get(&key).unwrap().unwrap();
        assert!(matches!(record.state, JobState::Superseded { .. }), "written back to {:?}", record.state);
        assert_eq!(record.history, ["run 1: layer 1 computed"]);
        assert!(store.unfinished().unwrap().is_empty(), "no dropped attempt resumes at the next start");
    }
}
