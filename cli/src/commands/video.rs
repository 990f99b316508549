//! The video options the commands that take one share (`--video`, `--num-frames`,
//! `--video-max-tiles`), and turning them into tiles.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use clap::Args;
use dvd_vision_server::preprocess::TilingOptions;
use dvd_vision_server::video::{Ffmpeg, VideoLimits, VideoTiles, frame_tiling, tile_video};

/// A video and how to sample it.
#[derive(Debug, Clone, Args)]
pub struct VideoArgs {
    /// Video file (anything FFmpeg reads: MP4, MOV, MKV, WebM; H.264, H.265, VP8/9, AV1).
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Frames sampled from the video, as the model card's `get_index` picks them.
    #[arg(long, default_value_t = 8, requires = "video")]
    pub num_frames: u32,
    /// Most tiles per video frame (1: one 448 tile, no thumbnail, as the model card does).
    #[arg(long, default_value_t = 1, requires = "video")]
    pub video_max_tiles: u32,
}

impl VideoArgs {
    /// The video's sampled frames tiled with `tiling` (at most `--video-max-tiles` each);
    /// `None` without `--video`.
    pub fn tile(&self, tiling: &TilingOptions) -> Result<Option<VideoTiles>> {
        let Some(path) = &self.video else {
            return Ok(None);
        };
        ensure!(self.num_frames >= 1, "--num-frames must be at least 1");
        ensure!(
            self.video_max_tiles >= 1,
            "--video-max-tiles must be at least 1"
        );
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let video = Ffmpeg::find()?
            .open(&bytes, &VideoLimits::default())
            .with_context(|| format!("video {}", path.display()))?;
        let tiles = tile_video(
            &video,
            self.num_frames,
            &frame_tiling(tiling, self.video_max_tiles),
        )
        .with_context(|| format!("video {}", path.display()))?;
        Ok(Some(tiles))
    }
}
