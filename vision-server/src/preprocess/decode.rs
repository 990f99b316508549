//! Decoding uploaded images to 8-bit RGB, with the size checked before pixels are allocated.

use std::io::Cursor;

use image::{DynamicImage, ImageReader, Limits, RgbImage};

use crate::error::ImageError;

/// Decodes JPEG, PNG or WebP bytes into RGB (grayscale is replicated, alpha dropped, 16-bit
/// samples narrowed), refusing images over `max_pixels` before decoding them.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ImageError::Corrupt(e.to_string()))
    };
    let probe = reader()?;
    if probe.format().is_none() {
        return Err(ImageError::Unrecognised(
            "unknown file signature".to_string(),
        ));
    }
    let (width, height) = probe.into_dimensions().map_err(classify)?;
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { width, height });
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit: max_pixels,
        });
    }
    let mut decoder = reader()?;
    let mut limits = Limits::default();
    // Room for the largest decoded form (RGBA, 16 bits per sample) of an allowed image.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    decoder.limits(limits);
    let image = decoder.decode().map_err(classify)?;
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

fn classify(e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Unsupported(u) => ImageError::Unrecognised(u.to_string()),
        image::ImageError::Limits(l) => {
            ImageError::Corrupt(format!("over the decoder's limits: {l}"))
        }
        other => ImageError::Corrupt(other.to_string()),
    }
}
