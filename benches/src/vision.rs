//! Vision benchmark: preprocessing time of one image (decode, tile, normalise) and encoder
//! throughput (InternViT + projector, tiles/s) of a checkpoint on the CPU.
//!
//! `tools/bench_vision_torch.py` measures the same two things with Pillow and transformers on
//! the same checkpoint and image, so the two can be quoted as a ratio from one session.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use dvd_vision_server::model::{Routing, VisionModel};
use dvd_vision_server::preprocess::preprocess;
use serde::Serialize;

use crate::model::load_on_cpu;
use crate::stats::{median, range};

/// What to measure.
#[derive(Debug, Clone)]
pub struct VisionBench {
    /// Model directory or hub id.
    pub model: String,
    /// Image whose preprocessing is timed.
    pub image: PathBuf,
    /// Tiles per encoder batch (copies of the image's first tiles).
    pub tiles: usize,
    /// Timed rounds of each measurement; the median is reported.
    pub rounds: usize,
    /// Compute dtype.
    pub dtype: DType,
}

/// `dvd bench vision`'s defaults: 4 tiles per batch, 5 rounds, f32; `model` and `image` are
/// empty (set them).
impl Default for VisionBench {
    fn default() -> Self {
        Self {
            model: String::new(),
            image: PathBuf::new(),
            tiles: 4,
            rounds: 5,
            dtype: DType::F32,
        }
    }
}

/// Medians (and ranges) of one run.
#[derive(Debug, Clone, Serialize)]
pub struct VisionReport {
    /// Image size (width, height).
    pub image_size: (u32, u32),
    /// Tiles the image becomes with the checkpoint's tiling settings.
    pub image_tiles: usize,
    /// Decode + tile + normalise, milliseconds (median).
    pub preprocess_ms: f64,
    /// Fastest and slowest preprocessing round.
    pub preprocess_range_ms: (f64, f64),
    /// Tiles per encoder batch.
    pub batch_tiles: usize,
    /// ViT + projector on one batch, milliseconds (median).
    pub encode_ms: f64,
    /// Fastest and slowest encoder round.
    pub encode_range_ms: (f64, f64),
    /// Encoder throughput from the median.
    pub tiles_per_s: f64,
    /// Compute dtype.
    pub dtype: String,
}

impl VisionBench {
    /// Runs one warm-up and `rounds` timed repetitions of each measurement.
    pub fn run(&self) -> Result<VisionReport> {
        if self.rounds == 0 || self.tiles == 0 {
            bail!("rounds and tiles must be at least 1");
        }
        let (_, model) = load_on_cpu(&self.model, self.dtype, VisionModel::load)?;
        let bytes = std::fs::read(&self.image)
            .with_context(|| format!("reading {}", self.image.display()))?;
        let tiling = model.config().tiling.clone();

        let mut preprocess_ms = Vec::with_capacity(self.rounds);
        let mut tiled = None;
        for round in 0..=self.rounds {
            let started = Instant::now();
            let image = preprocess(&bytes, &tiling)?;
            let values = model.pixel_values(&image.tiles)?;
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            if round > 0 {
                preprocess_ms.push(elapsed);
            }
            tiled = Some((image, values));
        }
        let Some((image, values)) = tiled else {
            bail!("no preprocessing round ran");
        };

        let batch = batch_of(&values, self.tiles)?;
        let mut encode_ms = Vec::with_capacity(self.rounds);
        for round in 0..=self.rounds {
            let started = Instant::now();
            let encoded = model.encode(&batch, Routing::Off)?;
            // Touch the result so nothing is left pending on the device.
            encoded.features.dims();
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            if round > 0 {
                encode_ms.push(elapsed);
            }
        }
        let encode = median(&encode_ms);
        Ok(VisionReport {
            image_size: image.size,
            image_tiles: image.tiles.len(),
            preprocess_ms: median(&preprocess_ms),
            preprocess_range_ms: range(&preprocess_ms),
            batch_tiles: self.tiles,
            encode_ms: encode,
            encode_range_ms: range(&encode_ms),
            tiles_per_s: self.tiles as f64 / (encode / 1e3),
            dtype: format!("{:?}", self.dtype).to_lowercase(),
        })
    }
}

/// The first `n` tiles of `values`, repeating them when the image has fewer.
fn batch_of(values: &Tensor, n: usize) -> Result<Tensor> {
    let available = values.dim(0)?;
    let picks: Vec<u32> = (0..n).map(|i| (i % available) as u32).collect();
    let index = Tensor::new(picks.as_slice(), values.device())?;
    Ok(values.index_select(&index, 0)?)
}
