//! A fault-injecting proxy on loopback, for the feature path between vision and language
//! servers (a stand-in for `ip netns` + `tc netem`, which CI machines do not grant): UDP for QUIC
//! (latency and real datagram loss, which QUIC must recover from) and TCP (latency; TCP's own
//! loss recovery lives in the kernel). Either can cut one flow off mid-stream: once armed, the
//! first flow to carry `cut_after_bytes` towards the server is blackholed in both directions,
//! with no FIN or reset, as a network partition looks. Other flows pass.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// What the proxy does to traffic; change it while the proxy runs.
#[derive(Debug, Default)]
pub struct Faults {
    /// Datagrams dropped per thousand, each direction (UDP only).
    pub loss_per_mille: AtomicU32,
    /// Delay added to every datagram or chunk, each direction.
    pub delay_ms: AtomicU64,
    /// Bytes towards the server after which the first flow to carry them is cut (0: never).
    pub cut_after_bytes: AtomicU64,
    /// Set once a flow has been cut.
    pub cut: AtomicBool,
    /// Bytes forwarded towards the server, all flows.
    pub forwarded: AtomicU64,
    /// Datagrams dropped as loss.
    pub dropped: AtomicU64,
    /// Datagrams seen, both directions.
    pub datagrams: AtomicU64,
    /// Flows (client addresses or connections) seen.
    pub flows: AtomicU64,
    /// Every flow's state, so [`heal`](Self::heal) can reach them.
    states: Mutex<Vec<Arc<FlowState>>>,
}

impl Faults {
    /// Ends the partition: the cut flow passes again and no new cut is armed.
    pub fn heal(&self) {
        self.cut_after_bytes.store(0, Ordering::SeqCst);
        for flow in self.states.lock().unwrap().iter() {
            flow.cut.store(false, Ordering::SeqCst);
        }
    }

    /// State for a new flow.
    fn new_flow(&self) -> Arc<FlowState> {
        self.flows.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(FlowState::default());
        self.states.lock().unwrap().push(state.clone());
        state
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }

    /// Counts `n` bytes of a flow towards the server; whether the flow is (now) cut.
    fn towards_server(&self, flow: &FlowState, n: usize) -> bool {
        if flow.cut.load(Ordering::Acquire) {
            return true;
        }
        self.forwarded.fetch_add(n as u64, Ordering::Relaxed);
        let sent = flow.sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let limit = self.cut_after_bytes.load(Ordering::Acquire);
        if limit > 0
            && sent >= limit
            && self
                .cut
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            flow.cut.store(true, Ordering::Release);
            return true;
        }
        false
    }
}

#[derive(Debug, Default)]
struct FlowState {
    sent: AtomicU64,
    cut: AtomicBool,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// Where clients connect (advertise this instead of the server's address).
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// A UDP proxy to `upstream` (a QUIC listener); `seed` drives the loss.
    pub fn udp(upstream: SocketAddr, seed: u64) -> Self {
        let runtime = runtime();
        let faults = Arc::new(Faults::default());
        let front = runtime
            .block_on(UdpSocket::bind("127.0.0.1:0"))
            .map(Arc::new)
            .unwrap();
        let addr = front.local_addr().unwrap();
        runtime.spawn(udp_front(front, upstream, faults.clone(), seed));
        Self {
            addr,
            faults,
            _runtime: runtime,
        }
    }

    /// A TCP proxy to `upstream`.
    pub fn tcp(upstream: SocketAddr) -> Self {
        let runtime = runtime();
        let faults = Arc::new(Faults::default());
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(tcp_front(listener, upstream, faults.clone()));
        Self {
            addr,
            faults,
            _runtime: runtime,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// One client address: its socket to the server and its state.
struct UdpFlow {
    upstream: Arc<UdpSocket>,
    state: Arc<FlowState>,
}

async fn udp_front(front: Arc<UdpSocket>, upstream: SocketAddr, faults: Arc<Faults>, seed: u64) {
    let rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed)));
    let lose = move |faults: &Faults| {
        faults.datagrams.fetch_add(1, Ordering::Relaxed);
        let per_mille = faults.loss_per_mille.load(Ordering::Relaxed);
        let lost = per_mille > 0 && rng.lock().unwrap().random_range(0..1000) < per_mille;
        if lost {
            faults.dropped.fetch_add(1, Ordering::Relaxed);
        }
        lost
    };
    let mut flows: HashMap<SocketAddr, UdpFlow> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            return;
        };
        if let Entry::Vacant(slot) = flows.entry(client) {
            {
                let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                socket.connect(upstream).await.unwrap();
                let flow = UdpFlow {
                    upstream: Arc::new(socket),
                    state: faults.new_flow(),
                };
                // Server -> client.
                let (up, back, state, faults, lose) = (
                    flow.upstream.clone(),
                    front.clone(),
                    flow.state.clone(),
                    faults.clone(),
                    lose.clone(),
                );
                tasks.spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut delayed = JoinSet::new();
                    while let Ok(n) = up.recv(&mut buf).await {
                        if state.cut.load(Ordering::Acquire) || lose(&faults) {
                            continue;
                        }
                        let (back, datagram, delay) =
                            (back.clone(), buf[..n].to_vec(), faults.delay());
                        delayed.spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = back.send_to(&datagram, client).await;
                        });
                        while delayed.try_join_next().is_some() {}
                    }
                });
                slot.insert(flow);
            }
        }
        let flow = &flows[&client];
        // Client -> server.
        if faults.towards_server(&flow.state, n) || lose(&faults) {
            continue;
        }
        let (up, datagram, delay) = (flow.upstream.clone(), buf[..n].to_vec(), faults.delay());
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = up.send(&datagram).await;
        });
        while tasks.try_join_next().is_some() {}
    }
}

async fn tcp_front(listener: TcpListener, upstream: SocketAddr, faults: Arc<Faults>) {
    let mut connections = JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        let state = faults.new_flow();
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let (f, s) = (faults.clone(), state.clone());
        connections.spawn(pump(client_read, server_write, f, s, true));
        connections.spawn(pump(
            server_read,
            client_write,
            faults.clone(),
            state,
            false,
        ));
    }
}

/// Copies one direction with the faults' delay; a cut flow stops moving (and keeps its socket
/// open, as a partition would).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Faults>,
    state: Arc<FlowState>,
    towards_server: bool,
) {
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let cut = if towards_server {
            faults.towards_server(&state, n)
        } else {
            state.cut.load(Ordering::Acquire)
        };
        if cut {
            // Hold both halves open, moving nothing, until the partition heals (what was read
            // meanwhile is lost, as on a real partition: this TCP connection is ruined).
            while state.cut.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return;
        }
        tokio::time::sleep(faults.delay()).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
