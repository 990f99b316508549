//! What can go wrong with a video.

/// Why a video cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VideoError {
    /// FFmpeg is not installed here (the server's fault, not the request's).
    #[error("video decoding is not available on this server: {0}")]
    NoDecoder(String),
    /// The file is larger than allowed.
    #[error("video of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// No container FFmpeg reads, or a damaged one.
    #[error("not a readable video: {0}")]
    Unreadable(String),
    /// Only audio (or subtitles, or data).
    #[error("the file has no video stream")]
    NoVideoStream,
    /// A video stream without frames.
    #[error("the video stream has no frames")]
    NoFrames,
    /// Longer than allowed.
    #[error("video of {seconds:.1} s exceeds the limit of {limit} s")]
    TooLong {
        /// Its length.
        seconds: f64,
        /// The limit.
        limit: f64,
    },
    /// Frames larger than allowed.
    #[error("video frames of {width}x{height} pixels exceed the limit of {limit} pixels")]
    TooManyPixels {
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// The limit on width x height.
        limit: u64,
    },
    /// More frames in the stream than allowed.
    #[error("video of {frames} frames exceeds the limit of {limit} frames")]
    TooManyFrames {
        /// Frames in the stream.
        frames: u64,
        /// The limit.
        limit: u64,
    },
    /// A codec this FFmpeg cannot decode.
    #[error("video codec {0:?} cannot be decoded here")]
    Unsupported(String),
    /// Decoding failed part way.
    #[error("cannot decode the video: {0}")]
    Decode(String),
    /// Probing or decoding took too long.
    #[error("video decoding took longer than {seconds} s")]
    TimedOut {
        /// The limit.
        seconds: f64,
    },
    /// A local failure (temporary file, pipes).
    #[error("video decoding failed here: {0}")]
    Io(String),
}

impl VideoError {
    /// Whether the request is at fault (400) rather than the server (500/503).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::NoDecoder(_) | Self::Io(_))
    }
}
