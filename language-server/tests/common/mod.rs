//! Fixtures shared by the tests: the small checkpoints (tests/fixtures/model, from
//! tools/make_language_fixtures.py) with their reference tensors, image features from the
//! matching vision model, KV pools and engines over them; the text fixtures (tests/fixtures/text,
//! from tools/make_text_fixtures.py) with their tokenizer and transformers' cases.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use dvd_checkpoint::Checkpoint;
use dvd_language_server::engine::kv::{KvPool, KvPoolConfig};
use dvd_language_server::engine::{EngineEvent, Scheduler, SchedulerConfig};
use dvd_language_server::model::{
    LanguageModel, Parallelism, SequenceCache, SequenceStep, argmax_rows,
};
use dvd_language_server::sampling::SamplingParams;
use dvd_language_server::text::{Result as TextResult, Tokenizer};
use dvd_vision_server::model::{LoadOptions, Routing, VisionModel};
use serde_json::Value;

/// `<IMG_CONTEXT>` of the fixtures' tokenizer.
pub const IMG_CONTEXT: u32 = 503;

/// A fixture checkpoint directory.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model")
        .join(name)
}

/// A fixture checkpoint's language model, computing in `dtype` on the CPU.
pub fn load_as(name: &str, dtype: DType) -> LanguageModel {
    let options = LoadOptions {
        dtype,
        device: Device::Cpu,
    };
    LanguageModel::load(&fixture(name), &options).unwrap()
}

/// A fixture checkpoint's language model with the default options (f32 on the CPU).
pub fn load(name: &str) -> LanguageModel {
    LanguageModel::load(&fixture(name), &LoadOptions::default()).unwrap()
}

/// A fixture checkpoint's language model, shared, and its tokenizer.
pub fn model_and_tokenizer(name: &str) -> (Arc<LanguageModel>, Tokenizer) {
    let tokenizer = Tokenizer::from_dir(&fixture(name)).unwrap();
    (Arc::new(load(name)), tokenizer)
}

/// A tensor of a fixture's `reference.safetensors`, as f32.
pub fn reference(name: &str, tensor: &str) -> Tensor {
    Checkpoint::open_file(&fixture(name).join("reference.safetensors"))
        .unwrap()
        .load(tensor, DType::F32, &Device::Cpu)
        .unwrap()
}

/// Token ids stored in a fixture's `reference.safetensors`.
pub fn ids(name: &str, tensor: &str) -> Vec<u32> {
    let t = Checkpoint::open_file(&fixture(name).join("reference.safetensors"))
        .unwrap()
        .load(tensor, DType::I64, &Device::Cpu)
        .unwrap();
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

/// Features of the reference image (`[tokens, hidden]`) through the checkpoint's vision half,
/// and each tile's token count.
pub fn image_features(name: &str) -> (Tensor, Vec<usize>) {
    let vision = VisionModel::load(&fixture(name), &LoadOptions::default()).unwrap();
    let pv = Checkpoint::open_file(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../vision-server/tests/fixtures/model/pixel_values.safetensors"),
    )
    .unwrap()
    .load("pixel_values", DType::F32, &Device::Cpu)
    .unwrap();
    let encoded = vision.encode(&pv, Routing::Off).unwrap();
    (encoded.features, encoded.tokens_per_tile)
}

/// Largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Prefills `embeds` (`[len, hidden]`) on `cache` and decodes greedily: the prefill logits
/// (`[vocab]`) and `steps` tokens, the first picked from them.
pub fn greedy_tokens(
    model: &LanguageModel,
    embeds: Tensor,
    cache: &mut dyn SequenceCache,
    steps: usize,
) -> (Tensor, Vec<u32>) {
    let logits = model
        .forward(&mut [SequenceStep {
            embeds,
            cache: &mut *cache,
        }])
        .unwrap();
    let mut tokens = vec![argmax_rows(&logits).unwrap()[0]];
    while tokens.len() < steps {
        let embeds = model
            .embed(&tokens[tokens.len() - 1..], None, None)
            .unwrap();
        let next = model
            .forward(&mut [SequenceStep {
                embeds,
                cache: &mut *cache,
            }])
            .unwrap();
        tokens.push(argmax_rows(&next).unwrap()[0]);
    }
    (logits.squeeze(0).unwrap(), tokens)
}

/// Greedy decoding of `max_new_tokens` tokens.
pub fn greedy(max_new_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens,
        ..SamplingParams::greedy()
    }
}

/// A fixture checkpoint's language model in f32 on the CPU over `ranks` tensor-parallel ranks,
/// whole experts per rank when `expert_parallel`.
pub fn load_parallel(name: &str, ranks: usize, expert_parallel: bool) -> LanguageModel {
    let parallelism = Parallelism {
        tensor_parallel_size: ranks,
        expert_parallel,
    };
    LanguageModel::load_parallel(&fixture(name), &LoadOptions::default(), parallelism, &[]).unwrap()
}

/// An f32 pool of `blocks` blocks of `block_size` positions for `model` (each rank's heads on
/// its device).
pub fn pool(model: &LanguageModel, block_size: usize, blocks: usize) -> Arc<KvPool> {
    let c = model.config();
    Arc::new(
        KvPool::for_ranks(
            KvPoolConfig {
                layers: c.num_layers,
                kv_heads: model.partition().kv_heads_per_rank(),
                head_dim: c.head_dim,
                block_size,
                blocks,
            },
            DType::F32,
            &model.rank_devices(),
        )
        .unwrap(),
    )
}

/// An engine over `model` with a pool of `blocks` blocks of 16 positions and no end-of-sequence
/// ids; returns the pool too.
pub fn engine(
    model: &Arc<LanguageModel>,
    tokenizer: &Tokenizer,
    blocks: usize,
    config: SchedulerConfig,
) -> (Scheduler, Arc<KvPool>) {
    let pool = pool(model, 16, blocks);
    let scheduler = Scheduler::new(
        model.clone(),
        tokenizer.clone(),
        pool.clone(),
        Vec::new(),
        config,
    );
    (scheduler, pool)
}

/// Sorts a step's events: tokens to their request's list in `tokens`, the rest to `ended`.
pub fn collect_events(
    events: Vec<EngineEvent>,
    tokens: &mut HashMap<u64, Vec<u32>>,
    ended: &mut Vec<EngineEvent>,
) {
    for event in events {
        match event {
            EngineEvent::Token { id, token, .. } => tokens.entry(id).or_default().push(token),
            other => ended.push(other),
        }
    }
}

/// A file of the text fixtures.
pub fn text_fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(file)
}

/// The text fixtures' tokenizer (a tiny Qwen-style vocabulary with InternVL's special tokens).
pub fn text_tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&text_fixture("")).unwrap()
}

/// A JSON file of the text fixtures (transformers' cases).
pub fn text_cases(file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(text_fixture(file)).unwrap()).unwrap()
}

/// A scratch checkpoint directory holding only the text fixtures' `tokenizer.json`.
pub fn scratch_tokenizer_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        text_fixture("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    dir
}

/// Writes `contents` to `file` in the checkpoint directory `dir`, then loads its tokenizer.
pub fn write_and_load(dir: &Path, file: &str, contents: &str) -> TextResult<Tokenizer> {
    std::fs::write(dir.join(file), contents).unwrap();
    Tokenizer::from_dir(dir)
}

/// A JSON list of token ids.
pub fn json_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

/// One tensor of a safetensors file: name, dtype, shape, bytes.
pub type StoredTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Writes `tensors` as the safetensors file `file`.
pub fn write_safetensors(file: &Path, tensors: &[StoredTensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(file, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A fixture's files other than its weights (and the reference outputs) copied into a scratch
/// directory, and all its tensors (every shard), sorted by name: to rewrite as a
/// `model.safetensors` with [`write_safetensors`].
pub fn unpack_fixture(name: &str) -> (tempfile::TempDir, Vec<StoredTensor>) {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = Vec::new();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if file.ends_with(".safetensors") && file != "reference.safetensors" {
            let bytes = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            tensors.extend(
                st.tensors()
                    .into_iter()
                    .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())),
            );
        } else if !file.ends_with(".index.json") {
            std::fs::copy(&path, dir.path().join(&file)).unwrap();
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    (dir, tensors)
}
