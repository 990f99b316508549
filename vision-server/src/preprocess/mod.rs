//! Image preprocessing for InternViT: decode, dynamic tiling with Pillow-exact bicubic resizes,
//! and ImageNet normalisation into `pixel_values`.

mod decode;
mod resize;
mod tiling;

pub use decode::decode_rgb;
pub use resize::resize_bicubic;
pub use tiling::{candidate_grids, choose_grid, tile};

use image::RgbImage;

use crate::error::ImageError;

/// ImageNet channel means, used by every InternVL3.5 checkpoint.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How images become tiles.
#[derive(Debug, Clone, PartialEq)]
pub struct TilingOptions {
    /// Side of a square tile in pixels (`force_image_size`, 448 for InternVL3.5).
    pub tile_size: u32,
    /// Fewest tiles per image, thumbnail excluded.
    pub min_tiles: u32,
    /// Most tiles per image, thumbnail excluded.
    pub max_tiles: u32,
    /// Append a thumbnail of the whole image when there is more than one tile.
    pub thumbnail: bool,
    /// Largest image accepted, in pixels (width x height), checked before decoding.
    pub max_pixels: u64,
}

impl Default for TilingOptions {
    fn default() -> Self {
        Self {
            tile_size: 448,
            min_tiles: 1,
            max_tiles: 12,
            thumbnail: true,
            max_pixels: 64 * 1024 * 1024,
        }
    }
}

impl TilingOptions {
    fn validate(&self) -> Result<(), ImageError> {
        if self.tile_size == 0 {
            return Err(ImageError::InvalidOptions(
                "tile size must be positive".into(),
            ));
        }
        if self.min_tiles == 0 || self.min_tiles > self.max_tiles || self.max_tiles > 64 {
            return Err(ImageError::InvalidOptions(format!(
                "need 1 <= min_tiles <= max_tiles <= 64, got {}..{}",
                self.min_tiles, self.max_tiles
            )));
        }
        Ok(())
    }
}

/// An image cut into tiles.
#[derive(Debug, Clone)]
pub struct TiledImage {
    /// Original width and height.
    pub size: (u32, u32),
    /// Grid `(columns, rows)` of the non-thumbnail tiles.
    pub grid: (u32, u32),
    /// Whether the last tile is the thumbnail.
    pub thumbnail: bool,
    /// Tiles, row-major, thumbnail last.
    pub tiles: Vec<RgbImage>,
}

/// Decodes `bytes` and tiles the image.
pub fn preprocess(bytes: &[u8], options: &TilingOptions) -> Result<TiledImage, ImageError> {
    options.validate()?;
    let image = decode_rgb(bytes, options.max_pixels)?;
    Ok(tile_image(&image, options))
}

/// Tiles an already decoded image.
pub fn tile_image(image: &RgbImage, options: &TilingOptions) -> TiledImage {
    let size = image.dimensions();
    let grid = choose_grid(
        size.0,
        size.1,
        options.tile_size,
        options.min_tiles,
        options.max_tiles,
    );
    let tiles = tile(image, grid, options.tile_size, options.thumbnail);
    TiledImage {
        size,
        grid,
        thumbnail: tiles.len() as u32 > grid.0 * grid.1,
        tiles,
    }
}

/// `pixel_values` of tiles: f32 `[tiles, 3, S, S]`, channel-first, `(x / 255 - mean) / std`.
pub fn pixel_values(tiles: &[RgbImage]) -> Vec<f32> {
    let mut out = Vec::new();
    for tile in tiles {
        let plane = (tile.width() * tile.height()) as usize;
        let start = out.len();
        out.resize(start + 3 * plane, 0.0);
        for (i, px) in tile.pixels().enumerate() {
            for ch in 0..3 {
                let v = f32::from(px.0[ch]) / 255.0;
                out[start + ch * plane + i] = (v - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch];
            }
        }
    }
    out
}
