//! Malformed input on a TCP feature connection yields a typed error for the request or connection
//! concerned; the listener keeps serving, and errors that leave the stream aligned keep the
//! connection itself usable.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use crate::common;

use std::time::Duration;

use common::{quick_inbox, request_tiles, start, start_default};
use dvd_transport::frame::FrameHeader;
use dvd_transport::{
    FrameError, InboxError, ListenerConfig, Reply, ReplyStatus, RequestId, Tile, TransportKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TCP: TransportKind = TransportKind::Tcp;

fn frame(id: RequestId, seq: u32, tile: &Tile) -> Vec<u8> {
    let mut b = FrameHeader::tile(id, seq, tile).encode().to_vec();
    b.extend_from_slice(&tile.data);
    b
}

fn end(id: RequestId, seq: u32, tiles: u32) -> Vec<u8> {
    FrameHeader::end(id, seq, tiles).encode().to_vec()
}

async fn reply(conn: &mut TcpStream) -> Reply {
    tokio::time::timeout(Duration::from_secs(5), Reply::read(conn))
        .await
        .expect("a reply in time")
        .expect("a well-formed reply")
        .expect("a reply before the connection closed")
}

async fn expect_closed(conn: &mut TcpStream) {
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("connection closes")
        .unwrap_or(0);
    assert_eq!(n, 0, "connection should be closed");
}

/// A complete, valid one-tile request on `conn`, answered with Ok.
async fn good_request(receiver: &common::Receiver, conn: &mut TcpStream) {
    let id = RequestId::random();
    let mut inbox = receiver.registry.register(id, None).unwrap();
    let t = &request_tiles(9, &[1], 4, 4)[0];
    conn.write_all(&frame(id, 0, t)).await.unwrap();
    conn.write_all(&end(id, 1, 1)).await.unwrap();
    let r = reply(conn).await;
    assert_eq!((r.status, r.request_id, r.frames), (ReplyStatus::Ok, id, 1));
    assert_eq!(&inbox.next_tile().await.unwrap().unwrap(), t);
}

async fn connect(receiver: &common::Receiver) -> TcpStream {
    TcpStream::connect(&receiver.destination.address)
        .await
        .unwrap()
}

async fn inbox_error(inbox: &mut dvd_transport::Inbox) -> InboxError {
    tokio::time::timeout(Duration::from_secs(5), inbox.next_tile())
        .await
        .expect("inbox answers")
        .expect_err("inbox reports an error")
}

#[tokio::test]
async fn payload_checksum_mismatch_fails_only_that_request() {
    let receiver = start_default(TCP).await;
    let mut conn = connect(&receiver).await;
    let id = RequestId::random();
    let mut inbox = receiver.registry.register(id, None).unwrap();
    let t = &request_tiles(1, &[2], 8, 8)[0];
    let mut bytes = frame(id, 0, t);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    conn.write_all(&bytes).await.unwrap();
    let r = reply(&mut conn).await;
    assert_eq!((r.status, r.request_id), (ReplyStatus::PayloadChecksum, id));
    assert!(matches!(
        inbox_error(&mut inbox).await,
        InboxError::Frame {
            error: FrameError::PayloadChecksum { .. },
            ..
        }
    ));
    // Later frames of the failed request are skipped quietly; the connection keeps working.
    conn.write_all(&end(id, 1, 1)).await.unwrap();
    good_request(&receiver, &mut conn).await;
    receiver.stop().await;
}

#[tokio::test]
async fn payload_length_not_matching_the_header_fails_only_that_request() {
    let receiver = start_default(TCP).await;
    let mut conn = connect(&receiver).await;
    let id = RequestId::random();
    let mut inbox = receiver.registry.register(id, None).unwrap();
    let t = &request_tiles(2, &[1], 8, 8)[0];
    let mut header = FrameHeader::tile(id, 0, t);
    header.payload_len += 6;
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(&t.data);
    bytes.extend_from_slice(&[0; 6]);
    conn.write_all(&bytes).await.unwrap();
    let r = reply(&mut conn).await;
    assert_eq!((r.status, r.request_id), (ReplyStatus::PayloadLength, id));
    assert!(matches!(
        inbox_error(&mut inbox).await,
        InboxError::Frame {
            error: FrameError::PayloadLength {
                declared: 134,
                expected: 128
            },
            ..
        }
    ));
    good_request(&receiver, &mut conn).await;
    receiver.stop().await;
}

#[tokio::test]
async fn unknown_request_id_is_refused_after_the_claim_timeout() {
    let receiver = start_default(TCP).await;
    let mut conn = connect(&receiver).await;
    let id = RequestId::random();
    let started = std::time::Instant::now();
    for t in request_tiles(3, &[2], 8, 8).iter().enumerate() {
        conn.write_all(&frame(id, t.0 as u32, t.1)).await.unwrap();
    }
    let r = reply(&mut conn).await;
    assert_eq!((r.status, r.request_id), (ReplyStatus::UnknownRequest, id));
    assert!(started.elapsed() >= quick_inbox().claim_timeout);
    assert_eq!(
        receiver.registry.stats().unclaimed_bytes,
        0,
        "held tiles are freed"
    );
    assert_eq!(receiver.registry.stats().requests, 0);
    good_request(&receiver, &mut conn).await;
    receiver.stop().await;
}

/// Sends a valid first tile of a registered request, then `bad`; the connection must answer with
/// `status` (naming `named` or the request) and close, failing the request; the listener lives on.
async fn stream_breaking(
    bad: impl FnOnce(RequestId) -> Vec<u8>,
    status: ReplyStatus,
    names_request: bool,
    config: ListenerConfig,
) {
    let receiver = start(TCP, quick_inbox(), config).await;
    let mut conn = connect(&receiver).await;
    let id = RequestId::random();
    let mut inbox = receiver.registry.register(id, None).unwrap();
    let tiles = request_tiles(4, &[2], 8, 8);
    conn.write_all(&frame(id, 0, &tiles[0])).await.unwrap();
    assert_eq!(inbox.next_tile().await.unwrap().unwrap(), tiles[0]);
    conn.write_all(&bad(id)).await.unwrap();
    let _ = conn.shutdown().await;
    let r = reply(&mut conn).await;
    assert_eq!(r.status, status, "{}", r.message);
    let expected_id = if names_request { id } else { RequestId(0) };
    assert_eq!(r.request_id, expected_id);
    expect_closed(&mut conn).await;
    assert!(matches!(
        inbox_error(&mut inbox).await,
        InboxError::Frame { .. }
    ));
    assert_eq!(receiver.stats.snapshot().broken_streams, 1);
    let mut fresh = connect(&receiver).await;
    good_request(&receiver, &mut fresh).await;
    receiver.stop().await;
}

#[tokio::test]
async fn wrong_magic_closes_the_connection() {
    let bad = |id| {
        let mut b = frame(id, 1, &request_tiles(4, &[2], 8, 8)[1]);
        b[..4].copy_from_slice(b"HTTP");
        b
    };
    stream_breaking(bad, ReplyStatus::BadMagic, false, ListenerConfig::default()).await;
}

#[tokio::test]
async fn wrong_version_closes_the_connection() {
    let bad = |id| {
        let mut b = frame(id, 1, &request_tiles(4, &[2], 8, 8)[1]);
        b[4..6].copy_from_slice(&2u16.to_le_bytes());
        b
    };
    stream_breaking(
        bad,
        ReplyStatus::UnsupportedVersion,
        false,
        ListenerConfig::default(),
    )
    .await;
}

#[tokio::test]
async fn corrupted_header_closes_the_connection() {
    let bad = |id| {
        let mut b = frame(id, 1, &request_tiles(4, &[2], 8, 8)[1]);
        b[48] ^= 0x40; // payload length, without fixing the header CRC
        b
    };
    stream_breaking(
        bad,
        ReplyStatus::HeaderChecksum,
        false,
        ListenerConfig::default(),
    )
    .await;
}

#[tokio::test]
async fn truncated_frame_closes_the_connection() {
    let bad = |id| {
        let b = frame(id, 1, &request_tiles(4, &[2], 8, 8)[1]);
        b[..b.len() - 10].to_vec()
    };
    stream_breaking(bad, ReplyStatus::Truncated, true, ListenerConfig::default()).await;
}

#[tokio::test]
async fn frame_over_the_size_limit_closes_the_connection() {
    let config = ListenerConfig {
        max_frame_payload: 200,
        ..ListenerConfig::default()
    };
    // 16 x 8 bf16 = 256 bytes > 200; the header alone is sent, the payload never read.
    let bad = |id| {
        FrameHeader::tile(id, 1, &common::tile(4, 0, 1, 1, 2, 16, 8))
            .encode()
            .to_vec()
    };
    stream_breaking(bad, ReplyStatus::TooLarge, true, config).await;
}

#[tokio::test]
async fn peer_disconnect_mid_frame_fails_its_requests_and_nothing_else() {
    let receiver = start_default(TCP).await;
    let id = RequestId::random();
    let other = RequestId::random();
    let mut inbox = receiver.registry.register(id, None).unwrap();
    let mut other_inbox = receiver.registry.register(other, None).unwrap();
    // `other` streams on its own connection and must be unaffected.
    let sender = receiver.sender(TCP);
    let other_tiles = request_tiles(5, &[2], 8, 8);
    let mut other_stream = sender.open(&receiver.destination, other).await.unwrap();
    other_stream.send(other_tiles[0].clone()).await.unwrap();
    {
        let mut conn = connect(&receiver).await;
        let b = frame(id, 0, &request_tiles(6, &[1], 64, 64)[0]);
        conn.write_all(&b[..b.len() / 2]).await.unwrap();
        // Dropped here: the peer vanishes mid-frame.
    }
    assert!(matches!(
        inbox_error(&mut inbox).await,
        InboxError::Frame {
            error: FrameError::Truncated { .. },
            ..
        }
    ));
    other_stream.send(other_tiles[1].clone()).await.unwrap();
    assert_eq!(other_stream.finish().await.unwrap().tiles, 2);
    assert_eq!(
        other_inbox.next_tile().await.unwrap().unwrap(),
        other_tiles[0]
    );
    assert_eq!(
        other_inbox.next_tile().await.unwrap().unwrap(),
        other_tiles[1]
    );
    assert_eq!(other_inbox.next_tile().await.unwrap(), None);
    receiver.stop().await;
}

#[tokio::test]
async fn out_of_sequence_and_duplicate_tiles_fail_the_request() {
    let receiver = start_default(TCP).await;
    let mut conn = connect(&receiver).await;
    let tiles = request_tiles(7, &[3], 4, 4);

    let id = RequestId::random();
    let mut inbox = receiver.registry.register(id, None).unwrap();
    conn.write_all(&frame(id, 0, &tiles[0])).await.unwrap();
    conn.write_all(&frame(id, 2, &tiles[1])).await.unwrap();
    let r = reply(&mut conn).await;
    assert_eq!((r.status, r.request_id), (ReplyStatus::Protocol, id));
    assert_eq!(inbox.next_tile().await.unwrap().unwrap(), tiles[0]);
    assert!(matches!(
        inbox_error(&mut inbox).await,
        InboxError::Protocol { .. }
    ));

    let id = RequestId::random();
    let mut inbox = receiver.registry.register(id, None).unwrap();
    conn.write_all(&frame(id, 0, &tiles[1])).await.unwrap();
    conn.write_all(&frame(id, 1, &tiles[1])).await.unwrap();
    let r = reply(&mut conn).await;
    assert_eq!((r.status, r.request_id), (ReplyStatus::Protocol, id));
    assert!(r.message.contains("duplicate"), "{}", r.message);
    assert!(matches!(
        inbox_error(&mut inbox).await,
        InboxError::Protocol { .. }
    ));

    // End before every tile arrived.
    let id = RequestId::random();
    let mut inbox = receiver.registry.register(id, None).unwrap();
    conn.write_all(&frame(id, 0, &tiles[0])).await.unwrap();
    conn.write_all(&end(id, 1, 1)).await.unwrap();
    let r = reply(&mut conn).await;
    assert_eq!(
        (r.status, r.request_id, r.frames),
        (ReplyStatus::Incomplete, id, 1)
    );
    assert_eq!(inbox.next_tile().await.unwrap().unwrap(), tiles[0]);
    assert_eq!(
        inbox_error(&mut inbox).await,
        InboxError::Incomplete { received: 1 }
    );

    good_request(&receiver, &mut conn).await;
    receiver.stop().await;
}
