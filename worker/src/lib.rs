//! sealfarm-worker: takes sealing tasks from RabbitMQ and runs the real
//! Filecoin proofs (`filecoin-proofs-api`) on this machine.
//!
//! * [`service`] — consume, claim, run, publish (the worker's main loop);
//!   a job's lifecycle (`service::job`) and its durable record
//!   (`service::job_store`, sled);
//! * [`executor`] — the child process that runs the proofs, restarted after a
//!   library panic;
//! * [`proofs`] — each stage as the library call lotus makes;
//! * [`payloads`], [`bridge_client`] — C1 outputs, C2 inputs and piece data,
//!   which travel over HTTP to and from the bridge, never on the broker;
//! * [`bench`] — the same execution code, timed, without a broker;
//! * [`params`], [`paramgen`] — Groth parameters: fetch, check, generate;
//! * [`sector_files`] — the lotus layout of a sealing path;
//! * [`warm_up`] — the small sector a GPU worker proves before its GPU stages.

pub mod bench;
pub mod bridge_client;
pub mod budget;
pub mod executor;
pub mod files;
pub mod hardware;
pub mod layers;
pub mod metrics;
pub mod paramgen;
pub mod params;
pub mod payloads;
pub mod proofs;
pub mod resources;
pub mod sector_files;
pub mod service;
pub mod warm_up;

/// This machine's host name.
pub fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most buffer.len() bytes into the buffer.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}
