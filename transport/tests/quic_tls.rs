//! The QUIC sender verifies the receiver's certificate: it refuses one it does not trust or one
//! issued for another name, and accepts certificates loaded from PEM files.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use crate::common;

use common::{request_tiles, start_default};
use dvd_transport::quic::{
    ClientTls, QuicFeatureListener, QuicFeatureSender, SelfSigned, ServerTls,
};
use dvd_transport::{
    FeatureListener, FeatureSender, InboxRegistry, ListenerConfig, RequestId, SenderConfig,
    TransportError, TransportKind,
};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn sender_refuses_a_certificate_it_does_not_trust() {
    let receiver = start_default(TransportKind::Quic).await;
    // Trust anchors from an unrelated self-signed certificate.
    let (_, stranger) = ServerTls::self_signed(&["localhost".into()]).unwrap();
    let sender = QuicFeatureSender::new(SenderConfig::default(), stranger).unwrap();
    let err = sender
        .open(&receiver.destination, RequestId::random())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Tls(_)), "{err}");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    receiver.stop().await;
}

#[tokio::test]
async fn sender_refuses_a_certificate_for_another_name() {
    let receiver = start_default(TransportKind::Quic).await;
    let sender = receiver.sender(TransportKind::Quic);
    let mut destination = receiver.destination.clone();
    destination.server_name = Some("language-7.example".into());
    let err = sender
        .open(&destination, RequestId::random())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Tls(_)), "{err}");
    receiver.stop().await;
}

#[tokio::test]
async fn certificates_from_pem_files_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    SelfSigned::generate(&["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .write_to(dir.path())
        .unwrap();
    let server =
        ServerTls::from_pem_files(&dir.path().join("cert.pem"), &dir.path().join("key.pem"))
            .unwrap();
    let client = ClientTls::from_ca_file(&dir.path().join("cert.pem")).unwrap();

    let registry = InboxRegistry::new(common::quick_inbox());
    let listener = QuicFeatureListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        registry.clone(),
        ListenerConfig::default(),
        server,
    )
    .unwrap();
    // Verified by IP address this time (the certificate names 127.0.0.1 too).
    let destination = dvd_transport::Destination::new(listener.local_addr().to_string());
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(Box::new(listener).serve(shutdown.clone()));

    let id = RequestId::random();
    let mut inbox = registry.register(id, None).unwrap();
    let sender = QuicFeatureSender::new(SenderConfig::default(), client).unwrap();
    let tile = request_tiles(1, &[1], 8, 8).remove(0);
    let mut stream = sender.open(&destination, id).await.unwrap();
    stream.send(tile.clone()).await.unwrap();
    stream.finish().await.unwrap();
    assert_eq!(inbox.next_tile().await.unwrap(), Some(tile));
    shutdown.cancel();
    tasks.join_next().await.unwrap().unwrap().unwrap();
}

#[test]
fn missing_or_empty_pem_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let err = ClientTls::from_ca_file(&missing).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(ClientTls::from_ca_file(&empty).is_err());
    assert!(ServerTls::from_pem_files(&empty, &empty).is_err());
}
