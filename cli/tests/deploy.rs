//! What a cluster deployment relies on, with real processes on loopback (issue 11):
//! - graceful drain: a server sent SIGTERM turns not-ready, refuses new work, finishes what it
//!   has and exits; a rolling restart of one of two language servers, then of one of two vision
//!   servers, under steady client load through the gateway loses no request;
//! - one QUIC certificate for a whole language pool: the gateway's `feature_tls_name` is the name
//!   vision servers verify, whatever the pods' addresses.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dvd_proto::common::v1::ServingStatus;
use dvd_proto::language::v1::HealthRequest;
use dvd_proto::limits::{language_client, tuned_endpoint};
use dvd_transport::RequestId;
use tonic::Code;

use crate::common;

use common::{
    ServerProcess, free_port, http, image_generate_request, metric, start_vision, wait_healthy,
};

fn language(listen: &str) -> ServerProcess {
    ServerProcess::start(&[
        "language",
        "serve",
        "--model",
        "dvd-demo",
        "--listen",
        listen,
        "--feature-listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--kv-cache-mib",
        "16",
        "--drain-timeout-s",
        "30",
    ])
}

fn vision(listen: &str) -> ServerProcess {
    start_vision(
        "dvd-demo",
        listen,
        &["--ops-listen", "127.0.0.1:0", "--drain-timeout-s", "30"],
    )
}

#[test]
fn a_draining_language_server_refuses_new_work_and_finishes_what_it_has() {
    let mut server = language("127.0.0.1:0");
    let grpc = server.field("grpc");
    let ops = server.field("ops");
    assert_eq!(http(&ops, "GET", "/health/ready", b"").status, 200);
    assert_eq!(http(&ops, "GET", "/health/live", b"").status, 200);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = tuned_endpoint(&grpc).unwrap().connect().await.unwrap();
        let mut client = language_client(channel);
        // In flight for 2 s: it waits for features no vision server will send.
        let mut waiting = image_generate_request(&RequestId::random(), "Hi", Default::default(), 4);
        waiting.feature_timeout_ms = 2000;
        let sent = Instant::now();
        let mut stream = client.generate(waiting).await.unwrap().into_inner();
        // The engine publishes its gauges once per step.
        let deadline = Instant::now() + Duration::from_secs(1);
        let metrics = loop {
            let metrics = http(&ops, "GET", "/metrics", b"").body;
            if metric(&metrics, "dvd_language_waiting_for_features") == 1.0 {
                break metrics;
            }
            assert!(
                Instant::now() < deadline,
                "the request never showed:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(metric(&metrics, "dvd_language_active_requests"), 1.0);
        // Its reservation holds blocks: the scale-on gauge sees it.
        assert!(metric(&metrics, "dvd_language_kv_cache_usage_ratio") > 0.0);
        assert_eq!(metric(&metrics, "dvd_language_draining"), 0.0);

        server.terminate();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ready = http(&ops, "GET", "/health/ready", b"");
            if ready.status == 503 {
                assert_eq!(ready.body, "draining");
                break;
            }
            assert!(Instant::now() < deadline, "never turned not-ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(http(&ops, "GET", "/health/live", b"").status, 200);
        let health = client.health(HealthRequest {}).await.unwrap().into_inner();
        assert_eq!(health.status, ServingStatus::Draining as i32);
        let refused = client
            .generate(image_generate_request(
                &RequestId::random(),
                "Hi",
                Default::default(),
                4,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(server.running(), "exited with a request in flight");

        // The request in flight runs to its own end (the feature timeout), then the server goes.
        let mut ended = None;
        while let Some(item) = stream.message().await.transpose() {
            if let Err(status) = item {
                ended = Some(status);
                break;
            }
        }
        let ended = ended.expect("the waiting request ends with its feature timeout");
        assert!(ended.message().contains("feature"), "{ended:?}");
        assert!(sent.elapsed() >= Duration::from_millis(1900));
    });
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the server exits once drained");
    assert!(status.success(), "{status}");
}

/// A client that keeps sending chat requests (image and text-only by turns) through the gateway
/// and records every answer.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    /// `clients` threads against `gateway`, sending the PNGs in `pictures` by turns (distinct
    /// pictures spread over both vision servers: the gateway routes images by content).
    fn start(gateway: &str, clients: usize, pictures: &Path) -> Self {
        let mut files: Vec<_> = std::fs::read_dir(pictures)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        files.sort();
        let urls: Arc<Vec<String>> = Arc::new(
            files
                .iter()
                .map(|f| {
                    let png = std::fs::read(f).unwrap();
                    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
                    format!("data:image/png;base64,{b64}")
                })
                .collect(),
        );
        assert!(urls.len() >= 10);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|client| {
                let (stop, done) = (stop.clone(), done.clone());
                let (gateway, urls) = (gateway.to_owned(), urls.clone());
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Acquire) {
                        n += 1;
                        // Distinct first messages spread requests over both language servers.
                        let text = format!("What shape is in the image? ({client}-{n})");
                        let content = if n % 2 == 0 {
                            let url = &urls[(client * 7 + n) % urls.len()];
                            serde_json::json!([
                                {"type": "image_url", "image_url": {"url": url}},
                                {"type": "text", "text": text},
                            ])
                        } else {
                            serde_json::json!(format!("Hello! ({client}-{n})"))
                        };
                        let body = serde_json::json!({
                            "model": "dvd-demo",
                            "messages": [{"role": "user", "content": content}],
                            // Long enough to be mid-stream when a server is told to stop.
                            "max_tokens": 32,
                            "ignore_eos": true,
                            "temperature": 0,
                        });
                        let r = http(
                            &gateway,
                            "POST",
                            "/v1/chat/completions",
                            body.to_string().as_bytes(),
                        );
                        let answered =
                            r.status == 200 && r.json()["choices"][0]["finish_reason"].is_string();
                        if !answered {
                            failures.push(format!("{}: {}", r.status, r.body));
                        }
                        done.fetch_add(1, Ordering::AcqRel);
                    }
                    failures
                })
            })
            .collect();
        Self {
            stop,
            done,
            threads,
        }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until `more` requests beyond `from` have been answered.
    fn wait_for(&self, from: usize, more: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.done() < from + more {
            assert!(
                Instant::now() < deadline,
                "the load stalled at {}",
                self.done()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients; every failure they saw.
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Release);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

/// Waits until the gateway reports `vision` and `language` ready servers.
fn wait_pools(gateway: &str, vision: u64, language: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = http(gateway, "GET", "/health", b"").json();
        if health["vision_servers_ready"] == vision && health["language_servers_ready"] == language
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pools never reached {vision}+{language}: {health}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERMs `server` under load, checks it drains and exits cleanly, and starts its replacement
/// on the same address.
fn restart(
    server: &mut ServerProcess,
    load: &Load,
    start: impl Fn() -> ServerProcess,
) -> ServerProcess {
    let before = load.done();
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(40))
        .expect("a drained server exits");
    assert!(status.success(), "{status}");
    // Requests keep being answered while one server of the pool is gone.
    load.wait_for(load.done(), 5);
    let replacement = start();
    assert!(load.done() > before);
    replacement
}

#[test]
fn rolling_restarts_under_load_lose_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let language_addrs = [0, 1].map(|_| format!("127.0.0.1:{}", free_port()));
    let vision_addrs = [0, 1].map(|_| format!("127.0.0.1:{}", free_port()));
    let mut languages = language_addrs.clone().map(|a| language(&a));
    let mut visions = vision_addrs.clone().map(|a| vision(&a));
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp = \"127.0.0.1:0\"\ngrpc = \"127.0.0.1:0\"\nmodel = \"dvd-demo\"\n\
             [vision]\naddresses = {vision_addrs:?}\n\
             [language]\naddresses = {language_addrs:?}\n\
             [health]\ninterval_ms = 100\ntimeout_ms = 500\n",
        ),
    )
    .unwrap();
    let mut gateway = ServerProcess::start(&[
        "gateway",
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--drain-delay-s",
        "1",
        "--drain-timeout-s",
        "10",
    ]);
    let http_addr = gateway.field("http");
    wait_healthy(&http_addr);
    wait_pools(&http_addr, 2, 2);

    let pictures = dir.path().join("pictures");
    let drawn = common::dvd()
        .args(["demo", "images", "--count", "40", "--shapes", "1", "--out"])
        .arg(&pictures)
        .output()
        .unwrap();
    assert!(drawn.status.success(), "{drawn:?}");
    let load = Load::start(&http_addr, 3, &pictures);
    load.wait_for(0, 20);
    let served = |p: &ServerProcess, metric_name: &str| {
        let text = http(&p.field("ops"), "GET", "/metrics", b"").body;
        metric(&text, metric_name)
    };
    let finished = "dvd_language_requests_total{outcome=\"finished\"}";
    assert!(
        served(&languages[0], finished) > 0.0,
        "language 0 got no load"
    );

    // Language server 0, then vision server 0, each drained and replaced under load.
    languages[0] = restart(&mut languages[0], &load, || language(&language_addrs[0]));
    wait_pools(&http_addr, 2, 2);
    let at = load.done();
    load.wait_for(at, 20);
    assert!(
        served(&languages[0], finished) > 0.0,
        "the gateway never routed to the restarted language server"
    );

    let encoded = "dvd_vision_requests_total{outcome=\"finished\"}";
    assert!(served(&visions[0], encoded) > 0.0, "vision 0 got no load");
    visions[0] = restart(&mut visions[0], &load, || vision(&vision_addrs[0]));
    wait_pools(&http_addr, 2, 2);
    let at = load.done();
    load.wait_for(at, 20);
    assert!(
        served(&visions[0], encoded) > 0.0,
        "the gateway never routed to the restarted vision server"
    );

    let total = load.done();
    let failures = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {failures:#?}",
        failures.len()
    );
    assert!(total >= 60, "{total}");
    let gateway_metrics = http(&http_addr, "GET", "/metrics", b"").body;
    eprintln!(
        "{total} requests, none lost; gateway retries: {}",
        metric(&gateway_metrics, "dvd_gateway_retries_total")
    );

    // The gateway drains too: not-ready at once, still answering through its delay, then gone.
    assert_eq!(http(&http_addr, "GET", "/health/live", b"").status, 200);
    assert_eq!(http(&http_addr, "GET", "/health/ready", b"").status, 200);
    gateway.terminate();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let ready = http(&http_addr, "GET", "/health/ready", b"");
        if ready.status == 503 {
            assert_eq!(ready.json()["status"], "draining");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never turned not-ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(http(&http_addr, "GET", "/v1/models", b"").status, 200);
    let status = gateway
        .wait_exit(Duration::from_secs(15))
        .expect("the gateway exits after its drain");
    assert!(status.success(), "{status}");
    drop(visions);
    drop(languages);
}

/// A gateway over one vision and one language server speaking QUIC with a certificate that names
/// only `dvd-language` (not the servers' address); the answer to one image request, or the
/// error.
fn quic_image_request(dir: &Path, feature_tls_name: Option<&str>) -> common::HttpResponse {
    let tls = dir.join("tls");
    let made = common::dvd()
        .args(["tls", "self-signed", "--name", "dvd-language", "--out"])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    let language_server = common::start_language(
        "dvd-demo",
        16,
        &common::quic_tls_args(cert.to_str().unwrap(), key.to_str().unwrap()),
    );
    let vision_server = start_vision(
        "dvd-demo",
        "127.0.0.1:0",
        &["--tls-ca", cert.to_str().unwrap()],
    );
    let name = feature_tls_name
        .map(|n| format!("feature_tls_name = \"{n}\"\n"))
        .unwrap_or_default();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp = \"127.0.0.1:0\"\ngrpc = \"127.0.0.1:0\"\nmodel = \"dvd-demo\"\n\
             [vision]\naddresses = [\"{}\"]\n[language]\naddresses = [\"{}\"]\n{name}\
             [limits]\nattempts = 1\n",
            vision_server.field("grpc"),
            language_server.field("grpc"),
        ),
    )
    .unwrap();
    let gateway = ServerProcess::start(&["gateway", "serve", "--config", config.to_str().unwrap()]);
    let addr = gateway.field("http");
    wait_healthy(&addr);
    common::ask_red_circle(&addr)
}

#[test]
fn one_certificate_serves_a_whole_language_pool_through_feature_tls_name() {
    let dir = tempfile::tempdir().unwrap();
    let named = quic_image_request(dir.path(), Some("dvd-language"));
    assert_eq!(named.status, 200, "{}", named.body);
    assert_eq!(named.json()["choices"][0]["message"]["content"], "circle");

    // Without it vision servers verify the address (127.0.0.1), which the certificate lacks.
    let dir = tempfile::tempdir().unwrap();
    let unnamed = quic_image_request(dir.path(), None);
    assert_ne!(unnamed.status, 200, "{}", unnamed.body);
}
