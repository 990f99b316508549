//! The image-URL fetch policy against real sockets on loopback: an HTTPS image server (a
//! self-signed certificate the fetcher is told to trust) and a listener that records every
//! connection, so a refused URL is shown to have caused none. Each bypass of the policy that
//! could reach an internal address is tried: other spellings of the address, DNS names that
//! resolve inside, credentials, redirects to inside, scheme downgrades, endless redirects; and
//! the size and time limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dvd_gateway::config::{ImagesSection, LimitsSection};
use dvd_gateway::fetch::{FetchError, Fetcher};
use dvd_transport::quic::SelfSigned;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::common::serve_on;

/// The image the server serves at `/img.png`.
const IMAGE: &[u8] = b"\x89PNG\r\n\x1a\n-not-really-a-png-but-bytes-are-bytes";

/// An HTTPS (or plain HTTP) server on 127.0.0.1 with scripted routes.
struct ImageServer {
    addr: SocketAddr,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
    _tasks: JoinSet<()>,
}

impl ImageServer {
    async fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cert = SelfSigned::generate(&["127.0.0.1".to_owned()]).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &cert.cert_pem).unwrap();
        let acceptor = tls.then(|| {
            let certs = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let (addr, tasks) = serve_on([127, 0, 0, 1], |listener, addr| async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                serve(tls, addr, "https").await;
                            }
                        }
                        None => serve(tcp, addr, "http").await,
                    }
                });
            }
        })
        .await;
        Self {
            addr,
            ca_file,
            _dir: dir,
            _tasks: tasks,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

/// Answers one request: `/img.png`, `/redirect?LOCATION`, `/loop`, `/huge` (declares 10 MiB),
/// `/endless` (chunked, never ends), `/slow` (never answers), anything else 404.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, addr: SocketAddr, scheme: &str) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match io.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let reply = |status: &str, headers: &str, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    let out = match path.as_str() {
        "/img.png" => {
            assert!(head.contains("host: 127.0.0.1:") || head.contains("Host: 127.0.0.1:"));
            reply("200 OK", "Content-Type: image/png\r\n", IMAGE)
        }
        p if p.starts_with("/redirect?") => {
            let to = &p["/redirect?".len()..];
            reply("302 Found", &format!("Location: {to}\r\n"), b"")
        }
        "/loop" => reply(
            "307 Temporary Redirect",
            &format!("Location: {scheme}://{addr}/loop\r\n"),
            b"",
        ),
        "/huge" => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n";
            let _ = io.write_all(head.as_bytes()).await;
            let _ = io.write_all(&[0u8; 65536]).await;
            return;
        }
        "/endless" => {
            let _ = io
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let chunk = [7u8; 16384];
            loop {
                let mut out = format!("{:x}\r\n", chunk.len()).into_bytes();
                out.extend_from_slice(&chunk);
                out.extend_from_slice(b"\r\n");
                if io.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        _ => reply("404 Not Found", "", b"no"),
    };
    let _ = io.write_all(&out).await;
    let _ = io.shutdown().await;
}

/// A listener that only counts the connections it gets.
struct Recorder {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _task: JoinSet<()>,
}

impl Recorder {
    /// On 127.0.0.2: loopback, but not the image server's address.
    async fn start() -> Self {
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let (addr, task) = serve_on([127, 0, 0, 2], |listener, _| async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        })
        .await;
        Self {
            addr,
            connections,
            _task: task,
        }
    }
}

fn fetcher(images: ImagesSection, max_image_mib: usize) -> Fetcher {
    let limits = LimitsSection {
        max_image_mib,
        ..LimitsSection::default()
    };
    Fetcher::new(&images, &limits).unwrap()
}

/// A fetcher that trusts `server` and may reach 127.0.0.1 (only).
fn trusting(server: &ImageServer) -> Fetcher {
    fetcher(
        ImagesSection {
            fetch_allowed_networks: vec!["127.0.0.1/32".into()],
            fetch_ca_file: Some(server.ca_file.clone()),
            fetch_timeout_s: 2,
            ..ImagesSection::default()
        },
        1,
    )
}

fn refused(result: Result<bytes::Bytes, FetchError>) -> String {
    match result {
        Err(FetchError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_https_image_is_fetched_through_a_checked_redirect() {
    let server = ImageServer::start(true).await;
    let fetch = trusting(&server);
    assert_eq!(fetch.fetch(&server.url("/img.png")).await.unwrap(), IMAGE);
    let relative = server.url("/redirect?/img.png");
    assert_eq!(fetch.fetch(&relative).await.unwrap(), IMAGE);
    let absolute = server.url(&format!("/redirect?{}", server.url("/img.png")));
    assert_eq!(fetch.fetch(&absolute).await.unwrap(), IMAGE);
    match fetch.fetch(&server.url("/missing.png")).await {
        Err(FetchError::Failed(why)) => assert!(why.contains("404"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn internal_addresses_are_refused_in_every_spelling_before_any_connection() {
    let inside = Recorder::start().await;
    let port = inside.addr.port();
    // The default policy: public addresses only.
    let fetch = fetcher(ImagesSection::default(), 20);
    for url in [
        format!("https://127.0.0.2:{port}/a.png"),
        format!("https://2130706434:{port}/a.png"), // 127.0.0.2 as one decimal number
        format!("https://0x7f000002:{port}/a.png"), // hex
        format!("https://0177.0.0.2:{port}/a.png"), // octal
        format!("https://127.2:{port}/a.png"),      // short form
        format!("https://[::ffff:127.0.0.2]:{port}/a.png"),
        format!("https://[::ffff:7f00:2]:{port}/a.png"),
        format!("https://localhost:{port}/a.png"),
        format!("https://LOCALHOST.:{port}/a.png"),
        format!("https://[::1]:{port}/a.png"),
        format!("https://0.0.0.0:{port}/a.png"),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        "https://[fd00:ec2::254]/latest/meta-data/".to_owned(),
        "https://10.0.0.1/a.png".to_owned(),
        "https://192.168.0.1/a.png".to_owned(),
        "https://[fe80::1]/a.png".to_owned(),
        "https://[64:ff9b::a9fe:a9fe]/a.png".to_owned(), // NAT64 of 169.254.169.254
        format!("https://user:secret@127.0.0.2:{port}/a.png"),
        format!("https://example.com@127.0.0.2:{port}/a.png"),
        format!("http://127.0.0.2:{port}/a.png"),
        format!("ftp://127.0.0.2:{port}/a.png"),
        format!("gopher://127.0.0.2:{port}/_GET"),
    ] {
        let why = refused(fetch.fetch(&url).await);
        assert!(!why.is_empty(), "{url}");
    }
    assert_eq!(
        inside.connections.load(Ordering::SeqCst),
        0,
        "a refused URL must not connect"
    );
}

#[tokio::test]
async fn redirects_are_checked_like_the_first_url() {
    let server = ImageServer::start(true).await;
    let inside = Recorder::start().await;
    let fetch = trusting(&server);
    let to_inside = server.url(&format!("/redirect?https://{}/a.png", inside.addr));
    assert!(refused(fetch.fetch(&to_inside).await).contains("127.0.0.2"));
    let to_metadata = server.url("/redirect?https://169.254.169.254/latest/meta-data/");
    assert!(refused(fetch.fetch(&to_metadata).await).contains("link-local"));
    let downgrade = server.url(&format!("/redirect?http://{}/img.png", server.addr));
    assert!(refused(fetch.fetch(&downgrade).await).contains("plain http"));
    let with_http = fetcher(
        ImagesSection {
            fetch_allow_http: true,
            fetch_allowed_networks: vec!["127.0.0.1/32".into()],
            fetch_ca_file: Some(server.ca_file.clone()),
            ..ImagesSection::default()
        },
        1,
    );
    assert!(refused(with_http.fetch(&downgrade).await).contains("https to plain http"));
    let scheme = server.url("/redirect?file:///etc/passwd");
    assert!(refused(fetch.fetch(&scheme).await).contains("scheme"));
    assert!(refused(fetch.fetch(&server.url("/loop")).await).contains("more than 3 redirects"));
    assert_eq!(inside.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn size_time_and_certificates_are_limited() {
    let server = ImageServer::start(true).await;
    let fetch = trusting(&server);
    // Declared too large: refused from the header.
    assert_eq!(
        fetch.fetch(&server.url("/huge")).await,
        Err(FetchError::TooLarge(1 << 20))
    );
    // No length, no end: cut at the limit.
    assert_eq!(
        fetch.fetch(&server.url("/endless")).await,
        Err(FetchError::TooLarge(1 << 20))
    );
    // No answer: the whole fetch is bounded.
    let started = Instant::now();
    assert_eq!(
        fetch.fetch(&server.url("/slow")).await,
        Err(FetchError::Timeout(2))
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A certificate nobody vouched for.
    let untrusting = fetcher(
        ImagesSection {
            fetch_allowed_networks: vec!["127.0.0.1/32".into()],
            ..ImagesSection::default()
        },
        1,
    );
    match untrusting.fetch(&server.url("/img.png")).await {
        Err(FetchError::Failed(why)) => assert!(why.contains("TLS"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Hosts outside an allow-list are refused before anything is resolved.
    let listed = fetcher(
        ImagesSection {
            fetch_allowed_hosts: vec!["*.images.example".into()],
            ..ImagesSection::default()
        },
        1,
    );
    assert!(refused(listed.fetch(&server.url("/img.png")).await).contains("allowed_hosts"));
    // Plain http where the operator allows it.
    let plain = ImageServer::start(false).await;
    let http = fetcher(
        ImagesSection {
            fetch_allow_http: true,
            fetch_allowed_networks: vec!["127.0.0.1/32".into()],
            ..ImagesSection::default()
        },
        1,
    );
    let url = format!("http://{}/img.png", plain.addr);
    assert_eq!(http.fetch(&url).await.unwrap(), IMAGE);
}
