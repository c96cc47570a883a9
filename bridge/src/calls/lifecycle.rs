//! The life of a miner call on the bridge: where it stands, the named
//! changes that move it, and the phase an operator sees.
//!
//! ```text
//!             dispatched            result / fail
//!  Accepted ─────────────▶ Dispatched ───────────▶ Resulted ──returned──▶ Returned
//!     │  ▲                  │  ▲ claim, supersede     ▲ │                     │
//!     │  └──── reopen ──────┼──┼──────────────────────┼─┘◀──── reopen ───────┘
//!     └─────── result / fail ──┴──────────────────────┘   (a replayed dead letter)
//! ```
//!
//! Every change is a method of [`Call`] that checks the state the change
//! expects and, when the call has moved on (another attempt was dispatched,
//! a result came first, the operator aborted it), leaves it untouched and
//! says so with [`Stale`]. The store applies a change atomically
//! ([`super::store::CallStore::apply`]); callers never write a call's state
//! by hand. The durable states are [`CallState`]; what an operator sees
//! (`queued`, `running`, `ret-wait`, …) is a [`Phase`], derived in one
//! place ([`Phase::of`]).

use sealfarm_schemas::blob::{BlobRef, Payload};
use sealfarm_schemas::{CallError, CallId, Outcome, SectorRef, StageOutput, TaskMessage};
use serde::{Deserialize, Serialize};

/// Where a call stands (durable: stored with the call).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CallState {
    /// Accepted; the task may not have reached the broker yet.
    Accepted,
    /// The broker confirmed the task.
    Dispatched,
    /// The farm (or the bridge, or the operator) answered; the miner has not
    /// accepted the Return yet.
    Resulted { outcome: Box<Outcome>, worker: String },
    /// The miner accepted the Return.
    Returned { at_ms: u64 },
}

impl CallState {
    /// The state's name, as [`Stale`] reports it.
    pub fn name(&self) -> &'static str {
        match self {
            CallState::Accepted => "accepted",
            CallState::Dispatched => "dispatched",
            CallState::Resulted { .. } => "resulted",
            CallState::Returned { .. } => "returned",
        }
    }
}

/// What a call asks for: a farm stage, or a bridge-local no-op in shared storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallKind {
    /// Computed by the farm; the task as last published.
    Task { task: Box<TaskMessage> },
    /// `Fetch`: the files are already in shared storage.
    Fetch,
    /// `MoveStorage`: nothing moves in shared storage.
    MoveStorage,
}

/// One miner call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Call {
    pub call_id: CallId,
    pub sector: SectorRef,
    /// The lotus method that made the call (`SealPreCommit1`, …).
    pub method: String,
    pub kind: CallKind,
    /// Digest of method, sector and inputs: a re-issued call has the same one.
    pub input_digest: String,
    pub arrived_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(flatten)]
    pub state: CallState,
    /// The worker that claimed the current attempt, once it said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
    /// The queue the current attempt was published to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The attempt that gave the call its result, once one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunRecord>,
}

/// How the call's result came about: who computed it, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The worker; `bridge`, `dead-letter` or `operator` when the call failed without a run.
    pub worker: String,
    pub attempt: u32,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// The error returned to the miner, when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The task was dead-lettered (it waits in `sealfarm.dead-letters`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead: bool,
}

/// Who holds a dispatched call's current attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub worker: String,
    pub attempt: u32,
    pub since_ms: u64,
}

/// Who failed a call that no worker answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedBy {
    /// The bridge: the task cannot run anywhere (routing, an expired ticket).
    Bridge,
    /// The farm gave up on the task (`sealfarm.dead-letters`).
    DeadLetter,
    /// The operator's `abort`.
    Operator,
}

impl FailedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailedBy::Bridge => "bridge",
            FailedBy::DeadLetter => "dead-letter",
            FailedBy::Operator => "operator",
        }
    }
}

/// The named changes of a call (what [`Stale`] reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The broker confirmed the current attempt's task: Accepted → Dispatched.
    Dispatched,
    /// A worker says it holds the current attempt (claim, heartbeat, progress).
    Claim,
    /// The current attempt is replaced by the next one (lease expired, the
    /// holder released it, its worker is gone, the operator's requeue).
    Supersede,
    /// A worker's result (of any attempt) while the call has none.
    Result,
    /// The current attempt fails without a worker's result.
    Fail,
    /// The miner accepted the Return of the result it was sent.
    Returned,
    /// The attempt that failed was dead-lettered: the run is marked dead.
    MarkDead,
    /// A dead-lettered call is taken up again with the next attempt.
    Reopen,
}

/// A change refused because the call is not where the change expects it:
/// it moved on (a result came first, another attempt was dispatched, the
/// operator aborted it). Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("call {call_id}: {transition:?} refused: the call is {found} ({why})")]
pub struct Stale {
    pub call_id: uuid::Uuid,
    pub transition: Transition,
    /// The state the call was found in.
    pub found: &'static str,
    pub why: &'static str,
}

impl Call {
    /// A new farm call, not yet dispatched.
    pub fn new_task(method: &str, task: TaskMessage, input_digest: String, queue: Option<String>) -> Call {
        Call {
            call_id: CallId { sector: task.sector.id, id: task.call_id },
            sector: task.sector,
            method: method.to_string(),
            input_digest,
            arrived_at_ms: task.issued_at_ms,
            updated_at_ms: task.issued_at_ms,
            kind: CallKind::Task { task: Box::new(task) },
            state: CallState::Accepted,
            holder: None,
            queue,
            run: None,
        }
    }

    /// A call the bridge completes itself (Fetch, MoveStorage in shared
    /// storage): it has its result at once.
    pub fn new_local(method: &str, sector: SectorRef, kind: CallKind, now_ms: u64) -> Call {
        let call_id = CallId::new(sector.id);
        Call {
            call_id,
            sector,
            method: method.to_string(),
            kind,
            input_digest: format!("local:{}", call_id.id),
            arrived_at_ms: now_ms,
            updated_at_ms: now_ms,
            state: CallState::Resulted {
                outcome: Box::new(Outcome::Done(StageOutput::Fin {})),
                worker: "bridge".into(),
            },
            holder: None,
            queue: None,
            run: None,
        }
    }

    /// The task as last dispatched, for farm calls.
    pub fn task(&self) -> Option<&TaskMessage> {
        match &self.kind {
            CallKind::Task { task } => Some(task),
            _ => None,
        }
    }

    /// The current attempt (1 for calls the bridge completes itself).
    pub fn attempt(&self) -> u32 {
        self.task().map_or(1, |t| t.attempt)
    }

    /// Whether the call still waits for a result from the farm.
    pub fn is_open(&self) -> bool {
        matches!(self.state, CallState::Accepted | CallState::Dispatched)
    }

    /// The blobs the call names: its input (a C2's C1 output, a PR2's
    /// vanilla proofs), its output (C1's, PR1's).
    pub fn blobs(&self) -> Vec<BlobRef> {
        let mut blobs = Vec::new();
        if let Some(blob) = self.task().and_then(|t| t.task.payload()).and_then(Payload::blob) {
            blobs.push(blob.clone());
        }
        if let CallState::Resulted { outcome, .. } = &self.state {
            if let Outcome::Done(output) = outcome.as_ref() {
                blobs.extend(output.payload().and_then(Payload::blob).cloned());
            }
        }
        blobs
    }

    fn stale(&self, transition: Transition, why: &'static str) -> Stale {
        Stale { call_id: self.call_id.id, transition, found: self.state.name(), why }
    }

    /// Refuses `transition` unless the call is open with `attempt` current.
    fn expect_current(&self, transition: Transition, attempt: u32) -> Result<(), Stale> {
        if !self.is_open() {
            return Err(self.stale(transition, "it has its result"));
        }
        if self.attempt() != attempt {
            return Err(self.stale(transition, "another attempt is current"));
        }
        Ok(())
    }

    /// The broker confirmed the task of `attempt`, published to `queue`.
    pub fn dispatched(&mut self, attempt: u32, queue: &str) -> Result<(), Stale> {
        if self.state != CallState::Accepted {
            return Err(self.stale(Transition::Dispatched, "only an accepted call is marked dispatched"));
        }
        self.expect_current(Transition::Dispatched, attempt)?;
        self.state = CallState::Dispatched;
        self.queue = Some(queue.to_string());
        Ok(())
    }

    /// `worker` holds the current attempt since `now_ms` (a claim; a later
    /// sign of life from the same holder changes nothing and is Ok).
    pub fn claim(&mut self, worker: &str, attempt: u32, now_ms: u64) -> Result<(), Stale> {
        self.expect_current(Transition::Claim, attempt)?;
        if self.holder.as_ref().is_some_and(|h| h.worker == worker && h.attempt == attempt) {
            return Ok(());
        }
        self.holder = Some(Holder { worker: worker.to_string(), attempt, since_ms: now_ms });
        Ok(())
    }

    /// The current attempt `attempt` is replaced by `next` (its next
    /// attempt), published to `queue`; nobody holds it yet.
    pub fn supersede(&mut self, attempt: u32, next: TaskMessage, queue: &str) -> Result<(), Stale> {
        self.expect_current(Transition::Supersede, attempt)?;
        if next.attempt <= attempt || next.call_id != self.call_id.id {
            return Err(self.stale(Transition::Supersede, "the new task is not a later attempt of this call"));
        }
        self.kind = CallKind::Task { task: Box::new(next) };
        self.state = CallState::Dispatched;
        self.holder = None;
        self.queue = Some(queue.to_string());
        Ok(())
    }

    /// A worker's result for any attempt, taken while the call has none (a
    /// superseded attempt that finishes first saves the new one's work).
    pub fn result(&mut self, outcome: Outcome, run: RunRecord) -> Result<(), Stale> {
        if !self.is_open() {
            return Err(self.stale(Transition::Result, "it has its result already"));
        }
        self.state = CallState::Resulted { outcome: Box::new(outcome), worker: run.worker.clone() };
        self.run = Some(run);
        Ok(())
    }

    /// The current attempt `attempt` fails with `error`, decided by `by` at `now_ms`.
    pub fn fail(&mut self, attempt: u32, error: CallError, by: FailedBy, now_ms: u64) -> Result<(), Stale> {
        self.expect_current(Transition::Fail, attempt)?;
        let run = RunRecord {
            worker: by.as_str().to_string(),
            attempt,
            started_at_ms: self.holder.as_ref().map_or(now_ms, |h| h.since_ms),
            finished_at_ms: now_ms,
            error: Some(error.message.clone()),
            dead: by == FailedBy::DeadLetter,
        };
        self.state = CallState::Resulted { outcome: Box::new(Outcome::Failed(error)), worker: by.as_str().to_string() };
        self.run = Some(run);
        Ok(())
    }

    /// The miner accepted the Return of the result of `attempt` (the one
    /// that was sent: not if the call was opened again meanwhile).
    pub fn returned(&mut self, attempt: Option<u32>, at_ms: u64) -> Result<(), Stale> {
        if !matches!(self.state, CallState::Resulted { .. }) {
            return Err(self.stale(Transition::Returned, "only a call with a result is returned"));
        }
        if self.run.as_ref().map(|r| r.attempt) != attempt {
            return Err(self.stale(Transition::Returned, "its result is another attempt's"));
        }
        self.state = CallState::Returned { at_ms };
        Ok(())
    }

    /// The task of `attempt`, whose result the call has, was dead-lettered.
    pub fn mark_dead(&mut self, attempt: u32) -> Result<(), Stale> {
        if self.is_open() {
            return Err(self.stale(Transition::MarkDead, "it has no result yet"));
        }
        match self.run.as_mut() {
            Some(run) if run.attempt == attempt => {
                run.dead = true;
                Ok(())
            }
            _ => Err(self.stale(Transition::MarkDead, "its result is another attempt's")),
        }
    }

    /// Takes a dead-lettered call up again: `next` (the attempt after the
    /// dead one) is to be published to `queue`. Only the attempt whose task
    /// was dead-lettered, and only while its result is that failure.
    pub fn reopen(&mut self, next: TaskMessage, queue: &str) -> Result<(), Stale> {
        if self.is_open() {
            return Err(self.stale(Transition::Reopen, "it is running again"));
        }
        let dead_attempt = next.attempt.checked_sub(1);
        if !self.run.as_ref().is_some_and(|r| r.dead && Some(r.attempt) == dead_attempt) {
            return Err(self.stale(Transition::Reopen, "its result is not the dead-lettered attempt's"));
        }
        self.kind = CallKind::Task { task: Box::new(next) };
        self.state = CallState::Accepted;
        self.holder = None;
        self.queue = Some(queue.to_string());
        self.run = None;
        Ok(())
    }
}

/// [`CallState`] without the outcome's outputs: what the index keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowState {
    Accepted,
    Dispatched,
    /// The farm answered; `error` when the outcome is a failure.
    Resulted {
        error: Option<String>,
    },
    Returned {
        at_ms: u64,
    },
}

impl From<&CallState> for RowState {
    fn from(state: &CallState) -> Self {
        match state {
            CallState::Accepted => RowState::Accepted,
            CallState::Dispatched => RowState::Dispatched,
            CallState::Resulted { outcome, .. } => RowState::Resulted {
                error: match outcome.as_ref() {
                    Outcome::Failed(err) => Some(err.message.clone()),
                    _ => None,
                },
            },
            CallState::Returned { at_ms } => RowState::Returned { at_ms: *at_ms },
        }
    }
}

/// Where a call stands as operators see it (`sealfarm-bridge jobs`, the
/// dashboard, the `sealfarm_calls` gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Computing on a worker (it said so in a heartbeat).
    Running,
    /// Claimed by a worker that has not started it (waiting for its share of the machine).
    Claimed,
    /// Waiting in a queue.
    Queued,
    /// Has its result; the Return is on its way to the miner.
    Returning,
    /// The miner refused the Return so far; it is being retried.
    RetWait,
    /// The farm gave up on the task (dead-lettered).
    Dead,
    /// Returned to the miner as a failure.
    Failed,
    /// Returned to the miner with its output.
    Done,
}

/// What a worker's heartbeat says of a call's current attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// No live worker lists it.
    No,
    /// Listed, waiting for its share of the machine.
    Waiting,
    /// Listed and computing.
    Running,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Running,
        Phase::Claimed,
        Phase::Queued,
        Phase::Returning,
        Phase::RetWait,
        Phase::Dead,
        Phase::Failed,
        Phase::Done,
    ];

    /// The one place a phase is derived: from the stored state, whether a
    /// worker claimed the current attempt, what its heartbeat says, the
    /// run that gave the result, and how often the miner refused the Return.
    pub fn of(state: &RowState, claimed: bool, held: Held, run: Option<&RunRecord>, return_failures: u32) -> Phase {
        let dead = run.is_some_and(|r| r.dead);
        match state {
            RowState::Accepted | RowState::Dispatched => match (claimed, held) {
                (false, _) => Phase::Queued,
                (true, Held::Running) => Phase::Running,
                (true, _) => Phase::Claimed,
            },
            RowState::Resulted { .. } if dead => Phase::Dead,
            RowState::Resulted { .. } if return_failures > 0 => Phase::RetWait,
            RowState::Resulted { .. } => Phase::Returning,
            RowState::Returned { .. } if dead => Phase::Dead,
            RowState::Returned { .. } if run.is_some_and(|r| r.error.is_some()) => Phase::Failed,
            RowState::Returned { .. } => Phase::Done,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Claimed => "claimed",
            Phase::Queued => "queued",
            Phase::Returning => "returning",
            Phase::RetWait => "ret-wait",
            Phase::Dead => "dead",
            Phase::Failed => "failed",
            Phase::Done => "done",
        }
    }

    /// Still waiting for a result from the farm.
    pub fn is_open(self) -> bool {
        matches!(self, Phase::Queued | Phase::Claimed | Phase::Running)
    }

    /// Has its result, not yet accepted by the miner.
    pub fn is_returning(self) -> bool {
        matches!(self, Phase::Returning | Phase::RetWait)
    }

    /// Ended in a failure the operator should look at.
    pub fn is_failure(self) -> bool {
        matches!(self, Phase::Failed | Phase::Dead)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Phase::ALL.into_iter().find(|p| p.as_str() == text).ok_or_else(|| format!("unknown call phase {text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use sealfarm_schemas::{ErrorCode, RegisteredSealProof, SectorId, Task};

    use super::*;

    fn task(attempt: u32) -> TaskMessage {
        let sector = SectorRef {
            id: SectorId { miner: 1000, number: 7 },
            proof_type: RegisteredSealProof::STACKED_DRG_2KIB_V1_1,
        };
        let mut task = TaskMessage::new(sector, Task::Fin {});
        task.call_id = uuid::Uuid::from_u128(7);
        task.attempt = attempt;
        task
    }

    fn run(attempt: u32, dead: bool, error: bool) -> RunRecord {
        RunRecord {
            worker: "w-a".into(),
            attempt,
            started_at_ms: 1,
            finished_at_ms: 2,
            error: error.then(|| "boom".into()),
            dead,
        }
    }

    /// The calls a transition may meet, by name; attempt 2 is current.
    fn fixture(name: &str) -> Call {
        let mut call = Call::new_task("SealPreCommit1", task(2), "d".into(), Some("q".into()));
        match name {
            "accepted" => {}
            "dispatched" => call.state = CallState::Dispatched,
            "claimed" => {
                call.state = CallState::Dispatched;
                call.holder = Some(Holder { worker: "w-a".into(), attempt: 2, since_ms: 5 });
            }
            "resulted" => {
                call.state =
                    CallState::Resulted { outcome: Box::new(Outcome::Done(StageOutput::Fin {})), worker: "w-a".into() };
                call.run = Some(run(2, false, false));
            }
            "dead" => {
                let error = CallError::new(ErrorCode::UNKNOWN, "dead-lettered");
                call.state =
                    CallState::Resulted { outcome: Box::new(Outcome::Failed(error)), worker: "dead-letter".into() };
                call.run = Some(run(2, true, true));
            }
            "returned" => {
                call.state = CallState::Returned { at_ms: 9 };
                call.run = Some(run(2, false, false));
            }
            "returned-dead" => {
                call.state = CallState::Returned { at_ms: 9 };
                call.run = Some(run(2, true, true));
            }
            other => panic!("no fixture {other}"),
        }
        call
    }

    type Change = fn(&mut Call) -> Result<(), Stale>;

    fn error() -> CallError {
        CallError::new(ErrorCode::UNKNOWN, "nope")
    }

    /// Every transition from every state: the state it leaves the call in,
    /// or None where it must be refused (and the call left as it was).
    #[test]
    fn every_transition_from_every_state() {
        let changes: [(&str, Change); 13] = [
            ("dispatched", |c| c.dispatched(2, "q2")),
            ("dispatched-old-attempt", |c| c.dispatched(1, "q2")),
            ("claim", |c| c.claim("w-b", 2, 6)),
            ("claim-old-attempt", |c| c.claim("w-b", 1, 6)),
            ("supersede", |c| c.supersede(2, task(3), "q3")),
            ("supersede-old-attempt", |c| c.supersede(1, task(2), "q3")),
            ("result", |c| c.result(Outcome::Done(StageOutput::Fin {}), run(1, false, false))),
            ("fail", |c| c.fail(2, error(), FailedBy::Operator, 7)),
            ("fail-old-attempt", |c| c.fail(1, error(), FailedBy::Operator, 7)),
            ("returned", |c| c.returned(Some(2), 8)),
            ("returned-other-attempt", |c| c.returned(Some(1), 8)),
            ("mark-dead", |c| c.mark_dead(2)),
            ("reopen", |c| c.reopen(task(3), "q3")),
        ];
        let states = ["accepted", "dispatched", "claimed", "resulted", "dead", "returned", "returned-dead"];
        // The expected state after each change (columns as `states`); "-" refused.
        let table: [(&str, [&str; 7]); 13] = [
            ("dispatched", ["dispatched", "-", "-", "-", "-", "-", "-"]),
            ("dispatched-old-attempt", ["-", "-", "-", "-", "-", "-", "-"]),
            ("claim", ["accepted", "dispatched", "dispatched", "-", "-", "-", "-"]),
            ("claim-old-attempt", ["-", "-", "-", "-", "-", "-", "-"]),
            ("supersede", ["dispatched", "dispatched", "dispatched", "-", "-", "-", "-"]),
            ("supersede-old-attempt", ["-", "-", "-", "-", "-", "-", "-"]),
            ("result", ["resulted", "resulted", "resulted", "-", "-", "-", "-"]),
            ("fail", ["resulted", "resulted", "resulted", "-", "-", "-", "-"]),
            ("fail-old-attempt", ["-", "-", "-", "-", "-", "-", "-"]),
            ("returned", ["-", "-", "-", "returned", "returned", "-", "-"]),
            ("returned-other-attempt", ["-", "-", "-", "-", "-", "-", "-"]),
            ("mark-dead", ["-", "-", "-", "resulted", "resulted", "returned", "returned"]),
            ("reopen", ["-", "-", "-", "-", "accepted", "-", "accepted"]),
        ];
        for ((name, change), (row_name, expected)) in changes.iter().zip(table) {
            assert_eq!(*name, row_name);
            for (state, want) in states.iter().zip(expected) {
                let mut call = fixture(state);
                let before = serde_json::to_value(&call).unwrap();
                let outcome = change(&mut call);
                match (want, outcome) {
                    ("-", Err(stale)) => {
                        assert_eq!(
                            serde_json::to_value(&call).unwrap(),
                            before,
                            "{name} from {state} changed the call"
                        );
                        assert_eq!(stale.found, fixture(state).state.name());
                    }
                    ("-", Ok(())) => panic!("{name} from {state} must be refused"),
                    (want, Ok(())) => assert_eq!(call.state.name(), want, "{name} from {state}"),
                    (want, Err(stale)) => panic!("{name} from {state} must give {want}: {stale}"),
                }
            }
        }
    }

    /// What the changes that succeed leave besides the state.
    #[test]
    fn transitions_keep_holder_queue_and_run_consistent() {
        let mut call = fixture("claimed");
        call.supersede(2, task(3), "sealfarm.worker.w-b").unwrap();
        assert_eq!(
            (call.attempt(), call.holder.clone(), call.queue.as_deref()),
            (3, None, Some("sealfarm.worker.w-b"))
        );
        call.claim("w-b", 3, 11).unwrap();
        assert_eq!(call.holder, Some(Holder { worker: "w-b".into(), attempt: 3, since_ms: 11 }));
        // The same holder again keeps when it claimed.
        call.claim("w-b", 3, 20).unwrap();
        assert_eq!(call.holder.as_ref().unwrap().since_ms, 11);
        call.fail(3, error(), FailedBy::DeadLetter, 30).unwrap();
        let run = call.run.clone().unwrap();
        assert_eq!((run.worker.as_str(), run.attempt, run.started_at_ms, run.dead), ("dead-letter", 3, 11, true));
        call.reopen(task(4), "q4").unwrap();
        assert_eq!((call.attempt(), call.run.is_none(), call.holder.is_none()), (4, true, true));
        // A later attempt's task must belong to the call.
        let mut other = task(5);
        other.call_id = uuid::Uuid::from_u128(8);
        assert_eq!(call.supersede(4, other, "q").unwrap_err().transition, Transition::Supersede);
    }

    /// Every phase an operator can see, from the inputs that decide it.
    #[test]
    fn phase_table() {
        let resulted = RowState::Resulted { error: None };
        let returned = RowState::Returned { at_ms: 1 };
        let (ok, failed, dead) = (run(1, false, false), run(1, false, true), run(1, true, true));
        type Row<'a> = (RowState, bool, Held, Option<&'a RunRecord>, u32, Phase);
        let table: [Row; 12] = [
            (RowState::Accepted, false, Held::No, None, 0, Phase::Queued),
            (RowState::Dispatched, false, Held::Running, None, 0, Phase::Queued),
            (RowState::Dispatched, true, Held::No, None, 0, Phase::Claimed),
            (RowState::Dispatched, true, Held::Waiting, None, 0, Phase::Claimed),
            (RowState::Dispatched, true, Held::Running, None, 0, Phase::Running),
            (resulted.clone(), false, Held::No, Some(&ok), 0, Phase::Returning),
            (resulted.clone(), false, Held::No, Some(&ok), 2, Phase::RetWait),
            (resulted.clone(), false, Held::No, Some(&dead), 2, Phase::Dead),
            (returned.clone(), false, Held::No, Some(&ok), 0, Phase::Done),
            (returned.clone(), false, Held::No, None, 0, Phase::Done),
            (returned.clone(), false, Held::No, Some(&failed), 0, Phase::Failed),
            (returned, false, Held::No, Some(&dead), 0, Phase::Dead),
        ];
        for (state, claimed, held, run, failures, want) in table {
            assert_eq!(Phase::of(&state, claimed, held, run, failures), want, "{state:?} {claimed} {held:?} {run:?}");
        }
        for phase in Phase::ALL {
            assert_eq!(phase.as_str().parse::<Phase>(), Ok(phase));
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }
}
