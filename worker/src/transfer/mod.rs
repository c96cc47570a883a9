//! The bytes that never ride the broker: C1 outputs, C2 inputs and piece
//! data travel over HTTP between the worker and the bridge.
//!
//! * [`payloads`] — a job's large inputs put in place before it runs, its C1
//!   output kept and handed over after;
//! * [`bridge_client`] — the HTTP client to the bridge's blob and piece paths.

pub(crate) mod bridge_client;
pub(crate) mod payloads;
