#![allow(clippy::unwrap_used)]
//! The batching encoder: tiles of different requests share ViT batches, yet every request gets
//! exactly the features it gets alone (with and without the router), tile chunks leave as soon as
//! their batch is done, and cancelled requests' tiles are dropped.
//!
//! Bit-exactness across batch compositions holds once gemm is past its small-matrix paths, which
//! real InternViT always is (1025 rows per tile). The fixtures' tiles have 17 rows, so every batch
//! here holds at least 5 tiles.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Tensor};
use dvd_vision_server::engine::{
    EncodeJob, EncodedChunk, EncoderConfig, EncoderHandle, EncoderOutput,
};
use dvd_vision_server::model::{Routing, VisionModel};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::{load_model, reference_pixel_values};

fn job(
    pixels: Tensor,
    model: &VisionModel,
    routing: Routing,
) -> (EncodeJob, mpsc::UnboundedReceiver<EncoderOutput>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let job = EncodeJob {
        pixel_values: pixels,
        thresholds: model.thresholds(routing).unwrap(),
        output: tx,
        cancelled: CancellationToken::new(),
        label: "test".into(),
        span: tracing::Span::none(),
    };
    (job, rx)
}

/// Every chunk of a job until its channel closes.
async fn chunks(mut rx: mpsc::UnboundedReceiver<EncoderOutput>) -> Vec<EncodedChunk> {
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.push(chunk.unwrap());
    }
    out
}

fn values(tiles: &[Tensor]) -> Vec<f32> {
    Tensor::cat(tiles, 0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[tokio::test]
async fn requests_batched_together_get_their_features_alone_bit_for_bit() {
    let model = Arc::new(load_model("flash-custom", DType::F32));
    let pv = reference_pixel_values();
    let tiles = pv.dim(0).unwrap();
    let plain = model.encode(&pv, Routing::Off).unwrap();
    let routed_pv = pv.narrow(0, 0, 5).unwrap();
    let routed = model.encode(&routed_pv, Routing::On).unwrap();

    let encoder = EncoderHandle::start(
        model.clone(),
        EncoderConfig {
            max_batch_tiles: 64,
            batch_wait: Duration::from_millis(500),
        },
    )
    .unwrap();
    let (a, rx_a) = job(pv.clone(), &model, Routing::Off);
    let (b, rx_b) = job(routed_pv, &model, Routing::On);
    encoder.submit(a).unwrap();
    encoder.submit(b).unwrap();
    let (got_a, got_b) = tokio::join!(chunks(rx_a), chunks(rx_b));
    // One batch held both requests' tiles.
    assert_eq!(got_a.len(), 1);
    assert_eq!(got_a[0].batch_tiles, tiles + 5);
    assert_eq!(
        values(&got_a[0].tiles),
        plain
            .features
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    let b_tiles: Vec<Tensor> = got_b.iter().flat_map(|c| c.tiles.clone()).collect();
    let counts: Vec<usize> = b_tiles.iter().map(|t| t.dim(0).unwrap()).collect();
    assert_eq!(counts, routed.tokens_per_tile);
    assert!(
        counts.iter().any(|&n| n != counts[0]),
        "the router compressed some tiles"
    );
    assert_eq!(
        values(&b_tiles),
        routed
            .features
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    let stats = encoder.stats();
    assert_eq!(stats.encoded_tiles, (tiles + 5) as u64);
    assert_eq!((stats.batches, stats.queued_tiles), (1, 0));
}

#[tokio::test]
async fn small_batches_send_early_tiles_first_and_cancelled_tiles_are_dropped() {
    let model = Arc::new(load_model("vit300m-hf", DType::F32));
    let seven = reference_pixel_values();
    let pv = Tensor::cat(&[&seven, &seven.narrow(0, 0, 3).unwrap()], 0).unwrap();
    let whole = model.encode(&pv, Routing::Off).unwrap();
    let encoder = EncoderHandle::start(
        model.clone(),
        EncoderConfig {
            max_batch_tiles: 5,
            batch_wait: Duration::ZERO,
        },
    )
    .unwrap();
    let (a, rx) = job(pv.clone(), &model, Routing::Off);
    encoder.submit(a).unwrap();
    let got = chunks(rx).await;
    let firsts: Vec<usize> = got.iter().map(|c| c.first_tile).collect();
    assert_eq!(firsts, vec![0, 5]);
    let tiles: Vec<Tensor> = got.iter().flat_map(|c| c.tiles.clone()).collect();
    assert_eq!(
        values(&tiles),
        whole
            .features
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );

    // A cancelled job's tiles never reach ViT.
    let before = encoder.stats().encoded_tiles;
    let (b, rx) = job(pv, &model, Routing::Off);
    b.cancelled.cancel();
    encoder.submit(b).unwrap();
    assert!(chunks(rx).await.is_empty());
    let stats = encoder.stats();
    assert_eq!(stats.encoded_tiles, before);
    assert_eq!(stats.queued_tiles, 0);
}
