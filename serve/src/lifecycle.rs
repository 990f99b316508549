//! [`Lifecycle`]: a service's drain flag and the tasks its requests run beside them, which its
//! [`Service`](crate::Service) impl drains and closes.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::task::TaskTracker;

use crate::ops::Readiness;

/// Whether a service still takes new work, and the tasks running beside its requests.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    tasks: TaskTracker,
}

impl Lifecycle {
    /// A service taking work, with no tasks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the service draining: its readiness turns [`Readiness::Draining`], and a service
    /// that stops taking work by refusing it checks [`is_draining`](Self::is_draining).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The readiness of the service, whose engine is `live` or not.
    pub fn readiness(&self, live: bool) -> Readiness {
        Readiness::of(live, self.is_draining())
    }

    /// Where the service runs the tasks that go on beside a request (forwarding its features,
    /// its Encode call), so [`close`](Self::close) can wait for them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Drains and waits until every task has ended.
    pub async fn close(&self) {
        self.drain();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn close_drains_and_waits_for_the_tasks() {
        let lifecycle = Lifecycle::new();
        assert_eq!(lifecycle.readiness(true), Readiness::Ready);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        lifecycle.tasks().spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
        });
        lifecycle.close().await;
        assert!(lifecycle.is_draining());
        assert_eq!(lifecycle.readiness(true), Readiness::Draining);
        assert_eq!(lifecycle.readiness(false), Readiness::NotServing);
        assert!(
            done_rx.await.is_ok(),
            "close returned before the task ended"
        );
    }
}
