//! Graceful shutdown as a first-class part: a signal passed down to every
//! task, which each checks at its own safe points.

use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

pub struct Trigger {
    sender: watch::Sender<bool>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (Trigger { sender }, Shutdown { receiver })
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.sender.send(true);
    }
}

impl Shutdown {
    pub fn is_set(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once shutdown is requested.
    pub async fn wait(&mut self) {
        let _ = self.receiver.wait_for(|set| *set).await;
    }

    /// Sleeps `delay`; true if shutdown came first.
    pub async fn wait_for(&self, delay: Duration) -> bool {
        let mut this = self.clone();
        tokio::select! {
            _ = this.wait() => true,
            _ = tokio::time::sleep(delay) => this.is_set(),
        }
    }
}
