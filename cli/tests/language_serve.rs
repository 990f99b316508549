//! `dvd language serve` as operators run it: a real process, gRPC on one socket, features from a
//! real TCP or QUIC sender on another. Streamed features give the tokens of the coupled
//! `dvd generate`; bad requests, missing or misshapen features, cancels and disconnects each end
//! their own request cleanly and free what it held.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dvd_proto::common::v1::{FinishReason, SamplingParams, ServingStatus};
use dvd_proto::language::v1::language_service_client::LanguageServiceClient;
use dvd_proto::language::v1::{
    CancelRequest, GenerateDone, GenerateRequest, HealthRequest, StatsRequest, StatsResponse,
    content_part, generate_event, generate_request,
};
use dvd_proto::limits::{language_client, tuned_endpoint};
use dvd_transport::quic::ClientTls;
use dvd_transport::{
    Destination, RequestId, SenderConfig, Tile, TilePosition, TlsOptions, TransportKind,
};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::common;

use common::{
    ServerProcess, coupled_generate, encoded_tiles, image_generate_request, language_fixture,
    start_language,
};

const PROMPT: &str = "What is shown in the picture?";

/// A `dvd language serve` process on ports chosen at run time.
struct Server {
    _process: ServerProcess,
    grpc: String,
    features: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Self {
        let process = start_language(model, 16, extra);
        Self {
            grpc: process.field("grpc"),
            features: process.field("features"),
            _process: process,
        }
    }

    async fn client(&self) -> LanguageServiceClient<Channel> {
        let channel = tuned_endpoint(&self.grpc).unwrap().connect().await.unwrap();
        language_client(channel)
    }
}

/// `dvd encode`'s features of the fixture image as transport tiles (BF16 on the wire).
fn tiles(model: &Path) -> Vec<Tile> {
    let (tiles, hidden) = encoded_tiles(model, &[]);
    let count = tiles.len() as u16;
    tiles
        .iter()
        .enumerate()
        .map(|(i, rows)| {
            let position = TilePosition {
                image_index: 0,
                image_count: 1,
                tile_index: i as u16,
                tile_count: count,
            };
            let tokens = (rows.len() / hidden) as u32;
            Tile::from_bf16(position, tokens, hidden as u32, rows).unwrap()
        })
        .collect()
}

/// Sends `tiles` for `request` to `server`'s feature listener.
async fn send_tiles(
    server: &Server,
    kind: TransportKind,
    tls: &TlsOptions,
    request: RequestId,
    tiles: Vec<Tile>,
) -> dvd_transport::Result<()> {
    let sender = dvd_transport::connect(kind, SenderConfig::default(), tls)?;
    let mut destination = Destination::new(server.features.clone());
    destination.server_name = Some("localhost".into());
    let mut stream = sender.open(&destination, request).await?;
    for tile in tiles {
        stream.send(tile).await?;
    }
    stream.finish().await.map(|_| ())
}

/// `dvd generate --json` on the same image and prompt, features rounded as on the wire.
fn coupled_tokens(model: &Path, max_new: u32) -> (Vec<u32>, usize) {
    let report = coupled_generate(model, PROMPT, true, max_new);
    let tokens = serde_json::from_value(report["token_ids"].clone()).unwrap();
    (tokens, report["prompt_tokens"].as_u64().unwrap() as usize)
}

fn greedy(max_tokens: u32) -> Option<SamplingParams> {
    Some(SamplingParams {
        max_tokens,
        ..Default::default()
    })
}

fn image_request(id: RequestId, max_tokens: u32) -> GenerateRequest {
    image_generate_request(
        &id,
        PROMPT,
        bytes::Bytes::from_static(b"fixture image"),
        max_tokens,
    )
}

fn text_request(id: RequestId, text: &str, sampling: Option<SamplingParams>) -> GenerateRequest {
    GenerateRequest {
        request_id: id.to_string(),
        prompt: Some(generate_request::Prompt::Raw(text.into())),
        images: Vec::new(),
        sampling,
        feature_timeout_ms: 0,
        return_token_ids: true,
    }
}

/// Reads a `Generate` stream to its end: token ids, text and the final summary.
async fn collect(
    mut stream: Streaming<dvd_proto::language::v1::GenerateEvent>,
) -> Result<(Vec<u32>, String, GenerateDone), tonic::Status> {
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(event) = stream.message().await? {
        match event.event.unwrap() {
            generate_event::Event::Delta(d) => {
                ids.extend(d.token_ids);
                text.push_str(&d.text);
            }
            generate_event::Event::Done(done) => {
                assert!(stream.message().await?.is_none(), "events after Done");
                return Ok((ids, text, done));
            }
        }
    }
    panic!("stream ended without Done");
}

async fn stats(client: &mut LanguageServiceClient<Channel>) -> StatsResponse {
    client.stats(StatsRequest {}).await.unwrap().into_inner()
}

/// Polls `Stats` until `ok` holds (or fails after 10 s).
async fn wait_for_stats(
    client: &mut LanguageServiceClient<Channel>,
    ok: impl Fn(&StatsResponse) -> bool,
) -> StatsResponse {
    for _ in 0..200 {
        let s = stats(client).await;
        if ok(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stats never settled: {:?}", stats(client).await);
}

async fn features_give_the_coupled_tokens(
    model: &Path,
    kind: TransportKind,
    server_args: &[&str],
    tls: TlsOptions,
) {
    let (want, prompt_tokens) = coupled_tokens(model, 8);
    let tiles = tiles(model);
    let server = Server::start(model, server_args);
    let mut client = server.client().await;
    let id = RequestId::random();
    let stream = client
        .generate(image_request(id, 8))
        .await
        .unwrap()
        .into_inner();
    send_tiles(&server, kind, &tls, id, tiles).await.unwrap();
    let (got, text, done) = collect(stream).await.unwrap();
    assert_eq!(got, want, "{kind}");
    assert!(!text.is_empty());
    assert_eq!(done.finish_reason, FinishReason::Length as i32);
    let usage = done.usage.unwrap();
    assert_eq!(usage.prompt_tokens as usize, prompt_tokens);
    assert_eq!(usage.completion_tokens, 8);
    assert_eq!(usage.image_tokens, 28);
    let timings = done.timings.unwrap();
    assert!(timings.total_us >= timings.time_to_first_token_us);
    assert!(timings.decode_us > 0 && timings.prefill_us > 0);

    // The same image again: its blocks come from the prefix cache, the tokens do not change.
    let again = RequestId::random();
    let stream = client
        .generate(image_request(again, 8))
        .await
        .unwrap()
        .into_inner();
    send_tiles(&server, kind, &tls, again, self::tiles(model))
        .await
        .unwrap();
    let (got, _, done) = collect(stream).await.unwrap();
    assert_eq!(got, want);
    assert!(done.usage.unwrap().cached_prompt_tokens >= 16);
    let s = stats(&mut client).await;
    assert!(s.prefix_cache_hit_rate > 0.0, "{s:?}");
    assert_eq!((s.running_sequences, s.waiting_sequences), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_features_give_the_tokens_of_dvd_generate() {
    // GitHub-format MoE checkpoint: InternVL conversation template.
    let model = language_fixture("internvl-moe-custom-bf16");
    features_give_the_coupled_tokens(&model, TransportKind::Tcp, &[], TlsOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_features_give_the_tokens_of_dvd_generate() {
    // HF-format dense checkpoint: its own chat template. Real TLS with a generated identity.
    let model = language_fixture("internvl-dense-hf");
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_dvd"))
        .args(["tls", "self-signed", "--out"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let tls = TlsOptions {
        server: None,
        client: Some(ClientTls::from_ca_file(&cert).unwrap()),
    };
    let args = common::quic_tls_args(cert.to_str().unwrap(), key.to_str().unwrap());
    features_give_the_coupled_tokens(&model, TransportKind::Quic, &args, tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_features_fail_only_themselves() {
    let model = language_fixture("internvl-dense-hf");
    let server = Server::start(&model, &["--feature-timeout-ms", "20000"]);
    let mut client = server.client().await;
    let code = |r: Result<tonic::Response<Streaming<_>>, tonic::Status>| match r {
        Ok(_) => panic!("accepted"),
        Err(s) => (s.code(), s.message().to_owned()),
    };

    // Malformed ids, image references and prompts are refused before anything is queued.
    let mut bad_id = image_request(RequestId::random(), 4);
    bad_id.request_id = "not-hex".into();
    let (c, m) = code(client.generate(bad_id).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("request_id"), "{m}");

    let mut unknown_image = image_request(RequestId::random(), 4);
    let Some(generate_request::Prompt::Chat(chat)) = &mut unknown_image.prompt else {
        unreachable!()
    };
    chat.messages[0].parts[0].part = Some(content_part::Part::ImageIndex(3));
    let (c, m) = code(client.generate(unknown_image).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("image 3"), "{m}");

    let mut placeholders = text_request(RequestId::random(), "<image> and <image>", greedy(2));
    placeholders.images = image_request(RequestId::random(), 1).images;
    let (c, m) = code(client.generate(placeholders).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("placeholder"), "{m}");

    let long = "word ".repeat(5000);
    let (c, m) = code(
        client
            .generate(text_request(RequestId::random(), &long, greedy(2)))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("context"), "{m}");

    let bad_sampling = Some(SamplingParams {
        temperature: -2.0,
        ..Default::default()
    });
    let (c, m) = code(
        client
            .generate(text_request(RequestId::random(), "hi", bad_sampling))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("temperature"), "{m}");

    // Features as wide as another model's hidden size fail that request when they arrive.
    let wide = RequestId::random();
    let stream = client
        .generate(image_request(wide, 4))
        .await
        .unwrap()
        .into_inner();
    let position = TilePosition {
        image_index: 0,
        image_count: 1,
        tile_index: 0,
        tile_count: 1,
    };
    let values = vec![half::bf16::from_f32(0.5); 4 * 48];
    let tile = Tile::from_bf16(position, 4, 48, &values).unwrap();
    let _ = send_tiles(
        &server,
        TransportKind::Tcp,
        &TlsOptions::default(),
        wide,
        vec![tile],
    )
    .await;
    let err = collect(stream).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hidden size"), "{err}");

    // A request id already in flight is refused; features that never come time out.
    let late = RequestId::random();
    let mut request = image_request(late, 4);
    request.feature_timeout_ms = 300;
    let stream = client.generate(request.clone()).await.unwrap().into_inner();
    let (c, _) = code(client.generate(request).await);
    assert_eq!(c, Code::AlreadyExists);
    let err = collect(stream).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(err.message().contains("did not all arrive"), "{err}");

    // Nothing is left behind, and the server still serves.
    let s = wait_for_stats(&mut client, |s| {
        s.running_sequences == 0 && s.waiting_sequences == 0 && s.kv_blocks_used == 0
    })
    .await;
    assert_eq!(s.waiting_for_features, 0);
    let (ids, _, done) = collect(
        client
            .generate(text_request(RequestId::random(), "Hello", greedy(3)))
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(done.finish_reason, FinishReason::Length as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_disconnect_free_blocks_at_once() {
    let model = language_fixture("qwen3-tied-f16");
    let server = Server::start(&model, &[]);
    let mut client = server.client().await;
    let endless = || {
        Some(SamplingParams {
            max_tokens: 3000,
            ignore_eos: true,
            ..Default::default()
        })
    };
    let prompt = "Tell me a long story.";

    let id = RequestId::random();
    let mut stream = client
        .generate(text_request(id, prompt, endless()))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let busy = stats(&mut client).await;
    assert_eq!(busy.running_sequences, 1);
    assert!(busy.kv_blocks_used * busy.kv_block_size >= 3000, "{busy:?}");
    let found = client
        .cancel(CancelRequest {
            request_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .found;
    assert!(found);
    // The stream ends with a cancelled Done.
    let done = loop {
        match stream.message().await.unwrap().unwrap().event.unwrap() {
            generate_event::Event::Done(done) => break done,
            generate_event::Event::Delta(_) => {}
        }
    };
    assert_eq!(done.finish_reason, FinishReason::Cancelled as i32);
    // Only the prompt's cached blocks (at most one here) remain.
    let s = wait_for_stats(&mut client, |s| s.running_sequences == 0).await;
    assert!(s.kv_blocks_used <= 1, "{s:?}");
    let again = client
        .cancel(CancelRequest {
            request_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.found);

    // A client that goes away mid-stream frees its request too.
    let mut stream = client
        .generate(text_request(RequestId::random(), prompt, endless()))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    drop(stream);
    let s = wait_for_stats(&mut client, |s| s.running_sequences == 0).await;
    assert!(s.kv_blocks_used <= 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_match_alone_and_health_reports_the_engine() {
    let model = language_fixture("qwen3-tied-f16");
    let server = Server::start(&model, &["--max-step-tokens", "8"]);
    let mut client = server.client().await;
    let health = client.health(HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    assert_eq!(health.feature_address, server.features);
    assert!(health.hidden_size > 0);

    let prompts = [
        "Describe this image in detail.",
        "Hello",
        "Why is the sky blue? Explain step by step.",
    ];
    let mut alone = Vec::new();
    for p in prompts {
        let stream = client
            .generate(text_request(RequestId::random(), p, greedy(12)))
            .await
            .unwrap()
            .into_inner();
        alone.push(collect(stream).await.unwrap().0);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, p) in prompts.into_iter().enumerate() {
        let mut client = client.clone();
        tasks.spawn(async move {
            let stream = client
                .generate(text_request(RequestId::random(), p, greedy(12)))
                .await
                .unwrap()
                .into_inner();
            (i, collect(stream).await.unwrap().0)
        });
    }
    let mut together = tasks.join_all().await;
    together.sort();
    let together: Vec<Vec<u32>> = together.into_iter().map(|(_, ids)| ids).collect();
    assert_eq!(together, alone);
    let s = stats(&mut client).await;
    assert!(s.generation_tokens_per_second > 0.0, "{s:?}");
    assert!(s.prompt_tokens_per_second > 0.0, "{s:?}");
    assert_eq!(s.kv_block_size, 16);
    assert!(s.kv_blocks_total > 0);
    assert_eq!(s.outstanding_tokens, 0);
}

/// A server sizes its compute pool to the cores it may use: one when pinned to one core (candle
/// alone would count the machine's physical cores, re-reading /proc/cpuinfo on every matmul).
#[test]
fn the_compute_pool_matches_the_cores_a_server_may_use() {
    let pinned = start_language(language_fixture("internvl-dense-hf"), 16, &["--cpus", "0"]);
    assert_eq!(pinned.ready["compute_threads"], 1);
    let free = start_language(language_fixture("internvl-dense-hf"), 16, &[]);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(free.ready["compute_threads"], cores);
}
