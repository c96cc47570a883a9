//! Every wire format of sealfarm, defined once.
//!
//! * [`lotus`] — the lotus JSON-RPC types that cross the bridge (sector refs,
//!   call ids, piece infos, CIDs, call errors, proof types, task names), with
//!   the exact JSON shapes lotus' Go code produces.
//! * [`messages`] — the AMQP messages between bridge and workers: tasks,
//!   results and events, each carrying [`messages::SCHEMA_VERSION`].
//! * [`topology`] — the broker topology's names: exchanges, queues, headers;
//! * [`blob`] — payloads too large for a message (C1 outputs), named by digest;
//! * [`hardware`] — what a worker's machine has, as heartbeats carry it;
//! * [`sector_store`] — lotus' `sectorstore.json`, sector file names and types;
//! * [`commitment`], [`json_schema`] — commitment CIDs; the messages' JSON Schemas.
//!
//! No async runtime, broker client or metrics library: what the processes
//! run on is `sealfarm-runtime`.
//!
//! The bridge and the worker both depend on this crate; neither defines a
//! wire type of its own.

pub mod blob;
pub mod commitment;
pub mod hardware;
pub mod json_schema;
pub mod lotus;
pub mod messages;
pub mod sector_store;
pub mod topology;

pub use lotus::{
    Bytes, CallError, CallId, Cid, ErrorCode, PieceInfo, RegisteredSealProof, SectorCids, SectorId, SectorRef,
    SectorSize, TaskType,
};
pub use messages::{
    Control, ControlMessage, DeadLetterReason, EventKind, EventMessage, Outcome, ResultMessage, Stage, StageOutput,
    Task, TaskMessage, SCHEMA_VERSION,
};
