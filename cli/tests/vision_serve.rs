//! `dvd vision serve` as operators run it: a real process encoding images and streaming the
//! features over real sockets, to an inbox in this test or to a real `dvd language serve`.
//! Features arrive bit-identical to `dvd encode`; batching across requests and the embedding
//! cache do not change them; bad input, a full queue and a receiver that dies each fail only
//! their own request.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{ServerProcess, encoded_tiles, image, language_fixture, start_vision, vision_fixture};
use dvd_proto::common::v1::{FinishReason, ServingStatus};
use dvd_proto::feature::v1::{FeatureDestination, Transport};
use dvd_proto::language::v1::generate_event;
use dvd_proto::limits::{language_client, tuned_endpoint, vision_client};
use dvd_proto::vision::v1::vision_service_client::VisionServiceClient;
use dvd_proto::vision::v1::{
    EncodeDone, EncodeRequest, HealthRequest, ImageInput, ImagePlanned, PreprocessOptions,
    StatsRequest, StatsResponse, TileSent, VideoOptions, encode_event, image_input,
};
use dvd_transport::{
    InboxConfig, InboxRegistry, ListenerConfig, RequestId, TlsOptions, TransportKind,
};
use dvd_vision_server::video::clips::h264_clip;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// A `dvd vision serve` process.
struct Vision {
    _process: ServerProcess,
    grpc: String,
}

impl Vision {
    fn start(model: &std::path::Path, extra: &[&str]) -> Self {
        let process = start_vision(model, "127.0.0.1:0", extra);
        Self {
            grpc: process.field("grpc"),
            _process: process,
        }
    }

    async fn client(&self) -> VisionServiceClient<Channel> {
        vision_client(tuned_endpoint(&self.grpc).unwrap().connect().await.unwrap())
    }
}

/// A feature inbox in this process: a real TCP listener over a real registry.
struct Inbox {
    registry: InboxRegistry,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Inbox {
    async fn start() -> Self {
        let registry = InboxRegistry::new(InboxConfig::default());
        let listener = dvd_transport::listen(
            TransportKind::Tcp,
            "127.0.0.1:0".parse().unwrap(),
            registry.clone(),
            ListenerConfig::default(),
            &TlsOptions::default(),
        )
        .await
        .unwrap();
        let addr = listener.local_addr();
        let stop = CancellationToken::new();
        let token = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(listener.serve(token)).unwrap();
        });
        Self {
            registry,
            addr,
            stop,
        }
    }

    /// Every tile of `request`, in order, as BF16 values.
    async fn receive(&self, mut inbox: dvd_transport::Inbox) -> Vec<Vec<half::bf16>> {
        let mut tiles = Vec::new();
        while let Some(tile) = tokio::time::timeout(Duration::from_secs(30), inbox.next_tile())
            .await
            .unwrap()
            .unwrap()
        {
            tiles.push(tile.to_bf16());
        }
        tiles
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn png() -> Bytes {
    Bytes::from(std::fs::read(image()).unwrap())
}

fn request(id: RequestId, to: &str, images: Vec<Bytes>) -> EncodeRequest {
    EncodeRequest {
        request_id: id.to_string(),
        images: images
            .into_iter()
            .map(|data| ImageInput {
                source: Some(image_input::Source::Data(data)),
                content_hash: None,
                video: None,
            })
            .collect(),
        options: None,
        destination: Some(FeatureDestination {
            address: to.to_owned(),
            transport: Transport::Tcp as i32,
            server_name: String::new(),
        }),
    }
}

/// The events of one `Encode` call.
#[derive(Debug, Default)]
struct Events {
    planned: Vec<ImagePlanned>,
    tiles: Vec<TileSent>,
    done: Option<EncodeDone>,
}

async fn encode(
    client: &mut VisionServiceClient<Channel>,
    request: EncodeRequest,
) -> Result<Events, tonic::Status> {
    let mut stream = client.encode(request).await?.into_inner();
    let mut events = Events::default();
    while let Some(event) = stream.message().await? {
        match event.event.unwrap() {
            encode_event::Event::Planned(p) => events.planned.push(p),
            encode_event::Event::Tile(t) => events.tiles.push(t),
            encode_event::Event::Done(d) => events.done = Some(d),
        }
    }
    assert!(events.done.is_some(), "stream ended without EncodeDone");
    Ok(events)
}

async fn stats(client: &mut VisionServiceClient<Channel>) -> StatsResponse {
    client.stats(StatsRequest {}).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_arrive_bit_identical_to_dvd_encode_and_cache_hits_skip_the_encoder() {
    let model = vision_fixture("flash-custom");
    let (want, _) = encoded_tiles(&model, &["--vir", "off"]);
    // One batch for the image's 7 tiles, as `dvd encode` runs them: bit-identity across batch
    // sizes does not hold for a 1-tile batch (the CPU default).
    let vision = Vision::start(&model, &["--max-batch-tiles", "8"]);
    let mut client = vision.client().await;
    let health = client.health(HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    let inbox = Inbox::start().await;
    let to = inbox.addr.to_string();

    let mut first = None;
    for round in 0..2 {
        let id = RequestId::random();
        let registered = inbox.registry.register(id, Some(1)).unwrap();
        let mut req = request(id, &to, vec![png()]);
        req.options = Some(PreprocessOptions {
            vir: Some(false),
            ..Default::default()
        });
        let (events, got) = tokio::join!(encode(&mut client, req), inbox.receive(registered));
        let events = events.unwrap();
        assert_eq!(got, want, "round {round}");
        assert_eq!(events.planned.len(), 1);
        assert_eq!(events.planned[0].tile_count, 7);
        assert_eq!(events.planned[0].cache_hit, round == 1);
        assert_eq!(events.tiles.len(), 7);
        let done = events.done.unwrap();
        assert_eq!(done.total_tiles, 7);
        assert_eq!(done.images[0].tokens_per_tile, vec![4; 7]);
        let s = stats(&mut client).await;
        // The second round was a cache hit: the encoder did not run again.
        assert_eq!(s.encoded_tiles_total, 7, "round {round}");
        assert_eq!((s.cache_hits, s.cache_misses), (round, 1));
        first.get_or_insert(events.planned[0].content_hash.clone());
    }
    assert_eq!(stats(&mut client).await.cache_entries, 1);

    // The router (Flash checkpoint) compresses some tiles; still identical to `dvd encode`.
    let (routed, _) = encoded_tiles(&model, &["--vir", "on"]);
    let id = RequestId::random();
    let registered = inbox.registry.register(id, Some(1)).unwrap();
    let mut req = request(id, &to, vec![png()]);
    req.options = Some(PreprocessOptions {
        vir: Some(true),
        ..Default::default()
    });
    let (events, got) = tokio::join!(encode(&mut client, req), inbox.receive(registered));
    assert_eq!(got, routed);
    let per_tile = &events.unwrap().done.unwrap().images[0].tokens_per_tile;
    assert!(
        per_tile.contains(&1) && per_tile.contains(&4),
        "{per_tile:?}"
    );
}

/// A video input sampled at `frames` frames.
fn video(data: Bytes, frames: u32) -> ImageInput {
    ImageInput {
        source: Some(image_input::Source::Data(data)),
        content_hash: None,
        video: Some(VideoOptions {
            num_frames: frames,
            max_tiles: 0,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_arrives_as_its_sampled_frames_bit_identical_to_dvd_encode() {
    let model = vision_fixture("flash-custom");
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), 96, 72).unwrap();
    let clip_bytes = Bytes::from(std::fs::read(&clip).unwrap());
    // The image's 7 tiles, then the 4 frames' one tile each, in one batch as `dvd encode` runs
    // them.
    let (want, _) = encoded_tiles(
        &model,
        &[
            "--vir",
            "off",
            "--video",
            clip.to_str().unwrap(),
            "--num-frames",
            "4",
        ],
    );
    assert_eq!(want.len(), 7 + 4);
    // A queue of 4 tiles: a request of 11 is still admitted into an empty one.
    let vision = Vision::start(
        &model,
        &["--max-batch-tiles", "16", "--max-queued-tiles", "4"],
    );
    let mut client = vision.client().await;
    let inbox = Inbox::start().await;
    let to = inbox.addr.to_string();
    let vir_off = Some(PreprocessOptions {
        vir: Some(false),
        ..Default::default()
    });

    let id = RequestId::random();
    let registered = inbox.registry.register(id, Some(5)).unwrap();
    let mut req = request(id, &to, vec![png()]);
    req.images.push(video(clip_bytes.clone(), 4));
    req.options = vir_off;
    let (events, got) = tokio::join!(encode(&mut client, req), inbox.receive(registered));
    let events = events.unwrap();
    assert_eq!(got, want, "image and frames, bit for bit");
    // 96 frames, 4 segments: the model card's get_index gives 11, 35, 59, 82.
    let numbers: Vec<Option<u64>> = events.planned.iter().map(|p| p.frame_number).collect();
    assert_eq!(numbers, [None, Some(11), Some(35), Some(59), Some(82)]);
    let indices: Vec<u32> = events.planned.iter().map(|p| p.image_index).collect();
    assert_eq!(indices, [0, 1, 2, 3, 4]);
    assert!(
        events.planned[1..]
            .iter()
            .all(|p| p.tile_count == 1 && !p.thumbnail)
    );
    assert_eq!(events.done.unwrap().images.len(), 5);

    // The same frames again, alone: each is found in the embedding cache by its content.
    let encoded_before = stats(&mut client).await.encoded_tiles_total;
    let id = RequestId::random();
    let registered = inbox.registry.register(id, Some(4)).unwrap();
    let mut req = request(id, &to, vec![]);
    req.images.push(video(clip_bytes.clone(), 4));
    req.options = vir_off;
    let (events, got) = tokio::join!(encode(&mut client, req), inbox.receive(registered));
    let events = events.unwrap();
    assert_eq!(got, want[7..], "the frames from the cache");
    assert!(events.planned.iter().all(|p| p.cache_hit));
    assert_eq!(stats(&mut client).await.encoded_tiles_total, encoded_before);

    // Bad videos fail their own request with INVALID_ARGUMENT naming the input.
    let refused = |data: Bytes, frames: u32| {
        let mut req = request(RequestId::random(), &to, vec![png()]);
        req.images.push(video(data, frames));
        req
    };
    for (data, frames, says) in [
        (
            Bytes::from_static(&[9; 2048]),
            4,
            "video 1: not a readable video",
        ),
        (
            clip_bytes.clone(),
            65,
            "image 1: a video of 65 frames; at most 64",
        ),
        (Bytes::new(), 4, "video 1"),
    ] {
        let status = encode(&mut client, refused(data, frames))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }
    // And the server goes on.
    let id = RequestId::random();
    let registered = inbox.registry.register(id, Some(1)).unwrap();
    let mut req = request(id, &to, vec![png()]);
    req.options = vir_off;
    let (events, got) = tokio::join!(encode(&mut client, req), inbox.receive(registered));
    assert!(events.is_ok());
    assert_eq!(got, want[..7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_batched_together_get_their_features_alone() {
    let model = vision_fixture("vit300m-hf");
    let (want, _) = encoded_tiles(&model, &[]);
    // Room for both requests in one batch, a long wait to gather them, no cache.
    let vision = Vision::start(
        &model,
        &[
            "--max-batch-tiles",
            "32",
            "--batch-wait-ms",
            "500",
            "--cache-mib",
            "0",
        ],
    );
    let inbox = Inbox::start().await;
    let to = inbox.addr.to_string();
    let mut a_client = vision.client().await;
    let mut b_client = a_client.clone();
    let (a, b) = (RequestId::random(), RequestId::random());
    let (a_inbox, b_inbox) = (
        inbox.registry.register(a, Some(1)).unwrap(),
        inbox.registry.register(b, Some(1)).unwrap(),
    );
    let (ea, eb, ta, tb) = tokio::join!(
        encode(&mut a_client, request(a, &to, vec![png()])),
        encode(&mut b_client, request(b, &to, vec![png()])),
        inbox.receive(a_inbox),
        inbox.receive(b_inbox),
    );
    assert_eq!(ta, want);
    assert_eq!(tb, want);
    // (That they shared a batch is checked in vision-server/tests/encoder_batching.rs.)
    let (ea, eb) = (ea.unwrap(), eb.unwrap());
    assert_eq!(ea.tiles.len() + eb.tiles.len(), 14);
    let s = stats(&mut a_client).await;
    assert_eq!(s.encoded_tiles_total, 14);
    assert_eq!(s.max_batch_tiles, 32);
    assert_eq!(s.cache_hits + s.cache_entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_a_full_queue_fail_only_their_request() {
    let model = vision_fixture("vit300m-hf");
    let vision = Vision::start(&model, &[]);
    let mut client = vision.client().await;
    let inbox = Inbox::start().await;
    let to = inbox.addr.to_string();

    // A corrupt image fails its own request while a good one beside it goes through.
    let mut corrupt = png().to_vec();
    corrupt.truncate(corrupt.len() / 3);
    let good = RequestId::random();
    let good_inbox = inbox.registry.register(good, Some(1)).unwrap();
    let mut other = client.clone();
    let (bad, ok, tiles) = tokio::join!(
        encode(
            &mut other,
            request(RequestId::random(), &to, vec![Bytes::from(corrupt)])
        ),
        encode(&mut client, request(good, &to, vec![png()])),
        inbox.receive(good_inbox),
    );
    let bad = bad.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("image 0"), "{}", bad.message());
    assert_eq!(ok.unwrap().tiles.len(), 7);
    assert_eq!(tiles.len(), 7);

    let check = |r: Result<Events, tonic::Status>, code: Code, needle: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(needle), "{}", e.message());
    };
    let mut bad_id = request(RequestId::random(), &to, vec![png()]);
    bad_id.request_id = "xyz".into();
    check(
        encode(&mut client, bad_id).await,
        Code::InvalidArgument,
        "request_id",
    );
    let mut url = request(RequestId::random(), &to, vec![png()]);
    url.images[0].source = Some(image_input::Source::Url("https://example.com/a.png".into()));
    check(
        encode(&mut client, url).await,
        Code::InvalidArgument,
        "https",
    );
    let mut no_destination = request(RequestId::random(), &to, vec![png()]);
    no_destination.destination = None;
    check(
        encode(&mut client, no_destination).await,
        Code::InvalidArgument,
        "destination",
    );
    let mut quic = request(RequestId::random(), &to, vec![png()]);
    quic.destination.as_mut().unwrap().transport = Transport::Quic as i32;
    check(
        encode(&mut client, quic).await,
        Code::FailedPrecondition,
        "QUIC",
    );
    let mut tiles_0 = request(RequestId::random(), &to, vec![png()]);
    tiles_0.options = Some(PreprocessOptions {
        min_tiles: 9,
        max_tiles: 3,
        ..Default::default()
    });
    check(
        encode(&mut client, tiles_0).await,
        Code::InvalidArgument,
        "min_tiles",
    );

    // A request larger than a server's whole encoder queue (7 tiles, 4 queued at most) runs
    // when the queue is empty: refused, it could never run.
    let small = Vision::start(&model, &["--max-queued-tiles", "4"]);
    let mut small_client = small.client().await;
    let id = RequestId::random();
    let registered = inbox.registry.register(id, Some(1)).unwrap();
    let (events, got) = tokio::join!(
        encode(&mut small_client, request(id, &to, vec![png()])),
        inbox.receive(registered)
    );
    assert_eq!(events.unwrap().done.unwrap().total_tiles, 7);
    assert_eq!(got.len(), 7);
    let closed = Vision::start(&model, &["--max-pending-requests", "0"]);
    check(
        encode(
            &mut closed.client().await,
            request(RequestId::random(), &to, vec![png()]),
        )
        .await,
        Code::ResourceExhausted,
        "waiting",
    );
    // Nothing stuck behind.
    let s = stats(&mut client).await;
    assert_eq!(
        (s.queued_requests, s.queued_tiles, s.running_tiles),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_dies_mid_stream_fails_the_request_naming_it() {
    let model = vision_fixture("vit300m-hf");
    let vision = Vision::start(&model, &[]);
    let mut client = vision.client().await;

    // A "language server" that takes the connection, reads a little and dies.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dying = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::Read;
        for conn in listener.incoming().take(1) {
            let mut conn = conn.unwrap();
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf);
        } // dropped: connection reset mid-request
    });
    let err = encode(
        &mut client,
        request(RequestId::random(), &dying, vec![png()]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains(&dying), "{}", err.message());

    // Nobody listening at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let err = encode(
        &mut client,
        request(RequestId::random(), &closed, vec![png()]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains(&closed), "{}", err.message());

    // The server is fine afterwards.
    let inbox = Inbox::start().await;
    let id = RequestId::random();
    let registered = inbox.registry.register(id, Some(1)).unwrap();
    let to = inbox.addr.to_string();
    let (ok, tiles) = tokio::join!(
        encode(&mut client, request(id, &to, vec![png()])),
        inbox.receive(registered)
    );
    ok.unwrap();
    assert_eq!(tiles.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vision_and_language_servers_give_the_tokens_of_dvd_generate() {
    // The decoupled pipeline end to end: the vision server streams features straight to the
    // language server's feature listener while the language server waits to prefill them.
    let model = language_fixture("internvl-moe-custom-bf16");
    let prompt = "What is shown in the picture?";
    let report = common::coupled_generate(&model, prompt, true, 8);
    let want: Vec<u32> = serde_json::from_value(report["token_ids"].clone()).unwrap();

    let language = common::start_language(&model, 16, &[]);
    let vision = Vision::start(&model, &[]);
    let mut lang = language_client(
        tuned_endpoint(&language.field("grpc"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut vis = vision.client().await;
    let id = RequestId::random();
    let generate = common::image_generate_request(&id, prompt, Bytes::new(), 8);
    let mut stream = lang.generate(generate).await.unwrap().into_inner();
    let encoded = encode(
        &mut vis,
        request(id, &language.field("features"), vec![png()]),
    )
    .await
    .unwrap();
    assert_eq!(encoded.done.unwrap().total_tokens, 28);
    let mut got = Vec::new();
    let mut finish = None;
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            generate_event::Event::Delta(d) => got.extend(d.token_ids),
            generate_event::Event::Done(d) => finish = Some(d.finish_reason),
        }
    }
    assert_eq!(got, want);
    assert_eq!(finish, Some(FinishReason::Length as i32));
}
