#![allow(clippy::unwrap_used)]
//! The vision model against transformers: small random checkpoints in every published layout
//! (built by tools/make_vision_fixtures.py), whole path from the PNG to the projector features.

use candle_core::{DType, Tensor};
use dvd_vision_server::model::{
    CheckpointLayout, ConfigStyle, NormKind, RouterThresholds, Routing, VisionModel,
};
use dvd_vision_server::preprocess::preprocess;

use crate::common::{
    FEATURES_TOLERANCE, load_model, max_abs, max_abs_diff, model_fixture, reference,
    reference_pixel_values,
};

/// Largest absolute difference allowed between the router's scores (its "compress"
/// probabilities and the request's quantile threshold over them) and the reference's. Measured:
/// at most 3.6e-7 for both; 1e-6 is 2.8x that.
const ROUTER_SCORE_TOLERANCE: f32 = 1e-6;

/// Largest difference allowed between BF16-computed features and transformers' f32 features, as
/// a fraction of the largest feature. Measured: 1.04e-2 (3.1e-2 at a scale of 2.99); 2.5e-2 is
/// 2.4x that.
const BF16_RELATIVE_TOLERANCE: f32 = 2.5e-2;

/// Decodes and tiles the fixture image with the model's own tiling settings.
fn pixel_values(model: &VisionModel) -> Tensor {
    let bytes = std::fs::read(model_fixture("image.png")).unwrap();
    let tiled = preprocess(&bytes, &model.config().tiling).unwrap();
    model.pixel_values(&tiled.tiles).unwrap()
}

fn check_against_reference(name: &str) {
    let model = load_model(name, DType::F32);
    let pv = pixel_values(&model);
    // Bit-exact (measured: a max abs diff of 0 on every fixture).
    let pv_diff = max_abs_diff(&pv, &reference_pixel_values());
    assert_eq!(pv_diff, 0.0, "{name}: pixel values differ");
    let encoded = model.encode(&pv, Routing::Off).unwrap();
    let expected = reference(name, "features");
    let diff = max_abs_diff(&encoded.features, &expected);
    eprintln!("{name}: max abs diff of features {diff:e}");
    assert!(
        diff <= FEATURES_TOLERANCE,
        "{name}: features differ by {diff}"
    );
    let tokens = reference(name, "tokens_per_tile")
        .to_dtype(DType::I64)
        .unwrap();
    let tokens: Vec<usize> = tokens
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|t| t as usize)
        .collect();
    assert_eq!(encoded.tokens_per_tile, tokens);
    assert!(encoded.router.is_none());
}

#[test]
fn vit300m_hf_layout_matches_transformers() {
    check_against_reference("vit300m-hf");
}

#[test]
fn vit300m_legacy_names_f16_final_norm_matches_transformers() {
    check_against_reference("vit300m-hf-legacy-f16");
}

#[test]
fn vit6b_custom_sharded_bf16_matches_transformers() {
    check_against_reference("vit6b-custom-bf16");
}

#[test]
fn flash_checkpoint_without_routing_matches_mlp1_path() {
    let model = load_model("flash-custom", DType::F32);
    let pv = pixel_values(&model);
    let encoded = model.encode(&pv, Routing::Off).unwrap();
    let diff = max_abs_diff(
        &encoded.features,
        &reference("flash-custom", "features_vir_off"),
    );
    assert!(diff <= FEATURES_TOLERANCE, "features differ by {diff}");
    assert_eq!(encoded.tokens_per_tile, vec![4; 7]);
}

#[test]
fn router_matches_the_reference() {
    let model = load_model("flash-custom", DType::F32);
    assert!(model.has_router());
    let pv = pixel_values(&model);
    // flash_mode is on in the config, so the default routes with the config's thresholds.
    let encoded = model.encode(&pv, Routing::Default).unwrap();
    let decision = encoded.router.clone().unwrap();
    let probs = reference("flash-custom", "router_probs");
    let expected_p: Vec<f32> = probs
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|r| r[0])
        .collect();
    for (a, b) in decision.compress_probs.iter().zip(&expected_p) {
        assert!(
            (a - b).abs() <= ROUTER_SCORE_TOLERANCE,
            "router probabilities {a} vs {b}"
        );
    }
    let diff = max_abs_diff(&encoded.features, &reference("flash-custom", "features"));
    assert!(
        diff <= FEATURES_TOLERANCE,
        "routed features differ by {diff}"
    );
    let tokens: Vec<usize> = decision
        .compress
        .iter()
        .map(|&c| if c { 1 } else { 4 })
        .collect();
    assert_eq!(encoded.tokens_per_tile, tokens);
    // Per-tile slices line up with the decisions.
    for (i, &n) in tokens.iter().enumerate() {
        assert_eq!(encoded.tile(i).unwrap().dims(), &[n, 48]);
    }

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model_fixture("flash-custom/decisions.json")).unwrap(),
    )
    .unwrap();
    let cases = json["decisions"].as_array().unwrap();
    assert_eq!(
        decision.compress,
        serde_json::from_value::<Vec<bool>>(cases[0]["compress"].clone()).unwrap()
    );
    for case in cases {
        let thresholds = RouterThresholds {
            relative: case["relative"].as_f64().unwrap(),
            absolute: case["absolute"].as_f64().unwrap(),
        };
        let encoded = model.encode(&pv, Routing::With(thresholds)).unwrap();
        let router = encoded.router.unwrap();
        let expected: Vec<bool> = serde_json::from_value(case["compress"].clone()).unwrap();
        assert_eq!(router.compress, expected, "{thresholds:?}");
        let q = case["quantile"].as_f64().unwrap() as f32;
        assert!(
            (router.threshold - q).abs() <= ROUTER_SCORE_TOLERANCE,
            "{} vs {q}",
            router.threshold
        );
    }
}

#[test]
fn routing_a_model_without_router_is_an_error() {
    let model = load_model("vit300m-hf", DType::F32);
    let pv = pixel_values(&model);
    let err = model.encode(&pv, Routing::On).unwrap_err();
    assert!(
        err.to_string().contains("no Visual Resolution Router"),
        "{err}"
    );
    // The default quietly takes the 256-token path.
    assert!(
        model
            .encode(&pv, Routing::Default)
            .unwrap()
            .router
            .is_none()
    );
}

#[test]
fn formats_are_detected() {
    let cases = [
        ("vit300m-hf", CheckpointLayout::Hf, ConfigStyle::Hf),
        (
            "vit300m-hf-legacy-f16",
            CheckpointLayout::HfLegacy,
            ConfigStyle::Hf,
        ),
        (
            "vit6b-custom-bf16",
            CheckpointLayout::Custom,
            ConfigStyle::Custom,
        ),
        (
            "flash-custom",
            CheckpointLayout::Custom,
            ConfigStyle::Custom,
        ),
    ];
    for (name, layout, style) in cases {
        let model = load_model(name, DType::F32);
        assert_eq!(model.layout(), layout, "{name}");
        assert_eq!(model.config().style, style, "{name}");
    }
    // The 6B config omits norm_type, qkv_bias and qk_normalization: InternVisionConfig's (6B)
    // defaults fill them. Its ViT was trained at 28 px while tiles are 56 px.
    let c = load_model("vit6b-custom-bf16", DType::F32).config().clone();
    assert_eq!(c.vit.norm, NormKind::RmsNorm);
    assert!(c.vit.qk_norm && !c.vit.qkv_bias);
    assert_eq!((c.vit.image_size, c.tiling.tile_size), (28, 56));
    assert_eq!((c.vit.num_layers, c.feature_layer), (3, 2));
    assert_eq!((c.tiling.max_tiles, c.tiling.thumbnail), (6, true));
    // HF: tiling from preprocessor_config.json, or the InternVL defaults without one.
    assert_eq!(
        load_model("vit300m-hf", DType::F32)
            .config()
            .tiling
            .max_tiles,
        6
    );
    let legacy = load_model("vit300m-hf-legacy-f16", DType::F32)
        .config()
        .clone();
    assert_eq!(legacy.tiling.max_tiles, 12);
    assert!(legacy.vit.final_norm);
}

#[test]
fn bf16_compute_stays_close() {
    let model = load_model("vit300m-hf", DType::BF16);
    let pv = pixel_values(&model);
    let encoded = model.encode(&pv, Routing::Off).unwrap();
    assert_eq!(encoded.features.dtype(), DType::BF16);
    let expected = reference("vit300m-hf", "features");
    let scale = max_abs(&expected);
    let diff = max_abs_diff(&encoded.features, &expected);
    assert!(
        diff <= BF16_RELATIVE_TOLERANCE * scale,
        "bf16 features differ by {diff} (scale {scale})"
    );
}
