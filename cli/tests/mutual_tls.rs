//! Mutual TLS between the gateway, vision and language servers, with real processes (issue 12):
//! certificates from `dvd tls mutual`; the gateway reaches both servers over gRPC with TLS and
//! vision servers push features over QUIC with their own certificate, and an image request
//! answers as without TLS. Called directly, the servers refuse plaintext, callers without a
//! certificate or with one from another CA, and callers whose certificate names another role
//! than the gateway's.

use std::path::Path;

use dvd_proto::common::v1::ServingStatus;
use dvd_proto::limits::{language_client, tuned_endpoint, vision_client};
use dvd_proto::tls::GrpcTls;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::common::{
    ServerProcess, ask_red_circle, dvd, language_args, start_language, start_vision, wait_healthy,
};

fn mutual(dir: &Path) {
    let made = dvd()
        .args(["tls", "mutual", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
}

/// A language server's mutual-TLS flags with the certificates `dvd tls mutual` wrote to `dir`.
fn language_tls(dir: &Path) -> Vec<String> {
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    vec![
        "--tls-cert".into(),
        file("language.pem"),
        "--tls-key".into(),
        file("language-key.pem"),
        "--tls-client-ca".into(),
        file("ca.pem"),
    ]
}

/// A TLS client config presenting `role`'s certificate from `dir`, verifying `server_name`.
fn as_role(dir: &Path, role: &str, server_name: &str) -> ClientTlsConfig {
    GrpcTls::from_files(
        &dir.join("ca.pem"),
        &dir.join(format!("{role}.pem")),
        &dir.join(format!("{role}-key.pem")),
    )
    .unwrap()
    .client_config(server_name)
}

/// A channel to `addr` over TLS as `tls`, or plaintext when `None`; `Unavailable` when it does
/// not connect.
async fn channel(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, Code> {
    let endpoint = match tls {
        Some(tls) => tuned_endpoint(&format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap(),
        None => tuned_endpoint(addr).unwrap(),
    };
    endpoint.connect().await.map_err(|_| Code::Unavailable)
}

/// `Health` of the language server at `addr` over TLS as `tls`, or plaintext when `None`.
async fn language_health(addr: &str, tls: Option<ClientTlsConfig>) -> Result<ServingStatus, Code> {
    let answer = language_client(channel(addr, tls).await?)
        .health(dvd_proto::language::v1::HealthRequest {})
        .await
        .map_err(|s| s.code())?;
    Ok(answer.into_inner().status())
}

/// `Health` of the vision server at `addr` over TLS as `tls`.
async fn vision_health(addr: &str, tls: ClientTlsConfig) -> Result<ServingStatus, Code> {
    let answer = vision_client(channel(addr, Some(tls)).await?)
        .health(dvd_proto::vision::v1::HealthRequest {})
        .await
        .map_err(|s| s.code())?;
    Ok(answer.into_inner().status())
}

#[test]
fn the_gateway_and_servers_talk_only_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    mutual(&tls);
    let file = |name: &str| tls.join(name).to_str().unwrap().to_owned();
    let language_tls = language_tls(&tls);
    let mut quic = vec!["--transport", "quic"];
    quic.extend(language_tls.iter().map(String::as_str));
    let language = start_language("dvd-demo", 16, &quic);
    let vision = start_vision(
        "dvd-demo",
        "127.0.0.1:0",
        &[
            "--tls-ca",
            &file("ca.pem"),
            "--tls-cert",
            &file("vision.pem"),
            "--tls-key",
            &file("vision-key.pem"),
            "--tls-client-ca",
            &file("ca.pem"),
        ],
    );
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp = \"127.0.0.1:0\"\ngrpc = \"127.0.0.1:0\"\nmodel = \"dvd-demo\"\n\
             [vision]\naddresses = [\"{}\"]\n[language]\naddresses = [\"{}\"]\n\
             [limits]\nattempts = 1\n\
             [tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            vision.field("grpc"),
            language.field("grpc"),
            file("ca.pem"),
            file("gateway.pem"),
            file("gateway-key.pem"),
        ),
    )
    .unwrap();
    let gateway = ServerProcess::start(&["gateway", "serve", "--config", config.to_str().unwrap()]);
    let addr = gateway.field("http");
    wait_healthy(&addr);

    // The whole path, TLS everywhere: the answer the demo model gives without it.
    let r = ask_red_circle(&addr);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "circle");

    // Anyone else calling the servers directly.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let language_addr = language.field("grpc");
        let vision_addr = vision.field("grpc");
        let t = tls.as_path();
        assert_eq!(
            language_health(&language_addr, Some(as_role(t, "gateway", "dvd-language"))).await,
            Ok(ServingStatus::Serving),
            "the gateway's certificate"
        );
        assert!(
            language_health(&language_addr, None).await.is_err(),
            "plaintext"
        );
        let no_certificate = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(t.join("ca.pem")).unwrap(),
            ))
            .domain_name("dvd-language");
        assert!(
            language_health(&language_addr, Some(no_certificate))
                .await
                .is_err(),
            "no client certificate"
        );
        assert_eq!(
            language_health(&language_addr, Some(as_role(t, "vision", "dvd-language"))).await,
            Err(Code::PermissionDenied),
            "a vision server's certificate"
        );
        assert_eq!(
            vision_health(&vision_addr, as_role(t, "language", "dvd-vision")).await,
            Err(Code::PermissionDenied),
            "a language server's certificate"
        );
        assert_eq!(
            vision_health(&vision_addr, as_role(t, "gateway", "dvd-vision")).await,
            Ok(ServingStatus::Serving)
        );
        // A gateway certificate from another CA.
        let other = dir.path().join("other");
        mutual(&other);
        let stranger = GrpcTls::from_files(
            &t.join("ca.pem"),
            &other.join("gateway.pem"),
            &other.join("gateway-key.pem"),
        )
        .unwrap()
        .client_config("dvd-language");
        assert!(
            language_health(&language_addr, Some(stranger))
                .await
                .is_err(),
            "another CA's gateway certificate"
        );
    });
    drop(runtime);
}

#[test]
fn mutual_tls_on_the_tcp_feature_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    mutual(dir.path());
    let out = dvd()
        .args(language_args("dvd-demo"))
        .args(language_tls(dir.path()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--transport quic"), "{stderr}");
}
