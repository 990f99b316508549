//! Distributed tracing against a real OTLP receiver: `dvd up --otlp-endpoint` makes one trace
//! per request across the gateway, the vision server and the language server, joined to the
//! client's `traceparent`; a dead collector costs requests nothing and its spans are counted as
//! dropped.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use dvd_proto::api::v1::{ChatRequest, ContentPart, Message, content_part};
use dvd_proto::common::v1::SamplingParams;
use dvd_proto::limits::{inference_client, tuned_endpoint};

use crate::common::otlp::{CollectedSpan, Collector};
use crate::common::{Up, free_port, http, http_with_headers, metric, red_circle_request};

/// Exports every 100 ms instead of every 5 s.
const FAST_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

/// The client's trace and span of the image request (HTTP) and the text request (gRPC).
const IMAGE_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const TEXT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{CLIENT_SPAN}-01")
}

/// The spans of `trace`.
fn of_trace<'a>(spans: &'a [CollectedSpan], trace: &str) -> Vec<&'a CollectedSpan> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

/// Whether `trace` has a span named `name` from `service`.
fn has(spans: &[CollectedSpan], trace: &str, service: &str, name: &str) -> bool {
    of_trace(spans, trace)
        .iter()
        .any(|s| s.service == service && s.name == name)
}

/// Asserts that the gateway's `chat` span is the client's span's child and every other span's
/// parent is a span of the same trace.
fn assert_linked(trace: &[&CollectedSpan]) {
    let ids: HashSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<_> = trace
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()))
        .collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    let root = roots[0];
    assert_eq!(
        (
            root.service.as_str(),
            root.name.as_str(),
            root.parent_span_id.as_str()
        ),
        ("dvd-gateway", "chat", CLIENT_SPAN)
    );
}

/// Names of `trace`'s spans, by service.
fn names(trace: &[&CollectedSpan]) -> HashMap<String, HashSet<String>> {
    let mut by_service: HashMap<String, HashSet<String>> = HashMap::new();
    for span in trace {
        by_service
            .entry(span.service.clone())
            .or_default()
            .insert(span.name.clone());
    }
    by_service
}

/// A text-only chat over the public gRPC API, carrying `traceparent` in its metadata.
fn grpc_text_chat(grpc: &str, traceparent: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tuned_endpoint(grpc).unwrap().connect().await.unwrap();
        let mut request = tonic::Request::new(ChatRequest {
            model: "dvd-demo".into(),
            messages: vec![Message {
                role: "user".into(),
                content: vec![ContentPart {
                    part: Some(content_part::Part::Text("Hello!".into())),
                }],
            }],
            sampling: Some(SamplingParams {
                max_tokens: 4,
                ..Default::default()
            }),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        let mut client = inference_client(channel);
        let mut stream = client.chat(request).await.unwrap().into_inner();
        while stream.message().await.unwrap().is_some() {}
    });
}

#[test]
fn one_trace_per_request_across_the_three_roles() {
    let collector = Collector::start();
    let up = Up::start_with_env(&["--otlp-endpoint", &collector.endpoint()], &[FAST_EXPORT]);
    let answer = http_with_headers(
        &up.http,
        "POST",
        "/v1/chat/completions",
        &[("traceparent", &traceparent(IMAGE_TRACE))],
        red_circle_request().as_bytes(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let port: u16 = up.http.rsplit(':').next().unwrap().parse().unwrap();
    grpc_text_chat(&format!("127.0.0.1:{}", port + 1), &traceparent(TEXT_TRACE));

    // Each process's request span ends after every span inside it.
    let spans = collector.wait_for(Duration::from_secs(30), |spans| {
        has(spans, IMAGE_TRACE, "dvd-gateway", "chat")
            && has(spans, IMAGE_TRACE, "dvd-vision", "encode_request")
            && has(spans, IMAGE_TRACE, "dvd-language", "generate_request")
            && has(spans, TEXT_TRACE, "dvd-gateway", "chat")
            && has(spans, TEXT_TRACE, "dvd-language", "generate_request")
    });

    let image = of_trace(&spans, IMAGE_TRACE);
    let by_service = names(&image);
    let expected = [
        (
            "dvd-gateway",
            &[
                "chat",
                "admission",
                "prepare",
                "fetch_images",
                "attempt",
                "route",
                "encode_call",
                "wait_first_token",
            ][..],
        ),
        (
            "dvd-vision",
            &[
                "encode_request",
                "queue_wait",
                "preprocess",
                "encoder_queue",
                "encode_batch",
                "send_tile",
            ][..],
        ),
        (
            "dvd-language",
            &[
                "generate_request",
                "feature_tile",
                "engine_queue",
                "first_token",
                "decode",
            ][..],
        ),
    ];
    for (service, wanted) in expected {
        for name in wanted {
            assert!(
                by_service.get(service).is_some_and(|n| n.contains(*name)),
                "no {name} span from {service}: {by_service:#?}"
            );
        }
    }
    assert_linked(&image);

    let text = of_trace(&spans, TEXT_TRACE);
    let by_service = names(&text);
    assert!(!by_service.contains_key("dvd-vision"), "{by_service:#?}");
    assert!(
        by_service["dvd-language"].contains("decode"),
        "{by_service:#?}"
    );
    assert_linked(&text);

    // Every span of the two requests arrived.
    let metrics = http(&up.http, "GET", "/metrics", b"").body;
    assert_eq!(metric(&metrics, "dvd_trace_spans_dropped_total"), 0.0);
}

#[test]
fn a_dead_collector_drops_spans_and_nothing_else() {
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let up = Up::start_with_env(&["--otlp-endpoint", &endpoint], &[FAST_EXPORT]);
    let started = Instant::now();
    let answer = http(
        &up.http,
        "POST",
        "/v1/chat/completions",
        red_circle_request().as_bytes(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("circle"), "{}", answer.body);
    assert!(started.elapsed() < Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = http(&up.http, "GET", "/metrics", b"").body;
        if metric(&metrics, "dvd_trace_spans_dropped_total") > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no span counted as dropped:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
