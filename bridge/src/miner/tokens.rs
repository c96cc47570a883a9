//! Checking the tokens the miner (or anyone) presents on `/rpc/v0` and
//! `/remote`: lotus-worker asks the miner (`AuthVerify`), and so does the
//! bridge, but a stranger must not be able to turn each of its requests
//! into a call to the miner and a log line:
//!
//! * a token the miner accepted is trusted for [`TRUSTED_FOR`] without
//!   asking again; one it refused is refused for [`REFUSED_FOR`] without
//!   asking again (both remembered by their SHA-256, never the token);
//! * at most [`CONCURRENT_CHECKS`] `AuthVerify` calls run at once; a request
//!   that waits longer than [`CHECK_WAIT`] for its turn is answered
//!   "busy" (HTTP 503), not queued without end;
//! * refusals are logged at most once per [`WARN_EVERY`], with the count
//!   of those not logged.
//!
//! A miner that cannot be asked (down, or no answer within the call
//! timeout) makes the check "unavailable", which is never remembered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::miner::rpc::{CallFailure, RpcClient};

/// How long a token the miner accepted is trusted without asking again.
pub const TRUSTED_FOR: Duration = Duration::from_secs(60);
/// How long a token the miner refused is refused without asking again.
pub const REFUSED_FOR: Duration = Duration::from_secs(30);
/// `AuthVerify` calls in flight at most.
pub const CONCURRENT_CHECKS: usize = 4;
/// How long a request waits for a free check before it is answered "busy".
pub const CHECK_WAIT: Duration = Duration::from_secs(10);
/// At most one WARN line about refused tokens this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// Tokens remembered at most, per verdict (a flood of made-up tokens
/// cannot grow the bridge's memory beyond this).
const REMEMBERED: usize = 4096;

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The miner accepts the token, with these permissions.
    Allowed(Vec<String>),
    /// The miner refused the token (HTTP 401).
    Refused,
    /// The miner could not be asked, or too many checks wait (HTTP 503).
    Unavailable(String),
}

type Digested = [u8; 32];

/// The token checks of one bridge.
pub struct TokenChecks {
    trusted: Mutex<HashMap<Digested, (Vec<String>, Instant)>>,
    refused: Mutex<HashMap<Digested, Instant>>,
    checks: Semaphore,
    warned: Mutex<(Option<Instant>, u64)>,
    asked: std::sync::atomic::AtomicU64,
}

impl Default for TokenChecks {
    fn default() -> Self {
        TokenChecks {
            trusted: Mutex::default(),
            refused: Mutex::default(),
            checks: Semaphore::new(CONCURRENT_CHECKS),
            warned: Mutex::default(),
            asked: Default::default(),
        }
    }
}

impl TokenChecks {
    /// Checks `token` with the miner behind `client`, or from memory.
    pub async fn verify(&self, client: &RpcClient, token: &str) -> Verdict {
        let key: Digested = Sha256::digest(token.as_bytes()).into();
        if let Some(verdict) = self.remembered(&key) {
            return verdict;
        }
        let Ok(Ok(_turn)) = tokio::time::timeout(CHECK_WAIT, self.checks.acquire()).await else {
            return Verdict::Unavailable(format!(
                "{CONCURRENT_CHECKS} token checks with the miner are under way and this one waited {CHECK_WAIT:?}"
            ));
        };
        // Another request may have asked about the same token meanwhile.
        if let Some(verdict) = self.remembered(&key) {
            return verdict;
        }
        self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match client.call::<Vec<String>>("AuthVerify", json!([token])).await {
            Ok(perms) => {
                remember(&self.trusted, key, (perms.clone(), Instant::now()), |(_, at)| at.elapsed() < TRUSTED_FOR);
                Verdict::Allowed(perms)
            }
            Err(CallFailure::Rpc(error)) => {
                remember(&self.refused, key, Instant::now(), |at| at.elapsed() < REFUSED_FOR);
                self.warn_refused(&error.message);
                Verdict::Refused
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot check a token with the miner");
                Verdict::Unavailable(format!("cannot check the token with the miner: {err}"))
            }
        }
    }

    /// How many `AuthVerify` calls were made (the tests' measure of the caches).
    pub fn asked(&self) -> u64 {
        self.asked.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn remembered(&self, key: &Digested) -> Option<Verdict> {
        if let Some((perms, at)) = self.trusted.lock().unwrap().get(key) {
            if at.elapsed() < TRUSTED_FOR {
                return Some(Verdict::Allowed(perms.clone()));
            }
        }
        match self.refused.lock().unwrap().get(key) {
            Some(at) if at.elapsed() < REFUSED_FOR => Some(Verdict::Refused),
            _ => None,
        }
    }

    fn warn_refused(&self, why: &str) {
        let mut warned = self.warned.lock().unwrap();
        let (last, quiet) = &mut *warned;
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            *quiet += 1;
            return;
        }
        tracing::warn!(miner_said = why, refused_since_last_line = *quiet, "the miner refused a token");
        *last = Some(Instant::now());
        *quiet = 0;
    }
}

/// Puts `value` under `key`, first dropping entries no longer `fresh`
/// when the map is full, then (still full) any one entry.
fn remember<V>(map: &Mutex<HashMap<Digested, V>>, key: Digested, value: V, fresh: impl Fn(&V) -> bool) {
    let mut map = map.lock().unwrap();
    if map.len() >= REMEMBERED && !map.contains_key(&key) {
        map.retain(|_, v| fresh(v));
        if map.len() >= REMEMBERED {
            let any = *map.keys().next().expect("the map is full");
            map.remove(&any);
        }
    }
    map.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_memory_makes_room_and_keeps_its_bound() {
        let map = Mutex::new(HashMap::new());
        for n in 0..(REMEMBERED as u32 + 100) {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&n.to_le_bytes());
            remember(&map, key, n, |_| true);
        }
        assert_eq!(map.lock().unwrap().len(), REMEMBERED);
        // Stale entries go first.
        remember(&map, [0xff; 32], 0, |v| *v > 100);
        assert!(map.lock().unwrap().values().all(|v| *v > 100 || *v == 0));
    }
}
