//! The machine's resources, shared by every job the worker runs, handed out
//! in lotus' order.
//!
//! Each stage and size has its slots (how many of its jobs fit on the
//! machine alone), but a box that takes PC1 and PC2 runs both from one pool
//! of memory, cores and GPUs. Before a job runs it takes its share — lotus'
//! `MinMemory` (with `BaseMinMemory` free on top), its threads, its GPU — and
//! gives it back when it ends. Jobs waiting for a share go in lotus' order:
//! deal sectors before committed-capacity ones, then by task (release and
//! finalize, C1, C2, PC2, PC1, AddPiece: later stages before new PC1s), then
//! the lower sector number; the first waiter in that order that fits goes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sealfarm_schemas::{Stage, TaskMessage};
use tokio::sync::Notify;

/// What one job takes from the machine while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Need {
    pub memory: u64,
    /// Memory that must be free on top of `memory` for the job to start.
    pub base_memory: u64,
    pub threads: u64,
    pub gpus: f64,
}

/// The order waiting jobs go in (smaller first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Priority {
    /// false for deal sectors, so that they sort first.
    not_deal: bool,
    /// lotus' task priority: lower first.
    stage_rank: i8,
    sector: u64,
    seq: u64,
}

/// lotus' scheduling order of task types (`sealtasks` priority, lower first).
pub fn stage_rank(stage: Stage) -> i8 {
    match stage {
        Stage::Fru => -3,
        Stage::Dl => 0,
        Stage::Unseal => 1,
        Stage::Pr1 => 6,
        Stage::Pr2 => 7,
        Stage::Update => 8,
        Stage::Gsk => 10,
        Stage::Dc => 11,
        Stage::Ru => -4,
        Stage::Fin => -3,
        Stage::C1 => 2,
        Stage::C2 => 3,
        Stage::Pc2 => 4,
        Stage::Pc1 => 5,
        Stage::Ap => 9,
    }
}

struct Pool {
    memory: u64,
    threads: u64,
    gpus: f64,
    waiting: BTreeMap<Priority, Need>,
    seq: u64,
}

impl Pool {
    fn fits(&self, need: &Need) -> bool {
        need.memory + need.base_memory <= self.memory && need.threads <= self.threads && need.gpus <= self.gpus + 1e-9
    }
}

pub struct Budget {
    pool: Mutex<Pool>,
    /// The whole machine: what the pool holds with nothing running.
    total: (u64, u64, f64),
    changed: Notify,
}

/// A job's share; given back when dropped.
pub struct Grant {
    budget: Arc<Budget>,
    need: Need,
}

impl Drop for Grant {
    fn drop(&mut self) {
        {
            let mut pool = self.budget.pool.lock().unwrap();
            pool.memory += self.need.memory;
            pool.threads += self.need.threads;
            pool.gpus += self.need.gpus;
        }
        self.budget.changed.notify_waiters();
    }
}

/// Takes a waiter off the list if its future is dropped before its turn.
struct Waiting<'a> {
    budget: &'a Budget,
    key: Priority,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let removed = self.budget.pool.lock().unwrap().waiting.remove(&self.key).is_some();
        if removed {
            self.budget.changed.notify_waiters();
        }
    }
}

impl Budget {
    /// A machine with this much memory, cores and GPUs.
    pub fn new(memory: u64, threads: u64, gpus: f64) -> Arc<Self> {
        let pool = Pool { memory, threads, gpus, waiting: BTreeMap::new(), seq: 0 };
        Arc::new(Budget { pool: Mutex::new(pool), total: (memory, threads, gpus), changed: Notify::new() })
    }

    /// What the running jobs hold now.
    pub fn in_use(&self) -> sealfarm_schemas::messages::ResourceUse {
        let pool = self.pool.lock().unwrap();
        let (memory, threads, gpus) = self.total;
        sealfarm_schemas::messages::ResourceUse {
            memory_bytes: memory.saturating_sub(pool.memory),
            threads: threads.saturating_sub(pool.threads),
            gpus: (gpus - pool.gpus).max(0.0),
        }
    }

    /// The priority of a task: deal sectors first, then lotus' task order,
    /// then the lower sector number, then arrival.
    pub fn priority(&self, task: &TaskMessage) -> Priority {
        let mut pool = self.pool.lock().unwrap();
        pool.seq += 1;
        Priority {
            not_deal: !task.deal,
            stage_rank: stage_rank(task.stage()),
            sector: task.sector.id.number,
            seq: pool.seq,
        }
    }

    /// Waits until `need` fits and every waiter before it in priority order
    /// that fits has gone; then takes it.
    pub async fn acquire(self: &Arc<Self>, need: Need, priority: Priority) -> Grant {
        self.pool.lock().unwrap().waiting.insert(priority, need);
        let waiting = Waiting { budget: self, key: priority };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut pool = self.pool.lock().unwrap();
                let first = pool.waiting.iter().find(|(_, n)| pool.fits(n)).map(|(k, _)| *k);
                if first == Some(priority) {
                    pool.waiting.remove(&priority);
                    pool.memory -= need.memory;
                    pool.threads -= need.threads;
                    pool.gpus -= need.gpus;
                    drop(pool);
                    std::mem::forget(waiting);
                    // Others may fit in what is left.
                    self.changed.notify_waiters();
                    return Grant { budget: self.clone(), need };
                }
            }
            notified.await;
        }
    }
}

/// The order in which jobs already claimed wait for a slot of their stage
/// and size (tasks from this worker's own queue, jobs resumed at start):
/// round-robin over the miners they are for. Each waiter's place is its
/// turn, the number of jobs of its miner that were waiting before it, then
/// its arrival; so a miner whose 500 PC1s wait here does not keep another
/// miner's one waiting behind all of them. Only the first in that order
/// waits on the slots themselves (a FIFO semaphore).
#[derive(Default)]
pub struct SlotQueue {
    waiting: Mutex<SlotWaiters>,
    changed: Notify,
}

#[derive(Default)]
struct SlotWaiters {
    /// (turn, arrival) → miner.
    order: BTreeMap<(u64, u64), u64>,
    arrivals: u64,
}

/// Leaves the queue when dropped (served, or the wait given up).
struct InLine<'a> {
    queue: &'a SlotQueue,
    key: (u64, u64),
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.queue.waiting.lock().unwrap().order.remove(&self.key);
        self.queue.changed.notify_waiters();
    }
}

impl SlotQueue {
    /// Waits for this job's turn among the miners, then for a slot.
    pub async fn acquire(
        &self,
        slots: Arc<tokio::sync::Semaphore>,
        miner: u64,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError> {
        let key = {
            let mut waiting = self.waiting.lock().unwrap();
            let turn = waiting.order.values().filter(|m| **m == miner).count() as u64;
            waiting.arrivals += 1;
            let key = (turn, waiting.arrivals);
            waiting.order.insert(key, miner);
            key
        };
        let in_line = InLine { queue: self, key };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.waiting.lock().unwrap().order.keys().next() == Some(&key) {
                break;
            }
            notified.await;
        }
        let permit = slots.acquire_owned().await;
        drop(in_line);
        permit
    }

    /// The miners of the waiting jobs, in the order they will go.
    #[cfg(test)]
    fn order(&self) -> Vec<u64> {
        self.waiting.lock().unwrap().order.values().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealfarm_schemas::lotus::{Bytes, RegisteredSealProof, SectorId, SectorRef};
    use sealfarm_schemas::Task;

    fn task(stage: Stage, number: u64, deal: bool) -> TaskMessage {
        let sector = SectorRef { id: SectorId { miner: 1000, number }, proof_type: RegisteredSealProof(5) };
        let task = match stage {
            Stage::Ap => Task::Ap {
                existing_piece_sizes: vec![],
                piece_size: 2032,
                data: sealfarm_schemas::messages::PieceData::Null,
            },
            Stage::Pc1 => Task::Pc1 { ticket: Bytes(vec![0; 32]), pieces: vec![] },
            Stage::Pc2 => Task::Pc2 { pc1_out: Bytes(vec![]) },
            _ => Task::Fin {},
        };
        TaskMessage { deal, ..TaskMessage::new(sector, task) }
    }

    #[tokio::test]
    async fn waiting_jobs_go_in_lotus_order_deals_first() {
        let budget = Budget::new(1 << 30, 1, 0.0);
        let one = Need { threads: 1, ..Need::default() };
        let running = budget.acquire(one, budget.priority(&task(Stage::Pc1, 9, false))).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (stage, number, deal) in
            [(Stage::Pc1, 1, false), (Stage::Ap, 2, false), (Stage::Pc2, 3, false), (Stage::Pc1, 4, true)]
        {
            let (budget, order) = (budget.clone(), order.clone());
            let priority = budget.priority(&task(stage, number, deal));
            waiters.push(tokio::spawn(async move {
                let grant = budget.acquire(one, priority).await;
                order.lock().unwrap().push(number);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                drop(grant);
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(order.lock().unwrap().is_empty(), "nothing runs while the only thread is taken");
        drop(running);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        // The deal sector's PC1, then PC2 before the older PC1, AddPiece last.
        assert_eq!(*order.lock().unwrap(), vec![4, 3, 1, 2]);
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_does_not_hold_up_the_others() {
        let budget = Budget::new(1 << 30, 1, 0.0);
        let one = Need { threads: 1, ..Need::default() };
        let running = budget.acquire(one, budget.priority(&task(Stage::Pc1, 1, false))).await;
        // A PC2 waits for the thread, then gives up (its worker is stopping).
        let pc2 = budget.priority(&task(Stage::Pc2, 2, false));
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), budget.acquire(one, pc2)).await.is_err());
        // A finalize takes no thread: it goes at once.
        let fin = budget.priority(&task(Stage::Fin, 3, false));
        let quick = std::time::Duration::from_millis(500);
        assert!(tokio::time::timeout(quick, budget.acquire(Need::default(), fin)).await.is_ok());
        // The thread comes back: the next PC1 gets it (the PC2 that left is not first in line any more).
        drop(running);
        let pc1 = budget.priority(&task(Stage::Pc1, 4, false));
        assert!(tokio::time::timeout(quick, budget.acquire(one, pc1)).await.is_ok());
    }

    #[tokio::test]
    async fn jobs_waiting_for_a_slot_take_turns_by_miner() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let queue = Arc::new(SlotQueue::default());
        let busy = slots.clone().acquire_owned().await.unwrap();
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        // Five jobs of miner 1000 wait, then one of miner 1001.
        for miner in [1000, 1000, 1000, 1000, 1000, 1001] {
            let (slots, queue, served) = (slots.clone(), queue.clone(), served.clone());
            waiters.push(tokio::spawn(async move {
                let permit = queue.acquire(slots, miner).await.unwrap();
                served.lock().unwrap().push(miner);
                tokio::task::yield_now().await;
                drop(permit);
            }));
            tokio::task::yield_now().await;
        }
        while queue.order().len() < 6 {
            tokio::task::yield_now().await;
        }
        assert_eq!(queue.order(), [1000, 1001, 1000, 1000, 1000, 1000]);
        drop(busy);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*served.lock().unwrap(), [1000, 1001, 1000, 1000, 1000, 1000], "the other miner's job goes second");
    }
}
