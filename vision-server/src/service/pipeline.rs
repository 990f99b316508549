//! One `Encode` request from decoded images to features on the wire: preprocessing on the CPU
//! worker pool, embedding-cache lookups, the encoder job for the tiles the cache does not have,
//! and the transfer of every tile, in order, as soon as its features exist.
//!
//! Each request runs in a `encode_request` tracing span (`preprocess`, `transfer` inside; the
//! encoder thread's `encode_batch` spans name the requests in each batch), so one request's
//! timeline can be read from the logs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use dvd_proto::vision::v1::{
    EncodeDone, EncodeEvent, ImagePlanned, ImageSummary, StageTimings, TileSent, encode_event,
};
use dvd_serve::Outcome;
use dvd_transport::{FeatureStream, Tile, TilePosition};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

use super::request::Prepared;
use crate::engine::{
    CacheKey, CachedImage, CachedTile, EncodeJob, EncoderHandle, EncoderOutput, FeatureCache,
};
use crate::model::{RouterThresholds, VisionModel};
use crate::preprocess::{TilingOptions, preprocess};

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

/// Decodes and tiles every image, looks each up in the cache and builds pixel values for the
/// rest. Runs on a blocking worker, never on the async runtime's threads.
pub(crate) fn preprocess_images(
    model: &VisionModel,
    cache: &Mutex<FeatureCache>,
    model_identity: &str,
    prepared: &Prepared,
    cache_usable: bool,
) -> Result<Vec<PlannedImage>, Status> {
    let _span = tracing::info_span!("preprocess", request = %prepared.request_id).entered();
    let mut out = Vec::with_capacity(prepared.images.len());
    for (k, image) in prepared.images.iter().enumerate() {
        let tiled = preprocess(&image.data, &prepared.tiling)
            .map_err(|e| Status::invalid_argument(format!("image {k}: {e}")))?;
        let key = cache_key(
            image.content_hash.as_deref(),
            &tiled.tiles,
            &prepared.tiling,
            &format!("{:?}", prepared.routing),
            model_identity,
        );
        let cached = if cache_usable {
            cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
        } else {
            None
        };
        let pixels = match cached {
            Some(_) => None,
            None => Some(
                model
                    .pixel_values(&tiled.tiles)
                    .map_err(|e| Status::internal(format!("image {k}: {e}")))?,
            ),
        };
        out.push(PlannedImage {
            planned: ImagePlanned {
                image_index: k as u32,
                tile_count: tiled.tiles.len() as u32,
                grid_columns: tiled.grid.0,
                grid_rows: tiled.grid.1,
                thumbnail: tiled.thumbnail,
                original_width: tiled.size.0,
                original_height: tiled.size.1,
                content_hash: bytes::Bytes::copy_from_slice(&key),
                cache_hit: cached.is_some(),
            },
            key,
            cached,
            pixels,
        });
    }
    Ok(out)
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
    pub(crate) arrived: Instant,
    pub(crate) queue: Duration,
    pub(crate) preprocess: Duration,
}

/// Running totals of a request's stages.
#[derive(Default)]
struct Totals {
    encode: Duration,
    transfer: Duration,
}

/// Sends every tile of the request to its destination, in order, and reports progress on
/// `events`; ends with `EncodeDone` or an error status. A dropped event stream (the client
/// went away) aborts the request on the data plane.
pub(crate) async fn run(transfer: Transfer, events: EventSender) -> Outcome {
    let span = tracing::info_span!(
        "encode_request",
        request = %transfer.prepared.request_id,
        destination = %transfer.prepared.destination,
    );
    async move {
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
            Some(Err(status)) => {
                tracing::warn!(error = %status.message(), "encode request failed");
                let _ = events.send(Err(status));
                Outcome::Failed
            }
            None => {
                tracing::info!("client went away; request aborted");
                Outcome::Cancelled
            }
        }
    }
    .instrument(span)
    .await
}

async fn send_all(
    t: Transfer,
    events: &EventSender,
    cancelled: &CancellationToken,
) -> Result<EncodeDone, Status> {
    let Transfer {
        prepared,
        images,
        thresholds,
        mut stream,
        encoder,
        cache,
        cache_usable,
        hidden,
        arrived,
        queue,
        preprocess,
    } = t;
    let destination = prepared.destination.clone();
    for image in &images {
        let _ = events.send(Ok(event(encode_event::Event::Planned(
            image.planned.clone(),
        ))));
    }
    // One encoder job with every tile the cache did not have, in request order.
    let to_encode: Vec<&Tensor> = images.iter().filter_map(|i| i.pixels.as_ref()).collect();
    let mut features = match to_encode.is_empty() {
        true => None,
        false => {
            let pixels = if to_encode.len() == 1 {
                to_encode[0].clone()
            } else {
                Tensor::cat(&to_encode, 0).map_err(|e| Status::internal(e.to_string()))?
            };
            let (tx, rx) = mpsc::unbounded_channel();
            encoder
                .submit(EncodeJob {
                    pixel_values: pixels,
                    thresholds,
                    output: tx,
                    cancelled: cancelled.clone(),
                    label: prepared.request_id.to_string(),
                })
                .map_err(|e| Status::unavailable(e.to_string()))?;
            Some(Encoded {
                rx,
                ready: VecDeque::new(),
            })
        }
    };
    let mut totals = Totals::default();
    let mut summaries = Vec::with_capacity(images.len());
    let image_count = images.len() as u16;
    let mut total_tiles = 0;
    let mut total_tokens = 0;
    for (k, image) in images.iter().enumerate() {
        let tile_count = image.planned.tile_count as u16;
        let mut tokens_per_tile = Vec::with_capacity(usize::from(tile_count));
        let mut fresh = Vec::new();
        for index in 0..tile_count {
            let position = TilePosition {
                image_index: k as u16,
                image_count,
                tile_index: index,
                tile_count,
            };
            let (tile, encode) = match &image.cached {
                Some(cached) => {
                    let c = cached.tiles.get(usize::from(index)).ok_or_else(|| {
                        Status::internal(format!("cached image {k} lacks tile {index}"))
                    })?;
                    let tile = Tile::new(position, c.tokens, hidden, c.data.clone())
                        .map_err(|e| Status::internal(e.to_string()))?;
                    (tile, Duration::ZERO)
                }
                None => {
                    let source = features.as_mut().ok_or_else(|| {
                        Status::internal(format!("image {k} has neither cache nor encoder"))
                    })?;
                    let (tensor, encode) = source.next().await?;
                    (to_tile(position, &tensor, hidden)?, encode)
                }
            };
            totals.encode += encode;
            let tokens = tile.tokens;
            let started = Instant::now();
            if image.cached.is_none() && cache_usable {
                fresh.push(CachedTile {
                    tokens,
                    data: tile.data.clone(),
                });
            }
            let sent = stream.send(tile).await;
            let took = started.elapsed();
            if let Err(e) = sent {
                let _ = stream.abort("send failed").await;
                return Err(Status::unavailable(format!(
                    "sending features to {destination}: {e}"
                )));
            }
            totals.transfer += took;
            tracing::debug!(
                image = k,
                tile = index,
                tokens,
                transfer_us = took.as_micros() as u64,
                "tile sent"
            );
            let _ = events.send(Ok(event(encode_event::Event::Tile(TileSent {
                image_index: k as u32,
                tile_index: u32::from(index),
                tokens,
                encode_us: encode.as_micros() as u64,
                transfer_us: took.as_micros() as u64,
            }))));
            tokens_per_tile.push(tokens);
            total_tiles += 1;
            total_tokens += tokens;
        }
        if !fresh.is_empty() {
            cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(image.key, Arc::new(CachedImage { tiles: fresh }));
        }
        summaries.push(ImageSummary { tokens_per_tile });
    }
    let started = Instant::now();
    stream
        .finish()
        .await
        .map_err(|e| Status::unavailable(format!("delivering features to {destination}: {e}")))?;
    totals.transfer += started.elapsed();
    let us = |d: Duration| d.as_micros() as u64;
    Ok(EncodeDone {
        total_tiles,
        total_tokens,
        images: summaries,
        timings: Some(StageTimings {
            queue_us: us(queue),
            preprocess_us: us(preprocess),
            encode_us: us(totals.encode),
            transfer_us: us(totals.transfer),
            total_us: us(arrived.elapsed()),
        }),
    })
}

/// The encoder's output for one request, tile by tile.
struct Encoded {
    rx: mpsc::UnboundedReceiver<EncoderOutput>,
    ready: VecDeque<(Tensor, Duration)>,
}

impl Encoded {
    async fn next(&mut self) -> Result<(Tensor, Duration), Status> {
        loop {
            if let Some(tile) = self.ready.pop_front() {
                return Ok(tile);
            }
            match self.rx.recv().await {
                Some(Ok(chunk)) => {
                    // The chunk's time is charged to its first tile.
                    let mut encode = chunk.encode;
                    for tile in chunk.tiles {
                        self.ready.push_back((tile, std::mem::take(&mut encode)));
                    }
                }
                Some(Err(message)) => return Err(Status::internal(message)),
                None => return Err(Status::internal("the encoder stopped before the last tile")),
            }
        }
    }
}

/// A tile's features as a BF16 transport tile.
fn to_tile(position: TilePosition, features: &Tensor, hidden: u32) -> Result<Tile, Status> {
    let internal = |e: candle_core::Error| Status::internal(e.to_string());
    let (tokens, width) = features.dims2().map_err(internal)?;
    if width as u32 != hidden {
        return Err(Status::internal(format!(
            "features are {width} wide, expected {hidden}"
        )));
    }
    let values = features
        .to_dtype(DType::BF16)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<half::bf16>())
        .map_err(internal)?;
    Tile::from_bf16(position, tokens as u32, hidden, &values)
        .map_err(|e| Status::internal(e.to_string()))
}

fn event(event: encode_event::Event) -> EncodeEvent {
    EncodeEvent { event: Some(event) }
}
