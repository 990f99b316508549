//! One `Encode` request from decoded images to features on the wire: preprocessing on the CPU
//! worker pool, embedding-cache lookups, the encoder job for the tiles the cache does not have,
//! and the transfer of every tile, in order, as soon as its features exist.
//!
//! Each request runs in an `encode_request` tracing span (the gRPC handler's): `preprocess`,
//! `encoder_queue` and `encode_batch` (on the encoder thread, naming the requests in each batch)
//! and one `send_tile` per tile inside, so one request's timeline can be read from the logs and
//! from its trace.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use dvd_proto::vision::v1::{
    EncodeDone, EncodeEvent, ImagePlanned, ImageSummary, StageTimings, TileSent, encode_event,
};
use dvd_serve::Outcome;
use dvd_transport::{Destination, FeatureStream, FrameError, Tile, TilePosition, TransportError};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

use super::request::Prepared;
use crate::engine::{
    CacheKey, CachedImage, CachedTile, EncodeError, EncodeJob, EncoderHandle, EncoderOutput,
    EncoderStopped, FeatureCache,
};
use crate::model::{RouterThresholds, VisionModel};
use crate::preprocess::{TiledImage, TilingOptions, preprocess};
use crate::video::{VideoDecoder, VideoError, frame_tiling, tile_video};

/// Events of one `Encode` call.
pub(crate) type EventSender = mpsc::UnboundedSender<Result<EncodeEvent, Status>>;

/// An image after decoding and tiling.
#[derive(Debug)]
pub(crate) struct PlannedImage {
    pub(crate) planned: ImagePlanned,
    pub(crate) key: CacheKey,
    /// Features from the cache, when it had them (and may be used).
    pub(crate) cached: Option<Arc<CachedImage>>,
    /// Pixel values `[tiles, 3, S, S]` when the image must be encoded.
    pub(crate) pixels: Option<Tensor>,
}

/// What preprocessing reads besides the request: the model, its embedding cache and the video
/// decoder.
pub(crate) struct Preprocessing<'a> {
    pub(crate) model: &'a VisionModel,
    pub(crate) cache: &'a Mutex<FeatureCache>,
    pub(crate) model_identity: &'a str,
    pub(crate) video: &'a VideoDecoder,
    /// Whether the cache may serve (and, later, keep) this request's images.
    pub(crate) cache_usable: bool,
}

/// Decodes and tiles every image, and every video into its sampled frames (each then an image
/// of its own), looks each up in the cache and builds pixel values for the rest. Runs on a
/// blocking worker, never on the async runtime's threads.
pub(crate) fn preprocess_images(
    ctx: &Preprocessing<'_>,
    prepared: &Prepared,
) -> Result<Vec<PlannedImage>, Status> {
    let _span = tracing::info_span!("preprocess", request = %prepared.request_id).entered();
    let mut out = Vec::with_capacity(prepared.image_count());
    for (k, input) in prepared.images.iter().enumerate() {
        match input.video {
            None => {
                let tiled = preprocess(&input.data, &prepared.tiling)
                    .map_err(|e| Status::invalid_argument(format!("image {k}: {e}")))?;
                let hash = input.content_hash.as_deref();
                let image = plan(ctx, prepared, tiled, hash, &prepared.tiling, out.len())?;
                out.push(image);
            }
            Some(request) => {
                let _span = tracing::info_span!("decode_video", image = k, frames = request.frames)
                    .entered();
                let tiling = frame_tiling(&prepared.tiling, request.max_tiles);
                let video = ctx
                    .video
                    .open(&input.data)
                    .and_then(|video| tile_video(&video, request.frames, &tiling))
                    .map_err(|e| video_status(k, &e))?;
                for (number, frame) in video.frame_indices.into_iter().zip(video.frames) {
                    let mut image = plan(ctx, prepared, frame, None, &tiling, out.len())?;
                    image.planned.frame_number = Some(number);
                    out.push(image);
                }
            }
        }
    }
    Ok(out)
}

/// Image `index` of the request, tiled: its cache key (the gateway's `hash`, else its pixels),
/// the cache's features or its pixel values.
fn plan(
    ctx: &Preprocessing<'_>,
    prepared: &Prepared,
    tiled: TiledImage,
    hash: Option<&[u8]>,
    tiling: &TilingOptions,
    index: usize,
) -> Result<PlannedImage, Status> {
    let key = cache_key(
        hash,
        &tiled.tiles,
        tiling,
        &format!("{:?}", prepared.routing),
        ctx.model_identity,
    );
    let cached = if ctx.cache_usable {
        ctx.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
    } else {
        None
    };
    let pixels = match cached {
        Some(_) => None,
        None => Some(
            ctx.model
                .pixel_values(&tiled.tiles)
                .map_err(|e| Status::internal(format!("image {index}: {e}")))?,
        ),
    };
    Ok(PlannedImage {
        planned: ImagePlanned {
            image_index: index as u32,
            tile_count: tiled.tiles.len() as u32,
            grid_columns: tiled.grid.0,
            grid_rows: tiled.grid.1,
            thumbnail: tiled.thumbnail,
            original_width: tiled.size.0,
            original_height: tiled.size.1,
            content_hash: bytes::Bytes::copy_from_slice(&key),
            cache_hit: cached.is_some(),
            frame_number: None,
        },
        key,
        cached,
        pixels,
    })
}

/// The status of a video that could not be used: the request's fault (`INVALID_ARGUMENT`), a
/// server without FFmpeg (`FAILED_PRECONDITION`: another server may have it) or a local failure.
fn video_status(k: usize, error: &VideoError) -> Status {
    let message = format!("video {k}: {error}");
    match error {
        VideoError::NoDecoder(_) => Status::failed_precondition(message),
        e if e.is_bad_input() => Status::invalid_argument(message),
        _ => Status::internal(message),
    }
}

/// The cache key: the gateway's content hash or the decoded tiles' pixels, the tiling and
/// routing options and the model.
fn cache_key(
    content_hash: Option<&[u8]>,
    tiles: &[image::RgbImage],
    tiling: &TilingOptions,
    routing: &str,
    model: &str,
) -> CacheKey {
    let mut h = Sha256::new();
    match content_hash {
        Some(hash) => {
            h.update(b"client-hash");
            h.update(hash);
        }
        None => {
            h.update(b"pixels");
            for tile in tiles {
                h.update(tile.width().to_le_bytes());
                h.update(tile.height().to_le_bytes());
                h.update(tile.as_raw());
            }
        }
    }
    h.update(format!("{tiling:?}|{routing}|{model}").as_bytes());
    h.finalize().into()
}

/// What the transfer of one request needs.
pub(crate) struct Transfer {
    pub(crate) prepared: Prepared,
    pub(crate) images: Vec<PlannedImage>,
    pub(crate) thresholds: Option<RouterThresholds>,
    pub(crate) stream: Box<dyn FeatureStream>,
    pub(crate) encoder: EncoderHandle,
    pub(crate) cache: Arc<Mutex<FeatureCache>>,
    pub(crate) cache_usable: bool,
    pub(crate) hidden: u32,
    pub(crate) clock: RequestClock,
    /// The request's span, parent of the encoder's spans for it.
    pub(crate) span: tracing::Span,
}

/// When a request arrived and how long it took to be admitted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestClock {
    /// When `Encode` was called.
    pub(crate) arrived: Instant,
    /// Waiting for a preprocessing worker.
    pub(crate) queue: Duration,
    /// Decoding, tiling and cache lookups.
    pub(crate) preprocess: Duration,
}

/// Why a request's transfer failed; [`TransferError::to_status`] is its one mapping to a gRPC
/// status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferError {
    /// The encoder thread has stopped, so the request's tiles could not be queued.
    #[error(transparent)]
    EncoderStopped(#[from] EncoderStopped),
    /// The encoder failed on the request's tiles.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The encoder's output ended before the request's last tile.
    #[error("the encoder stopped before the last tile")]
    EncoderEnded,
    /// A cached image has fewer tiles than it was planned with.
    #[error("cached image {image} lacks tile {tile}")]
    CachedTileMissing {
        /// Index of the image in the request.
        image: usize,
        /// The missing tile.
        tile: u16,
    },
    /// An image neither came from the cache nor went to the encoder.
    #[error("image {0} has neither cache nor encoder")]
    NoSource(usize),
    /// A tile's features are not as wide as the language model.
    #[error("features are {width} wide, expected {hidden}")]
    Width {
        /// Width of the features.
        width: usize,
        /// The language model's hidden size.
        hidden: u32,
    },
    /// A tensor operation on the request's features failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The features do not make a valid transport tile.
    #[error(transparent)]
    Tile(#[from] FrameError),
    /// A tile could not be sent; the stream was aborted.
    #[error("sending features to {destination}: {source}")]
    Send {
        /// Where the features were going.
        destination: Destination,
        /// The transport's error.
        source: Box<TransportError>,
    },
    /// The destination did not confirm the request's tiles.
    #[error("delivering features to {destination}: {source}")]
    Deliver {
        /// Where the features were going.
        destination: Destination,
        /// The transport's error.
        source: Box<TransportError>,
    },
}

impl TransferError {
    /// The status the client gets: `UNAVAILABLE` when the encoder or the destination is gone (a
    /// retry elsewhere may work), `INTERNAL` otherwise.
    pub(crate) fn to_status(&self) -> Status {
        let message = self.to_string();
        match self {
            Self::EncoderStopped(_) | Self::Send { .. } | Self::Deliver { .. } => {
                Status::unavailable(message)
            }
            Self::Encode(_)
            | Self::EncoderEnded
            | Self::CachedTileMissing { .. }
            | Self::NoSource(_)
            | Self::Width { .. }
            | Self::Tensor(_)
            | Self::Tile(_) => Status::internal(message),
        }
    }
}

/// Sends every tile of the request to its destination, in order, and reports progress on
/// `events`; ends with `EncodeDone` or an error status. A dropped event stream (the client
/// went away) aborts the request on the data plane.
pub(crate) async fn run(transfer: Transfer, events: EventSender) -> Outcome {
    let cancelled = CancellationToken::new();
    let watcher = events.clone();
    let outcome = tokio::select! {
        outcome = send_all(transfer, &events, &cancelled) => Some(outcome),
        () = watcher.closed() => None,
    };
    cancelled.cancel(); // stop any tiles still queued in the encoder
    match outcome {
        Some(Ok(done)) => {
            let _ = events.send(Ok(event(encode_event::Event::Done(done))));
            Outcome::Finished
        }
        Some(Err(error)) => {
            tracing::warn!(error = %error, "encode request failed");
            let _ = events.send(Err(error.to_status()));
            Outcome::Failed
        }
        None => {
            tracing::info!("client went away; request aborted");
            Outcome::Cancelled
        }
    }
}

/// Announces every image's plan, queues the tiles the cache lacks, sends each image's tiles in
/// order and waits for the destination to confirm them.
async fn send_all(
    t: Transfer,
    events: &EventSender,
    cancelled: &CancellationToken,
) -> Result<EncodeDone, TransferError> {
    for image in &t.images {
        let _ = events.send(Ok(event(encode_event::Event::Planned(
            image.planned.clone(),
        ))));
    }
    let mut source = TileSource {
        encoded: submit_uncached(&t, cancelled)?,
        cache: t.cache,
        cache_usable: t.cache_usable,
        hidden: t.hidden,
    };
    let mut outgoing = Outgoing {
        stream: t.stream,
        destination: t.prepared.destination.clone(),
        events,
        totals: Totals::default(),
    };
    let mut summaries = Vec::with_capacity(t.images.len());
    for (k, image) in t.images.iter().enumerate() {
        let position = TilePosition {
            image_index: k as u16,
            image_count: t.images.len() as u16,
            tile_index: 0,
            tile_count: image.planned.tile_count as u16,
        };
        match outgoing.send_image(image, position, &mut source).await {
            Ok(summary) => summaries.push(summary),
            Err(error) => return Err(outgoing.abandon(error).await),
        }
    }
    outgoing.finish(summaries, t.clock).await
}

/// One encoder job with every tile the cache did not have, in request order; `None` when the
/// cache had them all.
fn submit_uncached(
    t: &Transfer,
    cancelled: &CancellationToken,
) -> Result<Option<Encoded>, TransferError> {
    let to_encode: Vec<&Tensor> = t.images.iter().filter_map(|i| i.pixels.as_ref()).collect();
    if to_encode.is_empty() {
        return Ok(None);
    }
    let pixels = if to_encode.len() == 1 {
        to_encode[0].clone()
    } else {
        Tensor::cat(&to_encode, 0)?
    };
    let (tx, rx) = mpsc::unbounded_channel();
    t.encoder.submit(EncodeJob {
        pixel_values: pixels,
        thresholds: t.thresholds,
        output: tx,
        cancelled: cancelled.clone(),
        label: t.prepared.request_id.to_string(),
        span: t.span.clone(),
    })?;
    Ok(Some(Encoded {
        rx,
        ready: VecDeque::new(),
    }))
}

/// Running totals of a request's stages and of what it sent.
#[derive(Default)]
struct Totals {
    encode: Duration,
    transfer: Duration,
    tiles: u32,
    tokens: u32,
}

/// Where a request's tile features come from (the cache or the encoder) and where fresh ones
/// are kept.
struct TileSource {
    encoded: Option<Encoded>,
    cache: Arc<Mutex<FeatureCache>>,
    /// Whether freshly encoded images go into the cache.
    cache_usable: bool,
    hidden: u32,
}

/// A tile ready to send, and the encoder time charged to it.
struct ReadyTile {
    tile: Tile,
    encode: Duration,
}

impl TileSource {
    /// The tile at `position` of `image`, from the cache or the encoder.
    async fn tile(
        &mut self,
        image: &PlannedImage,
        position: TilePosition,
    ) -> Result<ReadyTile, TransferError> {
        let k = usize::from(position.image_index);
        let index = position.tile_index;
        match &image.cached {
            Some(cached) => {
                let c = cached.tiles.get(usize::from(index)).ok_or(
                    TransferError::CachedTileMissing {
                        image: k,
                        tile: index,
                    },
                )?;
                Ok(ReadyTile {
                    tile: Tile::new(position, c.tokens, self.hidden, c.data.clone())?,
                    encode: Duration::ZERO,
                })
            }
            None => {
                let encoded = self.encoded.as_mut().ok_or(TransferError::NoSource(k))?;
                let EncodedTile { features, encode } = encoded.next().await?;
                Ok(ReadyTile {
                    tile: to_tile(position, &features, self.hidden)?,
                    encode,
                })
            }
        }
    }

    /// Whether `image`'s tiles, once sent, should go into the cache.
    fn keeps(&self, image: &PlannedImage) -> bool {
        image.cached.is_none() && self.cache_usable
    }

    /// Caches `image`'s freshly encoded tiles.
    fn remember(&self, image: &PlannedImage, tiles: Vec<CachedTile>) {
        if !tiles.is_empty() {
            self.cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(image.key, Arc::new(CachedImage { tiles }));
        }
    }
}

/// The request's feature stream, and the events and totals of what went through it.
struct Outgoing<'a> {
    stream: Box<dyn FeatureStream>,
    destination: Destination,
    events: &'a EventSender,
    totals: Totals,
}

impl Outgoing<'_> {
    /// Sends `image`'s tiles in order (`position` names the image), caching the fresh ones once
    /// all are sent.
    async fn send_image(
        &mut self,
        image: &PlannedImage,
        position: TilePosition,
        source: &mut TileSource,
    ) -> Result<ImageSummary, TransferError> {
        let mut tokens_per_tile = Vec::with_capacity(usize::from(position.tile_count));
        let mut fresh = Vec::new();
        for tile_index in 0..position.tile_count {
            let position = TilePosition {
                tile_index,
                ..position
            };
            let ReadyTile { tile, encode } = source.tile(image, position).await?;
            self.totals.encode += encode;
            let tokens = tile.tokens;
            if source.keeps(image) {
                fresh.push(CachedTile {
                    tokens,
                    data: tile.data.clone(),
                });
            }
            self.send(tile, encode).await?;
            tokens_per_tile.push(tokens);
        }
        source.remember(image, fresh);
        Ok(ImageSummary { tokens_per_tile })
    }

    /// Sends one tile and reports it (`encode`: the encoder time charged to it).
    async fn send(&mut self, tile: Tile, encode: Duration) -> Result<(), TransferError> {
        let (image, index, tokens) = (tile.image_index, tile.tile_index, tile.tokens);
        let started = Instant::now();
        let sent = self
            .stream
            .send(tile)
            .instrument(tracing::info_span!(
                "send_tile",
                image,
                tile = index,
                tokens
            ))
            .await;
        let took = started.elapsed();
        sent.map_err(|source| TransferError::Send {
            destination: self.destination.clone(),
            source: Box::new(source),
        })?;
        self.totals.transfer += took;
        tracing::debug!(
            image,
            tile = index,
            tokens,
            transfer_us = took.as_micros() as u64,
            "tile sent"
        );
        let _ = self
            .events
            .send(Ok(event(encode_event::Event::Tile(TileSent {
                image_index: u32::from(image),
                tile_index: u32::from(index),
                tokens,
                encode_us: encode.as_micros() as u64,
                transfer_us: took.as_micros() as u64,
            }))));
        self.totals.tiles += 1;
        self.totals.tokens += tokens;
        Ok(())
    }

    /// Ends the stream after `error`: a failed send aborts it, so the receiver fails at once.
    async fn abandon(self, error: TransferError) -> TransferError {
        if matches!(error, TransferError::Send { .. }) {
            let _ = self.stream.abort("send failed").await;
        }
        error
    }

    /// Waits for the destination to confirm every tile, then sums the request up.
    async fn finish(
        self,
        images: Vec<ImageSummary>,
        clock: RequestClock,
    ) -> Result<EncodeDone, TransferError> {
        let Self {
            stream,
            destination,
            mut totals,
            ..
        } = self;
        let started = Instant::now();
        stream
            .finish()
            .instrument(tracing::info_span!("confirm_delivery"))
            .await
            .map_err(|source| TransferError::Deliver {
                destination,
                source: Box::new(source),
            })?;
        totals.transfer += started.elapsed();
        let us = |d: Duration| d.as_micros() as u64;
        Ok(EncodeDone {
            total_tiles: totals.tiles,
            total_tokens: totals.tokens,
            images,
            timings: Some(StageTimings {
                queue_us: us(clock.queue),
                preprocess_us: us(clock.preprocess),
                encode_us: us(totals.encode),
                transfer_us: us(totals.transfer),
                total_us: us(clock.arrived.elapsed()),
            }),
        })
    }
}

/// One tile's features from the encoder, and the encoder time charged to it.
struct EncodedTile {
    features: Tensor,
    encode: Duration,
}

/// The encoder's output for one request, tile by tile.
struct Encoded {
    rx: mpsc::UnboundedReceiver<EncoderOutput>,
    ready: VecDeque<EncodedTile>,
}

impl Encoded {
    async fn next(&mut self) -> Result<EncodedTile, TransferError> {
        loop {
            if let Some(tile) = self.ready.pop_front() {
                return Ok(tile);
            }
            match self.rx.recv().await {
                Some(Ok(chunk)) => {
                    // The chunk's time is charged to its first tile.
                    let mut encode = chunk.encode;
                    for features in chunk.tiles {
                        self.ready.push_back(EncodedTile {
                            features,
                            encode: std::mem::take(&mut encode),
                        });
                    }
                }
                Some(Err(error)) => return Err(error.into()),
                None => return Err(TransferError::EncoderEnded),
            }
        }
    }
}

/// A tile's features as a BF16 transport tile.
fn to_tile(position: TilePosition, features: &Tensor, hidden: u32) -> Result<Tile, TransferError> {
    let (tokens, width) = features.dims2()?;
    if width as u32 != hidden {
        return Err(TransferError::Width { width, hidden });
    }
    let values = features
        .to_dtype(DType::BF16)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<half::bf16>())?;
    Ok(Tile::from_bf16(position, tokens as u32, hidden, &values)?)
}

fn event(event: encode_event::Event) -> EncodeEvent {
    EncodeEvent { event: Some(event) }
}
