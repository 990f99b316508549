//! The model card's way with a video, against tools/make_video_fixtures.py (PyAV's frames, the
//! card's `get_index` and `dynamic_preprocess(max_num=1)`, transformers' features of
//! vit300m-hf): the same frame count and frame numbers, the same rgb24 frames, the same pixel
//! values, features within the vision reference tolerance.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use dvd_checkpoint::Checkpoint;
use dvd_vision_server::model::Routing;
use dvd_vision_server::video::{Ffmpeg, VideoLimits, frame_tiling, tile_video};

use crate::common::{FEATURES_TOLERANCE, load_model, max_abs_diff};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/video")
        .join(name)
}

fn reference(tensor: &str, dtype: DType) -> Tensor {
    Checkpoint::open_file(&fixture("reference.safetensors"))
        .unwrap()
        .load(tensor, dtype, &Device::Cpu)
        .unwrap()
}

#[test]
fn frames_pixels_and_features_match_the_model_cards_reader() {
    let bytes = std::fs::read(fixture("clip.mp4")).unwrap();
    let video = Ffmpeg::find()
        .unwrap()
        .open(&bytes, &VideoLimits::default())
        .unwrap();
    let count = reference("frame_count", DType::I64)
        .to_vec1::<i64>()
        .unwrap();
    assert_eq!(video.info.frames as i64, count[0], "frames counted");
    let fps = reference("fps", DType::F64).to_vec1::<f64>().unwrap();
    assert_eq!(video.info.fps, fps[0]);
    let indices: Vec<u64> = reference("frame_indices", DType::I64)
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u64)
        .collect();
    assert_eq!(video.sample(8), indices);

    // rgb24 frames: FFmpeg 5.1's conversion against PyAV's (measured: identical).
    let frames = reference("frames", DType::U8)
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let mut decoded = Vec::new();
    video
        .frames(&indices, |_, frame| decoded.extend(frame.into_raw()))
        .unwrap();
    assert_eq!(decoded.len(), frames.len());
    let worst = decoded
        .iter()
        .zip(&frames)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    eprintln!("video frames: largest difference {worst} levels of 255");
    assert!(worst <= 1, "frames differ by {worst} levels");

    let model = load_model("vit300m-hf", DType::F32);
    let tiling = frame_tiling(&model.config().tiling, 1);
    let tiled = tile_video(&video, 8, &tiling).unwrap();
    assert_eq!(tiled.tiles_per_frame(), [1; 8]);
    let pv = model.pixel_values(&tiled.into_tiles()).unwrap();
    // Pillow's bicubic resize, bit for bit, as for images.
    assert_eq!(
        max_abs_diff(&pv, &reference("pixel_values", DType::F32)),
        0.0
    );
    let encoded = model.encode(&pv, Routing::Off).unwrap();
    let diff = max_abs_diff(&encoded.features, &reference("features", DType::F32));
    eprintln!("video frames: max abs diff of features {diff:e}");
    assert!(diff <= FEATURES_TOLERANCE, "features differ by {diff}");
}
