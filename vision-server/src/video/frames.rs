//! A video's sampled frames as tiles: each distinct frame decoded once and tiled like an image
//! (by default one 448 tile, no thumbnail: the card's `max_num = 1`), in the sampled order.

use std::collections::HashMap;

use image::RgbImage;

use super::error::VideoError;
use super::ffmpeg::Video;
use crate::preprocess::{TiledImage, TilingOptions, tile_image};

/// A video's sampled frames, each tiled.
#[derive(Debug, Clone)]
pub struct VideoTiles {
    /// The sampled frame numbers, in order (repeats when the clip has fewer frames).
    pub frame_indices: Vec<u64>,
    /// Each sampled frame tiled, in the same order.
    pub frames: Vec<TiledImage>,
}

impl VideoTiles {
    /// Tiles of each sampled frame.
    pub fn tiles_per_frame(&self) -> Vec<usize> {
        self.frames.iter().map(|f| f.tiles.len()).collect()
    }

    /// Every frame's tiles, frame after frame.
    pub fn into_tiles(self) -> Vec<RgbImage> {
        self.frames.into_iter().flat_map(|f| f.tiles).collect()
    }
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
    let mut tiled: HashMap<u64, TiledImage> = HashMap::new();
    video.frames(&frame_indices, |number, frame| {
        tiled.insert(number, tile_image(&frame, tiling));
    })?;
    let frames = frame_indices
        .iter()
        .map(|number| {
            tiled
                .get(number)
                .cloned()
                .ok_or_else(|| VideoError::Decode(format!("frame {number} was not decoded")))
        })
        .collect::<Result<_, _>>()?;
    Ok(VideoTiles {
        frame_indices,
        frames,
    })
}
