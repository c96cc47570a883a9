//! Everything facing lotus-miner: to it the bridge is one lotus-worker.
//!
//! * [`worker_api`] — the worker API the miner calls (`POST /rpc/v0`), and
//!   the router of every miner-facing route;
//! * [`client`] — the bridge calling the miner: version check, storage
//!   attach, `WorkerConnect`, session watch, token verification;
//! * [`rpc`] — lotus' JSON-RPC over HTTP, both directions;
//! * [`api_info`] — `MINER_API_INFO` parsing;
//! * [`remote`] — `/remote`, the sector files served to the miner;
//! * [`pieces`] — piece data the miner pushes or links for AddPiece;
//! * [`storage`] — the sealing paths declared to the miner;
//! * [`tokens`] — checking presented tokens with the miner, remembered
//!   briefly and a few at a time.

pub(crate) mod api_info;
pub(crate) mod client;
pub(crate) mod pieces;
pub(crate) mod remote;
pub(crate) mod rpc;
pub(crate) mod storage;
pub(crate) mod tokens;
pub(crate) mod worker_api;

#[cfg(test)]
mod decoder_props;
