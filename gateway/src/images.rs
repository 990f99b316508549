//! Where a request's images come from: inline bytes, `data:` URLs (base64), `https` URLs the
//! gateway fetches under its policy ([`crate::fetch`]), and local files when the configuration
//! allows them.

use base64::Engine as _;
use bytes::Bytes;
use dvd_proto::api::v1::{Image, image};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::backend::GatewayError;
use crate::config::{ImagesSection, LimitsSection};
use crate::fetch::{FetchPolicy, Fetcher};

/// An image ready to send to a vision server.
#[derive(Debug, Clone)]
pub(crate) struct ImageBytes {
    pub(crate) data: Bytes,
    /// SHA-256 of the bytes: the cache key on both servers.
    pub(crate) hash: [u8; 32],
    /// Tiles the vision server may cut it into (0: the checkpoint's setting).
    pub(crate) max_tiles: u32,
}

/// An image of a checked request: its bytes, or a URL that passed the policy's static checks
/// and is still to be fetched.
#[derive(Debug, Clone)]
pub(crate) enum PendingImage {
    Ready(ImageBytes),
    Remote { url: String, max_tiles: u32 },
}

/// Image `index` of a request, checked: bytes where they are inline, a URL to fetch otherwise.
pub(crate) fn resolve(
    image: &Image,
    index: usize,
    policy: &ImagesSection,
    fetch: &FetchPolicy,
    limits: &LimitsSection,
) -> Result<PendingImage, GatewayError> {
    let max_tiles = match image.max_tiles {
        None | Some(0) => 0,
        Some(n) if n > limits.max_tiles_per_image => {
            return Err(invalid(
                index,
                format!(
                    "max_tiles {n} exceeds the limit of {}",
                    limits.max_tiles_per_image
                ),
            ));
        }
        Some(n) => n,
    };
    let data = match &image.source {
        None => return Err(invalid(index, "no data or url")),
        Some(image::Source::Data(data)) => data.clone(),
        Some(image::Source::Url(url)) if is_remote(url) => {
            fetch.check(url).map_err(|e| invalid(index, e))?;
            return Ok(PendingImage::Remote {
                url: url.clone(),
                max_tiles,
            });
        }
        Some(image::Source::Url(url)) => from_url(url, policy).map_err(|e| invalid(index, e))?,
    };
    finish(data, index, max_tiles, limits).map(PendingImage::Ready)
}

/// The bytes of every image, fetching the remote ones concurrently.
pub(crate) async fn fetch_all(
    pending: Vec<PendingImage>,
    fetcher: &Fetcher,
    limits: &LimitsSection,
) -> Result<Vec<ImageBytes>, GatewayError> {
    let fetches = pending
        .into_iter()
        .enumerate()
        .map(|(index, image)| async move {
            match image {
                PendingImage::Ready(bytes) => Ok(bytes),
                PendingImage::Remote { url, max_tiles } => {
                    let data = fetcher
                        .fetch(&url)
                        .instrument(tracing::info_span!("fetch_image", index))
                        .await
                        .map_err(|e| invalid(index, e))?;
                    finish(data, index, max_tiles, limits)
                }
            }
        });
    futures::future::try_join_all(fetches).await
}

fn invalid(index: usize, message: impl std::fmt::Display) -> GatewayError {
    GatewayError::InvalidRequest(format!("image {index}: {message}"))
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

/// Checks the bytes of image `index` against the limits and hashes them.
fn finish(
    data: Bytes,
    index: usize,
    max_tiles: u32,
    limits: &LimitsSection,
) -> Result<ImageBytes, GatewayError> {
    if data.is_empty() {
        return Err(invalid(index, "empty image"));
    }
    let limit = limits.max_image_mib << 20;
    if data.len() > limit {
        return Err(invalid(
            index,
            format!("{} bytes; at most {limit} allowed", data.len()),
        ));
    }
    Ok(ImageBytes {
        hash: Sha256::digest(&data).into(),
        data,
        max_tiles,
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
}
