//! Every wire format of sealfarm, defined once.
//!
//! * [`lotus`] — the lotus JSON-RPC types that cross the bridge (sector refs,
//!   call ids, piece infos, CIDs, call errors, proof types, task names), with
//!   the exact JSON shapes lotus' Go code produces.
//! * [`messages`] — the AMQP messages between bridge and workers: tasks,
//!   results and events, each carrying [`messages::SCHEMA_VERSION`].
//! * [`topology`] — the broker topology as data (exchange and queue names and
//!   their arguments) and an idempotent declaration of it;
//! * [`blob`] — payloads too large for a message (C1 outputs), named by digest;
//! * [`hardware`] — what a worker's machine has, as heartbeats carry it;
//! * [`sector_store`] — lotus' `sectorstore.json`, sector file names, the
//!   flat tar a cache directory travels as, and the HTTP answer that streams
//!   a sector file or cache over `/remote` (with [`byte_range`], and
//!   [`direct_read`] for files read past the page cache);
//! * [`broker`] — the confirmed, reconnecting RabbitMQ link every process
//!   uses to put these messages on the wire, and [`shutdown`], the signal
//!   that stops it.
//! * [`sled_rewrite`] — how the bridge's call store and a worker's job
//!   store give disk space back (sled does not, by itself);
//! * [`partial_file`] — files that are whole under their name or absent;
//! * [`retry`] — the one retry policy (exponential backoff with jitter);
//! * [`metrics`] — what both processes' Prometheus registries share.
//!
//! The bridge and the worker both depend on this crate; neither defines a
//! wire type of its own.

pub mod blob;
pub mod broker;
pub mod byte_range;
pub mod commitment;
pub mod direct_read;
pub mod hardware;
pub mod json_schema;
pub mod lotus;
pub mod messages;
pub mod metrics;
pub mod partial_file;
pub mod retry;
pub mod sector_store;
pub mod shutdown;
pub mod sled_rewrite;
pub mod topology;

pub use lotus::{
    Bytes, CallError, CallId, Cid, ErrorCode, PieceInfo, RegisteredSealProof, SectorCids, SectorId, SectorRef,
    SectorSize, TaskType,
};
pub use messages::{
    Control, ControlMessage, DeadLetterReason, EventKind, EventMessage, Outcome, ResultMessage, Stage, StageOutput,
    Task, TaskMessage, SCHEMA_VERSION,
};
