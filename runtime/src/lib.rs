//! What every sealfarm process runs on, beside the wire formats of
//! `sealfarm-schemas`: the broker link and the queues' declaration, the
//! shutdown signal, the retry policy, the metrics registry, sector files
//! over HTTP, and the file and store helpers that keep data whole.
//!
//! * [`broker`] — the confirmed, reconnecting RabbitMQ link;
//! * [`queues`] — the queues' arguments and their idempotent declaration;
//! * [`shutdown`] — the signal that stops every task at its safe points;
//! * [`retry`] — the one retry policy (exponential backoff with jitter);
//! * [`metrics`] — what both processes' Prometheus registries share;
//! * [`sector_files`] — a sector file or cache over HTTP (with
//!   [`byte_range`], and [`direct_read`] for reads past the page cache);
//! * [`partial_file`] — files that are whole under their name or absent;
//! * [`sled_rewrite`] — giving a sled store's disk back;
//! * [`trust`] — the CA roots an https:// client trusts.

pub mod broker;
pub mod byte_range;
pub mod direct_read;
pub mod metrics;
pub mod partial_file;
pub mod queues;
pub mod retry;
pub mod sector_files;
pub mod shutdown;
pub mod sled_rewrite;
pub mod trust;
pub mod unsealed_file;

/// This machine's host name (what heartbeats and the status API show).
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}
