//! A video's sampled frames as tiles: each distinct frame decoded once and tiled like an image
//! (by default one 448 tile, no thumbnail: the card's `max_num = 1`), in the sampled order.

use std::collections::HashMap;

use image::RgbImage;

use super::error::VideoError;
use super::ffmpeg::Video;
use crate::preprocess::{TilingOptions, tile_image};

/// The tiles of a video's sampled frames.
#[derive(Debug, Clone)]
pub struct VideoTiles {
    /// The sampled frame numbers, in order (repeats when the clip has fewer frames).
    pub frame_indices: Vec<u64>,
    /// Every frame's tiles, frame after frame.
    pub tiles: Vec<RgbImage>,
    /// Tiles of each sampled frame.
    pub tiles_per_frame: Vec<usize>,
}

/// The tiling of video frames: `tiling` with at most `max_tiles` tiles per frame.
pub fn frame_tiling(tiling: &TilingOptions, max_tiles: u32) -> TilingOptions {
    TilingOptions {
        max_tiles,
        min_tiles: tiling.min_tiles.min(max_tiles),
        ..tiling.clone()
    }
}

/// Samples `segments` frames of `video` as the model card does and tiles each with `tiling`.
pub fn tile_video(
    video: &Video,
    segments: u32,
    tiling: &TilingOptions,
) -> Result<VideoTiles, VideoError> {
    let frame_indices = video.sample(segments);
    let mut tiled: HashMap<u64, Vec<RgbImage>> = HashMap::new();
    video.frames(&frame_indices, |number, frame| {
        tiled.insert(number, tile_image(&frame, tiling).tiles);
    })?;
    let mut tiles = Vec::new();
    let mut tiles_per_frame = Vec::with_capacity(frame_indices.len());
    for number in &frame_indices {
        let frame = tiled
            .get(number)
            .ok_or_else(|| VideoError::Decode(format!("frame {number} was not decoded")))?;
        tiles_per_frame.push(frame.len());
        tiles.extend(frame.iter().cloned());
    }
    Ok(VideoTiles {
        frame_indices,
        tiles,
        tiles_per_frame,
    })
}
