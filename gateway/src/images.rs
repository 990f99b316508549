//! Where a request's images and videos come from: inline bytes, `data:` URLs (base64), `https`
//! URLs the gateway fetches under its policy ([`crate::fetch`]), and local files when the
//! configuration allows them. Videos follow the same rules under their own byte limit; the
//! vision servers decode them.

use base64::Engine as _;
use bytes::Bytes;
use dvd_proto::api::v1::{Image, Video, image, video};
use dvd_proto::language::v1::ImageSlot;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::backend::GatewayError;
use crate::config::{ImagesSection, LimitsSection, VideoSection};
use crate::fetch::{Body, FetchPolicy, Fetcher};

/// How a video becomes images on the vision side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VideoSpec {
    /// Frames to sample.
    pub(crate) frames: u32,
    /// Most tiles per frame.
    pub(crate) max_tiles: u32,
}

/// An image (or video) ready to send to a vision server.
#[derive(Debug, Clone)]
pub(crate) struct ImageBytes {
    pub(crate) data: Bytes,
    /// SHA-256 of the bytes: the cache key on both servers.
    pub(crate) hash: [u8; 32],
    /// Tiles the vision server may cut it into (0: the checkpoint's setting).
    pub(crate) max_tiles: u32,
    /// Set when the bytes are a video.
    pub(crate) video: Option<VideoSpec>,
}

impl ImageBytes {
    /// The images the language server receives for this input: this image (tiles unknown, so
    /// the server's default bound), or one per sampled frame, each keyed for the prefix cache by
    /// the video's hash, its sampling and the frame's place, and bounded by the frame's tiles
    /// (a thumbnail included when there are several), so the language server reserves what a
    /// frame can take rather than an image's worst case.
    pub(crate) fn slots(&self) -> Vec<ImageSlot> {
        let slot = |hash: [u8; 32], expected_tiles| ImageSlot {
            content_hash: Bytes::copy_from_slice(&hash),
            expected_tiles,
        };
        let Some(spec) = self.video else {
            return vec![slot(self.hash, 0)];
        };
        let tiles = match spec.max_tiles {
            1 => 1,
            n => n + 1,
        };
        (0..spec.frames)
            .map(|frame| {
                let mut h = Sha256::new();
                h.update(b"video-frame");
                h.update(self.hash);
                h.update(spec.frames.to_le_bytes());
                h.update(spec.max_tiles.to_le_bytes());
                h.update(frame.to_le_bytes());
                slot(h.finalize().into(), tiles)
            })
            .collect()
    }
}

/// An image (or video) of a checked request: its bytes, or a URL that passed the policy's
/// static checks and is still to be fetched.
#[derive(Debug, Clone)]
pub(crate) enum PendingImage {
    Ready(ImageBytes),
    Remote {
        url: String,
        /// `image N` or `video N`, for errors.
        name: String,
        max_tiles: u32,
        video: Option<VideoSpec>,
    },
}

impl PendingImage {
    /// How the input is sampled, when it is a video.
    pub(crate) fn video(&self) -> Option<VideoSpec> {
        match self {
            Self::Ready(ready) => ready.video,
            Self::Remote { video, .. } => *video,
        }
    }
}

/// Where an input's bytes are, as both part types give it.
enum Source<'a> {
    Data(&'a Bytes),
    Url(&'a str),
}

/// The byte limits of a request's images and videos.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByteLimits {
    image: usize,
    video: usize,
}

impl ByteLimits {
    pub(crate) fn new(limits: &LimitsSection, video: &VideoSection) -> Self {
        Self {
            image: limits.max_image_mib << 20,
            video: video.max_video_mib << 20,
        }
    }

    fn of(self, video: Option<VideoSpec>) -> usize {
        match video {
            None => self.image,
            Some(_) => self.video,
        }
    }
}

/// Image `index` of a request, checked: bytes where they are inline, a URL to fetch otherwise.
pub(crate) fn resolve(
    image: &Image,
    index: usize,
    policy: &ImagesSection,
    fetch: &FetchPolicy,
    limits: &LimitsSection,
) -> Result<PendingImage, GatewayError> {
    let name = format!("image {index}");
    let max_tiles = tiles(&name, image.max_tiles, 0, limits)?;
    let source = match &image.source {
        None => None,
        Some(image::Source::Data(data)) => Some(Source::Data(data)),
        Some(image::Source::Url(url)) => Some(Source::Url(url)),
    };
    let limit = limits.max_image_mib << 20;
    resolve_source(source, name, max_tiles, None, policy, fetch, limit)
}

/// Video `index` of a request, checked like an image, with its frames (`num_frames`, at most
/// `[video] max_frames`) and tiles per frame (`max_tiles`, 1 unless asked).
pub(crate) fn resolve_video(
    v: &Video,
    index: usize,
    policy: &ImagesSection,
    fetch: &FetchPolicy,
    limits: &LimitsSection,
    config: &VideoSection,
) -> Result<PendingImage, GatewayError> {
    let name = format!("video {index}");
    let frames = match v.num_frames {
        None | Some(0) => config.default_frames,
        Some(n) if n > config.max_frames => {
            return Err(invalid(
                &name,
                format!(
                    "num_frames {n} exceeds this gateway's limit of {} frames per video \
                     ([video] max_frames)",
                    config.max_frames
                ),
            ));
        }
        Some(n) => n,
    };
    let max_tiles = tiles(&name, v.max_tiles, 1, limits)?;
    let source = match &v.source {
        None => None,
        Some(video::Source::Data(data)) => Some(Source::Data(data)),
        Some(video::Source::Url(url)) => Some(Source::Url(url)),
    };
    let spec = VideoSpec { frames, max_tiles };
    let limit = config.max_video_mib << 20;
    resolve_source(source, name, 0, Some(spec), policy, fetch, limit)
}

/// The tiles `name` asks for (`default` when it does not), at most `limits.max_tiles_per_image`.
fn tiles(
    name: &str,
    asked: Option<u32>,
    default: u32,
    limits: &LimitsSection,
) -> Result<u32, GatewayError> {
    match asked {
        None | Some(0) => Ok(default),
        Some(n) if n > limits.max_tiles_per_image => Err(invalid(
            name,
            format!(
                "max_tiles {n} exceeds the limit of {}",
                limits.max_tiles_per_image
            ),
        )),
        Some(n) => Ok(n),
    }
}

/// Bytes from `source`, or the URL to fetch once the policy's static checks pass.
fn resolve_source(
    source: Option<Source<'_>>,
    name: String,
    max_tiles: u32,
    video: Option<VideoSpec>,
    policy: &ImagesSection,
    fetch: &FetchPolicy,
    limit: usize,
) -> Result<PendingImage, GatewayError> {
    let data = match source {
        None => return Err(invalid(&name, "no data or url")),
        Some(Source::Data(data)) => data.clone(),
        Some(Source::Url(url)) if is_remote(url) => {
            fetch.check(url).map_err(|e| invalid(&name, e))?;
            return Ok(PendingImage::Remote {
                url: url.to_owned(),
                name,
                max_tiles,
                video,
            });
        }
        Some(Source::Url(url)) => from_url(url, policy).map_err(|e| invalid(&name, e))?,
    };
    finish(data, &name, max_tiles, video, limit).map(PendingImage::Ready)
}

/// The bytes of every image and video, fetching the remote ones concurrently.
pub(crate) async fn fetch_all(
    pending: Vec<PendingImage>,
    fetcher: &Fetcher,
    bytes: ByteLimits,
) -> Result<Vec<ImageBytes>, GatewayError> {
    let fetches = pending
        .into_iter()
        .enumerate()
        .map(|(index, image)| async move {
            match image {
                PendingImage::Ready(ready) => Ok(ready),
                PendingImage::Remote {
                    url,
                    name,
                    max_tiles,
                    video,
                } => {
                    let limit = bytes.of(video);
                    let body = match video {
                        None => Body::image(fetcher.policy()),
                        Some(_) => Body::video(limit),
                    };
                    let data = fetcher
                        .fetch_body(&url, body)
                        .instrument(tracing::info_span!("fetch_image", index))
                        .await
                        .map_err(|e| invalid(&name, e))?;
                    finish(data, &name, max_tiles, video, limit)
                }
            }
        });
    futures::future::try_join_all(fetches).await
}

fn invalid(name: &str, message: impl std::fmt::Display) -> GatewayError {
    GatewayError::InvalidRequest(format!("{name}: {message}"))
}

/// Whether `url` names a network resource (`scheme://`, any scheme but `file`); the fetch
/// policy decides which schemes are fetched.
fn is_remote(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !scheme.eq_ignore_ascii_case("file")
    })
}

/// Checks the bytes of input `name` against its limit and hashes them.
fn finish(
    data: Bytes,
    name: &str,
    max_tiles: u32,
    video: Option<VideoSpec>,
    limit: usize,
) -> Result<ImageBytes, GatewayError> {
    if data.is_empty() {
        let what = if video.is_some() { "video" } else { "image" };
        return Err(invalid(name, format!("empty {what}")));
    }
    if data.len() > limit {
        return Err(invalid(
            name,
            format!("{} bytes; at most {limit} allowed", data.len()),
        ));
    }
    Ok(ImageBytes {
        hash: Sha256::digest(&data).into(),
        data,
        max_tiles,
        video,
    })
}

/// Why an image URL the gateway reads itself (`data:`, a local file) gave no bytes.
#[derive(Debug, thiserror::Error)]
enum LocalUrlError {
    #[error("data: URL without a ',' before its payload")]
    NoPayload,
    #[error("data: URLs must be base64 (data:image/png;base64,...)")]
    NotBase64,
    #[error("invalid base64 in data: URL: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("{0:?} is not a data: or https URL (local files are off; images.allow_local_files)")]
    LocalFilesOff(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The bytes of a `data:` URL, or of a local file where the policy allows them.
fn from_url(url: &str, policy: &ImagesSection) -> Result<Bytes, LocalUrlError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, payload) = rest.split_once(',').ok_or(LocalUrlError::NoPayload)?;
        if !meta.ends_with(";base64") {
            return Err(LocalUrlError::NotBase64);
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(payload.trim())?;
        return Ok(Bytes::from(bytes));
    }
    if !policy.allow_local_files {
        return Err(LocalUrlError::LocalFilesOff(url.to_owned()));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|source| LocalUrlError::Read {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> Image {
        Image {
            source: Some(image::Source::Url(u.into())),
            max_tiles: None,
        }
    }

    fn ready(image: PendingImage) -> ImageBytes {
        match image {
            PendingImage::Ready(bytes) => bytes,
            PendingImage::Remote { url, .. } => panic!("{url} was left to fetch"),
        }
    }

    #[test]
    fn data_urls_files_remote_urls_and_refusals() {
        let limits = LimitsSection::default();
        let off = ImagesSection::default();
        let fetch = FetchPolicy::new(&off, &limits).unwrap();
        let check =
            |image: &Image, policy: &ImagesSection| resolve(image, 3, policy, &fetch, &limits);
        let ok = ready(check(&url("data:image/png;base64,aGVsbG8="), &off).unwrap());
        assert_eq!(ok.data, Bytes::from_static(b"hello"));
        assert_eq!(ok.max_tiles, 0, "no request: the checkpoint's setting");
        let err = |u: &str, policy: &ImagesSection| {
            check(&url(u), policy)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("data:image/png;base64,@@", &off).contains("invalid base64"));
        assert!(matches!(
            check(&url("https://example.com/a.png"), &off),
            Ok(PendingImage::Remote { .. })
        ));
        assert!(err("HTTPS://127.0.0.1/a.png", &off).contains("loopback"));
        assert!(err("http://example.com/a.png", &off).contains("plain http"));
        assert!(err("ftp://example.com/a.png", &off).contains("scheme"));
        assert!(err("/etc/hostname", &off).contains("allow_local_files"));
        assert!(err("file:///etc/hostname", &off).contains("allow_local_files"));
        assert!(err("data:image/png;base64,", &off).starts_with("image 3: empty"));
        let on = ImagesSection {
            allow_local_files: true,
            ..ImagesSection::default()
        };
        assert!(err("/nonexistent/x.png", &on).contains("cannot read"));
        let no_fetch = ImagesSection {
            fetch: false,
            ..ImagesSection::default()
        };
        let fetch_off = FetchPolicy::new(&no_fetch, &limits).unwrap();
        let refused = resolve(
            &url("https://example.com/a.png"),
            0,
            &no_fetch,
            &fetch_off,
            &limits,
        );
        assert!(refused.err().unwrap().to_string().contains("not fetched"));
        let mut many = url("data:image/png;base64,aGVsbG8=");
        many.max_tiles = Some(99);
        assert!(check(&many, &off).is_err());
        many.max_tiles = Some(12);
        assert_eq!(
            check(&many, &off).map(|i| ready(i).max_tiles).ok(),
            Some(12)
        );
    }

    #[test]
    fn videos_take_their_frames_and_byte_limit_from_the_video_section() {
        let limits = LimitsSection::default();
        let images = ImagesSection::default();
        let fetch = FetchPolicy::new(&images, &limits).unwrap();
        let config = VideoSection {
            max_video_mib: 1,
            ..VideoSection::default()
        };
        let video = |data: &[u8], num_frames, max_tiles| Video {
            source: Some(video::Source::Data(Bytes::copy_from_slice(data))),
            num_frames,
            max_tiles,
        };
        let check = |v: &Video| resolve_video(v, 1, &images, &fetch, &limits, &config);
        let ok = ready(check(&video(b"clip", None, None)).unwrap());
        let spec = VideoSpec {
            frames: 8,
            max_tiles: 1,
        };
        assert_eq!(ok.video, Some(spec), "the card's 8 frames of one tile");
        let slots = ok.slots();
        assert_eq!(slots.len(), 8);
        assert!(slots.iter().all(|s| s.expected_tiles == 1));
        assert!(slots.iter().all(|s| s.content_hash.as_ref() != ok.hash));
        let keys: std::collections::HashSet<_> = slots.iter().map(|s| &s.content_hash).collect();
        assert_eq!(keys.len(), 8);
        let asked = ready(check(&video(b"clip", Some(32), Some(4))).unwrap());
        assert_eq!(
            asked.video,
            Some(VideoSpec {
                frames: 32,
                max_tiles: 4
            })
        );
        assert!(
            asked.slots().iter().all(|s| s.expected_tiles == 5),
            "and a thumbnail"
        );
        assert!(
            asked.slots().iter().all(|s| s.expected_tiles == 5),
            "four tiles and a thumbnail"
        );
        let err = |v: &Video| check(v).err().map(|e| e.to_string()).unwrap_or_default();
        let over = err(&video(b"clip", Some(33), None));
        assert!(
            over.contains("video 1: num_frames 33") && over.contains("limit of 32 frames"),
            "{over}"
        );
        assert!(err(&video(b"clip", None, Some(13))).contains("max_tiles 13"));
        assert!(err(&video(&[0; (1 << 20) + 1], None, None)).contains("at most 1048576"));
        assert!(err(&video(b"", None, None)).contains("empty video"));
        let remote = Video {
            source: Some(video::Source::Url("https://example.com/a.mp4".into())),
            num_frames: None,
            max_tiles: None,
        };
        assert!(matches!(
            check(&remote),
            Ok(PendingImage::Remote { video: Some(_), .. })
        ));
    }
}
