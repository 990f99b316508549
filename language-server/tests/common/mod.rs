//! Fixtures shared by the engine tests: the small checkpoints, their reference prompts, image
//! features from the matching vision model, and KV pools.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use dvd_checkpoint::Checkpoint;
use dvd_language_server::engine::kv::{KvPool, KvPoolConfig};
use dvd_language_server::model::LanguageModel;
use dvd_language_server::sampling::SamplingParams;
use dvd_vision_server::model::{LoadOptions, Routing, VisionModel};

/// `<IMG_CONTEXT>` of the fixtures' tokenizer.
pub const IMG_CONTEXT: u32 = 503;

/// A fixture checkpoint directory.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model")
        .join(name)
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

/// Features of the reference image (`[tokens, hidden]`) and each tile's token count.
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

/// Greedy decoding of `max_new_tokens` tokens.
pub fn greedy(max_new_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens,
        ..SamplingParams::greedy()
    }
}

/// An f32 pool of `blocks` blocks of `block_size` positions for `model`.
pub fn pool(model: &LanguageModel, block_size: usize, blocks: usize) -> Arc<KvPool> {
    let c = model.config();
    Arc::new(
        KvPool::new(
            KvPoolConfig {
                layers: c.num_layers,
                kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                block_size,
                blocks,
            },
            DType::F32,
            &Device::Cpu,
        )
        .unwrap(),
    )
}
