//! Helpers shared by the modules of the test binary.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Binds a listener on `ip` (a port the system picks) and runs `serve` on it, given the
/// listener and its address, until the returned set is dropped.
pub async fn serve_on<F, Fut>(ip: impl Into<IpAddr>, serve: F) -> (SocketAddr, JoinSet<()>)
where
    F: FnOnce(TcpListener, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(SocketAddr::new(ip.into(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(serve(listener, addr));
    (addr, tasks)
}
