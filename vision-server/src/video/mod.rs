//! Video input: the frames InternVL3.5's model card samples ([`sampling`]), decoded by FFmpeg's
//! programs in child processes under limits ([`ffmpeg`]), and tiled like images ([`frames`]: one
//! 448 tile per frame by default). Each frame is then an image to the rest of the pipeline.

#[doc(hidden)]
pub mod clips;
pub mod error;
pub mod ffmpeg;
pub mod frames;
pub mod sampling;

pub use error::VideoError;
pub use ffmpeg::{Ffmpeg, Video, VideoDecoder, VideoInfo, VideoLimits};
pub use frames::{VideoTiles, frame_tiling, tile_video};
pub use sampling::{Bound, frame_indices};
