//! `dvd encode`: runs the vision half of a checkpoint on images and writes the features the
//! language server would receive.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use super::device::ComputeArgs;
use super::video::VideoArgs;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use dvd_vision_server::model::{LoadOptions, Routing, VisionModel};
use dvd_vision_server::preprocess::preprocess;
use image::RgbImage;
use serde_json::json;

/// Options of `dvd encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Model directory, or a hub id (`owner/name[@revision]`) in the local Hugging Face cache.
    #[arg(long)]
    model: String,
    /// Image file (JPEG, PNG or WebP); repeat for several images of one request.
    #[arg(long = "image", required_unless_present = "video")]
    images: Vec<PathBuf>,
    /// Video file (anything FFmpeg reads: MP4, MOV, MKV, WebM...); its frames follow the images.
    #[command(flatten)]
    video: VideoArgs,
    /// Most tiles per image, thumbnail excluded (default: the checkpoint's setting).
    #[arg(long)]
    max_tiles: Option<u32>,
    /// Do not append a thumbnail to multi-tile images.
    #[arg(long)]
    no_thumbnail: bool,
    /// Visual Resolution Router (Flash checkpoints); default: the config's `flash_mode`.
    #[arg(long, value_enum)]
    vir: Option<Switch>,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Output safetensors file: `pixel_values`, `features`, `tokens_per_tile`, `tiles_per_image`
    /// (one entry per image, then per video frame) and, with `--video`, `frame_indices`.
    #[arg(long)]
    out: PathBuf,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Compute precision of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
}

impl Switch {
    /// The router setting `--vir` asks for (absent: the config's `flash_mode`).
    pub fn routing(vir: Option<Switch>) -> Routing {
        match vir {
            None => Routing::Default,
            Some(Switch::On) => Routing::On,
            Some(Switch::Off) => Routing::Off,
        }
    }
}

/// Decodes and tiles `images` with `model`'s tiling, `--max-tiles` and `--no-thumbnail`
/// applied; returns every tile in order and the number of tiles of each image.
pub fn tile_images(
    model: &VisionModel,
    images: &[PathBuf],
    max_tiles: Option<u32>,
    no_thumbnail: bool,
) -> Result<(Vec<RgbImage>, Vec<usize>)> {
    let mut tiling = model.config().tiling.clone();
    if let Some(max) = max_tiles {
        if max == 0 {
            bail!("--max-tiles must be at least 1");
        }
        tiling.max_tiles = max;
        tiling.min_tiles = tiling.min_tiles.min(max);
    }
    if no_thumbnail {
        tiling.thumbnail = false;
    }
    let mut tiles = Vec::new();
    let mut tiles_per_image = Vec::with_capacity(images.len());
    for path in images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let tiled =
            preprocess(&bytes, &tiling).with_context(|| format!("image {}", path.display()))?;
        tiles_per_image.push(tiled.tiles.len());
        tiles.extend(tiled.tiles);
    }
    Ok((tiles, tiles_per_image))
}

/// Tiles of one request's media: its images, then its video's sampled frames.
#[derive(Debug, Clone)]
pub struct Media {
    /// Every tile, in order.
    pub tiles: Vec<RgbImage>,
    /// Tiles of each image, then of each video frame.
    pub tiles_per_image: Vec<usize>,
    /// The video's sampled frame numbers, with a video.
    pub frame_indices: Option<Vec<u64>>,
}

/// [`tile_images`], then the frames of `video`'s video (if any) tiled after them.
pub fn tile_media(
    model: &VisionModel,
    images: &[PathBuf],
    max_tiles: Option<u32>,
    no_thumbnail: bool,
    video: &VideoArgs,
) -> Result<Media> {
    let (mut tiles, mut tiles_per_image) = tile_images(model, images, max_tiles, no_thumbnail)?;
    let video = video.tile(&model.config().tiling)?;
    let frame_indices = video.map(|video| {
        tiles_per_image.extend(video.tiles_per_frame());
        let frame_indices = video.frame_indices.clone();
        tiles.extend(video.into_tiles());
        frame_indices
    });
    Ok(Media {
        tiles,
        tiles_per_image,
        frame_indices,
    })
}

impl Precision {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl EncodeArgs {
    /// Runs the command and prints a one-line JSON summary.
    pub fn run(self) -> Result<()> {
        let total = Instant::now();
        let dir = dvd_checkpoint::resolve_model_dir(&self.model)?;
        let dtype = self.compute.dtype();
        let started = Instant::now();
        let model = VisionModel::load(
            &dir,
            &LoadOptions {
                dtype,
                device: self.compute.open()?,
            },
        )
        .with_context(|| format!("loading the vision model from {}", dir.display()))?;
        let load_ms = ms(started);

        let started = Instant::now();
        let media = tile_media(
            &model,
            &self.images,
            self.max_tiles,
            self.no_thumbnail,
            &self.video,
        )?;
        let tiles = media.tiles;
        let tiles_per_image: Vec<i64> = media.tiles_per_image.iter().map(|&n| n as i64).collect();
        let pixel_values = model.pixel_values(&tiles)?;
        let preprocess_ms = ms(started);

        let routing = Switch::routing(self.vir);
        let encoded = model.encode(&pixel_values, routing)?;
        let tokens: usize = encoded.tokens_per_tile.iter().sum();
        let tokens_per_tile: Vec<i64> = encoded.tokens_per_tile.iter().map(|&t| t as i64).collect();
        let tiles_count = tokens_per_tile.len();
        let mut outputs: HashMap<String, Tensor> = HashMap::from([
            (
                "pixel_values".to_string(),
                pixel_values.to_device(&Device::Cpu)?,
            ),
            (
                "features".to_string(),
                encoded
                    .features
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?,
            ),
            (
                "tokens_per_tile".to_string(),
                Tensor::new(tokens_per_tile.as_slice(), &Device::Cpu)?,
            ),
            (
                "tiles_per_image".to_string(),
                Tensor::new(tiles_per_image.as_slice(), &Device::Cpu)?,
            ),
        ]);
        if let Some(frames) = &media.frame_indices {
            let indices: Vec<i64> = frames.iter().map(|&n| n as i64).collect();
            outputs.insert(
                "frame_indices".into(),
                Tensor::new(indices.as_slice(), &Device::Cpu)?,
            );
        }
        candle_core::safetensors::save(&outputs, &self.out)
            .with_context(|| format!("writing {}", self.out.display()))?;

        let t = encoded.timings;
        let summary = json!({
            "images": self.images.len(),
            "frame_indices": media.frame_indices,
            "tiles": tiles_count,
            "tiles_per_image": tiles_per_image,
            "tokens": tokens,
            "hidden": model.config().llm_hidden_size,
            "compressed_tiles": encoded.router.as_ref().map(|r| r.compress.iter().filter(|&&c| c).count()),
            "dtype": format!("{dtype:?}").to_lowercase(),
            "out": self.out,
            "timings_ms": {
                "load": load_ms,
                "preprocess": preprocess_ms,
                "vit": round(t.vit.as_secs_f64() * 1e3),
                "router": round(t.router.as_secs_f64() * 1e3),
                "project": round(t.project.as_secs_f64() * 1e3),
                "total": ms(total),
            },
        });
        println!("{summary}");
        Ok(())
    }
}

fn ms(since: Instant) -> f64 {
    round(since.elapsed().as_secs_f64() * 1e3)
}

/// Milliseconds to microsecond precision, for a readable summary.
fn round(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}
