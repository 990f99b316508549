//! InternVL dynamic high-resolution tiling: choose a grid of square tiles whose aspect ratio is
//! closest to the image's, resize the image onto it, cut it row-major, and append a thumbnail of
//! the whole image when there is more than one tile.

use image::RgbImage;

use super::resize::resize_bicubic;

/// The candidate grids `(columns, rows)` with `min_tiles <= columns * rows <= max_tiles`, ordered
/// by tile count; within one count, by columns, then rows.
pub fn candidate_grids(min_tiles: u32, max_tiles: u32) -> Vec<(u32, u32)> {
    let mut grids: Vec<(u32, u32)> = (1..=max_tiles)
        .flat_map(|c| (1..=max_tiles).map(move |r| (c, r)))
        .filter(|&(c, r)| (min_tiles..=max_tiles).contains(&(c * r)))
        .collect();
    grids.sort_by_key(|&(c, r)| c * r);
    grids
}

/// The reference's grid choice for a `width` x `height` image: the smallest difference between
/// aspect ratios wins; on a tie a later (larger) grid wins if the image has more than half the
/// pixels of that grid's canvas.
pub fn choose_grid(
    width: u32,
    height: u32,
    tile_size: u32,
    min_tiles: u32,
    max_tiles: u32,
) -> (u32, u32) {
    let aspect = f64::from(width) / f64::from(height);
    let area = f64::from(width) * f64::from(height);
    let tile_area = f64::from(tile_size) * f64::from(tile_size);
    let mut best = (1, 1);
    let mut best_diff = f64::INFINITY;
    for (c, r) in candidate_grids(min_tiles, max_tiles) {
        let diff = (aspect - f64::from(c) / f64::from(r)).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (c, r);
        } else if diff == best_diff && area > 0.5 * tile_area * f64::from(c * r) {
            best = (c, r);
        }
    }
    best
}

/// Cuts `image` into tiles of `tile_size` pixels on `grid`, row-major, plus the thumbnail last
/// when `thumbnail` is set and there is more than one tile.
pub fn tile(image: &RgbImage, grid: (u32, u32), tile_size: u32, thumbnail: bool) -> Vec<RgbImage> {
    let (cols, rows) = grid;
    let canvas = resize_bicubic(image, cols * tile_size, rows * tile_size);
    let mut tiles = Vec::with_capacity((cols * rows + 1) as usize);
    for r in 0..rows {
        for c in 0..cols {
            let view = image::imageops::crop_imm(
                &canvas,
                c * tile_size,
                r * tile_size,
                tile_size,
                tile_size,
            );
            tiles.push(view.to_image());
        }
    }
    if thumbnail && tiles.len() != 1 {
        tiles.push(resize_bicubic(image, tile_size, tile_size));
    }
    tiles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_counts_of_the_issue() {
        for (w, h, tiles) in [
            (448, 448, 1),
            (800, 600, 13),
            (600, 800, 13),
            (1920, 1080, 9),
            (100, 1000, 11),
            (900, 448, 3),
            (1000, 1000, 10),
        ] {
            let (c, r) = choose_grid(w, h, 448, 1, 12);
            let n = c * r + u32::from(c * r > 1);
            assert_eq!(n, tiles, "{w}x{h} -> grid {c}x{r}");
        }
    }

    #[test]
    fn candidates_respect_limits() {
        let g = candidate_grids(2, 6);
        assert!(g.iter().all(|&(c, r)| (2..=6).contains(&(c * r))));
        assert!(g.windows(2).all(|w| w[0].0 * w[0].1 <= w[1].0 * w[1].1));
        assert_eq!(candidate_grids(1, 1), vec![(1, 1)]);
    }
}
