//! Vision serving pipeline benchmark: the vision server's encoder thread
//! ([`EncoderHandle`]) feeding our TCP feature transport, measured in one process on real
//! loopback sockets, the way `vision-server/src/service/pipeline.rs` runs a request: each
//! request's tiles leave the encoder in chunks, become BF16 transport tiles and are sent as soon
//! as their chunk is done, and an in-process feature listener with an [`InboxRegistry`] receives
//! them (the language server's side).
//!
//! Two measurements, run back to back in every round (odd rounds in the order below, even
//! rounds in reverse):
//!
//! - **Throughput**: `requests` requests of `tiles_per_request` tiles each, submitted together,
//!   through an encoder with `max_batch_tiles = 1` (no cross-request batching) and through one
//!   with `max_batch_tiles = batch_tiles` and a short `batch_wait`. Tiles/s = all tiles over the
//!   time from the first submit to the last tile held by a receiver.
//! - **Overlap**: one request of `image_tiles` tiles through an encoder with
//!   `max_batch_tiles = chunk_tiles` (tiles encoded in chunks, the first chunks streamed while
//!   later ones encode) and through one with `max_batch_tiles = image_tiles` (all tiles in one
//!   batch: no pipelining within the request). Each tile is timestamped when its chunk leaves the
//!   encoder, when it is sent and when the receiver takes it out of its inbox; the report sets
//!   the wall time against the sum of the stages (encode + BF16 conversion + transfer). As a
//!   baseline, each round also times `VisionModel::encode` of the same tiles in one call on the
//!   calling thread (what `dvd bench vision` measures).
//!
//! Tiles are the checkpoint's tiles of a real image (the first ones, repeated when a request
//! needs more than the image has), so the encoder sees real tile sizes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Tensor};
use dvd_transport::{
    Destination, FeatureSender, FeatureStream, Inbox, InboxConfig, InboxRegistry, ListenerConfig,
    RequestId, SenderConfig, Tile, TilePosition, TlsOptions, TransportKind,
};
use dvd_vision_server::engine::{
    EncodeJob, EncoderConfig, EncoderHandle, EncoderOutput, EncoderStats,
};
use dvd_vision_server::model::{Routing, VisionModel};
use dvd_vision_server::preprocess::preprocess;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::model::load_on_cpu;
use crate::stats::{median, range};

/// Longest one measured run may take before the benchmark gives up.
const RUN_LIMIT: Duration = Duration::from_secs(900);

/// What to measure.
#[derive(Debug, Clone)]
pub struct PipelineBench {
    /// Model directory or hub id.
    pub model: String,
    /// Image whose tiles (with the checkpoint's tiling settings) feed the encoder.
    pub image: PathBuf,
    /// Compute dtype.
    pub dtype: DType,
    /// Timed rounds; each runs all four configurations once. Medians are reported.
    pub rounds: usize,
    /// Throughput: requests submitted together.
    pub requests: usize,
    /// Throughput: tiles per request.
    pub tiles_per_request: usize,
    /// Throughput: `max_batch_tiles` of the batching encoder (the other one uses 1).
    pub batch_tiles: usize,
    /// `batch_wait` of every encoder (how long a batch that is not full waits for more tiles).
    pub batch_wait: Duration,
    /// Overlap: tiles of the one multi-tile request.
    pub image_tiles: usize,
    /// Overlap: `max_batch_tiles` of the pipelined run (fewer than `image_tiles`).
    pub chunk_tiles: usize,
    /// Worker threads of the tokio runtime that runs senders, listener and receivers.
    pub worker_threads: usize,
}

impl PipelineBench {
    /// The default setup on `model`'s tiles of `image`.
    pub fn new(model: impl Into<String>, image: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            image: image.into(),
            ..Self::default()
        }
    }
}

/// `dvd bench pipeline`'s defaults: 8 requests x 2 tiles with and without batching (8 tiles,
/// 2 ms wait), a 7-tile request in chunks of 2 and whole, 3 rounds, f32, two runtime workers;
/// `model` and `image` are empty (set them, or use [`PipelineBench::new`]).
impl Default for PipelineBench {
    fn default() -> Self {
        Self {
            model: String::new(),
            image: PathBuf::new(),
            dtype: DType::F32,
            rounds: 3,
            requests: 8,
            tiles_per_request: 2,
            batch_tiles: 8,
            batch_wait: Duration::from_millis(2),
            image_tiles: 7,
            chunk_tiles: 2,
            worker_threads: 2,
        }
    }
}

/// One throughput configuration's results (medians over the rounds).
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputResult {
    /// The encoder's `max_batch_tiles`.
    pub max_batch_tiles: usize,
    /// Tiles per second from the first submit to the last tile received (median).
    pub tiles_per_s: f64,
    /// Slowest and fastest round, tiles/s.
    pub tiles_per_s_range: (f64, f64),
    /// Every round, tiles/s.
    pub runs_tiles_per_s: Vec<f64>,
    /// First submit to last tile received, milliseconds (median).
    pub wall_ms: f64,
    /// Submit to a request's last tile received, milliseconds: median over requests, then
    /// over rounds.
    pub request_latency_ms: f64,
    /// Submit to a request's first tile received, milliseconds: median over requests, then
    /// over rounds.
    pub first_tile_ms: f64,
    /// Encoder batches per round (median).
    pub batches: f64,
    /// Tiles per encoder batch (median over rounds of each round's mean).
    pub mean_batch_tiles: f64,
    /// Median ViT batch latency, milliseconds (the encoder's own counter, over the warm-up
    /// batch and every round).
    pub batch_latency_p50_ms: f64,
}

/// Throughput with and without cross-request batching.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    /// Requests submitted together.
    pub requests: usize,
    /// Tiles per request.
    pub tiles_per_request: usize,
    /// `max_batch_tiles = 1`.
    pub unbatched: ThroughputResult,
    /// `max_batch_tiles = batch_tiles`.
    pub batched: ThroughputResult,
    /// Median over rounds of each round's batched / unbatched tiles/s.
    pub speedup: f64,
    /// Every round's batched / unbatched tiles/s.
    pub runs_speedup: Vec<f64>,
}

/// One overlap configuration's results (medians over the rounds; times from the submit).
#[derive(Debug, Clone, Serialize)]
pub struct OverlapResult {
    /// The encoder's `max_batch_tiles`.
    pub max_batch_tiles: usize,
    /// Encoder batches the request took.
    pub batches: f64,
    /// Submit to the first chunk leaving the encoder, milliseconds.
    pub first_encoded_ms: f64,
    /// Submit to the first tile held by the receiver, milliseconds.
    pub first_received_ms: f64,
    /// Submit to the last tile held by the receiver, milliseconds.
    pub wall_ms: f64,
    /// First tile encoded to last tile received, milliseconds.
    pub window_ms: f64,
    /// Submit to the receiver's confirmation of the whole request (`finish`), milliseconds.
    pub finished_ms: f64,
    /// Sum of the encoder's chunk times (ViT batch + projection), milliseconds.
    pub encode_ms: f64,
    /// Sum of the BF16 conversions into transport tiles, milliseconds.
    pub convert_ms: f64,
    /// Sum over tiles of send start to the receiver holding the tile, milliseconds.
    pub transfer_ms: f64,
    /// `encode_ms + convert_ms + transfer_ms`.
    pub stage_sum_ms: f64,
    /// `1 - wall / stage sum` (median of the rounds' values): the share of the stages' time
    /// hidden by running them at the same time.
    pub overlap: f64,
    /// Every round's overlap.
    pub runs_overlap: Vec<f64>,
}

/// Overlap of encoding and transfer within one multi-tile request.
#[derive(Debug, Clone, Serialize)]
pub struct OverlapReport {
    /// Tiles of the request.
    pub tiles: usize,
    /// `max_batch_tiles = chunk_tiles`: chunks stream while later ones encode.
    pub pipelined: OverlapResult,
    /// `max_batch_tiles = tiles`: every tile in one batch, then all transfers.
    pub whole: OverlapResult,
    /// `whole.first_received_ms / pipelined.first_received_ms`: how much sooner the receiver
    /// holds its first tile when the request is encoded in chunks.
    pub first_tile_speedup: f64,
    /// `pipelined.wall_ms / whole.wall_ms`: what encoding in chunks costs (or saves) in time to
    /// the last tile.
    pub wall_ratio: f64,
    /// Baseline: `VisionModel::encode` of the same tiles in one call on the calling thread (no
    /// encoder thread, no transport), milliseconds (median).
    pub direct_encode_ms: f64,
    /// Fastest and slowest direct encode.
    pub direct_encode_range_ms: (f64, f64),
    /// `whole.wall_ms / direct_encode_ms`: what the encoder thread, BF16 conversion and
    /// transport add to a one-batch request.
    pub whole_vs_direct: f64,
}

/// The report `pipeline_bench --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// Compute dtype.
    pub dtype: String,
    /// Rounds measured.
    pub rounds: usize,
    /// Tiles the image becomes with the checkpoint's tiling settings.
    pub image_source_tiles: usize,
    /// Tile side in pixels.
    pub tile_size: usize,
    /// Feature rows per tile.
    pub tokens_per_tile: usize,
    /// Feature columns per tile (the LLM hidden size).
    pub hidden: usize,
    /// BF16 bytes per tile on the wire.
    pub tile_bytes: u64,
    /// `batch_wait` of every encoder, milliseconds.
    pub batch_wait_ms: f64,
    /// Tokio worker threads.
    pub worker_threads: usize,
    /// Tiles/s with and without cross-request batching.
    pub throughput: ThroughputReport,
    /// Encode/transfer overlap within one request.
    pub overlap: OverlapReport,
}

/// Timestamps of one tile of one request.
#[derive(Debug, Clone, Copy)]
struct TileTimes {
    /// Its chunk left the encoder.
    encoded: Instant,
    /// Send started (after the BF16 conversion).
    send_start: Instant,
    /// BF16 conversion time.
    convert: Duration,
}

/// What one request's sender saw.
#[derive(Debug)]
struct SenderTimes {
    tiles: Vec<TileTimes>,
    /// Sum of the chunk encode times.
    encode: Duration,
    /// The receiver confirmed every tile.
    finished: Instant,
    /// Feature rows and columns of the first tile.
    shape: (usize, usize),
}

/// Timestamps of one request, sender and receiver side.
#[derive(Debug)]
struct RequestTimes {
    sender: SenderTimes,
    received: Vec<Instant>,
}

/// The listener, registry and sender shared by every run.
struct Plane {
    registry: InboxRegistry,
    sender: Arc<dyn FeatureSender>,
    destination: Destination,
    shutdown: CancellationToken,
    serving: JoinSet<dvd_transport::Result<()>>,
}

impl PipelineBench {
    fn check(&self) -> Result<()> {
        if self.rounds == 0
            || self.requests == 0
            || self.tiles_per_request == 0
            || self.batch_tiles == 0
            || self.image_tiles == 0
            || self.chunk_tiles == 0
            || self.worker_threads == 0
        {
            bail!(
                "rounds, requests, tile counts, batch sizes and worker threads must be at least 1"
            );
        }
        ensure!(
            self.image_tiles.max(self.tiles_per_request) <= usize::from(u16::MAX),
            "too many tiles per request"
        );
        Ok(())
    }

    /// Loads the model, preprocesses the image, runs one warm-up pass of every configuration and
    /// `rounds` timed rounds; `progress` gets one line per measured run.
    pub fn run(&self, mut progress: impl FnMut(&str)) -> Result<PipelineReport> {
        self.check()?;
        let (_, model) = load_on_cpu(&self.model, self.dtype, VisionModel::load)?;
        let model = Arc::new(model);
        let bytes = std::fs::read(&self.image)
            .with_context(|| format!("reading {}", self.image.display()))?;
        let tiled = preprocess(&bytes, &model.config().tiling)?;
        let values = model.pixel_values(&tiled.tiles)?;
        let source_tiles = values.dim(0)?;
        let tile_size = values.dim(3)?;
        let request_pixels = repeat_tiles(&values, self.tiles_per_request)?;
        let image_pixels = repeat_tiles(&values, self.image_tiles)?;

        let encoder = |max_batch_tiles: usize| {
            EncoderHandle::start(
                model.clone(),
                EncoderConfig {
                    max_batch_tiles,
                    batch_wait: self.batch_wait,
                },
            )
            .context("starting an encoder thread")
        };
        let unbatched = encoder(1)?;
        let batched = encoder(self.batch_tiles)?;
        let chunked = encoder(self.chunk_tiles)?;
        let whole = encoder(self.image_tiles)?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.worker_threads)
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut plane = Plane::start().await?;
            // Warm-up: connection, buffers, allocator; one small pass through each encoder.
            for handle in [&unbatched, &batched, &chunked, &whole] {
                let one = request_pixels.narrow(0, 0, 1)?;
                self.requests_run(&plane, handle, &one, 1).await?;
            }
            progress("warm-up done");

            let mut samples = Samples::default();
            for round in 1..=self.rounds {
                let rounds = self.rounds;
                // Odd rounds run the steps in order, even rounds in reverse, so drift in the
                // machine's load does not favour one configuration.
                let mut steps = Step::ALL;
                if round % 2 == 0 {
                    steps.reverse();
                }
                let (mut u, mut b) = (None, None);
                for step in steps {
                    let line = match step {
                        Step::Unbatched | Step::Batched => {
                            let encoder = match step {
                                Step::Unbatched => &unbatched,
                                _ => &batched,
                            };
                            let (sample, stats) = self
                                .throughput_run(&plane, encoder, &request_pixels)
                                .await?;
                            let line = format!(
                                "{:9} {:6.3} tiles/s ({} batches)",
                                step.name(),
                                sample.tiles_per_s,
                                stats.batches
                            );
                            match step {
                                Step::Unbatched => u = Some(sample),
                                _ => b = Some(sample),
                            }
                            line
                        }
                        Step::Pipelined | Step::Whole => {
                            let encoder = match step {
                                Step::Pipelined => &chunked,
                                _ => &whole,
                            };
                            let o = self.overlap_run(&plane, encoder, &image_pixels).await?;
                            let line = format!(
                                "{:9} wall {:8.1} ms, stages {:8.1} ms, overlap {:.3}, \
                                 first tile at {:.1} ms",
                                step.name(),
                                o.wall_ms,
                                o.stage_sum_ms,
                                o.overlap,
                                o.first_received_ms
                            );
                            samples.shape = o.shape;
                            match step {
                                Step::Pipelined => samples.pipelined.push(o),
                                _ => samples.whole.push(o),
                            }
                            line
                        }
                        Step::Direct => {
                            let started = Instant::now();
                            let encoded = model.encode(&image_pixels, Routing::Off)?;
                            encoded.features.dims();
                            let ms = started.elapsed().as_secs_f64() * 1e3;
                            samples.direct.push(ms);
                            format!(
                                "{:9} VisionModel::encode of {} tiles {ms:8.1} ms",
                                step.name(),
                                self.image_tiles
                            )
                        }
                    };
                    progress(&format!("round {round}/{rounds}: {line}"));
                }
                let (Some(u), Some(b)) = (u, b) else {
                    bail!("round {round} lacks a throughput run");
                };
                samples.speedup.push(b.tiles_per_s / u.tiles_per_s);
                samples.unbatched.push(u);
                samples.batched.push(b);
            }
            plane.stop().await?;

            let (tokens, hidden) = samples.shape;
            Ok::<_, anyhow::Error>(PipelineReport {
                dtype: format!("{:?}", self.dtype).to_lowercase(),
                rounds: self.rounds,
                image_source_tiles: source_tiles,
                tile_size,
                tokens_per_tile: tokens,
                hidden,
                tile_bytes: Tile::expected_len(tokens as u32, hidden as u32),
                batch_wait_ms: self.batch_wait.as_secs_f64() * 1e3,
                worker_threads: self.worker_threads,
                throughput: ThroughputReport {
                    requests: self.requests,
                    tiles_per_request: self.tiles_per_request,
                    unbatched: summarise_throughput(1, &samples.unbatched, &unbatched.stats()),
                    batched: summarise_throughput(
                        self.batch_tiles,
                        &samples.batched,
                        &batched.stats(),
                    ),
                    speedup: median(&samples.speedup),
                    runs_speedup: samples.speedup.clone(),
                },
                overlap: overlap_report(self.image_tiles, self.chunk_tiles, &samples),
            })
        })
    }

    /// `requests` requests of `pixels` through `encoder`; returns the submit instant and every
    /// request's timestamps.
    async fn requests_run(
        &self,
        plane: &Plane,
        encoder: &EncoderHandle,
        pixels: &Tensor,
        requests: usize,
    ) -> Result<(Instant, Vec<RequestTimes>)> {
        let tiles = pixels.dim(0)?;
        let tile_count = u16::try_from(tiles).context("too many tiles in one request")?;
        // Everything a request needs is set up before the clock starts, so all submits land
        // within the encoder's batch wait.
        let mut receivers = JoinSet::new();
        let mut ready = Vec::with_capacity(requests);
        for k in 0..requests {
            let id = RequestId::random();
            let inbox = plane.registry.register(id, Some(1))?;
            receivers.spawn(async move { (k, receive(inbox, tiles).await) });
            let stream = plane.sender.open(&plane.destination, id).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            ready.push((k, stream, tx, rx));
        }
        let cancelled = CancellationToken::new();
        let mut senders = JoinSet::new();
        let submitted = Instant::now();
        for (k, stream, tx, rx) in ready {
            encoder
                .submit(EncodeJob {
                    pixel_values: pixels.clone(),
                    thresholds: None,
                    output: tx,
                    cancelled: cancelled.clone(),
                    label: format!("bench-{k}"),
                    span: tracing::Span::none(),
                })
                .map_err(anyhow::Error::from)?;
            senders.spawn(async move { (k, send(stream, rx, tile_count).await) });
        }
        let outcome = tokio::time::timeout(RUN_LIMIT, async {
            let mut sent: Vec<Option<SenderTimes>> = (0..requests).map(|_| None).collect();
            let mut received: Vec<Option<Vec<Instant>>> = (0..requests).map(|_| None).collect();
            while let Some(joined) = senders.join_next().await {
                let (k, times) = joined.context("a sender task failed")?;
                sent[k] = Some(times?);
            }
            while let Some(joined) = receivers.join_next().await {
                let (k, times) = joined.context("a receiver task failed")?;
                received[k] = Some(times?);
            }
            sent.into_iter()
                .zip(received)
                .map(|(s, r)| match (s, r) {
                    (Some(sender), Some(received)) => Ok(RequestTimes { sender, received }),
                    _ => bail!("a request's timestamps are missing"),
                })
                .collect::<Result<Vec<_>>>()
        })
        .await;
        cancelled.cancel();
        match outcome {
            Ok(times) => Ok((submitted, times?)),
            Err(_) => bail!("a run did not finish within {RUN_LIMIT:?}"),
        }
    }

    async fn throughput_run(
        &self,
        plane: &Plane,
        encoder: &EncoderHandle,
        pixels: &Tensor,
    ) -> Result<(ThroughputSample, EncoderStats)> {
        let before = encoder.stats();
        let (submitted, requests) = self
            .requests_run(plane, encoder, pixels, self.requests)
            .await?;
        let after = encoder.stats();
        let ms = |t: Instant| (t - submitted).as_secs_f64() * 1e3;
        let last = requests
            .iter()
            .filter_map(|r| r.received.last().copied())
            .max()
            .context("no tile received")?;
        let tiles: usize = requests.iter().map(|r| r.received.len()).sum();
        let latencies: Vec<f64> = requests
            .iter()
            .filter_map(|r| r.received.last().map(|&t| ms(t)))
            .collect();
        let firsts: Vec<f64> = requests
            .iter()
            .filter_map(|r| r.received.first().map(|&t| ms(t)))
            .collect();
        let batches = after.batches - before.batches;
        let encoded = after.encoded_tiles - before.encoded_tiles;
        let wall = ms(last);
        let sample = ThroughputSample {
            tiles_per_s: tiles as f64 / (wall / 1e3),
            wall_ms: wall,
            request_latency_ms: median(&latencies),
            first_tile_ms: median(&firsts),
            batches: batches as f64,
            mean_batch_tiles: encoded as f64 / batches.max(1) as f64,
        };
        let stats = EncoderStats {
            batches,
            encoded_tiles: encoded,
            ..after
        };
        Ok((sample, stats))
    }

    async fn overlap_run(
        &self,
        plane: &Plane,
        encoder: &EncoderHandle,
        pixels: &Tensor,
    ) -> Result<OverlapSample> {
        let before = encoder.stats();
        let (submitted, mut requests) = self.requests_run(plane, encoder, pixels, 1).await?;
        let after = encoder.stats();
        let request = requests.pop().context("no request ran")?;
        let RequestTimes { sender, received } = request;
        ensure!(
            received.len() == sender.tiles.len() && !received.is_empty(),
            "sent {} tiles, received {}",
            sender.tiles.len(),
            received.len()
        );
        let ms = |t: Instant| t.saturating_duration_since(submitted).as_secs_f64() * 1e3;
        let secs = |d: Duration| d.as_secs_f64() * 1e3;
        let first_encoded = sender.tiles[0].encoded;
        let last_received = received.iter().copied().max().context("no tile received")?;
        let transfer: Duration = sender
            .tiles
            .iter()
            .zip(&received)
            .map(|(t, &r)| r.saturating_duration_since(t.send_start))
            .sum();
        let convert: Duration = sender.tiles.iter().map(|t| t.convert).sum();
        let encode_ms = secs(sender.encode);
        let convert_ms = secs(convert);
        let transfer_ms = secs(transfer);
        let stage_sum_ms = encode_ms + convert_ms + transfer_ms;
        let wall_ms = ms(last_received);
        Ok(OverlapSample {
            shape: sender.shape,
            batches: (after.batches - before.batches) as f64,
            first_encoded_ms: ms(first_encoded),
            first_received_ms: ms(received[0]),
            wall_ms,
            window_ms: secs(last_received.saturating_duration_since(first_encoded)),
            finished_ms: ms(sender.finished),
            encode_ms,
            convert_ms,
            transfer_ms,
            stage_sum_ms,
            overlap: 1.0 - wall_ms / stage_sum_ms,
        })
    }
}

impl Plane {
    /// A TCP feature listener on loopback with its registry, and a TCP sender.
    async fn start() -> Result<Self> {
        let registry = InboxRegistry::new(InboxConfig::default());
        let tls = TlsOptions::default();
        let listener = dvd_transport::listen(
            TransportKind::Tcp,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            registry.clone(),
            ListenerConfig::default(),
            &tls,
        )
        .await?;
        let destination = Destination::new(listener.local_addr().to_string());
        let sender = dvd_transport::connect(TransportKind::Tcp, SenderConfig::default(), &tls)?;
        let shutdown = CancellationToken::new();
        let mut serving = JoinSet::new();
        serving.spawn(listener.serve(shutdown.clone()));
        Ok(Self {
            registry,
            sender,
            destination,
            shutdown,
            serving,
        })
    }

    async fn stop(&mut self) -> Result<()> {
        self.shutdown.cancel();
        while let Some(r) = self.serving.join_next().await {
            r??;
        }
        Ok(())
    }
}

/// The sending half of one request, as the vision server's pipeline does it: takes chunks from
/// the encoder in tile order, turns each tile into a BF16 transport tile and sends it at once.
async fn send(
    mut stream: Box<dyn FeatureStream>,
    mut chunks: mpsc::UnboundedReceiver<EncoderOutput>,
    tile_count: u16,
) -> Result<SenderTimes> {
    let mut tiles = Vec::with_capacity(usize::from(tile_count));
    let mut encode = Duration::ZERO;
    let mut shape = (0, 0);
    while tiles.len() < usize::from(tile_count) {
        let chunk = match chunks.recv().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(message)) => bail!("encoding failed: {message}"),
            None => bail!("the encoder stopped after {} tiles", tiles.len()),
        };
        let encoded = Instant::now();
        encode += chunk.encode;
        ensure!(
            chunk.first_tile == tiles.len(),
            "chunk starts at tile {}, expected {}",
            chunk.first_tile,
            tiles.len()
        );
        for features in chunk.tiles {
            let started = Instant::now();
            let index = u16::try_from(tiles.len()).context("tile index")?;
            let position = TilePosition {
                image_index: 0,
                image_count: 1,
                tile_index: index,
                tile_count,
            };
            shape = features.dims2()?;
            let tile = to_tile(position, &features)?;
            let send_start = Instant::now();
            stream.send(tile).await?;
            tiles.push(TileTimes {
                encoded,
                send_start,
                convert: send_start - started,
            });
        }
    }
    stream.finish().await?;
    Ok(SenderTimes {
        tiles,
        encode,
        finished: Instant::now(),
        shape,
    })
}

/// The receiving half: when the consumer took each tile out of the inbox.
async fn receive(mut inbox: Inbox, expected: usize) -> Result<Vec<Instant>> {
    let mut times = Vec::with_capacity(expected);
    while let Some(tile) = inbox.next_tile().await? {
        std::hint::black_box(&tile.data);
        times.push(Instant::now());
    }
    ensure!(
        times.len() == expected,
        "received {} of {expected} tiles",
        times.len()
    );
    Ok(times)
}

/// A tile's `[tokens, hidden]` features as a BF16 transport tile (what the vision server's
/// pipeline does before each send).
fn to_tile(position: TilePosition, features: &Tensor) -> Result<Tile> {
    let (tokens, hidden) = features.dims2()?;
    let values = features.to_dtype(DType::BF16)?.flatten_all()?.to_vec1()?;
    Ok(Tile::from_bf16(
        position,
        u32::try_from(tokens)?,
        u32::try_from(hidden)?,
        values.as_slice(),
    )?)
}

/// `n` tiles of `values`, its first ones, repeated when it has fewer.
fn repeat_tiles(values: &Tensor, n: usize) -> Result<Tensor> {
    let available = values.dim(0)?;
    let picks: Vec<u32> = (0..n).map(|i| (i % available) as u32).collect();
    let index = Tensor::new(picks.as_slice(), values.device())?;
    Ok(values.index_select(&index, 0)?.contiguous()?)
}

/// One measurement of a round.
#[derive(Debug, Clone, Copy)]
enum Step {
    Unbatched,
    Batched,
    Pipelined,
    Whole,
    Direct,
}

impl Step {
    const ALL: [Step; 5] = [
        Step::Unbatched,
        Step::Batched,
        Step::Pipelined,
        Step::Whole,
        Step::Direct,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Unbatched => "unbatched",
            Step::Batched => "batched",
            Step::Pipelined => "pipelined",
            Step::Whole => "whole",
            Step::Direct => "direct",
        }
    }
}

/// One throughput run.
#[derive(Debug, Clone)]
struct ThroughputSample {
    tiles_per_s: f64,
    wall_ms: f64,
    request_latency_ms: f64,
    first_tile_ms: f64,
    batches: f64,
    mean_batch_tiles: f64,
}

/// One overlap run.
#[derive(Debug, Clone)]
struct OverlapSample {
    shape: (usize, usize),
    batches: f64,
    first_encoded_ms: f64,
    first_received_ms: f64,
    wall_ms: f64,
    window_ms: f64,
    finished_ms: f64,
    encode_ms: f64,
    convert_ms: f64,
    transfer_ms: f64,
    stage_sum_ms: f64,
    overlap: f64,
}

#[derive(Debug, Default)]
struct Samples {
    unbatched: Vec<ThroughputSample>,
    batched: Vec<ThroughputSample>,
    speedup: Vec<f64>,
    pipelined: Vec<OverlapSample>,
    whole: Vec<OverlapSample>,
    direct: Vec<f64>,
    shape: (usize, usize),
}

fn summarise_throughput(
    max_batch_tiles: usize,
    runs: &[ThroughputSample],
    stats: &EncoderStats,
) -> ThroughputResult {
    let of = |f: fn(&ThroughputSample) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let tiles_per_s: Vec<f64> = runs.iter().map(|r| r.tiles_per_s).collect();
    ThroughputResult {
        max_batch_tiles,
        tiles_per_s: median(&tiles_per_s),
        tiles_per_s_range: range(&tiles_per_s),
        runs_tiles_per_s: tiles_per_s,
        wall_ms: of(|r| r.wall_ms),
        request_latency_ms: of(|r| r.request_latency_ms),
        first_tile_ms: of(|r| r.first_tile_ms),
        batches: of(|r| r.batches),
        mean_batch_tiles: of(|r| r.mean_batch_tiles),
        batch_latency_p50_ms: stats.latency_p50_ms,
    }
}

fn summarise_overlap(max_batch_tiles: usize, runs: &[OverlapSample]) -> OverlapResult {
    let of = |f: fn(&OverlapSample) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let overlaps: Vec<f64> = runs.iter().map(|r| r.overlap).collect();
    OverlapResult {
        max_batch_tiles,
        batches: of(|r| r.batches),
        first_encoded_ms: of(|r| r.first_encoded_ms),
        first_received_ms: of(|r| r.first_received_ms),
        wall_ms: of(|r| r.wall_ms),
        window_ms: of(|r| r.window_ms),
        finished_ms: of(|r| r.finished_ms),
        encode_ms: of(|r| r.encode_ms),
        convert_ms: of(|r| r.convert_ms),
        transfer_ms: of(|r| r.transfer_ms),
        stage_sum_ms: of(|r| r.stage_sum_ms),
        overlap: median(&overlaps),
        runs_overlap: overlaps,
    }
}

fn overlap_report(tiles: usize, chunk_tiles: usize, samples: &Samples) -> OverlapReport {
    let pipelined = summarise_overlap(chunk_tiles, &samples.pipelined);
    let whole = summarise_overlap(tiles, &samples.whole);
    let direct = median(&samples.direct);
    OverlapReport {
        tiles,
        first_tile_speedup: whole.first_received_ms / pipelined.first_received_ms,
        wall_ratio: pipelined.wall_ms / whole.wall_ms,
        direct_encode_ms: direct,
        direct_encode_range_ms: range(&samples.direct),
        whole_vs_direct: whole.wall_ms / direct,
        pipelined,
        whole,
    }
}

impl PipelineReport {
    /// A human-readable summary.
    pub fn table(&self) -> String {
        let t = &self.throughput;
        let mut out = format!(
            "{} rounds, {} {}px tiles -> {} tokens x {} hidden ({} B BF16 per tile), \
             batch wait {:.1} ms, {} runtime workers\n",
            self.rounds,
            self.dtype,
            self.tile_size,
            self.tokens_per_tile,
            self.hidden,
            self.tile_bytes,
            self.batch_wait_ms,
            self.worker_threads
        );
        out.push_str(&format!(
            "\nthroughput: {} requests x {} tiles submitted together (medians)\n",
            t.requests, t.tiles_per_request
        ));
        out.push_str(
            "max_batch_tiles  tiles/s  range         wall ms  req latency ms  first tile ms  batches  tiles/batch\n",
        );
        for r in [&t.unbatched, &t.batched] {
            out.push_str(&format!(
                "{:>15}  {:>7.3}  {:.3}-{:.3}  {:>8.0}  {:>14.0}  {:>13.0}  {:>7.0}  {:>11.2}\n",
                r.max_batch_tiles,
                r.tiles_per_s,
                r.tiles_per_s_range.0,
                r.tiles_per_s_range.1,
                r.wall_ms,
                r.request_latency_ms,
                r.first_tile_ms,
                r.batches,
                r.mean_batch_tiles
            ));
        }
        out.push_str(&format!(
            "batched / unbatched: {:.3}x (median of rounds)\n",
            t.speedup
        ));
        let o = &self.overlap;
        out.push_str(&format!(
            "\noverlap: one request of {} tiles (medians, ms from submit)\n",
            o.tiles
        ));
        out.push_str(
            "max_batch_tiles  batches  1st encoded  1st received  last received (wall)  window  finished  encode  convert  transfer  stage sum  overlap\n",
        );
        for r in [&o.pipelined, &o.whole] {
            out.push_str(&format!(
                "{:>15}  {:>7.0}  {:>11.1}  {:>12.1}  {:>20.1}  {:>6.1}  {:>8.1}  {:>6.1}  {:>7.2}  {:>8.2}  {:>9.1}  {:>7.3}\n",
                r.max_batch_tiles,
                r.batches,
                r.first_encoded_ms,
                r.first_received_ms,
                r.wall_ms,
                r.window_ms,
                r.finished_ms,
                r.encode_ms,
                r.convert_ms,
                r.transfer_ms,
                r.stage_sum_ms,
                r.overlap
            ));
        }
        out.push_str(&format!(
            "first tile {:.2}x sooner in chunks of {}; wall time in chunks / whole: {:.3}x\n",
            o.first_tile_speedup, o.pipelined.max_batch_tiles, o.wall_ratio
        ));
        out.push_str(&format!(
            "direct VisionModel::encode of the {} tiles: {:.1} ms ({:.1}-{:.1}); whole / direct: {:.3}x\n",
            o.tiles,
            o.direct_encode_ms,
            o.direct_encode_range_ms.0,
            o.direct_encode_range_ms.1,
            o.whole_vs_direct
        ));
        out
    }
}
