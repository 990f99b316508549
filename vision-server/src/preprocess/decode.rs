//! Decoding uploaded images to 8-bit RGB, with the size checked before pixels are allocated.
//!
//! JPEGs go through libjpeg-turbo (the `mozjpeg` fork), the decoder Pillow uses, so pixels equal
//! the reference's exactly; the `image` crate's own JPEG decoder differs by up to 4/255 after
//! chroma upsampling. Everything else, and JPEGs libjpeg-turbo cannot turn into RGB (CMYK), goes
//! through the `image` crate.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};

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
    let Some(format) = probe.format() else {
        return Err(ImageError::Unrecognised(
            "unknown file signature".to_string(),
        ));
    };
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
    if format == ImageFormat::Jpeg
        && let Some(rgb) = decode_jpeg_like_pillow(bytes)
        && rgb.dimensions() == (width, height)
    {
        return Ok(rgb);
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

/// Decodes a JPEG to RGB with libjpeg-turbo. `None` when it cannot: a damaged file (which the
/// fallback decoder then reports) or a colour space without an RGB conversion (CMYK). The library
/// reports errors by unwinding, which is caught here; nothing escapes.
fn decode_jpeg_like_pillow(bytes: &[u8]) -> Option<RgbImage> {
    let decoded = catch_unwind(AssertUnwindSafe(|| -> std::io::Result<RgbImage> {
        let mut rgb = mozjpeg::Decompress::new_mem(bytes)?.rgb()?;
        let (width, height) = (rgb.width(), rgb.height());
        let pixels: Vec<u8> = rgb.read_scanlines()?;
        rgb.finish()?;
        let (w, h) = (u32::try_from(width), u32::try_from(height));
        match (w, h) {
            (Ok(w), Ok(h)) => RgbImage::from_raw(w, h, pixels),
            _ => None,
        }
        .ok_or_else(|| std::io::Error::other("decoded size does not match the header"))
    }));
    match decoded {
        Ok(Ok(rgb)) => Some(rgb),
        _ => None,
    }
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
