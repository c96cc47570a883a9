//! What operators see: one snapshot of the farm (workers, queues, jobs,
//! sector timelines), served as JSON by the status API, printed by the
//! `workers` / `jobs` / `queues` views, drawn by the web dashboard and
//! turned into Prometheus gauges.

use std::collections::BTreeMap;
use std::time::Duration;

use sealfarm_schemas::hardware::Hardware;
use sealfarm_schemas::messages::{now_ms, JobProgress, ResourceUse, StageSlots};
use sealfarm_schemas::{topology, SectorSize, Stage};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::calls::lifecycle::{Held, Phase, RowState};
use crate::calls::store::CallRow;
use crate::calls::Calls;

/// Everything at once (`GET /sealfarm/v0/overview`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overview {
    pub bridge: BridgeStatus,
    pub workers: Vec<WorkerStatus>,
    pub queues: Vec<QueueStatus>,
    /// Messages waiting in `sealfarm.dead-letters`.
    pub dead_letters: u64,
    pub jobs: Vec<JobStatus>,
    pub sectors: Vec<SectorTimeline>,
    pub throughput: Throughput,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BridgeStatus {
    pub hostname: String,
    pub version: String,
    pub started_at_ms: u64,
    pub now_ms: u64,
    pub miner: MinerStatus,
    /// Whether the token of the request may use the controls.
    pub admin: bool,
    pub lease_timeout_s: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MinerStatus {
    /// The bridge's id (`--bridge-id`; the miner's actor address by default).
    #[serde(default)]
    pub id: String,
    pub url: String,
    /// The last call to the miner got an answer.
    pub up: bool,
    pub last_ok_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// A worker as its last heartbeat showed it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    pub hostname: String,
    /// `enabled`, `warming` (building its GPU kernels: the stages in
    /// `warming` are not taken yet), `draining` (drained by the operator) or
    /// `gone` (no heartbeat for the lease timeout).
    pub state: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warming: Vec<Stage>,
    pub last_seen_ms_ago: u64,
    pub hardware: Option<Hardware>,
    pub in_use: Option<ResourceUse>,
    pub capacity: Vec<StageSlots>,
    pub jobs: Vec<HeldJob>,
    pub storage_id: Option<String>,
    pub files_url: Option<String>,
}

/// A job a worker holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldJob {
    pub call_id: Uuid,
    pub attempt: u32,
    pub sector: SectorNo,
    #[serde(skip)]
    pub sector_ref: Option<sealfarm_schemas::SectorRef>,
    pub stage: Stage,
    pub started_at_ms: u64,
    /// None while it waits for its share of the machine.
    pub running_since_ms: Option<u64>,
    pub progress: Option<JobProgress>,
    /// When it last showed progress (claim, a PC1 layer), Unix ms.
    pub last_progress_ms: u64,
}

/// A sector as operators write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SectorNo {
    pub miner: u64,
    pub number: u64,
}

impl SectorNo {
    pub fn name(&self) -> String {
        format!("s-t0{}-{}", self.miner, self.number)
    }
}

impl From<sealfarm_schemas::SectorId> for SectorNo {
    fn from(id: sealfarm_schemas::SectorId) -> Self {
        SectorNo { miner: id.miner, number: id.number }
    }
}

/// A queue of the farm.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueStatus {
    pub name: String,
    pub stage: Option<Stage>,
    pub sector_size: Option<SectorSize>,
    /// The worker whose own queue this is.
    pub worker: Option<String>,
    pub ready: u64,
    /// Delivered, not yet acknowledged (management API only).
    pub unacked: Option<u64>,
    pub consumers: u32,
    /// Messages per second (management API only).
    pub publish_rate: Option<f64>,
    pub deliver_rate: Option<f64>,
    /// This miner's calls for the queue that the bridge holds back for its
    /// share (`--fair-share`): its backlog beyond what the queue shows.
    #[serde(default)]
    pub held: u64,
}

/// One call of the miner, as `lotus-miner sealing jobs` shows one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobStatus {
    pub call_id: Uuid,
    /// The first 8 hex digits of the call id (what `requeue`/`abort` take, too).
    pub short_id: String,
    pub method: String,
    /// A farm stage, or `fetch` / `move` for the calls the bridge completes itself.
    pub stage: String,
    pub sector: SectorNo,
    pub sector_size: Option<SectorSize>,
    pub worker: Option<String>,
    pub hostname: Option<String>,
    /// queued, claimed, running, returning, ret-wait, done, failed or dead.
    pub state: Phase,
    pub attempt: u32,
    pub queue: Option<String>,
    pub arrived_at_ms: u64,
    pub claimed_at_ms: Option<u64>,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub returned_at_ms: Option<u64>,
    pub progress: Option<JobProgress>,
    pub error: Option<String>,
    /// PC1: when its ticket becomes too old to land on chain.
    pub ticket_deadline_ms: Option<u64>,
}

impl JobStatus {
    pub fn is_open(&self) -> bool {
        self.state.is_open()
    }

    pub fn sector_name(&self) -> String {
        self.sector.name()
    }
}

/// Every stage of one sector, in the order the miner called them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SectorTimeline {
    pub name: String,
    pub sector: SectorNo,
    pub sector_size: Option<SectorSize>,
    pub stages: Vec<JobStatus>,
}

/// Completions within the last `window_s`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Throughput {
    pub window_s: u64,
    pub done: BTreeMap<String, u64>,
    /// Sectors whose C2 was returned within the window.
    pub sectors_sealed: u64,
}

/// Calls closed longer ago than this are left out of the overview unless asked for.
pub const RECENT: Duration = Duration::from_secs(3600);
/// At most this many closed calls in the overview (the store's index keeps these).
const CLOSED_SHOWN: usize = crate::calls::store::RETURNED_KEPT;

impl Overview {
    /// (stage, state, count) over the jobs in the overview.
    pub fn call_counts(&self) -> Vec<(String, Phase, u64)> {
        let mut counts: BTreeMap<(String, Phase), u64> = BTreeMap::new();
        for job in &self.jobs {
            *counts.entry((job.stage.clone(), job.state)).or_default() += 1;
        }
        counts.into_iter().map(|((stage, state), n)| (stage, state, n)).collect()
    }
}

/// What the snapshot needs besides the calls.
pub struct StatusSource {
    pub hostname: String,
    pub started_at_ms: u64,
    pub lease_timeout: Duration,
    pub queues: std::sync::Arc<crate::ops::queues::QueueWatch>,
}

impl StatusSource {
    /// The whole snapshot. `all`: every call ever, not only the open and recent ones.
    pub async fn overview(&self, calls: &Calls, admin: bool, all: bool) -> anyhow::Result<Overview> {
        let now = now_ms();
        let workers = self.workers(calls);
        let (queues, dead_letters) = self.queues(calls, &workers).await;
        let jobs = jobs(calls, &workers, now, all)?;
        let sectors = timelines(&jobs);
        let throughput = throughput(&jobs, now);
        let bridge = self.bridge(calls, admin, now);
        Ok(Overview { bridge, workers, queues, dead_letters, jobs, sectors, throughput })
    }

    /// The jobs alone (`GET /sealfarm/v0/jobs`): the calls from the store's
    /// index (or, `all`, the whole store), with the workers' view of them.
    pub fn jobs(&self, calls: &Calls, all: bool) -> anyhow::Result<Vec<JobStatus>> {
        jobs(calls, &self.workers(calls), now_ms(), all)
    }

    /// The queues and the dead letters waiting.
    pub async fn queues(&self, calls: &Calls, workers: &[WorkerStatus]) -> (Vec<QueueStatus>, u64) {
        let (mut queues, dead) = self.queues.snapshot(&calls.link, workers).await;
        let shares = calls.shares();
        for queue in &mut queues {
            queue.held = shares.get(&queue.name).map_or(0, |s| s.held);
        }
        (queues, dead)
    }

    fn bridge(&self, calls: &Calls, admin: bool, now: u64) -> BridgeStatus {
        let contact = calls.miner.client().contact();
        BridgeStatus {
            hostname: self.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: self.started_at_ms,
            now_ms: now,
            miner: MinerStatus {
                id: calls.bridge_id.clone(),
                url: calls.miner.client().url().to_string(),
                up: contact.up(),
                last_ok_ms: contact.last_ok_ms,
                last_error: contact.last_error.clone().map(|(_, e)| e).filter(|_| !contact.up()),
            },
            admin,
            lease_timeout_s: self.lease_timeout.as_secs(),
        }
    }

    /// The workers alone (`GET /sealfarm/v0/workers`), from the farm registry.
    pub fn workers(&self, calls: &Calls) -> Vec<WorkerStatus> {
        calls
            .farm
            .all()
            .into_iter()
            .map(|w| {
                let age = w.last_seen.elapsed();
                let state = if calls.farm.is_gone(&w.id) {
                    "gone"
                } else if w.draining {
                    "draining"
                } else if !w.warming.is_empty() {
                    "warming"
                } else {
                    "enabled"
                };
                let gone = state == "gone";
                let jobs = w
                    .running
                    .iter()
                    // A gone worker's last heartbeat lists jobs that may have
                    // moved on since: only those it still holds count. A live
                    // one's may list a job whose result arrived after it.
                    .filter(|j| {
                        if gone {
                            still_holds(calls, &w.id, j.call_id, j.attempt)
                        } else {
                            !finished_here(calls, &w.id, j.call_id, j.attempt)
                        }
                    })
                    .map(|j| HeldJob {
                        call_id: j.call_id,
                        attempt: j.attempt,
                        sector: j.sector.id.into(),
                        sector_ref: Some(j.sector),
                        stage: j.stage,
                        started_at_ms: j.started_at_ms,
                        running_since_ms: j.running_since_ms,
                        progress: j.progress.clone(),
                        last_progress_ms: calls.farm.last_progress(j.call_id).unwrap_or(j.started_at_ms),
                    })
                    .collect();
                WorkerStatus {
                    id: w.id.clone(),
                    hostname: w.hostname.clone(),
                    state: state.to_string(),
                    warming: w.warming.clone(),
                    last_seen_ms_ago: age.as_millis() as u64,
                    hardware: w.hardware.clone(),
                    in_use: w.in_use,
                    capacity: w.capacity.clone(),
                    jobs,
                    storage_id: w.storage_id.clone(),
                    files_url: w.files_url.clone(),
                }
            })
            .collect()
    }
}

/// Whether `worker` holds the current attempt of an open call.
fn still_holds(calls: &Calls, worker: &str, call_id: Uuid, attempt: u32) -> bool {
    let Some(call) = calls.store.row(call_id) else { return false };
    call.is_open() && call.holder.is_some_and(|h| h.worker == worker && h.attempt == attempt)
}

/// Whether this attempt's result, from `worker`, is the call's result already.
fn finished_here(calls: &Calls, worker: &str, call_id: Uuid, attempt: u32) -> bool {
    let Some(call) = calls.store.row(call_id) else { return false };
    !call.is_open() && call.run.is_some_and(|r| r.worker == worker && r.attempt == attempt)
}

/// Every call as a job row: the open ones and those closed within
/// [`RECENT`] (at most [`CLOSED_SHOWN`]), or all with `all`.
fn jobs(calls: &Calls, workers: &[WorkerStatus], now: u64, all: bool) -> anyhow::Result<Vec<JobStatus>> {
    let rows: Vec<JobStatus> =
        calls.store.rows(all)?.iter().map(|c| job(c, workers, calls.return_failures(c.call_id))).collect();
    Ok(if all { rows } else { recent_jobs(rows, now) })
}

/// The open jobs, the ones being returned, and the closed ones of the last
/// [`RECENT`] (the newest [`CLOSED_SHOWN`] of them), in their order.
fn recent_jobs(mut rows: Vec<JobStatus>, now: u64) -> Vec<JobStatus> {
    {
        let recent = now.saturating_sub(RECENT.as_millis() as u64);
        let mut closed = 0;
        // Newest first while counting, so the newest closed calls stay.
        rows.reverse();
        rows.retain(|j| {
            if j.is_open() || j.state.is_returning() {
                return true;
            }
            let keep =
                j.finished_at_ms.or(j.returned_at_ms).unwrap_or(j.arrived_at_ms) >= recent && closed < CLOSED_SHOWN;
            closed += usize::from(keep);
            keep
        });
        rows.reverse();
    }
    rows
}

/// One call as a job row, from its row in the store, the workers as their
/// heartbeats show them, and how often the miner refused its Return.
fn job(call: &CallRow, workers: &[WorkerStatus], return_failures: u32) -> JobStatus {
    let holder = call.holder.as_ref();
    let worker_name = call.run.as_ref().map(|r| r.worker.clone()).or_else(|| holder.map(|h| h.worker.clone()));
    let view = worker_name.as_ref().and_then(|w| workers.iter().find(|v| &v.id == w));
    let held = view.and_then(|v| v.jobs.iter().find(|j| j.call_id == call.call_id));
    let running = match held {
        Some(job) if job.running_since_ms.is_some() => Held::Running,
        Some(_) => Held::Waiting,
        None => Held::No,
    };
    let state = Phase::of(&call.state, holder.is_some(), running, call.run.as_ref(), return_failures);
    let returned_at_ms = match call.state {
        RowState::Returned { at_ms } => Some(at_ms),
        _ => None,
    };
    let error = call.run.as_ref().and_then(|r| r.error.clone()).or_else(|| match &call.state {
        RowState::Resulted { error } => error.clone(),
        _ => None,
    });
    JobStatus {
        call_id: call.call_id,
        short_id: call.call_id.simple().to_string()[..8].to_string(),
        method: call.method.clone(),
        stage: call.stage.clone(),
        sector: call.sector.id.into(),
        sector_size: call.sector.proof_type.info().map(|i| i.sector_size),
        hostname: view.map(|v| v.hostname.clone()),
        worker: worker_name,
        state,
        attempt: call.attempt,
        queue: call.queue.clone(),
        arrived_at_ms: call.arrived_at_ms,
        claimed_at_ms: holder.map(|h| h.since_ms),
        started_at_ms: call.run.as_ref().map(|r| r.started_at_ms).or_else(|| held.and_then(|j| j.running_since_ms)),
        finished_at_ms: call.run.as_ref().map(|r| r.finished_at_ms),
        returned_at_ms,
        progress: held.and_then(|j| j.progress.clone()),
        error,
        ticket_deadline_ms: call.ticket_deadline_ms,
    }
}

/// The farm stages of each sector, newest sector first.
fn timelines(jobs: &[JobStatus]) -> Vec<SectorTimeline> {
    let mut sectors: BTreeMap<SectorNo, SectorTimeline> = BTreeMap::new();
    for job in jobs.iter().filter(|j| j.stage != "fetch" && j.stage != "move") {
        let timeline = sectors.entry(job.sector).or_insert_with(|| SectorTimeline {
            name: job.sector.name(),
            sector: job.sector,
            sector_size: job.sector_size,
            stages: Vec::new(),
        });
        timeline.stages.push(job.clone());
    }
    let mut list: Vec<SectorTimeline> = sectors.into_values().collect();
    list.sort_by_key(|t| std::cmp::Reverse(t.stages.iter().map(|s| s.arrived_at_ms).max().unwrap_or(0)));
    list
}

fn throughput(jobs: &[JobStatus], now: u64) -> Throughput {
    let since = now.saturating_sub(RECENT.as_millis() as u64);
    let mut done: BTreeMap<String, u64> = BTreeMap::new();
    let mut sealed = 0;
    for job in jobs.iter().filter(|j| j.state == Phase::Done && j.returned_at_ms.is_some_and(|t| t >= since)) {
        *done.entry(job.stage.clone()).or_default() += 1;
        sealed += u64::from(job.stage == Stage::C2.to_string());
    }
    Throughput { window_s: RECENT.as_secs(), done, sectors_sealed: sealed }
}

/// The name of a queue's stage and size, when it is a stage queue.
pub fn parse_task_queue(name: &str) -> Option<(Stage, SectorSize)> {
    let rest = name.strip_prefix("sealfarm.task.")?;
    let (stage, size) = rest.split_once('.')?;
    Some((stage.parse().ok()?, size.parse().ok()?))
}

/// A queue row with only its name filled in.
pub fn queue_row(name: &str) -> QueueStatus {
    let task = parse_task_queue(name);
    QueueStatus {
        name: name.to_string(),
        stage: task.map(|t| t.0),
        sector_size: task.map(|t| t.1),
        worker: topology::worker_of_queue(name).map(str::to_string),
        ready: 0,
        unacked: None,
        consumers: 0,
        publish_rate: None,
        deliver_rate: None,
        held: 0,
    }
}

/// A short duration as lotus prints one (`1h2m3s`, `45.1s`, `12ms`).
pub fn short_duration(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        _ if ms < 1000 => format!("{ms}ms"),
        0..=59 => format!("{:.1}s", ms as f64 / 1000.0),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m{}s", secs / 3600, secs / 60 % 60, secs % 60),
    }
}

#[cfg(test)]
mod tests {
    use sealfarm_schemas::{RegisteredSealProof, SectorId, SectorRef};

    use super::*;
    use crate::calls::lifecycle::{Holder, RunRecord};

    const HOUR: u64 = 3_600_000;
    const NOW: u64 = 100 * HOUR;

    fn row(n: u128, stage: &str, state: RowState, holder: Option<&str>, run: Option<RunRecord>) -> CallRow {
        let sector = SectorRef {
            id: SectorId { miner: 1000, number: n as u64 },
            proof_type: RegisteredSealProof::STACKED_DRG_2KIB_V1_1,
        };
        CallRow {
            call_id: Uuid::from_u128(n),
            method: "SealPreCommit1".into(),
            stage: stage.into(),
            sector,
            attempt: 1,
            ticket_deadline_ms: None,
            arrived_at_ms: NOW - 2 * HOUR + n as u64,
            state,
            holder: holder.map(|w| Holder { worker: w.into(), attempt: 1, since_ms: NOW - HOUR }),
            queue: None,
            run,
            blobs: Vec::new(),
        }
    }

    fn run(finished_at_ms: u64, error: bool) -> Option<RunRecord> {
        Some(RunRecord {
            worker: "w-a".into(),
            attempt: 1,
            started_at_ms: finished_at_ms - 1000,
            finished_at_ms,
            error: error.then(|| "boom".into()),
            dead: false,
        })
    }

    /// A worker as its heartbeat shows it, holding call `n` (running or waiting).
    fn worker(holds: u128, running: bool) -> WorkerStatus {
        WorkerStatus {
            id: "w-a".into(),
            hostname: "box-a".into(),
            state: "enabled".into(),
            warming: Vec::new(),
            last_seen_ms_ago: 0,
            hardware: None,
            in_use: None,
            capacity: Vec::new(),
            jobs: vec![HeldJob {
                call_id: Uuid::from_u128(holds),
                attempt: 1,
                sector: SectorNo { miner: 1000, number: holds as u64 },
                sector_ref: None,
                stage: Stage::Pc1,
                started_at_ms: NOW - HOUR,
                running_since_ms: running.then_some(NOW - HOUR),
                progress: None,
                last_progress_ms: NOW,
            }],
            storage_id: None,
            files_url: None,
        }
    }

    /// What a row shows, from the store's row and the heartbeats alone.
    #[test]
    fn job_rows_say_where_each_call_stands() {
        let claimed = row(1, "pc1", RowState::Dispatched, Some("w-a"), None);
        assert_eq!(job(&claimed, &[worker(1, true)], 0).state, Phase::Running);
        assert_eq!(job(&claimed, &[worker(1, false)], 0).state, Phase::Claimed);
        let shown = job(&claimed, &[worker(1, true)], 0);
        assert_eq!((shown.worker.as_deref(), shown.hostname.as_deref()), (Some("w-a"), Some("box-a")));
        assert_eq!(shown.started_at_ms, Some(NOW - HOUR), "running since, from the heartbeat");
        assert_eq!(job(&row(2, "pc1", RowState::Accepted, None, None), &[], 0).state, Phase::Queued);
        let resulted = row(3, "pc2", RowState::Resulted { error: None }, None, run(NOW, false));
        assert_eq!(job(&resulted, &[], 0).state, Phase::Returning);
        assert_eq!(job(&resulted, &[], 3).state, Phase::RetWait);
        let failed = row(4, "c1", RowState::Returned { at_ms: NOW }, None, run(NOW, true));
        let shown = job(&failed, &[], 0);
        assert_eq!((shown.state, shown.error.as_deref()), (Phase::Failed, Some("boom")));
        assert_eq!(shown.short_id.len(), 8);
    }

    /// The overview keeps what is open or on its way back, and of the
    /// closed calls only the last hour's; throughput counts the returned ones.
    #[test]
    fn the_overview_keeps_open_and_recent_calls() {
        let rows = [
            row(1, "pc1", RowState::Dispatched, None, None),
            row(2, "c2", RowState::Resulted { error: None }, None, run(NOW - 5 * HOUR, false)),
            row(3, "c2", RowState::Returned { at_ms: NOW - 60_000 }, None, run(NOW - 120_000, false)),
            row(4, "c1", RowState::Returned { at_ms: NOW - 3 * HOUR }, None, run(NOW - 3 * HOUR, false)),
        ];
        let jobs: Vec<JobStatus> = rows.iter().map(|r| job(r, &[], 0)).collect();
        let kept: Vec<u64> = recent_jobs(jobs.clone(), NOW).iter().map(|j| j.sector.number).collect();
        assert_eq!(kept, [1, 2, 3], "the call closed 3 h ago is left out");
        let done = throughput(&jobs, NOW);
        assert_eq!((done.sectors_sealed, done.done.get("c2").copied()), (1, Some(1)));
        let sectors = timelines(&jobs);
        assert_eq!(sectors.len(), 4);
        assert_eq!(sectors[0].sector.number, 4, "newest sector first");
    }
}
