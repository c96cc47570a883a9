//! Where a call's task goes: the stage queue, or the own queue of the
//! worker holding the sector's files; and publishing it there.

use anyhow::Result;
use sealfarm_schemas::topology;
use sealfarm_schemas::{CallError, ErrorCode, TaskMessage};
use std::time::Duration;

use super::Calls;

impl Calls {
    /// Where a task goes. C2, PR2, DataCid and every task of a sector whose files no
    /// worker created yet: the stage's shared queue. A location-bound task
    /// (AddPiece of a further piece, PC1, PC2, C1, finalize, release): the
    /// own queue of the worker holding the sector's files, while it is alive
    /// and takes that stage; else, in shared storage (the bridge mounts the
    /// worker's sealing path), the shared queue. In worker-local storage a
    /// holder that is gone or does not take the stage fails the call: the
    /// files are nowhere else, so the miner must seal the sector again.
    ///
    /// `avoid`: a worker the task is being taken away from (its lease
    /// expired, it released the task, it is gone); in shared storage the task
    /// then goes to the stage queue even if that worker holds the files.
    pub fn route(&self, task: &TaskMessage, avoid: Option<&str>) -> Result<String, CallError> {
        let Some(info) = task.sector.proof_type.info() else {
            let message = format!("unknown seal proof type {}", task.sector.proof_type.0);
            return Err(CallError::new(ErrorCode::UNKNOWN, message));
        };
        let (shared, size) = (topology::task_queue(task.stage(), info.sector_size), info.sector_size);
        if task.stage().is_location_free() {
            return Ok(shared);
        }
        let location = match self.store.location(task.sector.id) {
            Ok(Some(location)) => location,
            Ok(None) => return Ok(shared),
            Err(err) => {
                return Err(CallError::new(
                    ErrorCode::TEMP_WORKER_RESTART,
                    format!("sealfarm-bridge call store: {err:#}"),
                ))
            }
        };
        let holder = &location.worker;
        let view = self.farm.get(holder);
        let storage = location.storage_id.clone().or_else(|| view.as_ref().and_then(|w| w.storage_id.clone()));
        let shared_storage = storage.is_some_and(|id| self.shared_storage.contains(&id));
        let gone = self.farm.is_gone(holder);
        // A holder not heard of since the bridge started (its heartbeat is on
        // the way) keeps its tasks in worker-local storage; in shared
        // storage any worker can take them.
        // A drained holder in shared storage gets nothing new, nor one still
        // warming up for this stage: others can reach the files. In
        // worker-local storage only it can (the task waits there).
        let takes = view.map_or(!shared_storage, |w| {
            let away = w.draining || w.warming.contains(&task.stage());
            w.slots(task.stage(), size) > 0 && !(away && shared_storage && !self.farm.is_gone(holder))
        });
        if !gone && takes && (avoid != Some(holder.as_str()) || !shared_storage) {
            return Ok(topology::worker_queue(holder));
        }
        if shared_storage {
            return Ok(shared);
        }
        let stage = task.stage();
        let sector = task.sector.id;
        let message = if gone {
            let silent = self.farm.silent_for(holder).map_or("since the bridge started".to_string(), |d| {
                format!("for {}", humantime::format_duration(Duration::from_secs(d.as_secs())))
            });
            format!(
                "sealfarm: the files of sector {sector} are on worker {holder} (worker-local storage), which has sent \
                 no heartbeat {silent}: {stage} cannot run anywhere else and the sector must be sealed again"
            )
        } else {
            format!(
                "sealfarm: the files of sector {sector} are on worker {holder} (worker-local storage), which does not \
                 take {stage} of {size} sectors: in worker-local storage every stage from AddPiece to finalize runs \
                 where the files are, so let {holder} take {stage} (or use shared storage)"
            )
        };
        Err(CallError::new(ErrorCode::UNKNOWN, message))
    }

    /// Publishes a task where [`Calls::route`] sends it and waits for the
    /// broker's confirm; a task that can no longer run is an Err.
    pub async fn publish_task(&self, task: &TaskMessage) -> Result<()> {
        let queue = self.route(task, None).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        self.publish_to(&queue, task).await
    }

    pub(super) async fn publish_to(&self, queue: &str, task: &TaskMessage) -> Result<()> {
        self.declare_worker_queue(queue).await?;
        self.link.publish_json("", queue, &self.senders.stamped(task), &[]).await
    }

    /// A worker's own queue exists once the worker consumed it; declared
    /// here too so a task routed there is never unroutable. Other queues: nothing to do.
    pub(super) async fn declare_worker_queue(&self, queue: &str) -> Result<()> {
        if topology::worker_of_queue(queue).is_some() {
            self.link.get().await?.declare_queue(&sealfarm_runtime::queues::QueueSpec::work(queue)).await?;
        }
        Ok(())
    }
}
