#![allow(clippy::unwrap_used)]
//! Checkpoints that disagree with their config, damaged files and unusable configs fail with an
//! error that names the tensor, file or field; vision loading never reads language tensors.

use std::path::Path;

use dvd_vision_server::model::{LoadOptions, ModelError, VisionModel};
use safetensors::tensor::{Dtype, TensorView};

use crate::common::{load_model, model_fixture};

/// A scratch copy of a fixture checkpoint.
fn copy_of(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn load(dir: &Path) -> Result<VisionModel, ModelError> {
    VisionModel::load(dir, &LoadOptions::default())
}

/// One tensor of a safetensors file, as stored.
struct StoredTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Rewrites `file` with `edit` applied to its tensors.
fn rewrite(file: &Path, edit: impl FnOnce(&mut Vec<StoredTensor>)) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<StoredTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| StoredTensor {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: v.data().to_vec(),
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap();
            (t.name.clone(), view)
        })
        .collect();
    std::fs::write(file, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Stores tensor `name` of the checkpoint in `dir` as BOOL, a dtype dvd cannot read.
fn store_as_bool(dir: &Path, name: &str) {
    rewrite(&dir.join("model.safetensors"), |tensors| {
        let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
        t.dtype = Dtype::BOOL;
        t.data = vec![0u8; t.shape.iter().product()];
    });
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
}

fn error_of(dir: &Path) -> String {
    load(dir).unwrap_err().to_string()
}

/// The load error of fixture `name` with `edit` applied to its `config.json`.
fn error_with_config(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = copy_of(name);
    edit_config(dir.path(), edit);
    error_of(dir.path())
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_of("vit300m-hf");
    let gone = "model.vision_tower.encoder.layer.1.mlp.fc2.weight";
    rewrite(&dir.path().join("model.safetensors"), |e| {
        e.retain(|t| t.name != gone)
    });
    let err = error_of(dir.path());
    assert!(err.contains(gone) && err.contains("no tensor"), "{err}");
}

#[test]
fn wrong_shape_is_named() {
    let dir = copy_of("vit300m-hf");
    let name = "model.multi_modal_projector.linear_1.weight";
    rewrite(&dir.path().join("model.safetensors"), |e| {
        let t = e.iter_mut().find(|t| t.name == name).unwrap();
        t.shape = vec![t.shape[1], t.shape[0]];
    });
    let err = error_of(dir.path());
    assert!(err.contains(name) && err.contains("shape"), "{err}");
}

#[test]
fn config_that_disagrees_with_the_weights_names_a_tensor() {
    let err = error_with_config("vit6b-custom-bf16", |j| {
        j["vision_config"]["intermediate_size"] = 96.into()
    });
    assert!(
        err.contains("mlp.fc1.weight") && err.contains("[96, 32]"),
        "{err}"
    );
}

#[test]
fn language_tensors_are_never_read() {
    // A language tensor in a dtype dvd cannot read: loading the vision half must not touch it.
    let dir = copy_of("vit300m-hf");
    store_as_bool(dir.path(), "model.language_model.embed_tokens.weight");
    load(dir.path()).unwrap();
}

#[test]
fn unsupported_stored_dtype_is_named() {
    let dir = copy_of("vit300m-hf");
    let name = "model.vision_tower.embeddings.cls_token";
    store_as_bool(dir.path(), name);
    let err = error_of(dir.path());
    assert!(err.contains(name) && err.contains("BOOL"), "{err}");
}

#[test]
fn damaged_files_are_reported() {
    let dir = copy_of("vit300m-hf");
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = error_of(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("outside the file"),
        "{err}"
    );

    std::fs::write(&file, b"definitely not safetensors").unwrap();
    let err = error_of(dir.path());
    assert!(err.contains("invalid safetensors file"), "{err}");

    std::fs::write(&file, b"").unwrap();
    assert!(error_of(dir.path()).contains("header"));
}

#[test]
fn missing_shard_is_named() {
    let dir = copy_of("vit6b-custom-bf16");
    let shard = "model-00002-of-00003.safetensors";
    std::fs::remove_file(dir.path().join(shard)).unwrap();
    let err = error_of(dir.path());
    assert!(err.contains(shard), "{err}");
}

#[test]
fn shard_index_cannot_escape_the_directory() {
    let dir = copy_of("vit6b-custom-bf16");
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        text.replace("model-00001-of-00003", "../model-00001-of-00003"),
    )
    .unwrap();
    let err = error_of(dir.path());
    assert!(err.contains("outside the directory"), "{err}");
}

#[test]
fn config_problems_are_named() {
    let err = error_with_config("vit300m-hf", |j| {
        j["vision_config"]["hidden_size"] = "wide".into()
    });
    assert!(
        err.contains("vision_config.hidden_size") && err.contains("config.json"),
        "{err}"
    );
    let err = error_with_config("vit300m-hf", |j| {
        j["vision_config"]["hidden_act"] = "relu".into()
    });
    assert!(err.contains("hidden_act"));
    let err = error_with_config("vit300m-hf", |j| {
        *j = serde_json::json!({"model_type": "llama"})
    });
    assert!(err.contains("not an InternVL config"));
    let err = error_with_config("vit300m-hf", |j| {
        j["vision_config"]["num_attention_heads"] = 5.into()
    });
    assert!(err.contains("not divisible by 5 heads"));
    let err = error_with_config("vit6b-custom-bf16", |j| j["select_layer"] = 7.into());
    assert!(err.contains("select_layer = 7"));

    let dir = copy_of("vit300m-hf");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(error_of(dir.path()).contains("config.json"));

    let dir = copy_of("vit300m-hf");
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(error_of(dir.path()).contains("invalid JSON"));
}

#[test]
fn checkpoint_without_a_vision_tower_is_refused() {
    let dir = copy_of("vit300m-hf");
    rewrite(&dir.path().join("model.safetensors"), |e| {
        e.retain(|t| !t.name.starts_with("model.vision_tower."))
    });
    assert!(error_of(dir.path()).contains("holds no InternViT"));
}

#[test]
fn bad_pixel_values_are_refused() {
    let model = load_model("vit300m-hf", candle_core::DType::F32);
    let pv = candle_core::Tensor::zeros(
        (2, 3, 50, 50),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let err = model
        .encode(&pv, dvd_vision_server::model::Routing::Off)
        .unwrap_err();
    assert!(matches!(err, ModelError::InvalidInput(_)), "{err}");
    assert!(model.pixel_values(&[]).is_err());
}
