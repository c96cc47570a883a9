//! Heartbeats: what this worker takes, holds and has, sent every
//! `--heartbeat-interval` and soon after a change.

use std::sync::Arc;
use std::time::Duration;

use sealfarm_schemas::hardware::Hardware;
use sealfarm_schemas::EventKind;

use super::Worker;

/// The least time between a job's end-of-job heartbeat and the one before.
const HEARTBEAT_GAP: Duration = Duration::from_millis(500);

impl Worker {
    /// A heartbeat now, or, if one went out less than `HEARTBEAT_GAP` ago,
    /// one when that gap ends (short jobs would otherwise heartbeat per job).
    pub(super) async fn heartbeat_soon(self: &Arc<Self>) {
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

    pub(super) async fn heartbeats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        loop {
            tick.tick().await;
            self.heartbeat().await;
        }
    }

    pub(super) async fn heartbeat(&self) {
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

    /// The start-up probe with memory in use and free space as they are now
    /// (the GPUs are not probed again).
    pub(super) fn hardware_now(&self) -> Hardware {
        let paths = [self.config.sealing.root(), self.config.state_dir.as_path()];
        crate::placement::hardware::refresh(&self.config.hardware, &paths)
    }
}
