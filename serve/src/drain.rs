//! Graceful drain: after a server stops taking new work, wait for the work it has.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

/// How often [`wait_idle`] looks at the in-flight count.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `in_flight()` is 0 or `timeout` has passed; returns what was still in flight
/// (0 when the server drained).
pub async fn wait_idle(in_flight: impl Fn() -> usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = in_flight();
        if n == 0 || Instant::now() >= deadline {
            return n;
        }
        sleep(POLL.min(deadline - Instant::now())).await;
    }
}

/// Joins every task in `tasks`, aborting those still running after `grace`.
pub async fn join_within(tasks: &mut JoinSet<()>, grace: Duration) {
    let joined =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if joined.is_err() {
        tracing::warn!(
            tasks = tasks.len(),
            "tasks still running after {grace:?}; aborting them"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// How long the listeners get to close once a drain is over.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The end of a server's life, after it stopped taking new work: waits up to `timeout` for
/// `in_flight()` to reach 0, then cancels `stop` (the listeners close) and joins `tasks`
/// within [`STOP_GRACE`].
pub async fn drain_then_stop(
    in_flight: impl Fn() -> usize,
    timeout: Duration,
    stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let left = wait_idle(in_flight, timeout).await;
    if left > 0 {
        tracing::warn!(
            requests = left,
            "drain timeout passed; stopping with requests in flight"
        );
    } else {
        tracing::info!("drained");
    }
    stop.cancel();
    join_within(tasks, STOP_GRACE).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_when_idle_or_at_the_deadline() {
        let n = AtomicUsize::new(2);
        let started = Instant::now();
        let (left, ()) = tokio::join!(
            wait_idle(|| n.load(Ordering::Acquire), Duration::from_secs(10)),
            async {
                sleep(Duration::from_millis(100)).await;
                n.store(0, Ordering::Release);
            }
        );
        assert_eq!(left, 0);
        assert!(started.elapsed() < Duration::from_secs(5));

        let started = Instant::now();
        assert_eq!(wait_idle(|| 3, Duration::from_millis(200)).await, 3);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
