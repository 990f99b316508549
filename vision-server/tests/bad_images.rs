//! Every kind of image a client may send: supported formats and colour types decode to RGB; bad
//! images give a clear error and never panic or allocate for a size they do not have.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use std::io::Cursor;

use dvd_vision_server::ImageError;
use dvd_vision_server::preprocess::{TilingOptions, decode_rgb, preprocess};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn sample_rgb(w: u32, h: u32) -> image::RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    })
}

#[test]
fn png_webp_and_jpeg_decode_to_rgb() {
    let rgb = sample_rgb(50, 30);
    for format in [ImageFormat::Png, ImageFormat::WebP] {
        let decoded = decode_rgb(
            &encode(DynamicImage::ImageRgb8(rgb.clone()), format),
            u64::MAX,
        )
        .unwrap();
        assert_eq!(decoded, rgb, "{format:?} is lossless");
    }
    let jpeg = decode_rgb(
        &encode(DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Jpeg),
        u64::MAX,
    )
    .unwrap();
    assert_eq!(jpeg.dimensions(), (50, 30));
}

#[test]
fn grayscale_alpha_and_16_bit_become_rgb() {
    let gray = ImageBuffer::from_fn(9, 4, |x, _| Luma([(x * 20) as u8]));
    let decoded = decode_rgb(
        &encode(DynamicImage::ImageLuma8(gray), ImageFormat::Png),
        u64::MAX,
    )
    .unwrap();
    assert_eq!(decoded.get_pixel(3, 1).0, [60, 60, 60]);

    let gray_alpha = ImageBuffer::from_fn(9, 4, |x, _| LumaA([(x * 20) as u8, 0]));
    let decoded = decode_rgb(
        &encode(DynamicImage::ImageLumaA8(gray_alpha), ImageFormat::Png),
        u64::MAX,
    )
    .unwrap();
    assert_eq!(
        decoded.get_pixel(2, 0).0,
        [40, 40, 40],
        "alpha is dropped, not composited"
    );

    let rgba = ImageBuffer::from_fn(9, 4, |x, y| Rgba([x as u8, y as u8, 7, 3]));
    let decoded = decode_rgb(
        &encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
        u64::MAX,
    )
    .unwrap();
    assert_eq!(decoded.get_pixel(5, 2).0, [5, 2, 7]);

    let deep = ImageBuffer::from_fn(9, 4, |x, _| Rgb([x as u16 * 7000, 65535, 0]));
    let decoded = decode_rgb(
        &encode(DynamicImage::ImageRgb16(deep), ImageFormat::Png),
        u64::MAX,
    )
    .unwrap();
    assert_eq!(decoded.get_pixel(0, 0).0, [0, 255, 0]);
    assert_eq!(
        decoded.get_pixel(8, 0).0[0],
        (56000.0f64 / 257.0).round() as u8
    );
}

#[test]
fn truncated_images_are_corrupt() {
    let png = encode(
        DynamicImage::ImageRgb8(sample_rgb(64, 64)),
        ImageFormat::Png,
    );
    for cut in [10, 40, png.len() / 2, png.len() - 12] {
        let err = decode_rgb(&png[..cut], u64::MAX).unwrap_err();
        assert!(
            matches!(err, ImageError::Corrupt(_) | ImageError::Unrecognised(_)),
            "cut {cut}: {err}"
        );
    }
    let jpeg = encode(
        DynamicImage::ImageRgb8(sample_rgb(64, 64)),
        ImageFormat::Jpeg,
    );
    assert!(decode_rgb(&jpeg[..jpeg.len() / 3], u64::MAX).is_err());
}

#[test]
fn non_images_are_refused() {
    for bytes in [
        &b""[..],
        b"hello, world",
        b"%PDF-1.7 not an image",
        &[0u8; 100],
    ] {
        let err = decode_rgb(bytes, u64::MAX).unwrap_err();
        assert!(matches!(err, ImageError::Unrecognised(_)), "{err}");
        assert!(err.to_string().contains("not a supported image"));
    }
}

/// A PNG signature, an IHDR chunk claiming any size, and an empty IDAT chunk: no pixel data.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(b"IDAT");
    out.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn oversized_images_are_refused_before_decoding() {
    // Claims 100000 x 100000 pixels (30 GB of RGB) but carries none: refused from the header.
    let err = decode_rgb(&png_header(100_000, 100_000), 64 << 20).unwrap_err();
    assert_eq!(
        err,
        ImageError::TooLarge {
            width: 100_000,
            height: 100_000,
            limit: 64 << 20
        }
    );
    let small = encode(
        DynamicImage::ImageRgb8(sample_rgb(100, 100)),
        ImageFormat::Png,
    );
    let options = TilingOptions {
        max_pixels: 9_999,
        ..TilingOptions::default()
    };
    assert!(matches!(
        preprocess(&small, &options),
        Err(ImageError::TooLarge { .. })
    ));
}

#[test]
fn zero_sized_images_are_refused() {
    let err = decode_rgb(&png_header(0, 10), u64::MAX).unwrap_err();
    assert!(
        matches!(err, ImageError::Empty { .. } | ImageError::Corrupt(_)),
        "{err}"
    );
}

#[test]
fn bad_tiling_options_are_refused() {
    let png = encode(
        DynamicImage::ImageRgb8(sample_rgb(10, 10)),
        ImageFormat::Png,
    );
    for (min, max) in [(0, 12), (5, 4), (1, 65)] {
        let options = TilingOptions {
            min_tiles: min,
            max_tiles: max,
            ..TilingOptions::default()
        };
        assert!(matches!(
            preprocess(&png, &options),
            Err(ImageError::InvalidOptions(_))
        ));
    }
}

#[test]
fn pixel_values_are_imagenet_normalised_channel_first() {
    let png = encode(
        DynamicImage::ImageRgb8(ImageBuffer::from_pixel(448, 448, Rgb([255, 0, 128]))),
        ImageFormat::Png,
    );
    let tiled = preprocess(&png, &TilingOptions::default()).unwrap();
    assert_eq!(
        (tiled.grid, tiled.tiles.len(), tiled.thumbnail),
        ((1, 1), 1, false)
    );
    let values = dvd_vision_server::preprocess::pixel_values(&tiled.tiles);
    let plane = 448 * 448;
    assert_eq!(values.len(), 3 * plane);
    assert!((values[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
    assert!((values[plane] - (0.0 - 0.456) / 0.224).abs() < 1e-6);
    assert!((values[2 * plane + 1000] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-6);
}
