//! The Qwen3 (dense or MoE) decoder: loading from any published layout and a batched forward
//! pass over sequences of different lengths, each with its own KV cache.

use std::path::Path;

use candle_core::{DType, Tensor};
use dvd_checkpoint::Checkpoint;
use dvd_nn::moe::Moe;
use dvd_nn::{Linear, LoadOptions, Loader, Norm, matmul_wt};

use super::attention::{Attention, Span};
use super::config::LanguageConfig;
use super::experts::{ExpertShape, load_experts};
use super::kv_cache::{KvCache, SequenceCache};
use super::mlp::{FeedForward, SwiGlu};
use super::names::CheckpointLayout;
use super::rope::Rope;
use dvd_nn::ModelError;

#[derive(Debug)]
struct DecoderLayer {
    input_norm: Norm,
    attention: Attention,
    post_attention_norm: Norm,
    feed_forward: FeedForward,
}

/// One sequence's part of a batched forward step.
pub struct SequenceStep<'a> {
    /// Input embeddings of the new tokens, `[len, hidden]` (see [`LanguageModel::embed`]).
    pub embeds: Tensor,
    /// The sequence's cache; the new tokens are appended to it.
    pub cache: &'a mut (dyn SequenceCache + 'a),
}

/// A forward step under way, paused between two decoder layers (see
/// [`LanguageModel::start_forward`]).
#[derive(Debug)]
pub struct PartialForward {
    /// Hidden states of every new token, packed.
    x: Tensor,
    /// Where each sequence's tokens sit in `x`.
    spans: Vec<Span>,
    /// The layer to run next.
    next_layer: usize,
    /// The model's depth.
    layers: usize,
}

impl PartialForward {
    /// Whether every layer has run.
    pub fn is_done(&self) -> bool {
        self.next_layer >= self.layers
    }
}

/// Qwen3 / Qwen3-MoE, language tensors only.
#[derive(Debug)]
pub struct LanguageModel {
    config: LanguageConfig,
    layout: CheckpointLayout,
    options: LoadOptions,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Norm,
    lm_head: Tensor,
    tied: bool,
    rope: Rope,
    /// RoPE angles for every position, on the device (GPU path).
    #[cfg(feature = "cuda")]
    rope_table: paged::RopeTable,
}

#[cfg(feature = "cuda")]
mod paged;

impl LanguageModel {
    /// Loads the language tensors of the checkpoint in `dir`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, ModelError> {
        let config = LanguageConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::from_checkpoint(config, &checkpoint, options)
    }

    /// Loads the language tensors of an opened checkpoint described by `config`.
    pub fn from_checkpoint(
        config: LanguageConfig,
        checkpoint: &Checkpoint,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let layout = CheckpointLayout::detect(checkpoint)?;
        let loader = Loader::new(checkpoint, options);
        let c = &config;
        let embed_tokens = loader.tensor(&layout.embed_tokens(), &[c.vocab_size, c.hidden_size])?;
        // Prefer a stored lm_head (InternVL3.5 ships one even for tied base models).
        let (lm_head, tied) = if checkpoint.contains(&layout.lm_head()) {
            (
                loader.tensor(&layout.lm_head(), &[c.vocab_size, c.hidden_size])?,
                false,
            )
        } else if c.tie_word_embeddings {
            (embed_tokens.clone(), true)
        } else {
            return Err(dvd_checkpoint::CheckpointError::MissingTensor {
                name: layout.lm_head(),
            }
            .into());
        };
        let layers = (0..c.num_layers)
            .map(|i| load_layer(c, layout, &loader, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            norm: loader.rms_norm(&layout.final_norm(), c.hidden_size, c.rms_norm_eps)?,
            rope: Rope::new(c.rope_theta, c.head_dim),
            config,
            layout,
            options: options.clone(),
            embed_tokens,
            layers,
            lm_head,
            tied,
            #[cfg(feature = "cuda")]
            rope_table: Default::default(),
        })
    }

    /// The parsed configuration.
    pub fn config(&self) -> &LanguageConfig {
        &self.config
    }

    /// The tensor-naming layout of the checkpoint.
    pub fn layout(&self) -> CheckpointLayout {
        self.layout
    }

    /// Whether `lm_head` is the embedding matrix (no `lm_head` tensor in the checkpoint).
    pub fn tied_embeddings(&self) -> bool {
        self.tied
    }

    /// Compute dtype and device.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// A fresh cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_layers)
    }

    /// Text embeddings of `ids`, with `image_features` (`[n, hidden]`, any dtype) written into
    /// the positions holding `image_token_id`, in order. The number of such positions must equal
    /// `n`: the prompt's `<IMG_CONTEXT>` runs are built from the vision side's tokens per tile.
    pub fn embed(
        &self,
        ids: &[u32],
        image_token_id: Option<u32>,
        image_features: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let vocab = self.config.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let device = &self.options.device;
        let index = Tensor::from_vec(ids.to_vec(), ids.len(), device)?;
        let text = self.embed_tokens.index_select(&index, 0)?;
        let slots: Vec<usize> = match image_token_id {
            Some(image) => ids
                .iter()
                .enumerate()
                .filter(|&(_, &t)| t == image)
                .map(|(i, _)| i)
                .collect(),
            None => Vec::new(),
        };
        let provided = match image_features {
            Some(f) => f.dim(0)?,
            None => 0,
        };
        if slots.len() != provided {
            return Err(ModelError::InvalidInput(format!(
                "the prompt has {} image-token positions but {provided} image features",
                slots.len()
            )));
        }
        let Some(features) = image_features.filter(|_| !slots.is_empty()) else {
            return Ok(text);
        };
        let (_, width) = features.dims2()?;
        if width != self.config.hidden_size {
            return Err(ModelError::InvalidInput(format!(
                "image features are {width} wide, the model {}",
                self.config.hidden_size
            )));
        }
        // Rows 0..len are text, len.. are features; pick per position.
        let mut pick: Vec<u32> = (0..ids.len() as u32).collect();
        for (k, &slot) in slots.iter().enumerate() {
            pick[slot] = (ids.len() + k) as u32;
        }
        let table = Tensor::cat(
            &[&text, &features.to_dtype(text.dtype())?.to_device(device)?],
            0,
        )?;
        let pick = Tensor::from_vec(pick, ids.len(), device)?;
        Ok(table.index_select(&pick, 0)?)
    }

    /// Runs one step for every sequence in `batch` (prefill chunks and decode tokens alike):
    /// appends their tokens to their caches and returns the logits of each sequence's last new
    /// token, f32 `[batch, vocab]`.
    pub fn forward(&self, batch: &mut [SequenceStep<'_>]) -> Result<Tensor, ModelError> {
        let mut step = self.start_forward(batch)?;
        while !step.is_done() {
            self.forward_layer(&mut step, &mut caches_of(batch))?;
        }
        self.finish_forward(step)
    }

    /// Starts a step for `batch` that runs one decoder layer per
    /// [`forward_layer`](Self::forward_layer) call, so the caller can run another step (for
    /// other sequences) between two layers of this one; [`finish_forward`](Self::finish_forward)
    /// gives the logits. A sequence's cache length advances only after its last layer, so a
    /// paused step's sequences are untouched by the other step. (The fused CUDA path runs every
    /// layer here at once: its launches are queued on the GPU anyway.)
    pub fn start_forward(
        &self,
        batch: &mut [SequenceStep<'_>],
    ) -> Result<PartialForward, ModelError> {
        if batch.is_empty() {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        let mut spans = Vec::with_capacity(batch.len());
        let mut start = 0;
        for step in batch.iter() {
            let (len, width) = step.embeds.dims2()?;
            if len == 0 || width != self.config.hidden_size {
                return Err(ModelError::InvalidInput(format!(
                    "a sequence step must be [len > 0, {}], got [{len}, {width}]",
                    self.config.hidden_size
                )));
            }
            if step.cache.len() + len > self.config.max_position_embeddings {
                return Err(ModelError::InvalidInput(format!(
                    "sequence of {} positions exceeds max_position_embeddings {}",
                    step.cache.len() + len,
                    self.config.max_position_embeddings
                )));
            }
            spans.push(Span { start, len });
            start += len;
        }
        let embeds: Vec<Tensor> = batch
            .iter()
            .map(|s| s.embeds.to_dtype(self.options.dtype))
            .collect::<Result<_, _>>()?;
        let x = Tensor::cat(&embeds, 0)?;
        #[cfg(feature = "cuda")]
        {
            let mut caches = caches_of(batch);
            if self.paged_ok(&x, &mut caches) {
                let x = self.forward_paged(x, &spans, &mut caches)?;
                return Ok(PartialForward {
                    x,
                    spans,
                    next_layer: self.layers.len(),
                    layers: self.layers.len(),
                });
            }
        }
        Ok(PartialForward {
            x,
            spans,
            next_layer: 0,
            layers: self.layers.len(),
        })
    }

    /// Runs the next decoder layer of `step` over `caches`: those of the sequences
    /// [`start_forward`](Self::start_forward) was given, in the same order. Does nothing once
    /// every layer has run.
    pub fn forward_layer(
        &self,
        step: &mut PartialForward,
        caches: &mut [&mut dyn SequenceCache],
    ) -> Result<(), ModelError> {
        let Some(layer) = self.layers.get(step.next_layer) else {
            return Ok(());
        };
        if caches.len() != step.spans.len() {
            return Err(ModelError::InvalidInput(format!(
                "a step started with {} sequences continued with {}",
                step.spans.len(),
                caches.len()
            )));
        }
        let x = &step.x;
        let attended = layer.attention.forward(
            &layer.input_norm.forward(x)?,
            &step.spans,
            caches,
            step.next_layer,
            &self.rope,
        )?;
        let x = (x + attended)?;
        let ff = layer
            .feed_forward
            .forward(&layer.post_attention_norm.forward(&x)?)?;
        step.x = (x + ff)?;
        step.next_layer += 1;
        Ok(())
    }

    /// The logits of a step whose layers have all run, f32 `[batch, vocab]` (each sequence's
    /// last new token).
    pub fn finish_forward(&self, step: PartialForward) -> Result<Tensor, ModelError> {
        if !step.is_done() {
            return Err(ModelError::InvalidInput(format!(
                "the step stopped at layer {} of {}",
                step.next_layer,
                self.layers.len()
            )));
        }
        self.last_logits(&step.x, &step.spans)
    }

    /// f32 logits `[spans, vocab]` of each span's last row of the final hidden states `x`.
    fn last_logits(&self, x: &Tensor, spans: &[Span]) -> Result<Tensor, ModelError> {
        let last: Vec<u32> = spans.iter().map(|s| (s.start + s.len - 1) as u32).collect();
        let last = Tensor::from_vec(last, spans.len(), x.device())?;
        let hidden = self.norm.forward(&x.index_select(&last, 0)?)?;
        Ok(matmul_wt(&hidden, &self.lm_head)?.to_dtype(DType::F32)?)
    }
}

/// The caches of `batch`, in order.
fn caches_of<'b>(batch: &'b mut [SequenceStep<'_>]) -> Vec<&'b mut dyn SequenceCache> {
    batch
        .iter_mut()
        .map(|s| &mut *s.cache as &mut dyn SequenceCache)
        .collect()
}

fn load_layer(
    c: &LanguageConfig,
    layout: CheckpointLayout,
    loader: &Loader,
    i: usize,
) -> Result<DecoderLayer, ModelError> {
    let p = layout.layer(i);
    let (h, d, kv) = (c.hidden_size, c.head_dim, c.num_kv_heads);
    let bias = c.attention_bias;
    let q = loader.linear(&format!("{p}.self_attn.q_proj"), c.num_heads * d, h, bias)?;
    let k = loader.linear(&format!("{p}.self_attn.k_proj"), kv * d, h, bias)?;
    let v = loader.linear(&format!("{p}.self_attn.v_proj"), kv * d, h, bias)?;
    let attention = Attention {
        qkv: Linear::fuse(&[&q, &k, &v])?,
        o: loader.linear(&format!("{p}.self_attn.o_proj"), h, c.num_heads * d, bias)?,
        q_norm: loader.rms_norm(&format!("{p}.self_attn.q_norm"), d, c.rms_norm_eps)?,
        k_norm: loader.rms_norm(&format!("{p}.self_attn.k_norm"), d, c.rms_norm_eps)?,
        heads: c.num_heads,
        kv_heads: kv,
        head_dim: d,
    };
    let swiglu = |prefix: &str, width: usize| -> Result<SwiGlu, ModelError> {
        let gate = loader.linear(&format!("{prefix}.gate_proj"), width, h, false)?;
        let up = loader.linear(&format!("{prefix}.up_proj"), width, h, false)?;
        Ok(SwiGlu {
            gate_up: Linear::fuse(&[&gate, &up])?,
            down: loader.linear(&format!("{prefix}.down_proj"), h, width, false)?,
        })
    };
    let feed_forward = match &c.moe {
        Some(m) if c.is_moe_layer(i) => {
            let shape = ExpertShape {
                count: m.num_experts,
                width: m.moe_intermediate_size,
                hidden: h,
            };
            FeedForward::Moe(Box::new(Moe::new(
                loader.linear(&format!("{p}.mlp.gate"), m.num_experts, h, false)?,
                load_experts(loader, &format!("{p}.mlp.experts"), shape)?,
                m.experts_per_token,
                m.norm_topk_prob,
            )?))
        }
        _ => FeedForward::Dense(swiglu(&format!("{p}.mlp"), c.intermediate_size)?),
    };
    Ok(DecoderLayer {
        input_norm: loader.rms_norm(&format!("{p}.input_layernorm"), h, c.rms_norm_eps)?,
        attention,
        post_attention_norm: loader.rms_norm(
            &format!("{p}.post_attention_layernorm"),
            h,
            c.rms_norm_eps,
        )?,
        feed_forward,
    })
}
