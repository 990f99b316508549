//! The language half of a `config.json`: `text_config` (HF InternVL), `llm_config` (GitHub
//! InternVL) or the top level (a plain Qwen3 checkpoint), with missing fields filled from
//! transformers' `Qwen3Config` / `Qwen3MoeConfig` defaults.

use std::path::Path;

use dvd_checkpoint::ConfigFields;
use serde_json::Value;

use dvd_nn::ModelError;

/// Mixture-of-experts settings (Qwen3-MoE).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// Experts per MoE layer.
    pub num_experts: usize,
    /// Experts each token is routed to.
    pub experts_per_token: usize,
    /// Width of one expert's MLP.
    pub moe_intermediate_size: usize,
    /// Renormalise the top-k routing weights to sum to one.
    pub norm_topk_prob: bool,
    /// Every `decoder_sparse_step`-th layer is MoE.
    pub decoder_sparse_step: usize,
    /// Layers that keep a dense MLP.
    pub mlp_only_layers: Vec<usize>,
}

/// Qwen3 (dense or MoE) hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LanguageConfig {
    /// Vocabulary size (rows of the embedding and of `lm_head`).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Dense MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA).
    pub num_kv_heads: usize,
    /// Width of one head (independent of `hidden_size / num_heads` in Qwen3).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Bias on the q/k/v/o projections.
    pub attention_bias: bool,
    /// `lm_head` shares the embedding matrix (used only when the checkpoint has no `lm_head`).
    pub tie_word_embeddings: bool,
    /// Longest position the model was trained for.
    pub max_position_embeddings: usize,
    /// End-of-sequence ids from the config (generation_config.json adds more).
    pub eos_token_ids: Vec<u32>,
    /// Mixture-of-experts settings, for Qwen3-MoE.
    pub moe: Option<MoeConfig>,
}

impl LanguageConfig {
    /// Whether layer `i` has a MoE block (transformers' rule).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| {
            m.num_experts > 0
                && !m.mlp_only_layers.contains(&i)
                && m.decoder_sparse_step > 0
                && (i + 1).is_multiple_of(m.decoder_sparse_step)
        })
    }

    /// Reads `config.json` in `dir`, and `generation_config.json` for extra end-of-sequence ids.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let json = dvd_checkpoint::read_json(&path)?;
        let mut config = Self::from_json(&json, &path)?;
        let generation = dir.join("generation_config.json");
        if generation.is_file() {
            let json = dvd_checkpoint::read_json(&generation)?;
            for id in token_ids(json.get("eos_token_id"), &generation)? {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }
        Ok(config)
    }

    /// Parses the language section of an already read `config.json`.
    pub fn from_json(json: &Value, path: &Path) -> Result<Self, ModelError> {
        let err = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let (section, name) = if let Some(v) = json.get("text_config") {
            (v, "text_config.")
        } else if let Some(v) = json.get("llm_config") {
            (v, "llm_config.")
        } else {
            (json, "")
        };
        let f = ConfigFields::new(section, path, name)?;
        let map = section
            .as_object()
            .ok_or_else(|| err(format!("{name} is not an object")))?;
        let model_type = f.str_or("model_type", "qwen3")?;
        let moe = match model_type.as_str() {
            "qwen3" => false,
            "qwen3_moe" => true,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{name}model_type {other:?} (dvd runs qwen3 and qwen3_moe)"
                )));
            }
        };
        let act = f.str_or("hidden_act", "silu")?;
        if act != "silu" {
            return Err(ModelError::Unsupported(format!(
                "{name}hidden_act {act:?} (only silu)"
            )));
        }
        // Qwen3MoeConfig's defaults differ from Qwen3Config's.
        let (hidden, layers, kv, heads, inter) = if moe {
            (2048, 24, 4, 32, 6144)
        } else {
            (4096, 32, 32, 32, 22016)
        };
        let hidden_size = f.usize_or("hidden_size", hidden)?;
        let num_heads = f.usize_or("num_attention_heads", heads)?;
        let head_default = if moe {
            hidden_size / num_heads.max(1)
        } else {
            128
        };
        let rope_theta = match map.get("rope_parameters").filter(|v| v.is_object()) {
            Some(_) => {
                let rope = f.object("rope_parameters")?;
                let kind = rope.str_or("rope_type", "default")?;
                if kind != "default" {
                    return Err(ModelError::Unsupported(format!(
                        "{name}rope_parameters.rope_type {kind:?} (only default RoPE)"
                    )));
                }
                rope.f64_or("rope_theta", 10_000.0)?
            }
            None => f.f64_or("rope_theta", 10_000.0)?,
        };
        if let Some(scaling) = map.get("rope_scaling").filter(|v| !v.is_null()) {
            return Err(ModelError::Unsupported(format!(
                "{name}rope_scaling {scaling} (only default RoPE)"
            )));
        }
        // transformers 5 puts tie_word_embeddings of an InternVL model at the top level.
        let tie_default = json
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let moe = if moe {
            Some(MoeConfig {
                num_experts: f.usize_or("num_experts", 128)?,
                experts_per_token: f.usize_or("num_experts_per_tok", 8)?,
                moe_intermediate_size: f.usize_or("moe_intermediate_size", 768)?,
                norm_topk_prob: f.bool_or("norm_topk_prob", false)?,
                decoder_sparse_step: f.usize_or("decoder_sparse_step", 1)?,
                mlp_only_layers: match map.get("mlp_only_layers") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|v| v.as_u64().map(|n| n as usize))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| err(format!("{name}mlp_only_layers must be integers")))?,
                    Some(other) => {
                        return Err(err(format!(
                            "{name}mlp_only_layers must be a list, found {other}"
                        )));
                    }
                },
            })
        } else {
            None
        };
        let config = Self {
            vocab_size: f.usize_or("vocab_size", 151_936)?,
            hidden_size,
            intermediate_size: f.usize_or("intermediate_size", inter)?,
            num_layers: f.usize_or("num_hidden_layers", layers)?,
            num_heads,
            num_kv_heads: f.usize_or("num_key_value_heads", kv)?,
            head_dim: f.usize_or("head_dim", head_default)?,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            attention_bias: f.bool_or("attention_bias", false)?,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", tie_default)?,
            max_position_embeddings: f.usize_or("max_position_embeddings", 40_960)?,
            eos_token_ids: token_ids(map.get("eos_token_id"), path)?,
            moe,
        };
        if config.num_heads == 0
            || config.num_kv_heads == 0
            || !config.num_heads.is_multiple_of(config.num_kv_heads)
        {
            return Err(err(format!(
                "{name}num_attention_heads {} is not a multiple of num_key_value_heads {}",
                config.num_heads, config.num_kv_heads
            )));
        }
        if config.head_dim == 0 || !config.head_dim.is_multiple_of(2) {
            return Err(err(format!(
                "{name}head_dim {} must be even",
                config.head_dim
            )));
        }
        if let Some(m) = &config.moe
            && (m.experts_per_token == 0 || m.experts_per_token > m.num_experts)
        {
            return Err(err(format!(
                "{name}num_experts_per_tok {} must be in 1..={}",
                m.experts_per_token, m.num_experts
            )));
        }
        Ok(config)
    }
}

/// `eos_token_id` as an integer or a list of integers.
fn token_ids(value: Option<&Value>, path: &Path) -> Result<Vec<u32>, ModelError> {
    let one = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let bad = || ModelError::Config {
        path: path.to_path_buf(),
        message: "eos_token_id must be an integer or a list of integers".into(),
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(|v| one(v).ok_or_else(bad)).collect(),
        Some(v) => Ok(vec![one(v).ok_or_else(bad)?]),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(json: serde_json::Value) -> Result<LanguageConfig, ModelError> {
        LanguageConfig::from_json(&json, Path::new("config.json"))
    }

    #[test]
    fn moe_layers_follow_sparse_step_and_mlp_only_layers() {
        let c = parse(serde_json::json!({
            "model_type": "qwen3_moe", "num_hidden_layers": 6, "decoder_sparse_step": 2,
            "mlp_only_layers": [3], "num_experts": 8, "num_experts_per_tok": 2
        }))
        .unwrap();
        let moe: Vec<bool> = (0..6).map(|i| c.is_moe_layer(i)).collect();
        assert_eq!(moe, vec![false, true, false, false, false, true]);
        // Qwen3MoeConfig defaults: head_dim falls back to hidden / heads, norm_topk_prob false.
        assert_eq!(c.head_dim, 2048 / 32);
        assert!(!c.moe.unwrap().norm_topk_prob);
    }

    #[test]
    fn dense_defaults_and_rope_forms() {
        let c = parse(serde_json::json!({"model_type": "qwen3", "rope_theta": 5e6})).unwrap();
        assert_eq!((c.head_dim, c.rope_theta, c.hidden_size), (128, 5e6, 4096));
        let c = parse(serde_json::json!({"text_config": {
            "model_type": "qwen3", "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            "eos_token_id": [1, 2]
        }}))
        .unwrap();
        assert_eq!((c.rope_theta, c.eos_token_ids.clone()), (1e6, vec![1, 2]));
    }

    #[test]
    fn unsupported_and_malformed_configs_are_named() {
        let err = parse(serde_json::json!({"model_type": "llama"})).unwrap_err();
        assert!(err.to_string().contains("llama"), "{err}");
        let err =
            parse(serde_json::json!({"llm_config": {"rope_parameters": {"rope_type": "yarn"}}}))
                .unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
        let err = parse(serde_json::json!({"num_attention_heads": 6, "num_key_value_heads": 4}))
            .unwrap_err();
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
        let err = parse(serde_json::json!({"text_config": {"hidden_size": "big"}})).unwrap_err();
        assert!(err.to_string().contains("text_config.hidden_size"), "{err}");
    }
}
