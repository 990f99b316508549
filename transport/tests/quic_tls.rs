//! The QUIC sender verifies the receiver's certificate: it refuses one it does not trust or one
//! issued for another name, and accepts certificates loaded from PEM files. With mutual TLS the
//! receiver verifies the sender too: only a vision-role certificate from its CA gets a tile in.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use crate::common;

use common::{request_tiles, start_default};
use std::path::Path;
use std::time::Duration;

use dvd_proto::tls::VISION_ROLE;
use dvd_transport::quic::{
    ClientTls, InternalPki, QuicFeatureListener, QuicFeatureSender, SelfSigned, ServerTls,
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
    // Verified by IP address this time (the certificate names 127.0.0.1 too).
    assert!(tile_arrives(server, client).await);
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

/// Sends one tile from a sender with `client` to a listener with `server` (dialled by IP
/// address); whether it arrived.
async fn tile_arrives(server: ServerTls, client: ClientTls) -> bool {
    let registry = InboxRegistry::new(common::quick_inbox());
    let listener = QuicFeatureListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        registry.clone(),
        ListenerConfig::default(),
        server,
    )
    .unwrap();
    let destination = dvd_transport::Destination::new(listener.local_addr().to_string());
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(Box::new(listener).serve(shutdown.clone()));
    let id = RequestId::random();
    let mut inbox = registry.register(id, None).unwrap();
    let sender = QuicFeatureSender::new(SenderConfig::default(), client).unwrap();
    let tile = request_tiles(1, &[1], 8, 8).remove(0);
    let sent = async {
        let mut stream = sender.open(&destination, id).await?;
        stream.send(tile.clone()).await?;
        stream.finish().await
    };
    let sent = tokio::time::timeout(Duration::from_secs(5), sent).await;
    // A refused sender's tile could only arrive at once, if at all.
    let wait = if matches!(sent, Ok(Ok(_))) { 2000 } else { 300 };
    let arrived = tokio::time::timeout(Duration::from_millis(wait), inbox.next_tile()).await;
    shutdown.cancel();
    tasks.join_next().await.unwrap().unwrap().unwrap();
    let arrived = matches!(arrived, Ok(Ok(Some(ref t))) if *t == tile);
    assert_eq!(
        arrived,
        matches!(sent, Ok(Ok(_))),
        "a tile arrived only if the sender saw success ({sent:?})"
    );
    arrived
}

#[tokio::test]
async fn mutual_tls_admits_only_vision_certificates_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = InternalPki::generate(&["127.0.0.1".into()]).unwrap();
    pki.write_to(dir.path()).unwrap();
    let file = |name: &str| dir.path().join(name);
    let server = || {
        ServerTls::from_pem_files(&file("language.pem"), &file("language-key.pem"))
            .unwrap()
            .require_clients(&file("ca.pem"), Some(VISION_ROLE))
            .unwrap()
    };
    let trust = || ClientTls::from_ca_file(&file("ca.pem")).unwrap();
    let as_role = |role: &str| {
        trust()
            .with_identity_files(
                &file(&format!("{role}.pem")),
                &file(&format!("{role}-key.pem")),
            )
            .unwrap()
    };
    assert!(
        tile_arrives(server(), as_role("vision")).await,
        "a vision server"
    );
    assert!(!tile_arrives(server(), trust()).await, "no certificate");
    assert!(
        !tile_arrives(server(), as_role("gateway")).await,
        "the gateway's"
    );
    assert!(
        !tile_arrives(server(), as_role("language")).await,
        "a language server's"
    );
    // A vision certificate from another CA.
    let other = InternalPki::generate(&["127.0.0.1".into()]).unwrap();
    let stranger = trust()
        .with_identity_pem(&other.vision.cert_pem, &other.vision.key_pem)
        .unwrap();
    assert!(!tile_arrives(server(), stranger).await, "another CA's");
    // Without a required name any certificate from the CA is enough.
    let any_role = ServerTls::from_pem_files(&file("language.pem"), &file("language-key.pem"))
        .unwrap()
        .require_clients(&file("ca.pem"), None)
        .unwrap();
    assert!(tile_arrives(any_role, as_role("gateway")).await);
    assert!(
        !Path::new(&file("ca-key.pem")).exists(),
        "the CA key is not kept"
    );
}
