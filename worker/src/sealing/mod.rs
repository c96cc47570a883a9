//! Running a stage on this machine: the proofs library's calls, the child
//! process that makes them, and the files they read and write.
//!
//! * `executor` — the child process that runs the proofs, restarted after
//!   a library panic;
//! * [`proofs`] — each stage as the library call lotus makes;
//! * [`layout`] — the lotus layout of a sealing path;
//! * `layers` — PC1's SDR layer checksums, for resuming a PC1;
//! * `warm_up` — the small sector a GPU worker proves before its GPU
//!   stages (the plan, and its run in the executor).

pub(crate) mod download;
pub(crate) mod executor;
pub(crate) mod layers;
pub mod layout;
pub mod proofs;
pub mod snap;
pub(crate) mod warm_up;
