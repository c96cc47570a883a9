//! AMQP messages between the bridge and the workers.
//!
//! Three kinds, all JSON, all carrying `schema` = [`SCHEMA_VERSION`]:
//! * [`TaskMessage`] — one attempt at one lotus call, on a stage queue;
//! * [`ResultMessage`] — what the call produced (or its [`CallError`]), on
//!   `sealfarm.results`;
//! * [`EventMessage`] — heartbeats, claims, progress and releases, on the
//!   `sealfarm.events` topic exchange.
//!
//! Stage inputs and outputs use the lotus wire types from [`crate::lotus`], so
//! the bridge passes what the miner sent through unchanged.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::blob::Payload;
use crate::hardware::Hardware;
use crate::lotus::{
    Bytes, CallError, Cid, PieceInfo, Range, ReplicaUpdateOut, SectorCids, SectorRef, SectorSize, TaskType,
};

/// Version of every message format in this module. A consumer dead-letters a
/// message whose version it does not know.
pub const SCHEMA_VERSION: u32 = 1;

/// A sealing stage: the unit a queue, a worker slot and a result are about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// AddPiece (`seal/v0/addpiece`).
    Ap,
    /// PreCommit phase 1 (`seal/v0/precommit/1`).
    Pc1,
    /// PreCommit phase 2 (`seal/v0/precommit/2`).
    Pc2,
    /// Commit phase 1 (`seal/v0/commit/1`).
    C1,
    /// Commit phase 2, the SNARK (`seal/v0/commit/2`).
    C2,
    /// FinalizeSector: trim the cache (`seal/v0/finalize`).
    Fin,
    /// ReleaseUnsealed (`seal/v0/finalizeunsealed`; lotus' short name FUS).
    Ru,
    /// ReplicaUpdate, the snap-deal encoding (`seal/v0/replicaupdate`;
    /// lotus' RU, named `update` here because `ru` is ReleaseUnsealed).
    Update,
    /// ProveReplicaUpdate1: the vanilla partition proofs (`seal/v0/provereplicaupdate/1`).
    Pr1,
    /// ProveReplicaUpdate2: the update SNARK (`seal/v0/provereplicaupdate/2`).
    Pr2,
    /// GenerateSectorKeyFromData (`seal/v0/regensectorkey`).
    Gsk,
    /// FinalizeReplicaUpdate: trim both caches (`seal/v0/finalize/replicaupdate`).
    Fru,
    /// UnsealPiece (`seal/v0/unseal`).
    Unseal,
    /// DataCid: a piece's commitment without a sector (`seal/v0/datacid`).
    Dc,
    /// DownloadSectorData: import a sector's files (`seal/v0/download/sector`).
    Dl,
}

impl Stage {
    pub const ALL: [Stage; 15] = [
        Stage::Ap,
        Stage::Pc1,
        Stage::Pc2,
        Stage::C1,
        Stage::C2,
        Stage::Fin,
        Stage::Ru,
        Stage::Update,
        Stage::Pr1,
        Stage::Pr2,
        Stage::Gsk,
        Stage::Fru,
        Stage::Unseal,
        Stage::Dc,
        Stage::Dl,
    ];

    /// Stages that need no sector files: they go to the stage's shared
    /// queue, never to the worker holding the sector. (A download goes
    /// where the sector's other files are, if the farm has any.)
    pub fn is_location_free(self) -> bool {
        matches!(self, Stage::C2 | Stage::Pr2 | Stage::Dc)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ap => "ap",
            Stage::Pc1 => "pc1",
            Stage::Pc2 => "pc2",
            Stage::C1 => "c1",
            Stage::C2 => "c2",
            Stage::Fin => "fin",
            Stage::Ru => "ru",
            Stage::Update => "update",
            Stage::Pr1 => "pr1",
            Stage::Pr2 => "pr2",
            Stage::Gsk => "gsk",
            Stage::Fru => "fru",
            Stage::Unseal => "unseal",
            Stage::Dc => "dc",
            Stage::Dl => "dl",
        }
    }

    /// The lotus task type the miner schedules this stage as.
    pub fn task_type(self) -> TaskType {
        match self {
            Stage::Ap => TaskType::AddPiece,
            Stage::Pc1 => TaskType::PreCommit1,
            Stage::Pc2 => TaskType::PreCommit2,
            Stage::C1 => TaskType::Commit1,
            Stage::C2 => TaskType::Commit2,
            Stage::Fin => TaskType::Finalize,
            Stage::Ru => TaskType::FinalizeUnsealed,
            Stage::Update => TaskType::ReplicaUpdate,
            Stage::Pr1 => TaskType::ProveReplicaUpdate1,
            Stage::Pr2 => TaskType::ProveReplicaUpdate2,
            Stage::Gsk => TaskType::RegenSectorKey,
            Stage::Fru => TaskType::FinalizeReplicaUpdate,
            Stage::Unseal => TaskType::Unseal,
            Stage::Dc => TaskType::DataCid,
            Stage::Dl => TaskType::DownloadSector,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Stage::ALL.into_iter().find(|stage| stage.as_str() == lower).ok_or_else(|| {
            format!(
                "unknown stage {s:?}; one of {}",
                Stage::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Where AddPiece reads the piece bytes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PieceData {
    /// `piece_size` zero bytes: a committed-capacity (CC) sector.
    Null,
    /// Bytes the bridge received for this call (pushed by the miner or
    /// downloaded from its URL), named by id: a worker reads them from
    /// `sealfarm/pieces/<id>` under its own sealing path (shared storage), or
    /// streams them from the bridge's piece path over HTTP.
    Piece { id: Uuid },
    /// A filesystem path. What tasks named before pieces had ids; a worker
    /// refuses such a task without opening the path (anyone who can publish to
    /// the broker could otherwise make it read any file it can read).
    File { path: String },
}

/// The stage and its stage-specific inputs (lotus' call parameters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "stage", rename_all = "lowercase")]
pub enum Task {
    Ap {
        /// Unpadded sizes of the pieces already in the sector (lotus `pieceSizes`).
        #[serde(default)]
        existing_piece_sizes: Vec<u64>,
        /// Unpadded size of the new piece.
        piece_size: u64,
        data: PieceData,
    },
    Pc1 {
        ticket: Bytes,
        pieces: Vec<PieceInfo>,
    },
    Pc2 {
        /// The PC1 output exactly as the miner holds it.
        pc1_out: Bytes,
    },
    C1 {
        ticket: Bytes,
        seed: Bytes,
        pieces: Vec<PieceInfo>,
        cids: Box<SectorCids>,
    },
    C2 {
        /// The C1 output exactly as the miner sent it: a blob the bridge
        /// keeps (tens of MiB for 32 GiB sectors).
        c1_out: Payload,
    },
    Fin {},
    Ru {
        /// Ranges to keep; `null`/empty removes the unsealed file.
        #[serde(default)]
        keep_unsealed: Option<Vec<Range>>,
    },
    Update {
        /// The deal pieces (and fillers) that fill the sector, in order.
        pieces: Vec<PieceInfo>,
    },
    Pr1 {
        /// CommR of the sector as sealed (the sector key).
        sector_key: Cid,
        new_sealed: Cid,
        new_unsealed: Cid,
    },
    Pr2 {
        sector_key: Cid,
        new_sealed: Cid,
        new_unsealed: Cid,
        /// ProveReplicaUpdate1's output: the JSON array of base64 partition
        /// proofs exactly as the miner sent it, a blob the bridge keeps.
        vanilla_proofs: Payload,
    },
    Gsk {
        /// CommD of the data the update encoded.
        comm_d: Cid,
    },
    Fru {},
    Unseal {
        /// Unpadded offset and size of the range to recreate.
        offset: u64,
        size: u64,
        /// The sector's ticket.
        randomness: Bytes,
        /// The sector's CommD (of the snapped data for an updated sector).
        comm_d: Cid,
    },
    Dc {
        /// Unpadded size of the piece.
        piece_size: u64,
        data: PieceData,
    },
    Dl {
        /// Put the files where finished sectors go (`true`) or in the sealing path.
        finalized: bool,
        /// Where to fetch each file type from.
        sources: Vec<SectorSource>,
    },
}

/// One file of a sector to import (`storiface.SectorLocation`, one entry of
/// DownloadSectorData's map).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SectorSource {
    /// `unsealed`, `sealed`, `cache`, `update` or `update-cache`.
    pub file_type: String,
    pub url: String,
    /// HTTP headers to send (credentials of the source).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

impl Task {
    pub fn stage(&self) -> Stage {
        match self {
            Task::Ap { .. } => Stage::Ap,
            Task::Pc1 { .. } => Stage::Pc1,
            Task::Pc2 { .. } => Stage::Pc2,
            Task::C1 { .. } => Stage::C1,
            Task::C2 { .. } => Stage::C2,
            Task::Fin {} => Stage::Fin,
            Task::Ru { .. } => Stage::Ru,
            Task::Update { .. } => Stage::Update,
            Task::Pr1 { .. } => Stage::Pr1,
            Task::Pr2 { .. } => Stage::Pr2,
            Task::Gsk { .. } => Stage::Gsk,
            Task::Fru {} => Stage::Fru,
            Task::Unseal { .. } => Stage::Unseal,
            Task::Dc { .. } => Stage::Dc,
            Task::Dl { .. } => Stage::Dl,
        }
    }

    /// The piece data the bridge keeps for this task (AddPiece, DataCid).
    pub fn piece_id(&self) -> Option<Uuid> {
        match self {
            Task::Ap { data: PieceData::Piece { id }, .. } | Task::Dc { data: PieceData::Piece { id }, .. } => {
                Some(*id)
            }
            _ => None,
        }
    }

    /// The large input kept as a blob, if the task has one.
    pub fn payload(&self) -> Option<&Payload> {
        match self {
            Task::C2 { c1_out } => Some(c1_out),
            Task::Pr2 { vanilla_proofs, .. } => Some(vanilla_proofs),
            _ => None,
        }
    }

    /// The same task with its large input replaced.
    pub fn with_payload(&self, payload: Payload) -> Task {
        let mut task = self.clone();
        match &mut task {
            Task::C2 { c1_out } => *c1_out = payload,
            Task::Pr2 { vanilla_proofs, .. } => *vanilla_proofs = payload,
            _ => {}
        }
        task
    }
}

/// One attempt at one lotus call, published to a stage queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskMessage {
    pub schema: u32,
    /// The lotus `CallID.ID` this task answers.
    pub call_id: Uuid,
    /// 1 for the first dispatch; raised each time the task is re-dispatched.
    pub attempt: u32,
    pub sector: SectorRef,
    /// When the bridge received the call (Unix milliseconds).
    pub issued_at_ms: u64,
    /// PC1 only: after this moment (Unix milliseconds) the ticket is too old
    /// for the precommit to land on chain, so the PC1 is failed instead of
    /// run (the miner then draws a new ticket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_deadline_ms: Option<u64>,
    /// The sector holds deal data (its AddPiece had piece bytes): its tasks
    /// go before those of committed-capacity sectors, as in lotus.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deal: bool,
    /// The bridge's proof that this attempt was handed out (a MAC of call
    /// and attempt): whoever holds the task can return its result, and the
    /// result must carry it back. Set as the task is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_token: Option<String>,
    /// The bridge (its `--bridge-id`) whose call this is: the worker
    /// publishes the result with it as routing key, so it reaches that
    /// bridge's results queue and no other. Set as the task is published;
    /// absent in tasks of bridges from before several miners shared a farm
    /// (their results go to `sealfarm.results`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(flatten)]
    pub task: Task,
}

impl TaskMessage {
    pub fn new(sector: SectorRef, task: Task) -> Self {
        TaskMessage {
            schema: SCHEMA_VERSION,
            call_id: Uuid::new_v4(),
            attempt: 1,
            sector,
            issued_at_ms: now_ms(),
            ticket_deadline_ms: None,
            deal: false,
            attempt_token: None,
            bridge: None,
            task,
        }
    }

    /// The routing key of this task's result on
    /// [`crate::topology::RESULTS_EXCHANGE`]: its bridge, or `""` for a
    /// task that names none.
    pub fn reply_key(&self) -> &str {
        self.bridge.as_deref().unwrap_or("")
    }

    pub fn stage(&self) -> Stage {
        self.task.stage()
    }

    /// The same task, dispatched once more.
    pub fn next_attempt(&self) -> Self {
        TaskMessage { attempt: self.attempt + 1, ..self.clone() }
    }

    /// The span every log line about this task is written in (bridge,
    /// worker and executor alike): call id, sector, stage and attempt.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "job",
            call_id = %self.call_id,
            sector = %self.sector.id,
            stage = %self.stage(),
            attempt = self.attempt
        )
    }

    /// The key a worker stores this attempt under.
    pub fn job_key(&self) -> String {
        format!("{}/{}", self.call_id, self.attempt)
    }
}

/// A stage's output, in the shape the matching lotus `Return*` call takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "stage", rename_all = "lowercase")]
pub enum StageOutput {
    Ap {
        piece: PieceInfo,
    },
    Pc1 {
        pc1_out: Bytes,
    },
    Pc2 {
        cids: SectorCids,
    },
    /// The C1 output: a blob the worker handed to the bridge (inline only up
    /// to [`crate::blob::INLINE_LIMIT`], from a worker with no bridge to talk to).
    C1 {
        c1_out: Payload,
    },
    C2 {
        proof: Bytes,
    },
    Fin {},
    Ru {},
    Update {
        out: ReplicaUpdateOut,
    },
    /// The vanilla partition proofs as the JSON array lotus' Return takes
    /// (`["<base64>", …]`): a blob like a C1 output.
    Pr1 {
        vanilla_proofs: Payload,
    },
    Pr2 {
        proof: Bytes,
    },
    Gsk {},
    Fru {},
    Unseal {},
    Dc {
        piece: PieceInfo,
    },
    Dl {},
}

impl StageOutput {
    pub fn stage(&self) -> Stage {
        match self {
            StageOutput::Ap { .. } => Stage::Ap,
            StageOutput::Pc1 { .. } => Stage::Pc1,
            StageOutput::Pc2 { .. } => Stage::Pc2,
            StageOutput::C1 { .. } => Stage::C1,
            StageOutput::C2 { .. } => Stage::C2,
            StageOutput::Fin {} => Stage::Fin,
            StageOutput::Ru {} => Stage::Ru,
            StageOutput::Update { .. } => Stage::Update,
            StageOutput::Pr1 { .. } => Stage::Pr1,
            StageOutput::Pr2 { .. } => Stage::Pr2,
            StageOutput::Gsk {} => Stage::Gsk,
            StageOutput::Fru {} => Stage::Fru,
            StageOutput::Unseal {} => Stage::Unseal,
            StageOutput::Dc { .. } => Stage::Dc,
            StageOutput::Dl {} => Stage::Dl,
        }
    }

    /// The large output kept as a blob (C1's output, PR1's proofs).
    pub fn payload(&self) -> Option<&Payload> {
        match self {
            StageOutput::C1 { c1_out } => Some(c1_out),
            StageOutput::Pr1 { vanilla_proofs } => Some(vanilla_proofs),
            _ => None,
        }
    }

    /// The same output with its large part replaced.
    pub fn with_payload(&self, payload: Payload) -> StageOutput {
        let mut output = self.clone();
        match &mut output {
            StageOutput::C1 { c1_out } => *c1_out = payload,
            StageOutput::Pr1 { vanilla_proofs } => *vanilla_proofs = payload,
            _ => {}
        }
        output
    }
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Done(StageOutput),
    Failed(CallError),
}

impl Outcome {
    /// The blob a done stage's output names (a C1 output, PR1 proofs).
    pub fn output_blob(&self) -> Option<&crate::blob::BlobRef> {
        match self {
            Outcome::Done(output) => output.payload().and_then(Payload::blob),
            Outcome::Failed(_) => None,
        }
    }
}

/// The result of one attempt, published to `sealfarm.results`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResultMessage {
    pub schema: u32,
    pub call_id: Uuid,
    pub attempt: u32,
    pub sector: SectorRef,
    pub stage: Stage,
    /// Id of the worker that ran the attempt.
    pub worker: String,
    /// The id of the sealing path it ran in (`sectorstore.json`): where
    /// the sector's files now are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
    /// When the worker started and finished computing (Unix milliseconds).
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub outcome: Outcome,
    /// The task's `attempt_token`, handed back: the bridge takes a result
    /// only from whoever received that attempt's task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_token: Option<String>,
}

/// A job a worker holds (running or waiting for a slot), as its heartbeat reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunningJob {
    pub call_id: Uuid,
    pub attempt: u32,
    pub sector: SectorRef,
    pub stage: Stage,
    pub started_at_ms: u64,
    /// When it got its share of the machine and started computing; None
    /// while it waits for a slot or for memory, cores or a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since_ms: Option<u64>,
    /// The last progress of the job (PC1: layers), if it reports any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
}

/// How far a job is: `done` of `total` steps (PC1: layers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobProgress {
    pub step: String,
    pub done: u64,
    pub total: u64,
    /// Bytes of finished output (PC1: layer files).
    pub bytes: u64,
    /// Estimated seconds left.
    pub eta_s: Option<u64>,
}

/// How many jobs of one stage and sector size a worker runs at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StageSlots {
    pub stage: Stage,
    pub sector_size: SectorSize,
    pub slots: u32,
}

/// Memory, threads and GPUs the running jobs of a worker hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceUse {
    pub memory_bytes: u64,
    pub threads: u64,
    pub gpus: f64,
}

// GPU shares are small fractions, never NaN.
impl Eq for ResourceUse {}

/// What an event says.
// A heartbeat is much larger than the other events; events are short-lived
// wire messages, so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EventKind {
    /// The worker is alive; what it serves and what it is running.
    Heartbeat {
        hostname: String,
        stages: Vec<Stage>,
        sector_sizes: Vec<SectorSize>,
        slots: u32,
        running: Vec<RunningJob>,
        /// Jobs of each stage and sector size it runs at once (its prefetch
        /// on that stage's queue).
        #[serde(default)]
        capacity: Vec<StageSlots>,
        /// The machine: cores, memory in use, GPUs, free space.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hardware: Option<Hardware>,
        /// The id (`sectorstore.json`) of the sealing path it keeps sector
        /// files in; workers that mount one shared path report the same id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        storage_id: Option<String>,
        /// Where it serves its sector files (worker-local storage), e.g.
        /// `http://10.0.0.5:3457`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        files_url: Option<String>,
        /// Drained by the operator: it takes no new tasks from the stage
        /// queues and finishes the ones it holds.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        draining: bool,
        /// Stages it does not take yet: its GPU kernels are being built (the
        /// warm-up proves a small sector first). Empty once warm.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warming: Vec<Stage>,
        /// The share of the machine its running jobs hold now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_use: Option<ResourceUse>,
    },
    /// The worker recorded a task durably and acknowledged its delivery.
    Claim { call_id: Uuid, attempt: u32, sector: SectorRef, stage: Stage },
    /// A step inside a running job (e.g. PC1 layer 2 of 11 done).
    Progress {
        call_id: Uuid,
        attempt: u32,
        stage: Stage,
        /// What is counted: `layer` for PC1.
        step: String,
        done: u64,
        total: u64,
        /// Bytes of finished output so far (PC1: layer files).
        #[serde(default)]
        bytes: u64,
        /// Estimated seconds left, from the pace so far.
        #[serde(default)]
        eta_s: Option<u64>,
        /// How this step was reached: `computed` in this run, or `kept` (a
        /// checkpoint of an earlier run that verified).
        #[serde(default)]
        how: String,
    },
    /// The worker gives a claimed job back without a result, for the bridge
    /// to dispatch again at once.
    Release { call_id: Uuid, attempt: u32, reason: String },
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Heartbeat { .. } => "heartbeat",
            EventKind::Claim { .. } => "claim",
            EventKind::Progress { .. } => "progress",
            EventKind::Release { .. } => "release",
        }
    }
}

/// An event on the `sealfarm.events` topic exchange, routed as
/// `worker.<worker-id>.<kind>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventMessage {
    pub schema: u32,
    pub worker: String,
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: EventKind,
}

/// The longest worker id. An id names the worker's queue
/// (`sealfarm.worker.<id>`), its broker user and its metric labels.
pub const MAX_WORKER_ID_LEN: usize = 64;

/// The most entries a heartbeat may list (running jobs, capacity, warming
/// stages): far above any machine's (75 stage × size queues), far below
/// what would let one message grow the bridge's memory.
pub const MAX_HEARTBEAT_ENTRIES: usize = 4096;

/// A worker id is 1 to [`MAX_WORKER_ID_LEN`] characters of `A-Z a-z 0-9 . _ -`
/// (a host name is one).
pub fn check_worker_id(id: &str) -> Result<(), String> {
    check_id("worker", id)
}

/// A bridge id (`--bridge-id`, a miner's actor address such as `t01000` by
/// default) is, like a worker id, 1 to 64 characters of `A-Z a-z 0-9 . _ -`:
/// it is part of queue names and a routing key.
pub fn check_bridge_id(id: &str) -> Result<(), String> {
    check_id("bridge", id)
}

fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_WORKER_ID_LEN {
        return Err(format!("{what} id of {} bytes: it must have 1 to {MAX_WORKER_ID_LEN}", id.len()));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!(
            "{what} id {:?} holds {c:?}: only A-Z, a-z, 0-9, '.', '_' and '-' are allowed",
            id.escape_debug().to_string()
        ));
    }
    Ok(())
}

impl EventMessage {
    /// What a decoded event must also be before the bridge keeps anything
    /// of it: a valid worker id and bounded lists.
    pub fn check_bounds(&self) -> Result<(), DeadLetterReason> {
        check_worker_id(&self.worker).map_err(DeadLetterReason::malformed)?;
        if let EventKind::Heartbeat { running, capacity, warming, stages, sector_sizes, .. } = &self.event {
            let longest = [running.len(), capacity.len(), warming.len(), stages.len(), sector_sizes.len()];
            if longest.iter().any(|&n| n > MAX_HEARTBEAT_ENTRIES) {
                return Err(DeadLetterReason::malformed(format!(
                    "a heartbeat of worker {} lists more than {MAX_HEARTBEAT_ENTRIES} entries (running, capacity, \
                     warming, stages or sizes: {longest:?})",
                    self.worker
                )));
            }
        }
        Ok(())
    }

    pub fn new(worker: &str, event: EventKind) -> Self {
        EventMessage { schema: SCHEMA_VERSION, worker: worker.to_string(), at_ms: now_ms(), event }
    }

    pub fn routing_key(&self) -> String {
        format!("worker.{}.{}", self.worker, self.event.name())
    }
}

/// An instruction from the bridge to one worker, on its own queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "control", rename_all = "lowercase")]
pub enum Control {
    /// This attempt was dispatched again (its lease expired or it was
    /// released): drop it, do not resume it, and discard its result.
    Supersede { call_id: Uuid, attempt: u32, reason: String },
    /// Take no new tasks from the stage queues (the operator's `drain`);
    /// finish the held ones. Kept across restarts until `resume`.
    Drain { reason: String },
    /// Take tasks again after a drain.
    Resume {},
}

/// A control message: told apart from a task by its `control` field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ControlMessage {
    pub schema: u32,
    #[serde(flatten)]
    pub control: Control,
}

/// The most bytes of a [`DeadLetterReason`]'s detail.
pub const MAX_REASON_DETAIL: usize = 1024;

/// Why a consumer dead-lettered a message; sent as the `x-sealfarm-reason`
/// header (`<code>: <detail>`) so an operator reads it in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterReason {
    pub code: &'static str,
    pub detail: String,
}

impl DeadLetterReason {
    /// A reason with its detail cut to [`MAX_REASON_DETAIL`] bytes: the
    /// detail may quote what arrived (serde quotes a wrong value whole), and
    /// the reason travels as a message header, which must fit in one AMQP
    /// frame (128 KiB) or the dead-letter publish itself fails.
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_REASON_DETAIL {
            let mut end = MAX_REASON_DETAIL - "…".len();
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push('…');
        }
        DeadLetterReason { code, detail }
    }
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new("malformed", detail)
    }
    pub fn unsupported_schema(version: u64) -> Self {
        Self::new(
            "unsupported-schema",
            format!("message schema version {version}, this build reads version {SCHEMA_VERSION}"),
        )
    }
    pub fn unknown_proof_type(detail: impl Into<String>) -> Self {
        Self::new("unknown-proof-type", detail)
    }
    pub fn wrong_sector_size(detail: impl Into<String>) -> Self {
        Self::new("wrong-sector-size", detail)
    }
    pub fn wrong_stage(detail: impl Into<String>) -> Self {
        Self::new("wrong-stage", detail)
    }
    pub fn missing_input(detail: impl Into<String>) -> Self {
        Self::new("missing-input", detail)
    }
    /// A task whose runs keep ending without a result (they take their
    /// process down), given up after its retries.
    pub fn poison(detail: impl Into<String>) -> Self {
        Self::new("poison", detail)
    }
    /// Dead-lettered by the broker (delivery limit, …), reason from `x-death`.
    pub fn broker(detail: impl Into<String>) -> Self {
        Self::new("broker", detail)
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// Decodes a message body as `T` (`what` names it in the reason): JSON,
/// with a `schema` field this build reads. What cannot be decoded comes
/// back as the reason to dead-letter it with (`malformed`, or
/// `unsupported-schema` naming the version).
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, DeadLetterReason> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| DeadLetterReason::malformed(format!("not JSON: {e}")))?;
    let Some(schema) = value.get("schema") else {
        return Err(DeadLetterReason::malformed("no \"schema\" version field"));
    };
    match schema.as_u64() {
        Some(version) if version == u64::from(SCHEMA_VERSION) => {}
        Some(version) => return Err(DeadLetterReason::unsupported_schema(version)),
        None => {
            return Err(DeadLetterReason::malformed(format!("\"schema\" is {}, not a version number", kind_of(schema))))
        }
    }
    serde_json::from_value(value).map_err(|e| DeadLetterReason::malformed(format!("not {what}: {e}")))
}

/// A JSON value in a few words: a number as it is written, else its type.
fn kind_of(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(_) => "a string".into(),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Object(_) => "an object".into(),
        serde_json::Value::Bool(_) => "a boolean".into(),
        serde_json::Value::Null => "null".into(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lotus::{RegisteredSealProof, SectorId};

    fn sector() -> SectorRef {
        SectorRef { id: SectorId { miner: 1000, number: 7 }, proof_type: RegisteredSealProof(5) }
    }

    #[test]
    fn task_messages_are_flat_json_tagged_by_stage() {
        let task = TaskMessage::new(sector(), Task::Pc2 { pc1_out: Bytes(b"{}".to_vec()) });
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["stage"], "pc2");
        assert_eq!(json["pc1_out"], "e30=");
        assert_eq!(json["sector"]["ID"]["Miner"], 1000);
        assert_eq!(json["schema"], SCHEMA_VERSION);
        let back: TaskMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back, task);
    }

    #[test]
    fn a_task_without_its_inputs_does_not_parse() {
        let mut json =
            serde_json::to_value(TaskMessage::new(sector(), Task::C2 { c1_out: Bytes(vec![1]).into() })).unwrap();
        json.as_object_mut().unwrap().remove("c1_out");
        let err = serde_json::from_value::<TaskMessage>(json).unwrap_err();
        assert!(err.to_string().contains("c1_out"), "{err}");
    }

    #[test]
    fn results_carry_either_output_or_call_error() {
        let failed = Outcome::Failed(CallError::new(crate::ErrorCode::TEMP_WORKER_RESTART, "restarted"));
        let json = serde_json::to_value(&failed).unwrap();
        assert_eq!(json["failed"]["Code"], 101);
        let done = Outcome::Done(StageOutput::C2 { proof: Bytes(vec![1, 2]) });
        let json = serde_json::to_value(&done).unwrap();
        assert_eq!(json["done"]["stage"], "c2");
    }

    #[test]
    fn stages_parse_from_operator_text() {
        assert_eq!("PC1".parse::<Stage>().unwrap(), Stage::Pc1);
        assert!("pc3".parse::<Stage>().unwrap_err().contains("unknown stage"));
    }

    #[test]
    fn decode_names_what_is_wrong() {
        let reason = decode::<EventMessage>(b"{not json", "an event message").unwrap_err();
        assert_eq!(reason.code, "malformed");
        assert!(reason.detail.starts_with("not JSON"), "{reason}");
        let reason = decode::<EventMessage>(br#"{"schema": 7}"#, "an event message").unwrap_err();
        assert_eq!(reason.code, "unsupported-schema");
        assert!(reason.detail.contains("version 7") && reason.detail.contains("reads version 1"), "{reason}");
        let reason = decode::<EventMessage>(br#"{"worker": "w1"}"#, "an event message").unwrap_err();
        assert_eq!(reason.to_string(), "malformed: no \"schema\" version field");
        let reason = decode::<EventMessage>(br#"{"schema": 1, "worker": "w1"}"#, "an event message").unwrap_err();
        assert!(reason.detail.starts_with("not an event message: "), "{reason}");
        let reason = decode::<EventMessage>(br#"{"schema": "1"}"#, "an event message").unwrap_err();
        assert_eq!(reason.to_string(), "malformed: \"schema\" is a string, not a version number");
        let reason = decode::<EventMessage>(br#"{"schema": 18446744073709551616}"#, "an event message").unwrap_err();
        assert_eq!(reason.to_string(), "malformed: \"schema\" is 1.8446744073709552e+19, not a version number");
        // serde quotes a wrong value whole; the reason (a message header) stays short.
        let long = format!(r#"{{"schema": 1, "worker": 7, "at_ms": "{}"}}"#, "x".repeat(1 << 20));
        let reason = decode::<EventMessage>(long.as_bytes(), "an event message").unwrap_err();
        assert!(reason.detail.len() <= MAX_REASON_DETAIL && reason.detail.ends_with('…'), "{}", reason.detail.len());
        let event =
            EventMessage::new("w1", EventKind::Release { call_id: Uuid::nil(), attempt: 1, reason: "test".into() });
        let decoded: EventMessage = decode(&serde_json::to_vec(&event).unwrap(), "an event message").unwrap();
        assert_eq!(decoded.worker, "w1");
    }
}
