//! Images travel inside gRPC messages: the tuned server and client from
//! `dvd_proto::limits` must carry a multi-MiB image whole, while tonic's
//! defaults reject it.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use std::net::SocketAddr;

use bytes::Bytes;
use dvd_proto::limits::{
    MAX_MESSAGE_BYTES, tuned_endpoint, tuned_server, vision_client, vision_server,
};
use dvd_proto::vision::v1::vision_service_client::VisionServiceClient;
use dvd_proto::vision::v1::vision_service_server::{VisionService, VisionServiceServer};
use dvd_proto::vision::v1::{
    EncodeDone, EncodeEvent, EncodeRequest, HealthRequest, HealthResponse, ImageInput,
    ImagePlanned, ImageSummary, StatsRequest, StatsResponse, encode_event, image_input,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;
use tonic::{Code, Request, Response, Status};

const MIB: usize = 1024 * 1024;

/// FNV-1a 64 of `data`, as 8 big-endian bytes.
fn fnv1a(data: &[u8]) -> Bytes {
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Bytes::copy_from_slice(&hash.to_be_bytes())
}

/// A deterministic, non-repeating-looking image payload.
fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Answers `Encode` with one `ImagePlanned` per image (hash of the bytes it
/// received) and an `EncodeDone` with one "tile" per whole MiB of image data.
struct Echo;

#[tonic::async_trait]
impl VisionService for Echo {
    type EncodeStream = tokio_stream::Iter<std::vec::IntoIter<Result<EncodeEvent, Status>>>;

    async fn encode(
        &self,
        request: Request<EncodeRequest>,
    ) -> Result<Response<Self::EncodeStream>, Status> {
        let request = request.into_inner();
        let mut events = Vec::new();
        let mut images = Vec::new();
        let mut total_tiles = 0;
        for (index, image) in request.images.iter().enumerate() {
            let Some(image_input::Source::Data(data)) = &image.source else {
                return Err(Status::invalid_argument("only inline images"));
            };
            let tiles = u32::try_from(data.len() / MIB).map_err(|_| Status::internal("size"))?;
            total_tiles += tiles;
            images.push(ImageSummary {
                tokens_per_tile: vec![256; tiles as usize],
            });
            events.push(Ok(EncodeEvent {
                event: Some(encode_event::Event::Planned(ImagePlanned {
                    image_index: index as u32,
                    tile_count: tiles,
                    content_hash: fnv1a(data),
                    ..Default::default()
                })),
            }));
        }
        events.push(Ok(EncodeEvent {
            event: Some(encode_event::Event::Done(EncodeDone {
                total_tiles,
                total_tokens: total_tiles * 256,
                images,
                timings: None,
            })),
        }));
        Ok(Response::new(tokio_stream::iter(events)))
    }

    async fn health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse::default()))
    }

    async fn stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        Ok(Response::new(StatsResponse::default()))
    }
}

/// A server on `127.0.0.1:0` that stops when [`TestServer::stop`] is called.
struct TestServer {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    tasks: JoinSet<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (shutdown, signal) = oneshot::channel::<()>();
        let mut tasks = JoinSet::new();
        tasks.spawn(router.serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            async move {
                let _ = signal.await;
            },
        ));
        Self {
            addr,
            shutdown,
            tasks,
        }
    }

    async fn stop(mut self) {
        self.shutdown.send(()).expect("server still running");
        while let Some(result) = self.tasks.join_next().await {
            result
                .expect("server task panicked")
                .expect("server failed");
        }
    }
}

fn encode_request(data: Bytes) -> EncodeRequest {
    EncodeRequest {
        request_id: "0123456789abcdef0123456789abcdef".to_owned(),
        images: vec![ImageInput {
            source: Some(image_input::Source::Data(data)),
            content_hash: None,
            video: None,
        }],
        ..Default::default()
    }
}

/// Runs `Encode` and collects every event.
async fn encode(
    client: &mut VisionServiceClient<tonic::transport::Channel>,
    data: Bytes,
) -> Result<Vec<encode_event::Event>, Status> {
    let mut stream = client.encode(encode_request(data)).await?.into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.extend(event?.event);
    }
    Ok(events)
}

async fn tuned_pair() -> (TestServer, VisionServiceClient<tonic::transport::Channel>) {
    let server = TestServer::start(tuned_server().add_service(vision_server(Echo))).await;
    let channel = tuned_endpoint(&server.addr.to_string())
        .expect("valid endpoint")
        .connect()
        .await
        .expect("connect");
    (server, vision_client(channel))
}

#[tokio::test]
async fn six_mib_image_arrives_whole_with_raised_limits() {
    let (server, mut client) = tuned_pair().await;
    let data = payload(6 * MIB);

    let events = encode(&mut client, data.clone()).await.unwrap();

    let [
        encode_event::Event::Planned(planned),
        encode_event::Event::Done(done),
    ] = events.as_slice()
    else {
        panic!("unexpected events: {events:?}");
    };
    assert_eq!(
        planned.content_hash,
        fnv1a(&data),
        "image altered in transit"
    );
    assert_eq!(planned.tile_count, 6);
    assert_eq!(done.total_tiles, 6);
    assert_eq!(done.images.len(), 1);
    assert_eq!(done.images[0].tokens_per_tile, vec![256; 6]);

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn six_mib_image_is_rejected_with_default_limits() {
    let server = TestServer::start(
        tonic::transport::Server::builder().add_service(VisionServiceServer::new(Echo)),
    )
    .await;
    let mut client = VisionServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();

    let status = encode(&mut client, payload(6 * MIB)).await.unwrap_err();

    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "unexpected status: {status:?}"
    );
    // The small image still works, so the failure is the size limit.
    assert_eq!(encode(&mut client, payload(MIB)).await.unwrap().len(), 2);

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn server_refuses_a_message_over_the_raised_limit() {
    let server = TestServer::start(tuned_server().add_service(vision_server(Echo))).await;
    let channel = tuned_endpoint(&server.addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // No client-side encoding limit, so the server's decoding limit decides.
    let mut client = VisionServiceClient::new(channel);

    let status = encode(&mut client, Bytes::from(vec![0u8; MAX_MESSAGE_BYTES]))
        .await
        .unwrap_err();

    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "unexpected status: {status:?}"
    );

    drop(client);
    server.stop().await;
}
