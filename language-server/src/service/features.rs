//! Moves one request's features from its transport inbox to the engine, tile by tile, as they
//! arrive; fails the request when they do not all arrive before its deadline or the stream
//! breaks. Each tile's wait and arrival is a `feature_tile` span in the request's trace (the
//! features come over the data plane, which carries no trace context: the spans' parent is the
//! `Generate` call's span).

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use dvd_transport::{Inbox, Tile};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field, info_span};

use crate::engine::{EngineHandle, FailureKind, FeatureTile};

/// Forwards tiles until the last one, the deadline, a broken stream or `stop`.
pub(crate) async fn forward_features(
    mut inbox: Inbox,
    id: u64,
    engine: EngineHandle,
    timeout: Duration,
    stop: CancellationToken,
) {
    let deadline = Instant::now() + timeout;
    let request = inbox.request_id();
    let mut digest = Sha256::new();
    let mut tiles = 0u32;
    loop {
        let span = info_span!(
            "feature_tile",
            image = field::Empty,
            tile = field::Empty,
            tokens = field::Empty
        );
        let waiting = tokio::time::timeout_at(deadline, inbox.next_tile());
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = waiting.instrument(span.clone()) => next,
        };
        let _arrived = span.enter();
        let failure = match next {
            Ok(Ok(None)) => return, // every tile delivered
            Ok(Ok(Some(tile))) => {
                tiles += 1;
                span.record("image", tile.image_index);
                span.record("tile", tile.tile_index);
                span.record("tokens", tile.tokens);
                match feature_tile(&tile, &mut digest) {
                    Ok(tile) => {
                        if engine.push_features(id, tile).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => (
                        FailureKind::InvalidInput,
                        format!("tile of request {request} is unusable: {e}"),
                    ),
                }
            }
            Ok(Err(e)) => (
                FailureKind::FeaturesFailed,
                format!("feature stream of request {request} failed: {e}"),
            ),
            Err(_) => (
                FailureKind::FeaturesTimedOut,
                format!(
                    "image features of request {request} did not all arrive within {} ms \
                     ({tiles} tile(s) received)",
                    timeout.as_millis()
                ),
            ),
        };
        let _ = engine.fail(id, failure.0, failure.1);
        return; // dropping the inbox tells a sender still streaming that nobody listens
    }
}

/// A transport tile as the engine takes it; `digest` accumulates the image's features and is
/// handed over (and reset) with its last tile.
fn feature_tile(tile: &Tile, digest: &mut Sha256) -> candle_core::Result<FeatureTile> {
    let features = Tensor::from_raw_buffer(
        &tile.data,
        DType::BF16,
        &[tile.tokens as usize, tile.hidden as usize],
        &Device::Cpu,
    )?;
    digest.update(&tile.data);
    let last = tile.tile_index + 1 == tile.tile_count;
    Ok(FeatureTile {
        image_index: usize::from(tile.image_index),
        tile_index: usize::from(tile.tile_index),
        tile_count: usize::from(tile.tile_count),
        features,
        image_digest: last.then(|| std::mem::take(digest).finalize().into()),
    })
}
