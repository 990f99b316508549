//! The accept loop every listener runs: each connection on its own task, until shutdown.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Takes connections from `accept` until `shutdown` fires or `accept` yields `None`, running
/// `serve` for each on its own task with a child token of `shutdown`. Then calls `closing` (to
/// close the endpoint, say) and waits for every connection's task to end.
pub(crate) async fn accept_until<C, A, S, F>(
    shutdown: &CancellationToken,
    mut accept: impl FnMut() -> A,
    mut serve: S,
    closing: impl FnOnce(),
) where
    A: Future<Output = Option<C>>,
    S: FnMut(C, CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            next = accept() => match next {
                Some(connection) => {
                    connections.spawn(serve(connection, shutdown.child_token()));
                }
                None => break,
            },
        }
    }
    closing();
    connections.close();
    connections.wait().await;
}
