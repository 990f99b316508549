//! Qwen3-MoE experts read from either checkpoint layout (one tensor per expert and projection,
//! or the fused tensors transformers 5 saves) give the same model, and broken expert tensors
//! fail when the model loads, naming the tensor.

use std::path::Path;

use candle_core::Tensor;
use dvd_language_server::model::{LanguageModel, LoadOptions};

use crate::common::{
    StoredTensor, fixture, greedy_tokens, ids, max_abs_diff, unpack_fixture, write_safetensors,
};

/// Writes `tensors` as the directory's one `model.safetensors` and loads it.
fn load_written(dir: &Path, tensors: &[StoredTensor]) -> Result<LanguageModel, String> {
    write_safetensors(&dir.join("model.safetensors"), tensors);
    LanguageModel::load(dir, &LoadOptions::default()).map_err(|e| e.to_string())
}

/// Prefill logits of the fixture's text prompt.
fn logits(model: &LanguageModel, name: &str) -> Tensor {
    let embeds = model.embed(&ids(name, "text_ids"), None, None).unwrap();
    greedy_tokens(model, embeds, &mut model.new_cache(), 1).0
}

/// `(prefix, expert, projection)` of a per-expert tensor `{prefix}.{e}.{projection}.weight`.
fn per_expert(name: &str) -> Option<(String, usize, String)> {
    let (prefix, rest) = name.split_once(".mlp.experts.")?;
    let (expert, rest) = rest.split_once('.')?;
    let projection = rest.strip_suffix(".weight")?;
    Some((
        format!("{prefix}.mlp.experts"),
        expert.parse().ok()?,
        projection.to_string(),
    ))
}

/// The per-expert tensors of each layer rewritten as transformers 5's fused pair.
fn fuse(tensors: Vec<StoredTensor>) -> Vec<StoredTensor> {
    let (experts, mut out): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|t| per_expert(&t.0).is_some());
    let find = |prefix: &str, e: usize, projection: &str| {
        experts
            .iter()
            .find(|t| t.0 == format!("{prefix}.{e}.{projection}.weight"))
            .unwrap()
    };
    let mut prefixes: Vec<String> = experts
        .iter()
        .map(|t| per_expert(&t.0).unwrap().0)
        .collect();
    prefixes.dedup();
    for prefix in prefixes {
        let count = experts
            .iter()
            .filter(|t| t.0.starts_with(&format!("{prefix}.")) && t.0.ends_with("down_proj.weight"))
            .count();
        let gate = find(&prefix, 0, "gate_proj");
        let down = find(&prefix, 0, "down_proj");
        let (width, hidden) = (gate.2[0], gate.2[1]);
        let mut gate_up = Vec::new();
        let mut downs = Vec::new();
        for e in 0..count {
            gate_up.extend_from_slice(&find(&prefix, e, "gate_proj").3);
            gate_up.extend_from_slice(&find(&prefix, e, "up_proj").3);
            downs.extend_from_slice(&find(&prefix, e, "down_proj").3);
        }
        out.push((
            format!("{prefix}.gate_up_proj"),
            gate.1,
            vec![count, 2 * width, hidden],
            gate_up,
        ));
        out.push((
            format!("{prefix}.down_proj"),
            down.1,
            vec![count, hidden, width],
            downs,
        ));
    }
    out
}

/// transformers 5's fused expert tensors rewritten one tensor per expert and projection.
fn split(tensors: Vec<StoredTensor>) -> Vec<StoredTensor> {
    let mut out = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let fused = name
            .strip_suffix(".gate_up_proj")
            .map(|p| (p, true))
            .or_else(|| {
                name.strip_suffix(".down_proj")
                    .filter(|p| p.ends_with(".mlp.experts"))
                    .map(|p| (p, false))
            });
        let Some((prefix, is_gate_up)) = fused else {
            out.push((name, dtype, shape, bytes));
            continue;
        };
        let per = bytes.len() / shape[0];
        for (e, chunk) in bytes.chunks_exact(per).enumerate() {
            let name = |projection: &str| format!("{prefix}.{e}.{projection}.weight");
            if is_gate_up {
                let half = vec![shape[1] / 2, shape[2]];
                out.push((
                    name("gate_proj"),
                    dtype,
                    half.clone(),
                    chunk[..per / 2].to_vec(),
                ));
                out.push((name("up_proj"), dtype, half, chunk[per / 2..].to_vec()));
            } else {
                out.push((
                    name("down_proj"),
                    dtype,
                    shape[1..].to_vec(),
                    chunk.to_vec(),
                ));
            }
        }
    }
    out
}

#[test]
fn per_expert_and_fused_layouts_give_the_same_model() {
    for (name, rewrite) in [
        (
            "internvl-moe-custom-bf16",
            fuse as fn(Vec<StoredTensor>) -> Vec<StoredTensor>,
        ),
        ("qwen3-moe-fused-f32", split),
    ] {
        let original = LanguageModel::load(&fixture(name), &LoadOptions::default()).unwrap();
        let (dir, tensors) = unpack_fixture(name);
        let before = tensors.len();
        let rewritten = rewrite(tensors);
        assert_ne!(rewritten.len(), before, "{name}: nothing was rewritten");
        let model = load_written(dir.path(), &rewritten).unwrap();
        let diff = max_abs_diff(&logits(&model, name), &logits(&original, name));
        assert_eq!(
            diff, 0.0,
            "{name}: the two layouts' logits differ by {diff}"
        );
    }
}

#[test]
fn broken_per_expert_tensors_fail_at_load_naming_the_tensor() {
    let (dir, tensors) = unpack_fixture("internvl-moe-custom-bf16");
    let prefix = "language_model.model.layers.2.mlp.experts";
    // A missing projection.
    let victim = format!("{prefix}.1.up_proj.weight");
    let missing: Vec<_> = tensors.iter().filter(|t| t.0 != victim).cloned().collect();
    let err = load_written(dir.path(), &missing).unwrap_err();
    assert!(err.contains(&victim), "{err}");
    // A misshapen one.
    let mut misshapen = tensors.clone();
    let t = misshapen.iter_mut().find(|t| t.0 == victim).unwrap();
    t.2.reverse();
    let err = load_written(dir.path(), &misshapen).unwrap_err();
    assert!(err.contains(&victim) && err.contains("shape"), "{err}");
    // More experts than the config says (4).
    let mut extra = tensors.clone();
    let copies: Vec<_> = tensors
        .iter()
        .filter(|t| t.0.starts_with(&format!("{prefix}.0.")))
        .map(|t| {
            (
                t.0.replace(".experts.0.", ".experts.4."),
                t.1,
                t.2.clone(),
                t.3.clone(),
            )
        })
        .collect();
    extra.extend(copies);
    let err = load_written(dir.path(), &extra).unwrap_err();
    assert!(
        err.contains(&format!("{prefix}.4.gate_proj.weight")) && err.contains("4 experts"),
        "{err}"
    );
}

#[test]
fn broken_fused_tensors_fail_at_load_naming_the_tensor() {
    let (dir, tensors) = unpack_fixture("qwen3-moe-fused-f32");
    let gate_up = "model.layers.1.mlp.experts.gate_up_proj";
    let down = "model.layers.0.mlp.experts.down_proj";
    // One expert fewer than the config's 8.
    let mut fewer = tensors.clone();
    let t = fewer.iter_mut().find(|t| t.0 == gate_up).unwrap();
    let per = t.3.len() / t.2[0];
    t.2[0] -= 1;
    t.3.truncate(t.3.len() - per);
    let err = load_written(dir.path(), &fewer).unwrap_err();
    assert!(
        err.contains(gate_up) && err.contains("[8, 96, 64]"),
        "{err}"
    );
    // Stored [experts, hidden, 2 * width] instead of [experts, 2 * width, hidden].
    let mut transposed = tensors.clone();
    let t = transposed.iter_mut().find(|t| t.0 == gate_up).unwrap();
    t.2.swap(1, 2);
    let err = load_written(dir.path(), &transposed).unwrap_err();
    assert!(err.contains(gate_up), "{err}");
    // A fused gate|up without its down projection.
    let missing: Vec<_> = tensors.iter().filter(|t| t.0 != down).cloned().collect();
    let err = load_written(dir.path(), &missing).unwrap_err();
    assert!(err.contains(down), "{err}");
}
