//! Features arrive bit-exact and in order over both transports, also when requests interleave on
//! one connection, tiles arrive out of order, or frames arrive before the inbox is registered.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use crate::common;

use std::time::Duration;

use common::{KINDS, request_tiles, start_default};
use dvd_transport::{Inbox, RequestId, Tile};

async fn drain(mut inbox: Inbox) -> Vec<Tile> {
    let mut out = Vec::new();
    while let Some(tile) = tokio::time::timeout(Duration::from_secs(10), inbox.next_tile())
        .await
        .expect("tiles keep coming")
        .expect("no inbox error")
    {
        out.push(tile);
    }
    out
}

#[tokio::test]
async fn multi_tile_request_round_trips_bit_exact() {
    for kind in KINDS {
        let receiver = start_default(kind).await;
        let sender = receiver.sender(kind);
        let id = RequestId::random();
        let inbox = receiver.registry.register(id, Some(2)).unwrap();
        // Two images: 7 tiles (6 + thumbnail) and 1 tile, 256 tokens x 64 hidden.
        let tiles = request_tiles(1, &[7, 1], 256, 64);
        let mut stream = sender.open(&receiver.destination, id).await.unwrap();
        for t in &tiles {
            stream.send(t.clone()).await.unwrap();
        }
        let delivery = stream.finish().await.unwrap();
        assert_eq!(delivery.tiles, 8, "{kind}");
        assert_eq!(delivery.bytes, 8 * 256 * 64 * 2, "{kind}");
        let got = drain(inbox).await;
        assert_eq!(got, tiles, "{kind}: tiles differ");
        receiver.stop().await;
    }
}

#[tokio::test]
async fn interleaved_requests_share_one_connection() {
    for kind in KINDS {
        let receiver = start_default(kind).await;
        let sender = receiver.sender(kind);
        let ids: Vec<RequestId> = (0..4).map(|_| RequestId::random()).collect();
        let inboxes: Vec<Inbox> = ids
            .iter()
            .map(|id| receiver.registry.register(*id, None).unwrap())
            .collect();
        let tiles: Vec<Vec<Tile>> = (0..4u8)
            .map(|i| request_tiles(10 + i, &[3, 2], 64, 32))
            .collect();
        let mut streams = Vec::new();
        for id in &ids {
            streams.push(sender.open(&receiver.destination, *id).await.unwrap());
        }
        // Round-robin: tile k of every request before tile k+1 of any.
        for k in 0..5 {
            for (s, t) in streams.iter_mut().zip(&tiles) {
                s.send(t[k].clone()).await.unwrap();
            }
        }
        for s in streams {
            assert_eq!(s.finish().await.unwrap().tiles, 5);
        }
        for (inbox, expected) in inboxes.into_iter().zip(&tiles) {
            assert_eq!(&drain(inbox).await, expected, "{kind}");
        }
        let counts = receiver.stats.snapshot();
        assert_eq!(
            counts.connections, 1,
            "{kind}: one connection for all requests"
        );
        let streams = if kind == dvd_transport::TransportKind::Quic {
            4
        } else {
            1
        };
        assert_eq!(counts.streams, streams, "{kind}");
        assert_eq!(
            counts.frames,
            4 * 6,
            "{kind}: 5 tiles and an End per request"
        );
        receiver.stop().await;
    }
}

#[tokio::test]
async fn out_of_order_tiles_are_handed_out_in_order_as_soon_as_possible() {
    for kind in KINDS {
        let receiver = start_default(kind).await;
        let sender = receiver.sender(kind);
        let id = RequestId::random();
        let mut inbox = receiver.registry.register(id, None).unwrap();
        let tiles = request_tiles(3, &[2, 2], 16, 16);
        let mut stream = sender.open(&receiver.destination, id).await.unwrap();
        // Tile (0,1) first: nothing is handed out until (0,0) lands.
        stream.send(tiles[1].clone()).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), inbox.next_tile())
                .await
                .is_err()
        );
        stream.send(tiles[0].clone()).await.unwrap();
        assert_eq!(inbox.next_tile().await.unwrap().unwrap(), tiles[0]);
        assert_eq!(inbox.next_tile().await.unwrap().unwrap(), tiles[1]);
        // The consumer gets tile (1,0) while (1,1) is still to be sent.
        stream.send(tiles[2].clone()).await.unwrap();
        assert_eq!(inbox.next_tile().await.unwrap().unwrap(), tiles[2]);
        stream.send(tiles[3].clone()).await.unwrap();
        stream.finish().await.unwrap();
        assert_eq!(inbox.next_tile().await.unwrap().unwrap(), tiles[3]);
        assert_eq!(inbox.next_tile().await.unwrap(), None);
        receiver.stop().await;
    }
}

#[tokio::test]
async fn frames_that_arrive_before_registration_wait_for_it() {
    for kind in KINDS {
        let receiver = start_default(kind).await;
        let sender = receiver.sender(kind);
        let id = RequestId::random();
        let tiles = request_tiles(4, &[3], 32, 8);
        let mut stream = sender.open(&receiver.destination, id).await.unwrap();
        for t in &tiles {
            stream.send(t.clone()).await.unwrap();
        }
        let mut finished = tokio::task::JoinSet::new();
        finished.spawn(stream.finish());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(receiver.registry.stats().unclaimed_bytes, 3 * 32 * 8 * 2);
        let inbox = receiver.registry.register(id, Some(1)).unwrap();
        assert_eq!(receiver.registry.stats().unclaimed_bytes, 0);
        assert_eq!(drain(inbox).await, tiles);
        let delivery = finished.join_next().await.unwrap().unwrap().unwrap();
        assert_eq!(delivery.tiles, 3);
        receiver.stop().await;
    }
}
