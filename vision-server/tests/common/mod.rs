//! Helpers the vision server's tests share: the fixture folders, the fixture models with their
//! reference tensors, and comparisons.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dvd_checkpoint::Checkpoint;
use dvd_vision_server::model::{LoadOptions, VisionModel};

/// `tests/fixtures/model/<name>`: the small random checkpoints (tools/make_vision_fixtures.py)
/// and the image they were run on.
pub fn model_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model")
        .join(name)
}

/// `tests/fixtures/preprocess/<name>`: the Pillow tiling and resizing reference
/// (tools/make_preprocess_fixtures.py).
pub fn preprocess_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preprocess")
        .join(name)
}

/// Largest absolute difference allowed between f32 features and transformers' (the fixture
/// checkpoints' features reach about 3). Measured on x86-64 (AVX2/FMA): 1.55e-6 to 1.91e-6 over
/// the five comparisons (vit300m-hf 1.73e-6, vit300m-hf-legacy-f16 1.67e-6, vit6b-custom-bf16
/// 1.91e-6, flash-custom 1.91e-6 unrouted and 1.55e-6 routed); 5e-6 is 2.6x the worst. The
/// video frames of tools/make_video_fixtures.py through vit300m-hf: 1.67e-6.
pub const FEATURES_TOLERANCE: f32 = 5e-6;

/// The fixture checkpoint `name` loaded on the CPU in `dtype`.
pub fn load_model(name: &str, dtype: DType) -> VisionModel {
    let options = LoadOptions {
        dtype,
        device: Device::Cpu,
    };
    VisionModel::load(&model_fixture(name), &options).unwrap()
}

/// The reference pixel values of `image.png` (`[7, 3, 56, 56]`, f32).
pub fn reference_pixel_values() -> Tensor {
    Checkpoint::open_file(&model_fixture("pixel_values.safetensors"))
        .unwrap()
        .load("pixel_values", DType::F32, &Device::Cpu)
        .unwrap()
}

/// Tensor `tensor` of checkpoint `name`'s `reference.safetensors` (transformers' outputs), f32.
pub fn reference(name: &str, tensor: &str) -> Tensor {
    let file = Checkpoint::open_file(&model_fixture(name).join("reference.safetensors")).unwrap();
    file.load(tensor, DType::F32, &Device::Cpu).unwrap()
}

/// The largest absolute value of `t`.
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap())
}
