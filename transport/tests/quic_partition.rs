//! A QUIC sender behind a partition: a connection that went silent while a request's stream was
//! open is replaced, so once the path heals the next request connects afresh instead of riding
//! a connection whose retransmissions are backed off (or which the receiver already dropped at
//! its idle timeout).
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dvd_transport::{Destination, FeatureSender, InboxRegistry, RequestId, TransportKind};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::common::{request_tiles, start_default};

/// A UDP relay from one client to `upstream` that drops every datagram while `blocked`.
struct Relay {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    _tasks: JoinSet<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(upstream).await.unwrap();
        let addr = front.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let client = Arc::new(tokio::sync::Mutex::new(None::<SocketAddr>));
        let mut tasks = JoinSet::new();
        let (f, b, stop, who) = (front.clone(), back.clone(), blocked.clone(), client.clone());
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *who.lock().await = Some(from);
                if !stop.load(Ordering::SeqCst) {
                    let _ = b.send(&buf[..n]).await;
                }
            }
        });
        let stop = blocked.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *client.lock().await;
                if let (Some(to), false) = (to, stop.load(Ordering::SeqCst)) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
        Self {
            addr,
            blocked,
            _tasks: tasks,
        }
    }
}

/// One request of one tile through `sender`; whether the receiver got it and replied.
async fn one_request(
    sender: &Arc<dyn FeatureSender>,
    destination: &Destination,
    registry: &InboxRegistry,
) -> bool {
    let id = RequestId::random();
    let mut inbox = registry.register(id, None).unwrap();
    let tile = request_tiles(3, &[1], 8, 8).remove(0);
    let sent = async {
        let mut stream = sender.open(destination, id).await?;
        stream.send(tile.clone()).await?;
        stream.finish().await
    };
    let delivered = tokio::time::timeout(Duration::from_secs(5), sent).await;
    let arrived = tokio::time::timeout(Duration::from_secs(1), inbox.next_tile()).await;
    matches!(delivered, Ok(Ok(_))) && matches!(arrived, Ok(Ok(Some(t))) if t == tile)
}

#[tokio::test]
async fn a_connection_silent_through_a_request_is_replaced_after_the_partition() {
    let receiver = start_default(TransportKind::Quic).await;
    let relay = Relay::start(receiver.destination.address.parse().unwrap()).await;
    let mut destination = receiver.destination.clone();
    destination.address = relay.addr.to_string();
    let sender = receiver.sender(TransportKind::Quic);
    assert!(one_request(&sender, &destination, &receiver.registry).await);
    assert_eq!(receiver.stats.snapshot().connections, 1);

    // Partition: a request's stream opens (locally) and sends, but nothing comes back; it is
    // given up (dropped) after 1.5 s, as a cancelled Encode drops it.
    relay.blocked.store(true, Ordering::SeqCst);
    let id = RequestId::random();
    let _inbox = receiver.registry.register(id, None).unwrap();
    let mut stream = sender.open(&destination, id).await.unwrap();
    let tile = request_tiles(4, &[1], 8, 8).remove(0);
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.send(tile)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(stream);

    // Healed: the next request goes through, on a new connection.
    relay.blocked.store(false, Ordering::SeqCst);
    assert!(one_request(&sender, &destination, &receiver.registry).await);
    assert_eq!(
        receiver.stats.snapshot().connections,
        2,
        "the connection that went silent was replaced"
    );
    receiver.stop().await;
}
