//! Graceful shutdown as a first-class part: a signal passed down to every
//! task, which each checks at its own safe points. A thin layer over
//! `tokio_util`'s `CancellationToken`, whose child tokens and `TaskTracker`
//! the processes use for the tasks they spawn.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What tasks hold: whether, and when, to stop.
#[derive(Clone)]
pub struct Shutdown {
    token: CancellationToken,
}

/// What fires the shutdown (the signal handler holds it).
pub struct Trigger {
    token: CancellationToken,
}

pub fn channel() -> (Trigger, Shutdown) {
    let token = CancellationToken::new();
    (Trigger { token: token.clone() }, Shutdown { token })
}

impl Trigger {
    pub fn fire(&self) {
        self.token.cancel();
    }

    /// Fires on SIGTERM or Ctrl-C (a task on the current runtime).
    pub fn on_signals(self) {
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("signal received; stopping");
            self.fire();
        });
    }
}

impl Shutdown {
    pub fn is_set(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown is requested.
    pub async fn wait(&mut self) {
        self.token.cancelled().await;
    }

    /// Sleeps `delay`; true if shutdown came first.
    pub async fn wait_for(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.token.cancelled() => true,
            _ = tokio::time::sleep(delay) => self.is_set(),
        }
    }

    /// A shutdown of its own for part of the work: fired by its trigger or
    /// by this one.
    pub fn child(&self) -> (Trigger, Shutdown) {
        let token = self.token.child_token();
        (Trigger { token: token.clone() }, Shutdown { token })
    }

    /// The token, for a child token or a `tokio::select!`.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}
