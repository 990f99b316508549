//! The public endpoints behind API keys, with real processes (issue 12): a gateway with `[auth]`
//! keys refuses HTTP and gRPC calls without a valid key, serves those with one, applies each key's
//! rate limit, leaves probes open, and never writes a key to its logs, even at trace level.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use std::process::{Command, Stdio};
use std::time::Duration;

use dvd_proto::api::v1::{ChatRequest, ContentPart, HealthRequest, Message, content_part};
use dvd_proto::common::v1::SamplingParams;
use dvd_proto::limits::{inference_client, tuned_endpoint};
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::common;

use common::{http, wait_healthy};

const KEY: &str = "sk-dvd-3d1f0a9c77e24b58b6e1";

/// `http` with extra request headers.
fn http_with(addr: &str, path: &str, headers: &str, body: &str) -> common::HttpResponse {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
    common::HttpResponse {
        status,
        headers: Vec::new(),
        body,
    }
}

fn chat(text: &str) -> ChatRequest {
    ChatRequest {
        model: "dvd-demo".into(),
        messages: vec![Message {
            role: "user".into(),
            content: vec![ContentPart {
                part: Some(content_part::Part::Text(text.into())),
            }],
        }],
        sampling: Some(SamplingParams {
            max_tokens: 4,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn api_keys_guard_http_and_grpc_and_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let language = common::start_language("dvd-demo", 16, &[]);
    let keys = dir.path().join("api-keys");
    std::fs::write(&keys, format!("# name key\nci {KEY}\n")).unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp = \"127.0.0.1:0\"\ngrpc = \"127.0.0.1:0\"\nmodel = \"dvd-demo\"\n\
             [language]\naddresses = [\"{}\"]\n\
             [auth]\napi_keys_file = {:?}\nrequests_per_minute = 1\nburst = 3\n",
            language.field("grpc"),
            keys.display().to_string(),
        ),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_dvd"))
        .args(["gateway", "serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let ready: serde_json::Value = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(gateway.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let (http_addr, grpc_addr) = (
        ready["http"].as_str().unwrap().to_owned(),
        ready["grpc"].as_str().unwrap().to_owned(),
    );
    wait_healthy(&http_addr);

    let body =
        r#"{"model":"dvd-demo","messages":[{"role":"user","content":"Hello!"}],"max_tokens":4}"#;
    let path = "/v1/chat/completions";
    assert_eq!(http_with(&http_addr, path, "", body).status, 401);
    let wrong = format!("Authorization: Bearer {KEY}x\r\n");
    assert_eq!(http_with(&http_addr, path, &wrong, body).status, 401);
    let right = format!("Authorization: Bearer {KEY}\r\n");
    let ok = http_with(&http_addr, path, &right, body);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(http(&http_addr, "GET", "/health", b"").status, 200);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = tuned_endpoint(&grpc_addr).unwrap().connect().await.unwrap();
        let mut client = inference_client(channel);
        let refused = client.chat(chat("Hello!")).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        let refused = client.health(HealthRequest {}).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

        let mut request = tonic::Request::new(chat("Hello!"));
        let bearer: MetadataValue<_> = format!("Bearer {KEY}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        let mut stream = client.chat(request).await.unwrap().into_inner();
        while stream.message().await.unwrap().is_some() {}

        // The burst (3) is spent: one HTTP and one gRPC request so far, one more passes.
        let mut request = tonic::Request::new(chat("Hello!"));
        request
            .metadata_mut()
            .insert("x-api-key", KEY.parse().unwrap());
        assert!(client.chat(request).await.is_ok());
        let mut request = tonic::Request::new(chat("Hello!"));
        request
            .metadata_mut()
            .insert("x-api-key", KEY.parse().unwrap());
        let limited = client.chat(request).await.unwrap_err();
        assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    });
    let limited = http_with(&http_addr, path, &right, body);
    assert_eq!(limited.status, 429, "{}", limited.body);

    let metrics = http(&http_addr, "GET", "/metrics", b"").body;
    assert!(metrics.contains("dvd_gateway_auth_rejections_total{reason=\"missing\"} 3"));
    assert!(metrics.contains("dvd_gateway_auth_rejections_total{reason=\"invalid\"} 1"));
    assert!(metrics.contains("dvd_gateway_auth_rejections_total{reason=\"rate_limited\"} 2"));

    let _ = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status();
    let _ = gateway.wait();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.len() > 1000,
        "trace logging produced little: {logged}"
    );
    assert!(
        !logged.contains(&KEY[7..]),
        "an API key reached the gateway's log"
    );
}
