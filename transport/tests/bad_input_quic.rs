//! Malformed input on a QUIC feature stream fails that stream's request only: the connection and
//! its other streams keep working.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{Receiver, request_tiles, start_default};
use dvd_transport::frame::FrameHeader;
use dvd_transport::quic::QuicTuning;
use dvd_transport::{FrameError, InboxError, Reply, ReplyStatus, RequestId, Tile, TransportKind};

const QUIC: TransportKind = TransportKind::Quic;

async fn raw_connection(receiver: &Receiver) -> quinn::Connection {
    let tuning = QuicTuning::default();
    let socket = tuning.bind_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let endpoint = quinn::Endpoint::new(
        tuning.endpoint_config().unwrap(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let client = receiver
        .client_tls
        .as_ref()
        .unwrap()
        .quinn_config(&tuning)
        .unwrap();
    let addr = receiver.destination.address.parse().unwrap();
    endpoint
        .connect_with(client, addr, "localhost")
        .unwrap()
        .await
        .unwrap()
}

fn frame(id: RequestId, seq: u32, tile: &Tile) -> Vec<u8> {
    let mut b = FrameHeader::tile(id, seq, tile).encode().to_vec();
    b.extend_from_slice(&tile.data);
    b
}

async fn reply(recv: &mut quinn::RecvStream) -> Reply {
    tokio::time::timeout(Duration::from_secs(5), Reply::read(recv))
        .await
        .expect("a reply in time")
        .expect("a well-formed reply")
        .expect("a reply before the stream ended")
}

/// A good one-tile request on its own stream of `conn`.
async fn good_stream(receiver: &Receiver, conn: &quinn::Connection) {
    let id = RequestId::random();
    let mut inbox = receiver.registry.register(id, None).unwrap();
    let t = &request_tiles(9, &[1], 4, 4)[0];
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame(id, 0, t)).await.unwrap();
    send.write_all(&FrameHeader::end(id, 1, 1).encode())
        .await
        .unwrap();
    send.finish().unwrap();
    let r = reply(&mut recv).await;
    assert_eq!(
        (r.status, r.request_id),
        (ReplyStatus::Ok, id),
        "{}",
        r.message
    );
    assert_eq!(&inbox.next_tile().await.unwrap().unwrap(), t);
}

#[tokio::test]
async fn bad_checksum_fails_its_stream_while_another_stream_completes() {
    let receiver = start_default(QUIC).await;
    let conn = raw_connection(&receiver).await;

    // Stream B starts a good request.
    let b_id = RequestId::random();
    let mut b_inbox = receiver.registry.register(b_id, None).unwrap();
    let b_tiles = request_tiles(1, &[2], 16, 16);
    let (mut b_send, mut b_recv) = conn.open_bi().await.unwrap();
    b_send
        .write_all(&frame(b_id, 0, &b_tiles[0]))
        .await
        .unwrap();

    // Stream A sends a tile whose payload was corrupted.
    let a_id = RequestId::random();
    let mut a_inbox = receiver.registry.register(a_id, None).unwrap();
    let mut bad = frame(a_id, 0, &request_tiles(2, &[1], 16, 16)[0]);
    *bad.last_mut().unwrap() ^= 1;
    let (mut a_send, mut a_recv) = conn.open_bi().await.unwrap();
    a_send.write_all(&bad).await.unwrap();
    let r = reply(&mut a_recv).await;
    assert_eq!(
        (r.status, r.request_id),
        (ReplyStatus::PayloadChecksum, a_id)
    );
    assert!(matches!(
        a_inbox.next_tile().await,
        Err(InboxError::Frame {
            error: FrameError::PayloadChecksum { .. },
            ..
        })
    ));
    // The receiver stopped stream A: further writes fail.
    let stopped = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if a_send.write_all(&[0u8; 4096]).await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(stopped.is_ok(), "writes on a refused stream fail");

    // Stream B finishes on the same connection.
    b_send
        .write_all(&frame(b_id, 1, &b_tiles[1]))
        .await
        .unwrap();
    b_send
        .write_all(&FrameHeader::end(b_id, 2, 2).encode())
        .await
        .unwrap();
    b_send.finish().unwrap();
    let r = reply(&mut b_recv).await;
    assert_eq!(
        (r.status, r.request_id, r.frames),
        (ReplyStatus::Ok, b_id, 2)
    );
    assert_eq!(b_inbox.next_tile().await.unwrap().unwrap(), b_tiles[0]);
    assert_eq!(b_inbox.next_tile().await.unwrap().unwrap(), b_tiles[1]);
    assert!(conn.close_reason().is_none());
    receiver.stop().await;
}

#[tokio::test]
async fn stream_breaking_errors_end_only_their_stream() {
    let receiver = start_default(QUIC).await;
    let conn = raw_connection(&receiver).await;
    let t = request_tiles(3, &[2], 8, 8);

    // Wrong magic.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut b = frame(RequestId::random(), 0, &t[0]);
    b[..4].copy_from_slice(b"GET ");
    send.write_all(&b).await.unwrap();
    assert_eq!(reply(&mut recv).await.status, ReplyStatus::BadMagic);

    // Wrong version.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut b = frame(RequestId::random(), 0, &t[0]);
    b[4] = 7;
    send.write_all(&b).await.unwrap();
    assert_eq!(
        reply(&mut recv).await.status,
        ReplyStatus::UnsupportedVersion
    );

    // Stream finished in the middle of a frame: the registered request fails as truncated.
    let id = RequestId::random();
    let mut inbox = receiver.registry.register(id, None).unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let b = frame(id, 0, &t[0]);
    send.write_all(&b[..b.len() - 3]).await.unwrap();
    send.finish().unwrap();
    let r = reply(&mut recv).await;
    assert_eq!((r.status, r.request_id), (ReplyStatus::Truncated, id));
    assert!(matches!(
        inbox.next_tile().await,
        Err(InboxError::Frame {
            error: FrameError::Truncated { .. },
            ..
        })
    ));

    // A second request's frame on a stream already bound to one.
    let first = RequestId::random();
    let mut first_inbox = receiver.registry.register(first, None).unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame(first, 0, &t[0])).await.unwrap();
    send.write_all(&frame(RequestId::random(), 0, &t[1]))
        .await
        .unwrap();
    let r = reply(&mut recv).await;
    assert_eq!((r.status, r.request_id), (ReplyStatus::Protocol, first));
    assert_eq!(first_inbox.next_tile().await.unwrap().unwrap(), t[0]);
    assert!(matches!(
        first_inbox.next_tile().await,
        Err(InboxError::Protocol { .. })
    ));

    assert!(conn.close_reason().is_none(), "the connection survives");
    good_stream(&receiver, &conn).await;
    receiver.stop().await;
}
