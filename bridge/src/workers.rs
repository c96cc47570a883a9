//! The farm as the bridge sees it: every worker that sent a heartbeat, with
//! what it takes (stages, sizes, slots), its machine, where it keeps sector
//! files and whether it is still alive. Routing, `Info`/`TaskTypes` and the
//! `/remote` proxy read it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sealfarm_schemas::hardware::Hardware;
use sealfarm_schemas::messages::{now_ms, ResourceUse, RunningJob, StageSlots};
use sealfarm_schemas::{SectorSize, Stage};

/// One worker, from its last heartbeat.
#[derive(Clone, Debug)]
pub struct WorkerView {
    pub id: String,
    pub hostname: String,
    pub last_seen: Instant,
    pub capacity: Vec<StageSlots>,
    pub hardware: Option<Hardware>,
    /// Its sealing path's storage id; workers sharing one path share it.
    pub storage_id: Option<String>,
    /// Its file server (worker-local storage).
    pub files_url: Option<String>,
    pub running: Vec<RunningJob>,
    /// Drained by the operator: takes nothing from the stage queues.
    pub draining: bool,
    /// Stages it does not take yet: it is warming up (GPU kernels).
    pub warming: Vec<Stage>,
    pub in_use: Option<ResourceUse>,
}

impl WorkerView {
    pub fn slots(&self, stage: Stage, size: SectorSize) -> u32 {
        self.capacity.iter().find(|c| c.stage == stage && c.sector_size == size).map_or(0, |c| c.slots)
    }
}

/// A worker silent this long is forgotten: its leases expired long before,
/// and `workers` stops listing it.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The most workers the registry holds. Beyond it those that take and hold
/// nothing go first, the longest silent first: a flood of heartbeats under
/// made-up ids (from a broker user allowed to speak for any worker) cannot
/// grow the bridge's memory, metrics or status work without bound, and a
/// worker that is pushed out is back at its next heartbeat.
pub const MAX_WORKERS: usize = 10_000;

pub struct Farm {
    workers: Mutex<HashMap<String, WorkerView>>,
    /// When the registry was last swept for forgotten workers.
    swept: Mutex<Instant>,
    /// When each held call last showed progress (claim, PC1 layer), Unix ms.
    progress: Mutex<HashMap<uuid::Uuid, u64>>,
    started: Instant,
    /// No heartbeat for this long: the worker is gone.
    gone_after: Duration,
}

impl Farm {
    pub fn new(gone_after: Duration) -> Self {
        Farm {
            workers: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
            progress: Default::default(),
            started: Instant::now(),
            gone_after,
        }
    }

    /// Every worker heard of within [`FORGET_AFTER`] (at most [`MAX_WORKERS`]), by id.
    pub fn all(&self) -> Vec<WorkerView> {
        let mut all: Vec<WorkerView> = self.workers.lock().unwrap().values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Notes progress of a call (a claim, a finished PC1 layer) at `at_ms`.
    pub fn progressed(&self, call_id: uuid::Uuid, at_ms: u64) {
        let mut progress = self.progress.lock().unwrap();
        let last = progress.entry(call_id).or_insert(at_ms);
        *last = (*last).max(at_ms);
        // Forget calls no worker mentioned for a day.
        let day_ago = now_ms().saturating_sub(86_400_000);
        progress.retain(|_, at| *at >= day_ago);
    }

    /// When a call last showed progress, Unix ms.
    pub fn last_progress(&self, call_id: uuid::Uuid) -> Option<u64> {
        self.progress.lock().unwrap().get(&call_id).copied()
    }

    pub fn heartbeat(&self, view: WorkerView) {
        let mut workers = self.workers.lock().unwrap();
        workers.insert(view.id.clone(), view);
        let sweep = {
            let mut swept = self.swept.lock().unwrap();
            let due = swept.elapsed() > Duration::from_secs(60);
            if due {
                *swept = Instant::now();
            }
            due
        };
        if sweep {
            workers.retain(|_, w| w.last_seen.elapsed() <= FORGET_AFTER);
        }
        if workers.len() > MAX_WORKERS {
            // A tenth at once (a flood of new ids costs one sort per thousand
            // heartbeats, not a scan per heartbeat): first those that take
            // nothing and hold nothing, then those that hold no job, each
            // longest silent first. A flood of made-up ids then pushes out
            // made-up ids, not a real worker that was merely quiet for a
            // moment (forgotten, its files would count as gone).
            let rank = |w: &WorkerView| match (w.running.is_empty(), w.capacity.is_empty() && w.storage_id.is_none()) {
                (true, true) => 0,
                (true, false) => 1,
                (false, _) => 2,
            };
            let mut by_silence: Vec<(u8, Instant, String)> =
                workers.values().map(|w| (rank(w), w.last_seen, w.id.clone())).collect();
            by_silence.sort_unstable();
            let excess = workers.len() - MAX_WORKERS * 9 / 10;
            for (_, _, id) in by_silence.into_iter().take(excess) {
                workers.remove(&id);
            }
            tracing::warn!(
                forgotten = excess,
                "over {MAX_WORKERS} workers known: the longest silent ones are forgotten (back at their next heartbeat)"
            );
        }
    }

    pub fn get(&self, id: &str) -> Option<WorkerView> {
        self.workers.lock().unwrap().get(id).cloned()
    }

    /// Workers heard from within the last `within`.
    pub fn live(&self, within: Duration) -> Vec<WorkerView> {
        let mut live: Vec<WorkerView> =
            self.workers.lock().unwrap().values().filter(|w| w.last_seen.elapsed() <= within).cloned().collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        live
    }

    /// True when `id` sent no heartbeat for the gone-after time (counting
    /// from the bridge's start for a worker it never heard of).
    pub fn is_gone(&self, id: &str) -> bool {
        let since = self.get(id).map(|w| w.last_seen).unwrap_or(self.started);
        since.elapsed() > self.gone_after
    }

    /// How long ago `id` was last heard of, if ever.
    pub fn silent_for(&self, id: &str) -> Option<Duration> {
        self.get(id).map(|w| w.last_seen.elapsed())
    }

    /// Slots of the workers heard from within `within`, per stage and size.
    pub fn capacity(&self, within: Duration) -> BTreeMap<(Stage, SectorSize), u32> {
        let mut total = BTreeMap::new();
        for worker in self.live(within) {
            for c in &worker.capacity {
                let slots = total.entry((c.stage, c.sector_size)).or_insert(0u32);
                *slots = slots.saturating_add(c.slots); // reported figures: never overflow
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, capacity: bool) -> WorkerView {
        WorkerView {
            id: id.into(),
            hostname: "h".into(),
            last_seen: Instant::now(),
            capacity: if capacity {
                vec![StageSlots { stage: Stage::Pc1, sector_size: SectorSize::KIB2, slots: 1 }]
            } else {
                Vec::new()
            },
            hardware: None,
            storage_id: None,
            files_url: None,
            running: Vec::new(),
            draining: false,
            warming: Vec::new(),
            in_use: None,
        }
    }

    /// A flood of made-up ids that take nothing pushes out made-up ids: the
    /// real worker, quieter than all of them, stays; the registry stays bounded.
    #[test]
    fn a_flood_of_made_up_ids_does_not_push_out_a_real_worker() {
        let farm = Farm::new(Duration::from_secs(600));
        farm.heartbeat(view("real", true));
        for n in 0..(MAX_WORKERS * 3) {
            farm.heartbeat(view(&format!("made-up-{n}"), false));
        }
        assert!(farm.get("real").is_some(), "the real worker was forgotten");
        assert!(farm.all().len() <= MAX_WORKERS);
    }
}
