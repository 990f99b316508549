//! From an `EncodeRequest` to what the pipeline needs: the request id, each image's (or
//! video's) bytes, the tiling and routing options, and where the features go. Everything a client can get wrong is an
//! `INVALID_ARGUMENT` naming the field, before any work is done.

use base64::Engine as _;
use bytes::Bytes;
use dvd_proto::feature::v1::Transport;
use dvd_proto::vision::v1::{EncodeRequest, VideoOptions, image_input};
use dvd_transport::{Destination, RequestId, TransportKind};
use tonic::Status;

use crate::model::Routing;
use crate::preprocess::TilingOptions;
use crate::video::VideoLimits;

/// Request limits of a vision server.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLimits {
    /// Most images per request.
    pub max_images: usize,
    /// Most encoded bytes per image (a video's bytes are limited by its own limits).
    pub max_image_bytes: usize,
    /// Most frames sampled from one video.
    pub max_video_frames: u32,
    /// What each video may be.
    pub video: VideoLimits,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_images: 16,
            max_image_bytes: 32 << 20,
            max_video_frames: 64,
            video: VideoLimits::default(),
        }
    }
}

/// The model card's frames per video when a request does not say.
pub(crate) const DEFAULT_VIDEO_FRAMES: u32 = 8;

/// How a video input becomes images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VideoRequest {
    /// Frames to sample.
    pub(crate) frames: u32,
    /// Most tiles per frame.
    pub(crate) max_tiles: u32,
}

/// One image (or video) to encode.
#[derive(Debug, Clone)]
pub(crate) struct ImageBytes {
    pub(crate) data: Bytes,
    /// The gateway's content hash, if it sent one (images only).
    pub(crate) content_hash: Option<Bytes>,
    /// Set when the bytes are a video.
    pub(crate) video: Option<VideoRequest>,
}

/// A validated request.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// Inputs in prompt order; a video becomes one image per sampled frame.
    pub(crate) request_id: RequestId,
    pub(crate) images: Vec<ImageBytes>,
    pub(crate) tiling: TilingOptions,
    pub(crate) routing: Routing,
    pub(crate) destination: Destination,
    pub(crate) transport: TransportKind,
}

impl Prepared {
    /// Images the request sends once its videos are expanded into frames.
    pub(crate) fn image_count(&self) -> usize {
        self.images
            .iter()
            .map(|i| i.video.map_or(1, |v| v.frames as usize))
            .sum()
    }
}

/// Checks `request` against `limits` and the model's default `tiling`.
pub(crate) fn prepare(
    request: &EncodeRequest,
    tiling: &TilingOptions,
    limits: &RequestLimits,
) -> Result<Prepared, Status> {
    let request_id: RequestId = request.request_id.parse().map_err(|e| {
        Status::invalid_argument(format!(
            "request_id {:?}: {e} (32 lowercase hex characters)",
            request.request_id
        ))
    })?;
    if request.images.is_empty() {
        return Err(Status::invalid_argument("no images"));
    }
    if request.images.len() > limits.max_images {
        return Err(Status::invalid_argument(format!(
            "{} images; at most {} per request",
            request.images.len(),
            limits.max_images
        )));
    }
    let mut images = Vec::with_capacity(request.images.len());
    for (k, image) in request.images.iter().enumerate() {
        let data = match &image.source {
            None => return Err(Status::invalid_argument(format!("image {k} has no source"))),
            Some(image_input::Source::Data(data)) => data.clone(),
            Some(image_input::Source::Url(url)) => {
                data_url(url).map_err(|e| Status::invalid_argument(format!("image {k}: {e}")))?
            }
        };
        let video = image
            .video
            .map(|v| video_request(k, v, limits))
            .transpose()?;
        if video.is_none() && data.len() > limits.max_image_bytes {
            return Err(Status::invalid_argument(format!(
                "image {k} is {} bytes; at most {} allowed",
                data.len(),
                limits.max_image_bytes
            )));
        }
        images.push(ImageBytes {
            data,
            content_hash: image.content_hash.clone().filter(|h| !h.is_empty()),
            video,
        });
    }
    let mut tiling = tiling.clone();
    let options = request.options.unwrap_or_default();
    if options.max_tiles > 0 {
        tiling.max_tiles = options.max_tiles;
        tiling.min_tiles = tiling.min_tiles.min(options.max_tiles);
    }
    if options.min_tiles > 0 {
        tiling.min_tiles = options.min_tiles;
    }
    if tiling.min_tiles > tiling.max_tiles || tiling.max_tiles > 64 {
        return Err(Status::invalid_argument(format!(
            "options: need 1 <= min_tiles <= max_tiles <= 64, got {}..{}",
            tiling.min_tiles, tiling.max_tiles
        )));
    }
    if let Some(thumbnail) = options.use_thumbnail {
        tiling.thumbnail = thumbnail;
    }
    let routing = match options.vir {
        None => Routing::Default,
        Some(true) => Routing::On,
        Some(false) => Routing::Off,
    };
    let Some(destination) = &request.destination else {
        return Err(Status::invalid_argument("destination is missing"));
    };
    if destination.address.is_empty() {
        return Err(Status::invalid_argument("destination.address is empty"));
    }
    let transport = match Transport::try_from(destination.transport) {
        Ok(Transport::Tcp) => TransportKind::Tcp,
        Ok(Transport::Quic) => TransportKind::Quic,
        _ => {
            return Err(Status::invalid_argument(format!(
                "destination.transport {} is not TCP or QUIC",
                destination.transport
            )));
        }
    };
    Ok(Prepared {
        request_id,
        images,
        tiling,
        routing,
        destination: Destination {
            address: destination.address.clone(),
            server_name: (!destination.server_name.is_empty())
                .then(|| destination.server_name.clone()),
        },
        transport,
    })
}

/// Input `k`'s video options, defaults filled in and checked against `limits`.
fn video_request(
    k: usize,
    options: VideoOptions,
    limits: &RequestLimits,
) -> Result<VideoRequest, Status> {
    let frames = match options.num_frames {
        0 => DEFAULT_VIDEO_FRAMES,
        n => n,
    };
    if frames > limits.max_video_frames {
        return Err(Status::invalid_argument(format!(
            "image {k}: a video of {frames} frames; at most {} per video",
            limits.max_video_frames
        )));
    }
    let max_tiles = options.max_tiles.max(1);
    if max_tiles > 64 {
        return Err(Status::invalid_argument(format!(
            "image {k}: video.max_tiles {max_tiles}; at most 64"
        )));
    }
    Ok(VideoRequest { frames, max_tiles })
}

/// Why an image URL gives no bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum DataUrlError {
    /// A URL of another scheme: vision servers fetch nothing.
    #[error("{scheme}: URLs are not fetched by vision servers; send the bytes or a data: URL")]
    NotData {
        /// The URL's scheme.
        scheme: String,
    },
    /// No `,` separates the media type from the payload.
    #[error("data: URL without a ',' before its payload")]
    NoPayload,
    /// The payload claims base64 and is not.
    #[error("data: URL is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// The bytes of a `data:` URL (base64 or percent-free plain payload). Remote URLs are not
/// fetched: the gateway sends image bytes.
fn data_url(url: &str) -> Result<Bytes, DataUrlError> {
    let Some(rest) = url.strip_prefix("data:") else {
        let scheme = url.split(':').next().unwrap_or_default();
        return Err(DataUrlError::NotData {
            scheme: scheme.to_owned(),
        });
    };
    let Some((meta, payload)) = rest.split_once(',') else {
        return Err(DataUrlError::NoPayload);
    };
    if meta.ends_with(";base64") {
        Ok(base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map(Bytes::from)?)
    } else {
        Ok(Bytes::copy_from_slice(payload.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls() {
        assert_eq!(
            data_url("data:image/png;base64,aGVsbG8=").ok(),
            Some(Bytes::from_static(b"hello"))
        );
        assert!(
            data_url("https://example.com/cat.jpg").is_err_and(|e| e.to_string().contains("https"))
        );
        assert!(matches!(
            data_url("data:image/png;base64,@@@"),
            Err(DataUrlError::Base64(_))
        ));
        assert_eq!(data_url("data:nocomma"), Err(DataUrlError::NoPayload));
    }
}
