//! sealfarm-bridge: to lotus-miner it is one lotus-worker; behind it, the
//! whole farm through RabbitMQ.
//!
//! * [`server`] — the worker API the miner calls (`POST /rpc/v0`);
//! * [`calls`] — accepting calls as tasks, returning results as `Return*`;
//! * [`farm`] — the live workers, from their heartbeats (routing, capacity);
//! * [`pieces`] — piece data the miner pushes or links for AddPiece;
//! * [`blobs`] — C1 outputs and other payloads too large for a message;
//! * [`call_store`] — the durable record of every call (sled);
//! * [`registration`] — version check, storage attach, `WorkerConnect`,
//!   session watch, token verification;
//! * [`storage`] — the sealing paths declared to the miner;
//! * [`remote`] — `/remote`, the sector files served to the miner;
//! * [`rpc`] — lotus' JSON-RPC over HTTP, both directions;
//! * [`api_info`] — `MINER_API_INFO` parsing;
//! * [`ops`] — the status API, controls, web dashboard and `/metrics`;
//! * [`status`] — the snapshot of the farm every view is drawn from;
//! * [`queues`], [`dead_letters`], [`metrics`] — queue figures, the
//!   dead-letter queue, Prometheus;
//! * [`views`] — the `workers` / `jobs` / `queues` / control commands.

pub mod api_info;
pub mod blobs;
pub mod calls;
pub mod consume;
pub mod dead_letters;
pub mod farm;
pub mod metrics;
pub mod ops;
pub mod pieces;
pub mod queues;
pub mod registration;
pub mod remote;
pub mod rpc;
pub mod server;
pub mod status;
pub mod storage;
pub mod views;
