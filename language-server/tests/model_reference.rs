#![allow(clippy::unwrap_used)]
//! The language model against transformers on small random checkpoints
//! (tools/make_language_fixtures.py): prefill logits, 16 greedy tokens, text-only and with an
//! image encoded by dvd's vision model, and batched steps equal to single-sequence steps.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dvd_checkpoint::Checkpoint;
use dvd_language_server::model::{
    KvCache, LanguageLayout, LanguageModel, LoadOptions, SequenceStep, argmax_rows,
};
use dvd_vision_server::model::{Routing, VisionModel};

/// `<IMG_CONTEXT>` in the fixtures' tokenizer.
const IMG_CONTEXT: u32 = 503;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model")
        .join(name)
}

fn reference(name: &str, tensor: &str) -> Tensor {
    Checkpoint::open_file(&fixture(name).join("reference.safetensors"))
        .unwrap()
        .load(tensor, DType::F32, &Device::Cpu)
        .unwrap()
}

fn ids(name: &str, tensor: &str) -> Vec<u32> {
    let t = reference(name, tensor).to_dtype(DType::I64).unwrap();
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

fn load(name: &str, dtype: DType) -> LanguageModel {
    let options = LoadOptions {
        dtype,
        device: Device::Cpu,
    };
    LanguageModel::load(&fixture(name), &options).unwrap()
}

/// Image features of the vision fixtures' test image through the checkpoint's vision half.
fn image_features(name: &str) -> Tensor {
    let vision = VisionModel::load(&fixture(name), &LoadOptions::default()).unwrap();
    let pv = Checkpoint::open_file(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../vision-server/tests/fixtures/model/pixel_values.safetensors"),
    )
    .unwrap()
    .load("pixel_values", DType::F32, &Device::Cpu)
    .unwrap();
    vision.encode(&pv, Routing::Off).unwrap().features
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Prefill logits and `steps` greedy tokens of one sequence.
fn generate(model: &LanguageModel, embeds: Tensor, steps: usize) -> (Tensor, Vec<u32>) {
    let mut cache = model.new_cache();
    let logits = model
        .forward(&mut [SequenceStep {
            embeds,
            cache: &mut cache,
        }])
        .unwrap();
    let first = logits.squeeze(0).unwrap();
    let mut tokens = vec![argmax_rows(&logits).unwrap()[0]];
    while tokens.len() < steps {
        let embeds = model
            .embed(&tokens[tokens.len() - 1..], None, None)
            .unwrap();
        let logits = model
            .forward(&mut [SequenceStep {
                embeds,
                cache: &mut cache,
            }])
            .unwrap();
        tokens.push(argmax_rows(&logits).unwrap()[0]);
    }
    (first, tokens)
}

fn check(name: &str, with_image: bool) {
    let model = load(name, DType::F32);
    let prompt = ids(name, "text_ids");
    let (logits, greedy) = generate(&model, model.embed(&prompt, None, None).unwrap(), 16);
    let diff = max_abs_diff(&logits, &reference(name, "text_logits"));
    eprintln!("{name} text: max abs logit diff {diff:e}");
    assert!(diff <= 1e-3, "{name}: text logits differ by {diff}");
    assert_eq!(
        greedy,
        ids(name, "text_greedy"),
        "{name}: text greedy tokens"
    );
    if with_image {
        let prompt = ids(name, "image_ids");
        let features = image_features(name);
        let embeds = model
            .embed(&prompt, Some(IMG_CONTEXT), Some(&features))
            .unwrap();
        let (logits, greedy) = generate(&model, embeds, 16);
        let diff = max_abs_diff(&logits, &reference(name, "image_logits"));
        eprintln!("{name} image: max abs logit diff {diff:e}");
        assert!(diff <= 1e-3, "{name}: image logits differ by {diff}");
        assert_eq!(
            greedy,
            ids(name, "image_greedy"),
            "{name}: image greedy tokens"
        );
    }
}

#[test]
fn dense_hf_layout_matches_transformers() {
    check("internvl-dense-hf", true);
}

#[test]
fn moe_custom_layout_bf16_shards_match_transformers() {
    check("internvl-moe-custom-bf16", true);
}

#[test]
fn plain_qwen3_with_tied_embeddings_f16_matches_transformers() {
    check("qwen3-tied-f16", false);
}

#[test]
fn layouts_and_configs_are_detected() {
    let dense = load("internvl-dense-hf", DType::F32);
    assert_eq!(dense.layout(), LanguageLayout::Hf);
    assert!(!dense.tied_embeddings());
    assert_eq!(dense.config().head_dim, 32);
    assert!(dense.config().moe.is_none());
    assert_eq!(dense.config().eos_token_ids, vec![500]);
    let moe = load("internvl-moe-custom-bf16", DType::F32);
    assert_eq!(moe.layout(), LanguageLayout::Nested);
    let c = moe.config();
    assert_eq!(c.rope_theta, 1e6);
    assert!(c.is_moe_layer(0) && !c.is_moe_layer(1) && c.is_moe_layer(2));
    assert!(c.moe.as_ref().unwrap().norm_topk_prob);
    let tied = load("qwen3-tied-f16", DType::F32);
    assert_eq!(tied.layout(), LanguageLayout::Plain);
    assert!(tied.tied_embeddings());
}

/// Mixed-length sequences in one batch (prefill of three prompts, then decode steps where one
/// sequence is still prefilling in chunks) give the same logits as each sequence alone.
#[test]
fn batched_steps_equal_single_sequences() {
    let name = "internvl-moe-custom-bf16";
    let model = load(name, DType::F32);
    let text = ids(name, "text_ids");
    let image = ids(name, "image_ids");
    let features = image_features(name);
    let short = text[..7].to_vec();
    let prompts: Vec<(Vec<u32>, Option<&Tensor>)> = vec![
        (text.clone(), None),
        (image.clone(), Some(&features)),
        (short.clone(), None),
    ];
    let embed = |p: &[u32], f: Option<&Tensor>| model.embed(p, f.map(|_| IMG_CONTEXT), f).unwrap();

    // Alone: prefill + 4 greedy steps each.
    let mut alone = Vec::new();
    for (p, f) in &prompts {
        let (first, tokens) = generate(&model, embed(p, *f), 5);
        alone.push((first, tokens));
    }

    // Together: sequences 0 and 1 prefill at once, sequence 2 prefills in two chunks while the
    // others decode.
    let mut caches: Vec<KvCache> = (0..3).map(|_| model.new_cache()).collect();
    let [c0, c1, c2] = &mut caches[..] else {
        unreachable!()
    };
    let logits = model
        .forward(&mut [
            SequenceStep {
                embeds: embed(&text, None),
                cache: c0,
            },
            SequenceStep {
                embeds: embed(&image, Some(&features)),
                cache: c1,
            },
            SequenceStep {
                embeds: embed(&short[..4], None),
                cache: c2,
            },
        ])
        .unwrap();
    for (s, (first, _)) in alone.iter().enumerate().take(2) {
        let diff = max_abs_diff(&logits.get(s).unwrap(), first);
        assert!(diff <= 1e-4, "sequence {s} prefill differs by {diff}");
    }
    let mut next: Vec<u32> = argmax_rows(&logits).unwrap()[..2].to_vec();
    assert_eq!(next, vec![alone[0].1[0], alone[1].1[0]]);
    let logits = model
        .forward(&mut [
            SequenceStep {
                embeds: embed(&next[0..1], None),
                cache: c0,
            },
            SequenceStep {
                embeds: embed(&short[4..], None),
                cache: c2,
            },
            SequenceStep {
                embeds: embed(&next[1..2], None),
                cache: c1,
            },
        ])
        .unwrap();
    let step = argmax_rows(&logits).unwrap();
    assert_eq!(step[0], alone[0].1[1]);
    assert_eq!(step[2], alone[1].1[1]);
    let diff = max_abs_diff(&logits.get(1).unwrap(), &alone[2].0);
    assert!(diff <= 1e-4, "chunked prefill differs by {diff}");
    assert_eq!(step[1], alone[2].1[0]);
    next = step;
    let logits = model
        .forward(&mut [
            SequenceStep {
                embeds: embed(&next[2..3], None),
                cache: c1,
            },
            SequenceStep {
                embeds: embed(&next[1..2], None),
                cache: c2,
            },
        ])
        .unwrap();
    let step = argmax_rows(&logits).unwrap();
    assert_eq!(step, vec![alone[1].1[2], alone[2].1[1]]);
}

#[test]
fn bad_inputs_are_refused() {
    let model = load("internvl-dense-hf", DType::F32);
    let prompt = ids("internvl-dense-hf", "image_ids");
    // Image positions without features, and the wrong number of feature rows.
    assert!(model.embed(&prompt, Some(IMG_CONTEXT), None).is_err());
    let features = Tensor::zeros((3, 64), DType::F32, &Device::Cpu).unwrap();
    let err = model
        .embed(&prompt, Some(IMG_CONTEXT), Some(&features))
        .unwrap_err();
    assert!(
        err.to_string().contains("28 image-token positions but 3"),
        "{err}"
    );
    assert!(model.embed(&[9999], None, None).is_err());
    let mut cache = model.new_cache();
    let empty = Tensor::zeros((0, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(
        model
            .forward(&mut [SequenceStep {
                embeds: empty,
                cache: &mut cache
            }])
            .is_err()
    );
    assert!(model.forward(&mut []).is_err());
}

#[test]
fn bf16_compute_keeps_the_greedy_start() {
    let name = "internvl-dense-hf";
    let model = load(name, DType::BF16);
    let prompt = ids(name, "text_ids");
    let (logits, _) = generate(&model, model.embed(&prompt, None, None).unwrap(), 1);
    let reference = reference(name, "text_logits");
    let scale = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let diff = max_abs_diff(&logits, &reference);
    assert!(
        diff <= 0.1 * scale,
        "bf16 logits differ by {diff} (scale {scale})"
    );
}

#[test]
fn vision_tensors_are_never_read() {
    // A vision tensor in a dtype dvd cannot read: loading the language half must not touch it.
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("internvl-dense-hf");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let victim = entries
        .iter_mut()
        .find(|e| e.0 == "model.vision_tower.embeddings.cls_token")
        .unwrap();
    victim.1 = safetensors::Dtype::BOOL;
    victim.3 = vec![0u8; victim.2.iter().product()];
    let views: Vec<(String, safetensors::tensor::TensorView)> = entries
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
    let model = LanguageModel::load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(model.layout(), LanguageLayout::Hf);
    // And a missing language tensor is named.
    let victim = "model.language_model.layers.2.mlp.down_proj.weight";
    entries.retain(|e| e.0 != victim);
    let views: Vec<(String, safetensors::tensor::TensorView)> = entries
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
    let err = LanguageModel::load(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains(victim), "{err}");
}
