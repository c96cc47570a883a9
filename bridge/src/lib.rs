//! sealfarm-bridge: to lotus-miner it is one lotus-worker; behind it, the
//! whole farm through RabbitMQ.
//!
//! * [`miner`] — everything facing lotus-miner:
//!   * [`miner::worker_api`] — the worker API the miner calls (`POST /rpc/v0`);
//!   * [`miner::client`] — version check, storage attach, `WorkerConnect`,
//!     session watch, token verification;
//!   * [`miner::rpc`] — lotus' JSON-RPC over HTTP, both directions;
//!   * [`miner::api_info`] — `MINER_API_INFO` parsing;
//!   * [`miner::remote`] — `/remote`, the sector files served to the miner;
//!   * [`miner::pieces`] — piece data the miner pushes or links for AddPiece;
//!   * [`miner::storage`] — the sealing paths declared to the miner;
//! * [`calls`] — accepting calls as tasks, returning results as `Return*`,
//!   and their durable record ([`calls::store`], sled);
//! * [`workers`] — the live workers, from their heartbeats (routing, capacity);
//! * [`auth`] — tokens: which one a request carries, compared in constant time;
//! * [`blobs`] — C1 outputs and other payloads too large for a message;
//! * [`consume`] — the one way the bridge consumes a queue;
//! * [`senders`] — who published a message (RabbitMQ's validated `user_id`)
//!   and whether that broker user may speak for the worker it names;
//! * [`tls`] — HTTPS on the listener (`--tls-cert`), and the operator
//!   commands' trust in exactly the bridge's certificate;
//! * [`ops`] — the operators' HTTP API: status, controls, web dashboard, `/metrics`:
//!   * [`ops::snapshot`] — the snapshot of the farm every view is drawn from;
//!   * [`ops::queues`] — queue figures (broker protocol or management API);
//!   * [`ops::dead_letters`] — the dead-letter queue: list, replay, purge;
//!   * [`ops::metrics`] — Prometheus;
//! * [`cli`] — the command line: its arguments and commands;
//!   * [`cli::serve`] — `run`: wiring the parts together, background loops;
//!   * [`cli::views`] — the `workers` / `jobs` / `queues` / control commands.

// The list above also links crate-private modules, for readers of the
// source and of `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod auth;
pub(crate) mod blobs;
pub mod calls;
pub mod cli;
pub(crate) mod consume;
pub(crate) mod miner;
pub mod ops;
pub mod senders;
pub(crate) mod tls;
pub(crate) mod workers;
