//! The one retry policy of sealfarm: exponential backoff with jitter, from
//! the `backon` crate (the maintained successor of `backoff`, which is
//! flagged unmaintained: RUSTSEC-2025-0012).
//!
//! Every loop that waits before trying again (reconnecting to the broker,
//! publishing, registering with the miner, delivering a `Return*`, talking
//! to the bridge, running a job again) takes its pauses from a [`Backoff`]
//! built from one of the named [`Policy`]s below. Jitter spreads the retries
//! of many workers after a broker or bridge restart, so they do not all
//! come back in the same instant.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How long an HTTP peer may say nothing (no answer, no next bytes of a
/// body) before the transfer is given up: a peer that accepts a connection
/// and stalls fails the transfer instead of holding it for ever.
pub const STALL: Duration = Duration::from_secs(60);

/// Where the pauses start and where they stop growing (each pause doubles,
/// plus up to as much again at random).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub first: Duration,
    pub max: Duration,
    /// How many retries at most; None for as many as it takes.
    pub times: Option<usize>,
}

impl Policy {
    const fn forever(first_ms: u64, max_s: u64) -> Policy {
        Policy { first: Duration::from_millis(first_ms), max: Duration::from_secs(max_s), times: None }
    }

    /// The same policy starting at `first` (a pause an operator sets).
    pub fn starting_at(self, first: Duration) -> Policy {
        Policy { first, max: self.max.max(first), ..self }
    }
}

/// A lost broker connection, a consumer that lost its channel.
pub const BROKER: Policy = Policy::forever(200, 15);
/// A publish that failed (connection lost) and must get through.
pub const PUBLISH: Policy = Policy::forever(200, 10);
/// A publish the broker refused with a negative confirm: tried again 4
/// times, about 0.2 s, 0.4 s, 0.8 s, 1.6 s apart. RabbitMQ 3.10's quorum
/// queues refuse the first message of a channel when registering that
/// channel as a publisher fails or times out (a queue just declared, a
/// leader election, a busy node); the message was not enqueued, so
/// publishing it again duplicates nothing.
pub const NACK: Policy = Policy { first: Duration::from_millis(200), max: Duration::from_secs(2), times: Some(4) };
/// Registering with the miner.
pub const MINER: Policy = Policy::forever(500, 10);
/// Delivering a `Return*` the miner did not accept.
pub const RETURN: Policy = Policy::forever(500, 30);
/// A worker's HTTP requests to the bridge (blobs, pieces).
pub const BRIDGE: Policy = Policy::forever(500, 30);
/// Running a job again after its run died (the first pause is `--retry-backoff`).
pub const RERUN: Policy = Policy::forever(2000, 3600);

/// The pauses of one retry loop.
pub struct Backoff {
    policy: Policy,
    pauses: backon::ExponentialBackoff,
}

impl Backoff {
    pub fn new(policy: Policy) -> Backoff {
        Backoff { policy, pauses: build(policy) }
    }

    /// The pause before the next try; None when the policy's tries are spent.
    pub fn next_pause(&mut self) -> Option<Duration> {
        self.pauses.next()
    }

    /// Starts from the first pause again (the thing worked for a while).
    pub fn reset(&mut self) {
        self.pauses = build(self.policy);
    }

    /// The pause before try `n` (1: the first retry), for a loop whose count
    /// is kept elsewhere (a job's runs, recorded in the job store).
    pub fn nth(policy: Policy, n: u32) -> Duration {
        let mut pauses = build(Policy { times: None, ..policy });
        let mut pause = policy.first;
        for _ in 0..n.max(1) {
            pause = pauses.next().unwrap_or(policy.max);
        }
        pause
    }
}

fn build(policy: Policy) -> backon::ExponentialBackoff {
    let builder = ExponentialBuilder::default()
        .with_min_delay(policy.first)
        .with_max_delay(policy.max)
        .with_factor(2.0)
        .with_jitter();
    match policy.times {
        Some(times) => builder.with_max_times(times),
        None => builder.without_max_times(),
    }
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pauses start at `first`, roughly double, never pass twice the cap
    /// (the cap plus its jitter), and stop after `times`.
    #[test]
    fn pauses_grow_with_jitter_up_to_the_cap_and_stop_when_spent() {
        let mut nack = Backoff::new(NACK);
        let pauses: Vec<Duration> = std::iter::from_fn(|| nack.next_pause()).collect();
        assert_eq!(pauses.len(), 4);
        assert!(pauses[0] >= NACK.first && pauses[0] <= NACK.first * 2, "{pauses:?}");
        assert!(pauses[3] >= Duration::from_millis(1600), "{pauses:?}");
        let mut broker = Backoff::new(BROKER);
        let many: Vec<Duration> = (0..40).map(|_| broker.next_pause().unwrap()).collect();
        assert!(many.iter().all(|p| *p <= BROKER.max * 2), "{many:?}");
        assert!(many[30] >= BROKER.max, "grows to the cap: {many:?}");
        broker.reset();
        assert!(broker.next_pause().unwrap() <= BROKER.first * 2);
        // Jitter: forty first pauses are not all the same.
        let firsts: std::collections::BTreeSet<Duration> =
            (0..40).map(|_| Backoff::new(RETURN).next_pause().unwrap()).collect();
        assert!(firsts.len() > 1, "no jitter: {firsts:?}");
    }

    #[test]
    fn the_nth_pause_of_a_counted_loop() {
        let policy = RERUN.starting_at(Duration::from_millis(100));
        let first = Backoff::nth(policy, 1);
        let third = Backoff::nth(policy, 3);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200), "{first:?}");
        assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(800), "{third:?}");
    }
}
