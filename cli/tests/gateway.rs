//! The gateway as clients use it: `dvd up` (every role as its own process) over TCP and QUIC,
//! its language servers on one device or split over two ranks, answers the OpenAI-compatible API
//! exactly as the coupled `dvd generate` does; a hand-built
//! deployment shows retries when a vision server dies, prompt errors when the language server
//! dies, admission control, clear 4xx errors for bad input, and image URLs fetched under the
//! gateway's policy.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    ServerProcess, Up, coupled_generate, data_url, dvd, free_port_pair, http, image, json_output,
    language_fixture, start_language, start_vision, wait_healthy,
};
use serde_json::{Value, json};

/// `dvd up` of the MoE fixture (GitHub layout) with `extra` arguments.
fn up(extra: &[&str]) -> Up {
    let model = language_fixture(MODEL);
    let mut args = vec!["--model", model.to_str().unwrap(), "--kv-cache-mib", "64"];
    args.extend_from_slice(extra);
    Up::start(&args)
}

/// The model `dvd up` serves by default; the hand-built deployment serves it as "m".
const MODEL: &str = "internvl-moe-custom-bf16";

fn chat_body(text: &str, image: Option<&[u8]>, max_tokens: u32, stream: bool) -> Vec<u8> {
    chat_body_for(MODEL, text, image, max_tokens, stream)
}

fn chat_body_for(
    model: &str,
    text: &str,
    image: Option<&[u8]>,
    max_tokens: u32,
    stream: bool,
) -> Vec<u8> {
    let mut content = Vec::new();
    if let Some(bytes) = image {
        content
            .push(json!({"type": "image_url", "image_url": {"url": data_url("image/png", bytes)}}));
    }
    content.push(json!({"type": "text", "text": text}));
    serde_json::to_vec(&json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }))
    .unwrap()
}

/// `dvd generate --json` on the same model, prompt and image.
fn coupled(text: &str, with_image: bool, max_tokens: u32) -> Value {
    coupled_generate(&language_fixture(MODEL), text, with_image, max_tokens)
}

/// The text of an SSE response, checking its framing.
fn sse_text(body: &str) -> String {
    let mut text = String::new();
    let mut done = false;
    for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert!(done, "no [DONE] in {body}");
    text
}

fn same_answer_as_dvd_generate(up: &Up) {
    let png = std::fs::read(image()).unwrap();
    // Text only, not streamed.
    let want = coupled("Hello there", false, 12);
    let r = http(
        &up.http,
        "POST",
        "/v1/chat/completions",
        &chat_body("Hello there", None, 12, false),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], want["text"], "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], want["finish_reason"]);
    assert_eq!(v["usage"]["completion_tokens"], want["completion_tokens"]);
    // With an image, streamed.
    let want = coupled("What is shown in the picture?", true, 12);
    let r = http(
        &up.http,
        "POST",
        "/v1/chat/completions",
        &chat_body("What is shown in the picture?", Some(&png), 12, true),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(sse_text(&r.body), want["text"].as_str().unwrap());
    // Several clients at once.
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let r = http(
                        &up.http,
                        "POST",
                        "/v1/chat/completions",
                        &chat_body("What is shown in the picture?", Some(&png), 12, false),
                    );
                    assert_eq!(r.status, 200, "{}", r.body);
                    r.json()["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        answers.iter().all(|a| a == want["text"].as_str().unwrap()),
        "{answers:?}"
    );
    let models = http(&up.http, "GET", "/v1/models", b"").json();
    assert_eq!(models["data"][0]["id"], "internvl-moe-custom-bf16");
    let metrics = http(&up.http, "GET", "/metrics", b"").body;
    assert!(metrics.contains("dvd_gateway_requests_total"), "{metrics}");
    assert!(metrics.contains("dvd_gateway_pool_servers{pool=\"vision\",state=\"healthy\"} "));
}

/// `dvd bench serve` against a live deployment: image load on a Poisson schedule with probes,
/// every request answered and timed, the summary under vLLM's names, one CSV row per request;
/// the random-mm workload.
fn bench_serve_measures_a_live_deployment(up: &Up) {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("requests.csv");
    let url = format!("http://{}/v1", up.http);
    // Probes are counted in the served model's tokens: a model listed under a bare name needs
    // its tokenizer named.
    let unnamed = dvd()
        .args(["bench", "serve", "--url", &url, "--num-prompts", "1"])
        .args(["--probe-request-rate", "1", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&unnamed.stderr);
    assert!(
        !unnamed.status.success() && stderr.contains("--tokenizer"),
        "{stderr}"
    );
    let tokenizer = language_fixture(MODEL);
    let report = json_output(
        dvd()
            .args(["bench", "serve", "--url", &url])
            .args(["--tokenizer", tokenizer.to_str().unwrap()])
            .args(["--num-prompts", "4", "--request-rate", "20", "--seed", "3"])
            .args([
                "--image-sizes",
                "64,128",
                "--output-len",
                "4",
                "--ignore-eos",
                "--max-concurrency",
                "2",
            ])
            .args([
                "--probe-request-rate",
                "50",
                "--goodput",
                "e2el:60000",
                "--json",
                "--csv",
            ])
            .arg(&csv),
    );
    assert_eq!(report["completed"], 4, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["total_output_tokens"], 16, "{report}");
    assert!(
        report["total_image_tokens"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["total_input_tokens"].as_u64() > report["total_image_tokens"].as_u64());
    for key in [
        "request_throughput",
        "output_throughput",
        "mean_ttft_ms",
        "p99_e2el_ms",
    ] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    assert_eq!(
        report["request_goodput"], report["request_throughput"],
        "{report}"
    );
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        rows.lines().filter(|l| l.starts_with("load,")).count(),
        4,
        "{rows}"
    );
    assert!(rows.lines().skip(1).all(|l| l.contains(",true,")), "{rows}");
    // vLLM's random-mm workload: 0 to 2 images of random sizes and a random prompt per request.
    let mixed = json_output(
        dvd()
            .args(["bench", "serve", "--url", &url])
            .args(["--tokenizer", tokenizer.to_str().unwrap()])
            .args(["--dataset", "random-mm", "--images-per-request", "0:2"])
            .args(["--image-sizes", "64,128", "--random-input-len", "6"])
            .args([
                "--num-prompts",
                "6",
                "--output-len",
                "2",
                "--ignore-eos",
                "--json",
            ]),
    );
    assert_eq!(
        (mixed["completed"].as_u64(), mixed["failed"].as_u64()),
        (Some(6), Some(0)),
        "{mixed}"
    );
    assert_eq!(mixed["total_output_tokens"], 12, "{mixed}");
    let out = dvd()
        .args(["bench", "serve", "--url", &format!("http://{}/v1", up.http)])
        .args(["--images-per-request", "1:2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a range needs --dataset random-mm"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A sweep over two rates: one report per rate, and the plots.
    let plots = dir.path().join("plots");
    let sweep = json_output(
        dvd()
            .args(["bench", "serve", "--url", &format!("http://{}/v1", up.http)])
            .args([
                "--num-prompts",
                "2",
                "--request-rate",
                "10,20",
                "--image-sizes",
                "64",
            ])
            .args(["--output-len", "2", "--ignore-eos", "--json", "--plot-dir"])
            .arg(&plots),
    );
    let runs = sweep.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{sweep}");
    assert_eq!(
        (
            runs[0]["request_rate"].as_f64(),
            runs[1]["completed"].as_u64()
        ),
        (Some(10.0), Some(2))
    );
    for name in ["ttft_cdf.svg", "e2el_cdf.svg", "throughput_vs_rate.svg"] {
        let svg = std::fs::read_to_string(plots.join(name)).unwrap();
        assert!(svg.starts_with("<svg"), "{name}");
    }
    // The same load through the public gRPC API (the gateway's next port).
    let (host, port) = up.http.rsplit_once(':').unwrap();
    let grpc = format!("http://{host}:{}", port.parse::<u16>().unwrap() + 1);
    let report = json_output(
        dvd()
            .args(["bench", "serve", "--api", "grpc", "--url", &grpc])
            .args([
                "--num-prompts",
                "3",
                "--image-sizes",
                "64",
                "--output-len",
                "4",
                "--ignore-eos",
                "--json",
            ]),
    );
    assert_eq!(
        (report["completed"].as_u64(), report["failed"].as_u64()),
        (Some(3), Some(0)),
        "{report}"
    );
    assert_eq!(report["total_output_tokens"], 12, "{report}");
    assert!(
        report["total_image_tokens"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["mean_ttft_ms"].as_f64().unwrap() > 0.0, "{report}");
    // Nothing listens here: every request fails with a reason, and the command still reports.
    let report = json_output(
        dvd()
            .args([
                "bench",
                "serve",
                "--url",
                "http://127.0.0.1:9/v1",
                "--model",
                "m",
            ])
            .args([
                "--num-prompts",
                "2",
                "--image-sizes",
                "32",
                "--json",
                "--timeout-s",
                "5",
            ]),
    );
    assert_eq!(
        (report["completed"].as_u64(), report["failed"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(
        report["errors"][0].as_str().unwrap().contains("connecting"),
        "{report}"
    );
}

#[test]
fn dvd_up_answers_like_dvd_generate_over_tcp() {
    let up = up(&[]);
    same_answer_as_dvd_generate(&up);
    bench_serve_measures_a_live_deployment(&up);
    // `dvd chat` streams the same answer.
    let want = coupled("What is shown in the picture?", true, 12);
    let out = dvd()
        .args(["chat", "--url", &format!("http://{}", up.http), "--image"])
        .arg(image())
        .args([
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "What is shown in the picture?",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.strip_suffix('\n').unwrap(),
        want["text"].as_str().unwrap()
    );
    let refused = dvd()
        .args([
            "chat",
            "--url",
            &format!("http://{}", up.http),
            "--model",
            "nope",
            "hi",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("404"));
}

#[test]
fn dvd_up_over_two_ranks_answers_like_dvd_generate() {
    // Each language server splits the MoE model over two CPU ranks: every expert's width, then
    // whole experts per rank.
    same_answer_as_dvd_generate(&up(&["--tensor-parallel-size", "2"]));
    same_answer_as_dvd_generate(&up(&["--tensor-parallel-size", "2", "--expert-parallel"]));
}

#[test]
fn dvd_up_answers_like_dvd_generate_over_quic() {
    let up = up(&["--transport", "quic", "--vision", "2"]);
    same_answer_as_dvd_generate(&up);
}

#[test]
fn the_public_grpc_api_streams_the_same_answer() {
    use dvd_proto::api::v1::{
        ChatRequest, ContentPart, HealthRequest, Image, ListModelsRequest, Message, chat_event,
        content_part, image,
    };
    use dvd_proto::common::v1::{FinishReason, SamplingParams, ServingStatus};
    use dvd_proto::limits::{inference_client, tuned_endpoint};

    // Language servers found through a DNS name (localhost), vision servers by address.
    let d = deployment_with(1, "", true);
    let want = coupled("What is shown in the picture?", true, 12);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tuned_endpoint(&d.grpc).unwrap().connect().await.unwrap();
        let mut client = inference_client(channel);
        let health = client.health(HealthRequest {}).await.unwrap().into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32);
        assert_eq!(
            (health.vision_servers_ready, health.language_servers_ready),
            (1, 1)
        );
        let models = client
            .list_models(ListModelsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(models.models[0].id, MODEL);
        let request = ChatRequest {
            model: MODEL.into(),
            messages: vec![Message {
                role: "user".into(),
                content: vec![
                    ContentPart {
                        part: Some(content_part::Part::Image(Image {
                            source: Some(image::Source::Data(
                                std::fs::read(image()).unwrap().into(),
                            )),
                            max_tiles: None,
                        })),
                    },
                    ContentPart {
                        part: Some(content_part::Part::Text(
                            "What is shown in the picture?".into(),
                        )),
                    },
                ],
            }],
            sampling: Some(SamplingParams {
                max_tokens: 12,
                ..Default::default()
            }),
            user: String::new(),
            request_id: None,
            return_token_ids: true,
        };
        let mut stream = client.chat(request).await.unwrap().into_inner();
        let (mut text, mut ids, mut done) = (String::new(), Vec::new(), None);
        while let Some(event) = stream.message().await.unwrap() {
            match event.event.unwrap() {
                chat_event::Event::Delta(d) => {
                    text.push_str(&d.content);
                    ids.extend(d.token_ids);
                }
                chat_event::Event::Done(d) => done = Some(d),
            }
        }
        assert_eq!(text, want["text"].as_str().unwrap());
        let want_ids: Vec<u32> = serde_json::from_value(want["token_ids"].clone()).unwrap();
        assert_eq!(ids, want_ids);
        let done = done.unwrap();
        assert_eq!(done.finish_reason, FinishReason::Length as i32);
        let timings = done.timings.unwrap();
        assert!(timings.vision_us > 0 && timings.time_to_first_token_us > 0);
        // A bad request is a gRPC status, not a hang.
        let err = client
            .chat(ChatRequest {
                model: "other".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        reflection_describes_the_public_api(&d.grpc).await;
    });
}

/// gRPC reflection on the gateway's listener, as `grpcurl` uses it: the public service is the
/// only one listed, and its file (with the files it imports) describes `Chat`; the internal
/// contracts are not served.
async fn reflection_describes_the_public_api(grpc: &str) {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let channel = dvd_proto::limits::tuned_endpoint(grpc)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| {
        let mut client = client.clone();
        async move {
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            let mut answers = client
                .server_reflection_info(tokio_stream::iter(vec![request]))
                .await
                .unwrap()
                .into_inner();
            // An unknown symbol may come as a status instead of an error response.
            answers
                .message()
                .await
                .map(|m| m.unwrap().message_response.unwrap())
        }
    };
    let MessageResponse::ListServicesResponse(list) =
        ask(MessageRequest::ListServices(String::new()))
            .await
            .unwrap()
    else {
        panic!("no service list");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["dvd.api.v1.InferenceService"]);
    let MessageResponse::FileDescriptorResponse(files) = ask(MessageRequest::FileContainingSymbol(
        "dvd.api.v1.InferenceService".into(),
    ))
    .await
    .unwrap() else {
        panic!("no file for the public service");
    };
    let described = files
        .file_descriptor_proto
        .iter()
        .any(|bytes| bytes.windows(4).any(|w| w == b"Chat"));
    assert!(described, "the service's file does not describe Chat");
    let internal = ask(MessageRequest::FileContainingSymbol(
        "dvd.vision.v1.VisionService".into(),
    ))
    .await;
    assert!(
        matches!(&internal, Ok(MessageResponse::ErrorResponse(_)))
            || matches!(&internal, Err(s) if s.code() == tonic::Code::NotFound),
        "{internal:?}"
    );
}

/// A deployment built by hand so the test can kill its parts.
struct Deployment {
    vision: Vec<ServerProcess>,
    language: ServerProcess,
    _gateway: ServerProcess,
    http: String,
    grpc: String,
    _dir: tempfile::TempDir,
}

fn deployment(vision_servers: usize, limits: &str) -> Deployment {
    deployment_with(vision_servers, limits, false)
}

fn deployment_with(vision_servers: usize, limits: &str, language_by_dns: bool) -> Deployment {
    let model_dir = language_fixture(MODEL);
    let language = start_language(&model_dir, 64, &[]);
    let model = model_dir.to_str().unwrap();
    let vision: Vec<ServerProcess> = (0..vision_servers)
        .map(|_| start_vision(model, "127.0.0.1:0", &[]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_pair();
    let config = format!(
        "[server]\nhttp = \"127.0.0.1:{port}\"\ngrpc = \"127.0.0.1:{}\"\nmodel = \"{MODEL}\"\n\
         [vision]\naddresses = {:?}\n[language]\n{} = [\"{}\"]\n\
         [health]\ninterval_ms = 60000\n[limits]\n{limits}\n",
        port + 1,
        vision.iter().map(|v| v.field("grpc")).collect::<Vec<_>>(),
        if language_by_dns { "dns" } else { "addresses" },
        if language_by_dns {
            language.field("grpc").replace("127.0.0.1", "localhost")
        } else {
            language.field("grpc")
        },
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let gateway = ServerProcess::start(&["gateway", "serve", "--config", path.to_str().unwrap()]);
    let http = gateway.field("http");
    let grpc = gateway.field("grpc");
    wait_healthy(&http);
    Deployment {
        vision,
        language,
        _gateway: gateway,
        http,
        grpc,
        _dir: dir,
    }
}

#[test]
fn a_dead_vision_server_is_retried_around_and_a_dead_language_server_fails_fast() {
    let mut d = deployment(2, "attempts = 3\nfeature_timeout_ms = 5000");
    let png = std::fs::read(image()).unwrap();
    // The gateway checks health only every minute, so it still believes both vision servers are
    // up: requests routed to the dead one must be retried on the other.
    d.vision[0].kill();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let http_addr = d.http.clone();
                let png = png.clone();
                s.spawn(move || {
                    // Different images spread over both servers (image-hash affinity).
                    let mut bytes = png.clone();
                    bytes.extend_from_slice(&[0u8; 16][..i]);
                    let r = http(
                        &http_addr,
                        "POST",
                        "/v1/chat/completions",
                        &chat_body("Describe it", Some(&bytes), 4, false),
                    );
                    assert!(r.status == 200, "{}", r.body);
                    r.status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // (12 different images: the odds that none was routed to the dead server are 1 in 4096.)
    assert_eq!(statuses, vec![200; 12]);
    let metrics = http(&d.http, "GET", "/metrics", b"").body;
    assert!(
        !metrics.contains("dvd_gateway_retries_total 0\n"),
        "no request was retried: {metrics}"
    );

    // Without its language server the gateway answers promptly with an error, not a hang.
    d.language.kill();
    let started = Instant::now();
    let r = http(
        &d.http,
        "POST",
        "/v1/chat/completions",
        &chat_body("Hi", None, 4, false),
    );
    assert!(matches!(r.status, 502 | 503), "{} {}", r.status, r.body);
    assert!(r.json()["error"]["message"].is_string());
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// An HTTP server on 127.0.0.1 that answers every request with `body`; counts the requests.
fn serve_image(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    // Detached: it ends with the test process.
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    (addr, served)
}

#[test]
fn image_urls_are_fetched_under_the_policy_and_answer_like_inline_images() {
    let png = std::fs::read(image()).unwrap();
    let (image_server, served) = serve_image(png);
    // The image server is on loopback: this deployment lets the gateway fetch from 127.0.0.1
    // (plain http, for the test) and nowhere else inside.
    let d = deployment(
        1,
        "attempts = 3\n[images]\nfetch_allow_http = true\n\
         fetch_allowed_networks = [\"127.0.0.1/32\"]",
    );
    let ask = |url: &str| {
        let body = serde_json::to_vec(&json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "What is shown in the picture?"},
            ]}],
            "max_tokens": 12,
            "temperature": 0,
        }))
        .unwrap();
        http(&d.http, "POST", "/v1/chat/completions", &body)
    };
    let want = coupled("What is shown in the picture?", true, 12);
    let r = ask(&format!("http://{image_server}/picture.png"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], want["text"]);
    assert_eq!(served.load(Ordering::SeqCst), 1);
    // Still refused: other loopback addresses, the metadata service, private networks.
    let port = image_server.rsplit(':').next().unwrap();
    for (url, why) in [
        (format!("http://127.0.0.2:{port}/x.png"), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "link-local",
        ),
        ("http://10.1.2.3/x.png".into(), "private"),
    ] {
        let r = ask(&url);
        assert_eq!(r.status, 400, "{url}: {}", r.body);
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(why), "{url}: {message}");
    }
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "a refused URL reached the server"
    );
}

#[test]
fn bad_input_gets_openai_style_errors_and_overload_gets_429() {
    let d = deployment(1, "max_inflight = 1");
    let post = |body: &[u8]| http(&d.http, "POST", "/v1/chat/completions", body);
    let check = |r: common::HttpResponse, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(needle), "{message}");
    };
    check(post(b"{not json"), 400, "");
    check(
        post(format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,@@@"}}}},{{"type":"text","text":"x"}}]}}]}}"#).as_bytes()),
        400,
        "base64",
    );
    check(
        post(&chat_body("x", Some(b"definitely not an image"), 4, false)),
        400,
        "image 0",
    );
    check(
        post(br#"{"model":"other","messages":[{"role":"user","content":"x"}]}"#),
        404,
        "other",
    );
    check(
        post(format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"https://169.254.169.254/latest/meta-data/"}}}}]}}]}}"#).as_bytes()),
        400,
        "link-local",
    );

    // One request in flight (a long streamed answer) fills the gateway: the next gets 429.
    let addr = d.http.clone();
    let mut long = std::net::TcpStream::connect(&addr).unwrap();
    let body = chat_body("Tell me a story", None, 2000, true);
    use std::io::{Read, Write};
    write!(
        long,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    long.write_all(&body).unwrap();
    let mut first = [0u8; 64];
    let _ = long.read(&mut first).unwrap(); // the stream has started
    let r = post(&chat_body("Hi", None, 4, false));
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    // Hanging up frees the slot (the request is cancelled on the language server).
    drop(long);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post(&chat_body("Hi", None, 4, false));
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {}", r.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}
