//! The vision server's engine: the [`encoder`] thread that batches tiles across requests, and
//! the [`cache`] of recently encoded images.

pub mod cache;
pub mod encoder;

pub use cache::{CacheKey, CacheStats, CachedImage, CachedTile, FeatureCache};
pub use encoder::{
    EncodeError, EncodeJob, EncodedChunk, EncoderConfig, EncoderHandle, EncoderOutput,
    EncoderStats, EncoderStopped,
};
