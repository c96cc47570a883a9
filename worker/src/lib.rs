//! sealfarm-worker: takes sealing tasks from RabbitMQ and runs the real
//! Filecoin proofs (`filecoin-proofs-api`) on this machine.
//!
//! * [`cli`] — the `sealfarm-worker` command line: flags, subcommands, start-up;
//! * [`service`] — consume, claim, run, publish: the worker's main loop, a job's lifecycle and its store;
//! * [`sealing`] — running a stage: the executor process, the proofs calls, the sealing path, PC1 layers, warm-up;
//! * `transfer` — C1 outputs, C2 inputs and piece data, over HTTP to and from the bridge, never on the broker;
//! * `placement` — what this machine takes: hardware probe, lotus' resource table, overrides, the shared budget;
//! * `params` — Groth parameters: fetch, check, generate;
//! * `files` — the worker's `/files` HTTP file server (worker-local storage);
//! * [`metrics`] — the Prometheus metrics (`/metrics`);
//! * [`mod@bench`] — the same execution code, timed, without a broker.

pub mod bench;
pub mod cli;
pub(crate) mod files;
pub mod metrics;
pub(crate) mod params;
pub(crate) mod placement;
pub mod sealing;
pub mod service;
pub(crate) mod transfer;
