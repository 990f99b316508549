//! Preprocessing equals the reference: the InternVL tiling run with Pillow by
//! `tools/make_preprocess_fixtures.py` (fixtures in `tests/fixtures/preprocess/`).
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use dvd_vision_server::preprocess::{
    TilingOptions, choose_grid, decode_rgb, preprocess, resize_bicubic,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::preprocess_fixture;

fn json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(preprocess_fixture(name)).unwrap()).unwrap()
}

/// The largest per-byte difference between two equally long pixel buffers.
fn largest_difference(a: &[u8], b: &[u8]) -> u8 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

#[test]
fn grid_choice_matches_the_reference_over_a_sweep_of_sizes() {
    let grids = json("grids.json");
    let cases = grids.as_array().unwrap();
    assert!(cases.len() > 9000);
    let mut mismatches = Vec::new();
    for case in cases {
        let v: Vec<u32> = case
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = choose_grid(v[0], v[1], 448, v[2], v[3]);
        if got != (v[4], v[5]) {
            mismatches.push(format!(
                "{}x{} tiles {}..{}: reference {:?}, ours {got:?}",
                v[0],
                v[1],
                v[2],
                v[3],
                (v[4], v[5])
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
}

#[test]
fn tiles_are_bit_identical_to_pillow() {
    for case in json("tiles.json").as_array().unwrap() {
        let bytes = std::fs::read(preprocess_fixture(case["image"].as_str().unwrap())).unwrap();
        let options = TilingOptions {
            max_tiles: case["max_tiles"].as_u64().unwrap() as u32,
            ..TilingOptions::default()
        };
        let tiled = preprocess(&bytes, &options).unwrap();
        let grid = case["grid"].as_array().unwrap();
        let name = case["image"].as_str().unwrap();
        assert_eq!(
            (tiled.grid.0 as u64, tiled.grid.1 as u64),
            (grid[0].as_u64().unwrap(), grid[1].as_u64().unwrap()),
            "{name}"
        );
        let expected: Vec<&str> = case["tiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert_eq!(tiled.tiles.len(), expected.len(), "{name}");
        for (i, (tile, hash)) in tiled.tiles.iter().zip(expected).enumerate() {
            let got = format!("{:x}", Sha256::digest(tile.as_raw()));
            assert_eq!(got, hash, "{name}: tile {i} differs from Pillow");
        }
    }
}

#[test]
fn single_resizes_are_bit_identical_to_pillow() {
    for case in json("resizes.json").as_array().unwrap() {
        let src = decode_rgb(
            &std::fs::read(preprocess_fixture(case["source"].as_str().unwrap())).unwrap(),
            u64::MAX,
        )
        .unwrap();
        let (w, h) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        let expected = std::fs::read(preprocess_fixture(case["rgb"].as_str().unwrap())).unwrap();
        let got = resize_bicubic(&src, w, h);
        let worst = largest_difference(got.as_raw(), &expected);
        assert_eq!(got.as_raw().len(), expected.len());
        assert_eq!(worst, 0, "{w}x{h}: largest difference {worst}/255");
    }
}

/// JPEG pixels equal Pillow's (libjpeg-turbo) in the three common chroma subsamplings.
#[test]
fn jpeg_decoding_is_identical_to_pillow() {
    for case in json("jpegs.json").as_array().unwrap() {
        let name = case["image"].as_str().unwrap();
        let got = decode_rgb(&std::fs::read(preprocess_fixture(name)).unwrap(), u64::MAX).unwrap();
        let expected = std::fs::read(preprocess_fixture(case["rgb"].as_str().unwrap())).unwrap();
        assert_eq!(got.as_raw().len(), expected.len(), "{name}");
        let worst = largest_difference(got.as_raw(), &expected);
        assert_eq!(
            worst, 0,
            "{name}: largest difference from Pillow {worst}/255"
        );
    }
}
