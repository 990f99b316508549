//! Errors of the vision server library.

/// What can go wrong turning an uploaded image into tiles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The bytes are not an image in a supported format (JPEG, PNG, WebP).
    #[error("not a supported image (JPEG, PNG or WebP): {0}")]
    Unrecognised(String),
    /// The image's header or data is damaged or truncated.
    #[error("cannot decode image: {0}")]
    Corrupt(String),
    /// The image has no pixels.
    #[error("image has zero size ({width}x{height})")]
    Empty {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
    },
    /// The image is larger than the configured pixel limit (checked before decoding).
    #[error("image of {width}x{height} pixels exceeds the limit of {limit} pixels")]
    TooLarge {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// Configured limit on width x height.
        limit: u64,
    },
    /// The tiling options are unusable.
    #[error("invalid preprocessing options: {0}")]
    InvalidOptions(String),
}
