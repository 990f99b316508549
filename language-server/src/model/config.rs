//! The language half of a `config.json`, read as transformers reads it: the object that holds it
//! (`text_config` of HF InternVL, `llm_config` of GitHub InternVL, or the top level of a plain
//! Qwen3 checkpoint), which model it is (`Qwen3Config` or `Qwen3MoeConfig`), its RoPE in every
//! spelling transformers 4 and 5 accept, and its end-of-sequence ids.
//!
//! A field that sets a tensor's shape must be present: transformers' class defaults for those
//! describe one particular model size, never the checkpoint at hand. Every other field falls back
//! to the class default transformers itself uses.

use std::path::Path;

use dvd_checkpoint::ConfigFields;
use serde_json::Value;

use dvd_nn::ModelError;

/// `rms_norm_eps` of `Qwen3Config` and `Qwen3MoeConfig`.
const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
/// The RoPE base transformers takes when a config names none (`default_theta`).
const DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// `max_position_embeddings` of `Qwen3Config` and `Qwen3MoeConfig`.
const DEFAULT_MAX_POSITION_EMBEDDINGS: usize = 32_768;

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

    /// Parses the language section of an already read `config.json` (`path` names it in
    /// errors).
    pub fn from_json(json: &Value, path: &Path) -> Result<Self, ModelError> {
        let section = Section::of(json, path)?;
        let family = section.family()?;
        let f = &section.fields;
        let hidden_act = f.str_or("hidden_act", "silu")?;
        if hidden_act != "silu" {
            return Err(ModelError::Unsupported(format!(
                "{} {hidden_act:?} (only silu)",
                f.key("hidden_act")
            )));
        }
        let hidden_size = section.shape("hidden_size")?;
        let num_heads = section.shape("num_attention_heads")?;
        let config = Self {
            vocab_size: section.shape("vocab_size")?,
            hidden_size,
            intermediate_size: section.shape("intermediate_size")?,
            num_layers: section.shape("num_hidden_layers")?,
            num_heads,
            num_kv_heads: section.kv_heads(num_heads)?,
            head_dim: section.head_dim(family, hidden_size, num_heads)?,
            rms_norm_eps: f.f64_or("rms_norm_eps", DEFAULT_RMS_NORM_EPS)?,
            rope_theta: section.rope_theta()?,
            attention_bias: f.bool_or("attention_bias", false)?,
            tie_word_embeddings: section.tie_word_embeddings(json)?,
            max_position_embeddings: f
                .usize_or("max_position_embeddings", DEFAULT_MAX_POSITION_EMBEDDINGS)?,
            eos_token_ids: token_ids(f.get("eos_token_id"), path)?,
            moe: match family {
                Family::Dense => None,
                Family::Moe => Some(section.moe()?),
            },
        };
        section.check(&config)?;
        Ok(config)
    }
}

/// Which transformers config class the section is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `Qwen3Config`.
    Dense,
    /// `Qwen3MoeConfig`.
    Moe,
}

/// The object of `config.json` that describes the language model, with the file it came from.
struct Section<'a> {
    fields: ConfigFields<'a>,
    path: &'a Path,
}

impl<'a> Section<'a> {
    /// `text_config` (HF InternVL), else `llm_config` (GitHub InternVL), else the top level
    /// (a plain Qwen3 checkpoint).
    fn of(json: &'a Value, path: &'a Path) -> Result<Self, ModelError> {
        let (section, prefix) = match (json.get("text_config"), json.get("llm_config")) {
            (Some(text), _) => (text, "text_config."),
            (None, Some(llm)) => (llm, "llm_config."),
            (None, None) => (json, ""),
        };
        Ok(Self {
            fields: ConfigFields::new(section, path, prefix)?,
            path,
        })
    }

    fn error(&self, message: String) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            message,
        }
    }

    /// The config class: `model_type` (what `AutoConfig` and HF InternVL read), else the first
    /// of `architectures` (what GitHub InternVL's `InternVLChatConfig` reads for `llm_config`),
    /// else `Qwen3Config`.
    fn family(&self) -> Result<Family, ModelError> {
        let f = &self.fields;
        if let Some(model_type) = f.get("model_type").filter(|v| !v.is_null()) {
            return match model_type.as_str() {
                Some("qwen3") => Ok(Family::Dense),
                Some("qwen3_moe") => Ok(Family::Moe),
                _ => Err(ModelError::Unsupported(format!(
                    "{} {model_type} (dvd runs qwen3 and qwen3_moe)",
                    f.key("model_type")
                ))),
            };
        }
        let first = match f.get("architectures") {
            None | Some(Value::Null) => return Ok(Family::Dense),
            Some(Value::Array(names)) => names.first(),
            Some(other) => {
                return Err(self.error(format!(
                    "{} must be a list of class names, found {other}",
                    f.key("architectures")
                )));
            }
        };
        match first.and_then(Value::as_str) {
            None => Ok(Family::Dense),
            Some("Qwen3ForCausalLM") => Ok(Family::Dense),
            Some("Qwen3MoeForCausalLM") => Ok(Family::Moe),
            Some(other) => Err(ModelError::Unsupported(format!(
                "{} {other:?} (dvd runs Qwen3ForCausalLM and Qwen3MoeForCausalLM)",
                f.key("architectures")
            ))),
        }
    }

    /// A field that sets tensor shapes: present, a non-negative integer.
    fn shape(&self, key: &str) -> Result<usize, ModelError> {
        self.shape_of(&[key])
    }

    /// A shape field that transformers accepts under any of `keys` (the first is its name).
    fn shape_of(&self, keys: &[&str]) -> Result<usize, ModelError> {
        let f = &self.fields;
        let present = keys
            .iter()
            .find(|key| f.get(key).is_some_and(|v| !v.is_null()));
        match present {
            Some(key) => Ok(f.usize_or(key, 0)?),
            None => Err(self.missing(keys[0])),
        }
    }

    fn missing(&self, key: &str) -> ModelError {
        self.error(format!(
            "missing {}: it sets tensor shapes, so there is no default",
            self.fields.key(key)
        ))
    }

    /// `num_key_value_heads`; `null` means one per query head (transformers' rule).
    fn kv_heads(&self, num_heads: usize) -> Result<usize, ModelError> {
        match self.fields.get("num_key_value_heads") {
            Some(Value::Null) => Ok(num_heads),
            _ => self.shape("num_key_value_heads"),
        }
    }

    /// `head_dim`. `Qwen3MoeConfig` has no such field, and transformers' attention then takes
    /// `hidden_size / num_attention_heads`; `Qwen3Config` always carries one.
    fn head_dim(
        &self,
        family: Family,
        hidden_size: usize,
        num_heads: usize,
    ) -> Result<usize, ModelError> {
        let absent = self.fields.get("head_dim").is_none_or(Value::is_null);
        match family {
            Family::Moe if absent => Ok(hidden_size / num_heads.max(1)),
            _ => self.shape("head_dim"),
        }
    }

    /// The RoPE base, from `rope_scaling` (transformers 4; transformers 5 still takes it over
    /// `rope_parameters` when it is set) or `rope_parameters` (transformers 5), whose type is
    /// `rope_type` or the legacy `type`; the base is the object's `rope_theta`, else the
    /// section's, else transformers' default. Only default RoPE is supported.
    fn rope_theta(&self) -> Result<f64, ModelError> {
        let f = &self.fields;
        let theta = f.f64_or("rope_theta", DEFAULT_ROPE_THETA)?;
        let mut spellings = ["rope_scaling", "rope_parameters"].into_iter();
        let Some(key) = spellings.find(|key| match f.get(key) {
            Some(Value::Object(map)) => !map.is_empty(),
            None | Some(Value::Null) => false,
            Some(_) => true,
        }) else {
            return Ok(theta);
        };
        let rope = f.object(key)?;
        let kind = match rope.get("rope_type").filter(|v| !v.is_null()) {
            Some(_) => rope.str_or("rope_type", "default")?,
            None => rope.str_or("type", "default")?,
        };
        if kind != "default" {
            return Err(ModelError::Unsupported(format!(
                "{} {kind:?} (only default RoPE)",
                rope.key("rope_type")
            )));
        }
        if let Some(Value::Object(map)) = f.get(key)
            && map.values().any(Value::is_object)
        {
            return Err(ModelError::Unsupported(format!(
                "{} per layer type (only one RoPE for every layer)",
                f.key(key)
            )));
        }
        Ok(rope.f64_or("rope_theta", theta)?)
    }

    /// `tie_word_embeddings` of the section, else of the top level (where transformers 5 keeps
    /// it for InternVL), else false (`Qwen3Config`'s default).
    fn tie_word_embeddings(&self, json: &Value) -> Result<bool, ModelError> {
        let top = json
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(self.fields.bool_or("tie_word_embeddings", top)?)
    }

    /// The `Qwen3MoeConfig` fields: the expert shapes must be given; routing falls back to
    /// transformers' defaults (no renormalisation, every layer MoE).
    fn moe(&self) -> Result<MoeConfig, ModelError> {
        let f = &self.fields;
        Ok(MoeConfig {
            // transformers 5 also reads `num_local_experts` (its attribute_map).
            num_experts: self.shape_of(&["num_experts", "num_local_experts"])?,
            experts_per_token: self.shape("num_experts_per_tok")?,
            moe_intermediate_size: self.shape("moe_intermediate_size")?,
            norm_topk_prob: f.bool_or("norm_topk_prob", false)?,
            decoder_sparse_step: f.usize_or("decoder_sparse_step", 1)?,
            mlp_only_layers: self.mlp_only_layers()?,
        })
    }

    fn mlp_only_layers(&self) -> Result<Vec<usize>, ModelError> {
        let key = self.fields.key("mlp_only_layers");
        match self.fields.get("mlp_only_layers") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.error(format!("{key} must be integers"))),
            Some(other) => Err(self.error(format!("{key} must be a list, found {other}"))),
        }
    }

    /// Shapes the model cannot run with.
    fn check(&self, config: &LanguageConfig) -> Result<(), ModelError> {
        let key = |name: &str| self.fields.key(name);
        if config.num_heads == 0
            || config.num_kv_heads == 0
            || !config.num_heads.is_multiple_of(config.num_kv_heads)
        {
            return Err(self.error(format!(
                "{} {} is not a multiple of {} {}",
                key("num_attention_heads"),
                config.num_heads,
                key("num_key_value_heads"),
                config.num_kv_heads
            )));
        }
        if config.head_dim == 0 || !config.head_dim.is_multiple_of(2) {
            return Err(self.error(format!(
                "{} {} must be even",
                key("head_dim"),
                config.head_dim
            )));
        }
        if let Some(m) = &config.moe
            && (m.experts_per_token == 0 || m.experts_per_token > m.num_experts)
        {
            return Err(self.error(format!(
                "{} {} must be in 1..={}",
                key("num_experts_per_tok"),
                m.experts_per_token,
                m.num_experts
            )));
        }
        Ok(())
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
    use serde_json::json;

    use super::*;

    fn parse(json: Value) -> Result<LanguageConfig, ModelError> {
        LanguageConfig::from_json(&json, Path::new("config.json"))
    }

    /// Every shape field of a small dense Qwen3, plus `extra`.
    fn dense(extra: Value) -> Value {
        let mut config = json!({
            "model_type": "qwen3", "vocab_size": 512, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 32
        });
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        config
    }

    /// Every shape field of a small Qwen3-MoE (no `head_dim`), plus `extra`.
    fn moe(extra: Value) -> Value {
        let mut config = dense(json!({
            "model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2,
            "moe_intermediate_size": 48
        }));
        let map = config.as_object_mut().unwrap();
        map.remove("head_dim");
        map.extend(extra.as_object().unwrap().clone());
        config
    }

    #[test]
    fn moe_layers_follow_sparse_step_and_mlp_only_layers() {
        let c = parse(moe(json!({
            "num_hidden_layers": 6, "decoder_sparse_step": 2, "mlp_only_layers": [3]
        })))
        .unwrap();
        let is_moe: Vec<bool> = (0..6).map(|i| c.is_moe_layer(i)).collect();
        assert_eq!(is_moe, vec![false, true, false, false, false, true]);
        // Qwen3MoeConfig: head_dim falls back to hidden / heads, norm_topk_prob to false.
        assert_eq!(c.head_dim, 64 / 4);
        assert!(!c.moe.unwrap().norm_topk_prob);
    }

    #[test]
    fn non_shape_fields_take_transformers_defaults() {
        let c = parse(dense(json!({}))).unwrap();
        assert_eq!(c.rms_norm_eps, DEFAULT_RMS_NORM_EPS);
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.max_position_embeddings, 32_768);
        assert!(!c.attention_bias && !c.tie_word_embeddings && c.moe.is_none());
        assert!(c.eos_token_ids.is_empty());
        // An InternVL config of transformers 5 keeps tie_word_embeddings at the top level.
        let c = parse(json!({"tie_word_embeddings": true, "text_config": dense(json!({}))}));
        assert!(c.unwrap().tie_word_embeddings);
    }

    #[test]
    fn every_rope_spelling_is_read() {
        let theta = |extra: Value| parse(dense(extra)).unwrap().rope_theta;
        assert_eq!(theta(json!({"rope_theta": 5e6})), 5e6);
        let params = json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}});
        assert_eq!(theta(params), 1e6);
        let legacy = json!({"rope_theta": 2e6, "rope_scaling": {"type": "default"}});
        assert_eq!(theta(legacy), 2e6);
        let empty = json!({"rope_theta": 3e6, "rope_scaling": {}, "rope_parameters": null});
        assert_eq!(theta(empty), 3e6);
        let c = parse(json!({"text_config": dense(json!({
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            "eos_token_id": [1, 2]
        }))}))
        .unwrap();
        assert_eq!((c.rope_theta, c.eos_token_ids), (1e6, vec![1, 2]));
    }

    #[test]
    fn the_family_comes_from_model_type_or_architectures() {
        let mut config = moe(json!({}));
        config.as_object_mut().unwrap().remove("model_type");
        config["architectures"] = json!(["Qwen3MoeForCausalLM"]);
        assert!(parse(json!({"llm_config": config})).unwrap().moe.is_some());
        let mut config = dense(json!({"architectures": ["Qwen3ForCausalLM"]}));
        config.as_object_mut().unwrap().remove("model_type");
        assert!(parse(config).unwrap().moe.is_none());
        let experts = parse(moe(json!({"num_experts": null, "num_local_experts": 6})));
        assert_eq!(experts.unwrap().moe.unwrap().num_experts, 6);
    }

    #[test]
    fn a_missing_shape_field_is_an_error_naming_it() {
        let dense_fields = [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        ];
        let moe_fields = [
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
        ];
        let cases = dense_fields
            .map(|field| (dense(json!({})), "text_config", field))
            .into_iter()
            .chain(moe_fields.map(|field| (moe(json!({})), "llm_config", field)));
        for (mut config, section, field) in cases {
            config.as_object_mut().unwrap().remove(field);
            let err = parse(json!({ section: config })).unwrap_err();
            assert!(matches!(err, ModelError::Config { .. }), "{field}: {err}");
            let named = format!("missing {section}.{field}");
            assert!(err.to_string().contains(&named), "{err}");
        }
        // A null num_key_value_heads means one per query head, as in transformers.
        let c = parse(dense(json!({"num_key_value_heads": null}))).unwrap();
        assert_eq!(c.num_kv_heads, 4);
    }

    #[test]
    fn unsupported_and_malformed_configs_are_named() {
        let err = parse(json!({"model_type": "llama"})).unwrap_err();
        assert!(err.to_string().contains("llama"), "{err}");
        let err = parse(json!({"architectures": ["LlamaForCausalLM"]})).unwrap_err();
        assert!(err.to_string().contains("LlamaForCausalLM"), "{err}");
        let yarn = json!({"rope_parameters": {"rope_type": "yarn"}});
        let err = parse(json!({"llm_config": dense(yarn)})).unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
        let err = parse(dense(
            json!({"rope_scaling": {"type": "linear", "factor": 2.0}}),
        ));
        assert!(err.unwrap_err().to_string().contains("linear"));
        let err = parse(dense(
            json!({"num_attention_heads": 6, "num_key_value_heads": 4}),
        ));
        let err = err.unwrap_err();
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
        let err = parse(json!({"text_config": dense(json!({"hidden_size": "big"}))}));
        let err = err.unwrap_err();
        assert!(err.to_string().contains("text_config.hidden_size"), "{err}");
        let err = parse(moe(json!({"num_experts_per_tok": 9}))).unwrap_err();
        assert!(err.to_string().contains("num_experts_per_tok"), "{err}");
    }
}
