//! Entry points for fuzzers and their corpus-replay tests (`fuzz/`, `cli/tests/fuzz_corpus.rs`).

use std::path::Path;

use crate::preprocess::{TilingOptions, preprocess};

/// Encoded image bytes through decoding and tiling, with a pixel limit small enough for a fuzzer;
/// checks what tiling promises. Panics only on a bug.
pub fn image_bytes(bytes: &[u8]) {
    let options = TilingOptions {
        tile_size: 32,
        max_tiles: 6,
        max_pixels: 1 << 20,
        ..TilingOptions::default()
    };
    let Ok(tiled) = preprocess(bytes, &options) else {
        return;
    };
    let (columns, rows) = tiled.grid;
    let grid = (columns * rows) as usize;
    assert!((1..=6).contains(&grid), "grid {:?}", tiled.grid);
    let thumbnail = usize::from(tiled.thumbnail);
    assert_eq!(tiled.tiles.len(), grid + thumbnail);
    assert_eq!(tiled.thumbnail, grid > 1);
    for tile in &tiled.tiles {
        assert_eq!(tile.dimensions(), (32, 32));
    }
}

/// A checkpoint's `config.json` text through the vision model's config parser (both layouts),
/// with the same text as its `preprocessor_config.json`. Panics only on a bug.
pub fn model_config(bytes: &[u8]) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let path = Path::new("config.json");
    let _ = crate::model::VisionConfig::from_json(&json, path, None);
    let _ = crate::model::VisionConfig::from_json(&json, path, Some((&json, path)));
}
