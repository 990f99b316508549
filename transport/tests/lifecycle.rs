//! What each side learns when the other gives up: cancelled inboxes, aborted or vanished senders,
//! unknown request ids and requests that break the receiver's rules, over both transports.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use crate::common;

use std::time::Duration;

use common::{KINDS, request_tiles, start_default};
use dvd_transport::{InboxError, ReplyStatus, RequestId, TransportError};

fn status(err: &TransportError) -> Option<ReplyStatus> {
    match err {
        TransportError::Rejected { status, .. } => Some(*status),
        _ => None,
    }
}

#[tokio::test]
async fn dropping_the_inbox_tells_the_sender_to_stop() {
    for kind in KINDS {
        let receiver = start_default(kind).await;
        let sender = receiver.sender(kind);
        let id = RequestId::random();
        let mut inbox = receiver.registry.register(id, None).unwrap();
        let tiles = request_tiles(1, &[4], 16, 16);
        let mut stream = sender.open(&receiver.destination, id).await.unwrap();
        stream.send(tiles[0].clone()).await.unwrap();
        assert_eq!(inbox.next_tile().await.unwrap().unwrap(), tiles[0]);
        drop(inbox);
        // The sender hears about it at its next send or, at the latest, at finish.
        let mut outcome = Ok(());
        for t in &tiles[1..] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            outcome = stream.send(t.clone()).await;
            if outcome.is_err() {
                break;
            }
        }
        let err = match outcome {
            Err(e) => e,
            Ok(()) => stream.finish().await.unwrap_err(),
        };
        assert_eq!(status(&err), Some(ReplyStatus::Cancelled), "{kind}: {err}");
        assert_eq!(receiver.registry.stats().requests, 0, "{kind}");
        receiver.stop().await;
    }
}

#[tokio::test]
async fn an_aborting_sender_fails_the_consumer_with_its_reason() {
    for kind in KINDS {
        let receiver = start_default(kind).await;
        let sender = receiver.sender(kind);
        let id = RequestId::random();
        let mut inbox = receiver.registry.register(id, None).unwrap();
        let mut stream = sender.open(&receiver.destination, id).await.unwrap();
        stream
            .send(request_tiles(2, &[2], 8, 8).remove(0))
            .await
            .unwrap();
        stream
            .abort("image decode failed: truncated JPEG")
            .await
            .unwrap();
        inbox.next_tile().await.unwrap().unwrap();
        match inbox.next_tile().await {
            Err(InboxError::Aborted { reason, .. }) => {
                assert_eq!(reason, "image decode failed: truncated JPEG")
            }
            other => panic!("{kind}: expected Aborted, got {other:?}"),
        }
        receiver.stop().await;
    }
}

#[tokio::test]
async fn a_vanished_sender_never_leaves_the_consumer_waiting() {
    for kind in KINDS {
        let receiver = start_default(kind).await;
        let id = RequestId::random();
        let mut inbox = receiver.registry.register(id, None).unwrap();
        {
            let sender = receiver.sender(kind);
            let mut stream = sender.open(&receiver.destination, id).await.unwrap();
            stream
                .send(request_tiles(3, &[3], 8, 8).remove(0))
                .await
                .unwrap();
            // Stream and sender dropped without finish: the process "died".
        }
        inbox.next_tile().await.unwrap().unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), inbox.next_tile())
            .await
            .expect("consumer is told promptly")
            .unwrap_err();
        assert!(
            matches!(
                err,
                InboxError::Aborted { .. } | InboxError::Disconnected { .. }
            ),
            "{kind}: {err:?}"
        );
        receiver.stop().await;
    }
}

#[tokio::test]
async fn unregistered_requests_are_rejected_as_unknown() {
    for kind in KINDS {
        let receiver = start_default(kind).await;
        let sender = receiver.sender(kind);
        let mut stream = sender
            .open(&receiver.destination, RequestId::random())
            .await
            .unwrap();
        stream
            .send(request_tiles(4, &[1], 8, 8).remove(0))
            .await
            .unwrap();
        let err = stream.finish().await.unwrap_err();
        assert_eq!(
            status(&err),
            Some(ReplyStatus::UnknownRequest),
            "{kind}: {err}"
        );
        receiver.stop().await;
    }
}

#[tokio::test]
async fn a_refused_request_fails_fast_at_the_sender() {
    for kind in KINDS {
        let receiver = start_default(kind).await;
        let sender = receiver.sender(kind);
        let id = RequestId::random();
        // The consumer expects one image; the tiles announce two.
        let mut inbox = receiver.registry.register(id, Some(1)).unwrap();
        let tiles = request_tiles(5, &[1, 1], 8, 8);
        let mut stream = sender.open(&receiver.destination, id).await.unwrap();
        stream.send(tiles[0].clone()).await.unwrap();
        assert!(matches!(
            inbox.next_tile().await,
            Err(InboxError::Protocol { .. })
        ));
        let mut err = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Err(e) = stream.send(tiles[1].clone()).await {
                err = Some(e);
                break;
            }
        }
        let err = match err {
            Some(e) => e,
            None => stream.finish().await.unwrap_err(),
        };
        assert_eq!(status(&err), Some(ReplyStatus::Protocol), "{kind}: {err}");
        receiver.stop().await;
    }
}

#[tokio::test]
async fn registering_a_request_twice_is_refused() {
    let registry = dvd_transport::InboxRegistry::new(Default::default());
    let id = RequestId::random();
    let _inbox = registry.register(id, None).unwrap();
    assert_eq!(
        registry.register(id, None).unwrap_err(),
        InboxError::Duplicate(id)
    );
}
