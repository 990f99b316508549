//! Where a request's images come from: inline bytes, `data:` URLs (base64), and local files when
//! the configuration allows them. Remote `http(s)` URLs are refused with a clear error: this
//! gateway does not fetch them (send the image inline).

use base64::Engine as _;
use bytes::Bytes;
use dvd_proto::api::v1::{Image, image};
use sha2::{Digest, Sha256};

use crate::backend::GatewayError;
use crate::config::{ImagesSection, LimitsSection};

/// An image ready to send to a vision server.
#[derive(Debug, Clone)]
pub(crate) struct ImageBytes {
    pub(crate) data: Bytes,
    /// SHA-256 of the bytes: the cache key on both servers.
    pub(crate) hash: [u8; 32],
    /// Tiles the vision server may cut it into (0: the checkpoint's setting).
    pub(crate) max_tiles: u32,
}

/// The bytes of image `index` of a request.
pub(crate) fn resolve(
    image: &Image,
    index: usize,
    policy: &ImagesSection,
    limits: &LimitsSection,
) -> Result<ImageBytes, GatewayError> {
    let bad = |m: String| GatewayError::InvalidRequest(format!("image {index}: {m}"));
    let data = match &image.source {
        None => return Err(bad("no data or url".into())),
        Some(image::Source::Data(data)) => data.clone(),
        Some(image::Source::Url(url)) => from_url(url, policy).map_err(bad)?,
    };
    if data.is_empty() {
        return Err(bad("empty image".into()));
    }
    let limit = limits.max_image_mib << 20;
    if data.len() > limit {
        return Err(bad(format!(
            "{} bytes; at most {limit} allowed",
            data.len()
        )));
    }
    let max_tiles = match image.max_tiles {
        None | Some(0) => 0,
        Some(n) if n > limits.max_tiles_per_image => {
            return Err(bad(format!(
                "max_tiles {n} exceeds the limit of {}",
                limits.max_tiles_per_image
            )));
        }
        Some(n) => n,
    };
    Ok(ImageBytes {
        hash: Sha256::digest(&data).into(),
        data,
        max_tiles,
    })
}

fn from_url(url: &str, policy: &ImagesSection) -> Result<Bytes, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, payload) = rest
            .split_once(',')
            .ok_or("data: URL without a ',' before its payload")?;
        if !meta.ends_with(";base64") {
            return Err("data: URLs must be base64 (data:image/png;base64,...)".into());
        }
        return base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map(Bytes::from)
            .map_err(|e| format!("invalid base64 in data: URL: {e}"));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(
            "remote image URLs are not fetched by this gateway; send the image inline as a \
             data: URL"
                .into(),
        );
    }
    if !policy.allow_local_files {
        return Err(format!(
            "{url:?} is not a data: URL (local files are off; images.allow_local_files)"
        ));
    }
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| format!("cannot read {path}: {e}"))
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

    #[test]
    fn data_urls_files_and_refusals() {
        let limits = LimitsSection::default();
        let off = ImagesSection::default();
        let ok = resolve(&url("data:image/png;base64,aGVsbG8="), 0, &off, &limits)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.data, Bytes::from_static(b"hello"));
        assert_eq!(ok.max_tiles, 0, "no request: the checkpoint's setting");
        let err = |u: &str, policy: &ImagesSection| {
            resolve(&url(u), 3, policy, &limits)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("data:image/png;base64,@@", &off).contains("invalid base64"));
        assert!(err("https://example.com/a.png", &off).contains("not fetched"));
        assert!(err("/etc/hostname", &off).contains("allow_local_files"));
        assert!(err("data:image/png;base64,", &off).starts_with("image 3: empty"));
        let on = ImagesSection {
            allow_local_files: true,
        };
        assert!(err("/nonexistent/x.png", &on).contains("cannot read"));
        let mut many = url("data:image/png;base64,aGVsbG8=");
        many.max_tiles = Some(99);
        assert!(resolve(&many, 0, &off, &limits).is_err());
        many.max_tiles = Some(12);
        assert_eq!(
            resolve(&many, 0, &off, &limits).map(|i| i.max_tiles).ok(),
            Some(12)
        );
    }
}
