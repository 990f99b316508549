//! One rank's share of the Qwen3 (dense or MoE) decoder: its slices of every tensor, read from
//! any published layout, and its part of the batched forward pass, which meets the other ranks'
//! in an all-reduce after attention and after the feed-forward block (Megatron's row-parallel
//! outputs), one to embed (vocabulary-parallel) and an all-gather of the logits. With one rank
//! it is the whole model and no collective runs.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use dvd_checkpoint::Checkpoint;
use dvd_nn::moe::Moe;
use dvd_nn::parallel::Communicator;
use dvd_nn::{LoadOptions, Loader, ModelError, Norm, matmul_wt};

use super::super::attention::{Attention, Span};
use super::super::config::LanguageConfig;
use super::super::experts::{ExpertShape, ExpertSlice, load_experts};
use super::super::kv_cache::SequenceCache;
use super::super::mlp::{FeedForward, SwiGlu};
use super::super::names::CheckpointLayout;
use super::super::parallel::RankShard;
use super::super::rope::Rope;

#[cfg(feature = "cuda")]
mod paged;

#[derive(Debug)]
struct DecoderLayer {
    input_norm: Norm,
    attention: Attention,
    post_attention_norm: Norm,
    feed_forward: FeedForward,
}

/// One rank's part of a forward step under way, paused between two decoder layers.
#[derive(Debug)]
pub(super) struct ShardStep {
    /// Hidden states of every new token, packed.
    x: Tensor,
    /// Where each sequence's tokens sit in `x`.
    spans: Vec<Span>,
    /// The layer to run next.
    next_layer: usize,
    /// The model's depth.
    layers: usize,
}

impl ShardStep {
    /// Whether every layer has run.
    pub(super) fn is_done(&self) -> bool {
        self.next_layer >= self.layers
    }
}

/// One rank's slices of Qwen3 / Qwen3-MoE (language tensors only), and its collectives.
#[derive(Debug)]
pub(super) struct ModelShard {
    config: LanguageConfig,
    shard: RankShard,
    comm: Arc<dyn Communicator>,
    options: LoadOptions,
    /// Rows `shard.vocab` of the embedding (padding rows zero).
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Norm,
    /// Rows `shard.vocab` of `lm_head` (padding rows zero).
    lm_head: Tensor,
    /// Whether `lm_head` is `embed_tokens`.
    tied: bool,
    rope: Rope,
    /// RoPE angles for every position, on the device (GPU path).
    #[cfg(feature = "cuda")]
    rope_table: paged::RopeTable,
}

impl ModelShard {
    /// Loads rank `shard.rank`'s slices of the language tensors of `checkpoint` onto
    /// `options.device`; `tied` says `lm_head` is the embedding matrix.
    pub(super) fn load(
        config: &LanguageConfig,
        checkpoint: &Checkpoint,
        layout: CheckpointLayout,
        tied: bool,
        shard: RankShard,
        comm: Arc<dyn Communicator>,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let loader = Loader::new(checkpoint, options);
        let c = config;
        let embed_tokens = vocab_rows(&loader, &layout.embed_tokens(), c, &shard)?;
        let lm_head = if tied {
            embed_tokens.clone()
        } else {
            vocab_rows(&loader, &layout.lm_head(), c, &shard)?
        };
        let layers = (0..c.num_layers)
            .map(|i| load_layer(c, layout, &loader, &shard, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            norm: loader.rms_norm(&layout.final_norm(), c.hidden_size, c.rms_norm_eps)?,
            rope: Rope::new(c.rope_theta, c.head_dim),
            config: config.clone(),
            shard,
            comm,
            options: options.clone(),
            embed_tokens,
            layers,
            lm_head,
            tied,
            #[cfg(feature = "cuda")]
            rope_table: Default::default(),
        })
    }

    /// Where this rank runs.
    pub(super) fn device(&self) -> &Device {
        &self.options.device
    }

    /// Elements of the weights this rank holds, counted from its tensors (a tied `lm_head`
    /// once; the experts as stored, whatever their layout on the device).
    pub(super) fn weight_elements(&self) -> usize {
        let linear =
            |l: &dvd_nn::Linear| l.weight().elem_count() + l.bias().map_or(0, Tensor::elem_count);
        let norm = |n: &Norm| match n {
            Norm::Rms { weight, .. } => weight.elem_count(),
            Norm::Layer { weight, bias, .. } => weight.elem_count() + bias.elem_count(),
        };
        let matrices = |m: &dvd_nn::moe::Matrices| m.count() * m.n() * m.k();
        let lm_head = if self.tied {
            0
        } else {
            self.lm_head.elem_count()
        };
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                let a = &l.attention;
                let ff = match &l.feed_forward {
                    FeedForward::Dense(m) => linear(&m.gate_up) + linear(&m.down),
                    FeedForward::Moe(m) => {
                        m.router_elements()
                            + matrices(m.experts().gate_up())
                            + matrices(m.experts().down())
                    }
                };
                norm(&l.input_norm)
                    + norm(&l.post_attention_norm)
                    + linear(&a.qkv)
                    + linear(&a.o)
                    + norm(&a.q_norm)
                    + norm(&a.k_norm)
                    + ff
            })
            .sum();
        self.embed_tokens.elem_count() + lm_head + norm(&self.norm) + layers
    }

    /// Sums this rank's partial `x` with the other ranks' (nothing to do alone).
    fn all_reduce(&self, x: Tensor) -> Result<Tensor, ModelError> {
        if self.shard.ranks == 1 {
            return Ok(x);
        }
        Ok(self.comm.all_reduce_sum(&x)?)
    }

    /// Text embeddings of `ids` (checked against the vocabulary), with `image_features`
    /// written into the positions holding `image_token_id` (see `LanguageModel::embed`). Each
    /// rank looks up the ids in its vocabulary slice (zero elsewhere) and an all-reduce sums
    /// the slices.
    pub(super) fn embed(
        &self,
        ids: &[u32],
        image_token_id: Option<u32>,
        image_features: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let device = &self.options.device;
        let text = if self.shard.ranks == 1 {
            let index = Tensor::from_vec(ids.to_vec(), ids.len(), device)?;
            self.embed_tokens.index_select(&index, 0)?
        } else {
            let rows = self.shard.vocab.clone();
            let held = |t: u32| rows.contains(&(t as usize));
            let local: Vec<u32> = ids
                .iter()
                .map(|&t| if held(t) { t - rows.start as u32 } else { 0 })
                .collect();
            let mask: Vec<f32> = ids.iter().map(|&t| f32::from(u8::from(held(t)))).collect();
            let index = Tensor::from_vec(local, ids.len(), device)?;
            let mask =
                Tensor::from_vec(mask, (ids.len(), 1), device)?.to_dtype(self.options.dtype)?;
            let slice = self
                .embed_tokens
                .index_select(&index, 0)?
                .broadcast_mul(&mask)?;
            self.all_reduce(slice)?
        };
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

    /// Starts this rank's part of a step over `embeds` (one `[len, hidden]` tensor per
    /// sequence, any device; checked by the caller) whose caches are `caches`.
    pub(super) fn start_forward(
        &self,
        embeds: &[Tensor],
        caches: &mut [&mut dyn SequenceCache],
    ) -> Result<ShardStep, ModelError> {
        let mut spans = Vec::with_capacity(embeds.len());
        let mut start = 0;
        for e in embeds {
            let len = e.dim(0)?;
            spans.push(Span { start, len });
            start += len;
        }
        let embeds: Vec<Tensor> = embeds
            .iter()
            .map(|e| {
                e.to_dtype(self.options.dtype)?
                    .to_device(&self.options.device)
            })
            .collect::<Result<_, _>>()?;
        let x = Tensor::cat(&embeds, 0)?;
        #[cfg(feature = "cuda")]
        if self.paged_ok(&x, caches) {
            let x = self.forward_paged(x, &spans, caches)?;
            return Ok(ShardStep {
                x,
                spans,
                next_layer: self.layers.len(),
                layers: self.layers.len(),
            });
        }
        #[cfg(not(feature = "cuda"))]
        let _ = caches;
        Ok(ShardStep {
            x,
            spans,
            next_layer: 0,
            layers: self.layers.len(),
        })
    }

    /// Runs the next decoder layer of `step` over `caches` (the step's sequences, in order, as
    /// `LanguageModel::forward_layer` checked). Does nothing once every layer has run.
    pub(super) fn forward_layer(
        &self,
        step: &mut ShardStep,
        caches: &mut [&mut dyn SequenceCache],
    ) -> Result<(), ModelError> {
        let Some(layer) = self.layers.get(step.next_layer) else {
            return Ok(());
        };
        let x = &step.x;
        let attended = layer.attention.forward(
            &layer.input_norm.forward(x)?,
            &step.spans,
            caches,
            step.next_layer,
            &self.rope,
        )?;
        let x = (x + self.all_reduce(attended)?)?;
        let ff = layer
            .feed_forward
            .forward(&layer.post_attention_norm.forward(&x)?)?;
        step.x = (x + self.all_reduce(ff)?)?;
        step.next_layer += 1;
        Ok(())
    }

    /// f32 logits `[spans, vocab]` of each span's last row of a finished step: each rank's
    /// vocabulary slice, gathered, the padding cut off.
    pub(super) fn finish_forward(&self, step: &ShardStep) -> Result<Tensor, ModelError> {
        let last: Vec<u32> = step
            .spans
            .iter()
            .map(|s| (s.start + s.len - 1) as u32)
            .collect();
        let last = Tensor::from_vec(last, step.spans.len(), step.x.device())?;
        let hidden = self.norm.forward(&step.x.index_select(&last, 0)?)?;
        let logits = matmul_wt(&hidden, &self.lm_head)?;
        if self.shard.ranks == 1 {
            return Ok(logits.to_dtype(DType::F32)?);
        }
        let all = self.comm.all_gather(&logits.contiguous()?, 1)?;
        Ok(all
            .narrow(1, 0, self.shard.vocab_size)?
            .to_dtype(DType::F32)?)
    }
}

/// Rows `shard.vocab` of the `[vocab, hidden]` tensor `name`: the real rows read, padding rows
/// (past the vocabulary) zero.
fn vocab_rows(
    loader: &Loader,
    name: &str,
    c: &LanguageConfig,
    shard: &RankShard,
) -> Result<Tensor, ModelError> {
    let real = shard.real_vocab();
    let rows = loader.block(
        name,
        &[c.vocab_size, c.hidden_size],
        &[real.clone(), 0..c.hidden_size],
    )?;
    let padding = shard.vocab.len() - real.len();
    if padding == 0 {
        return Ok(rows);
    }
    let zeros = Tensor::zeros((padding, c.hidden_size), rows.dtype(), rows.device())?;
    Ok(Tensor::cat(&[&rows, &zeros], 0)?)
}

fn load_layer(
    c: &LanguageConfig,
    layout: CheckpointLayout,
    loader: &Loader,
    shard: &RankShard,
    i: usize,
) -> Result<DecoderLayer, ModelError> {
    let p = layout.layer(i);
    let (h, d) = (c.hidden_size, c.head_dim);
    let bias = c.attention_bias;
    let heads = shard.heads.start * d..shard.heads.end * d;
    let kv = shard.kv_heads.start * d..shard.kv_heads.end * d;
    let q = loader.linear_rows(
        &format!("{p}.self_attn.q_proj"),
        c.num_heads * d,
        h,
        heads.clone(),
        bias,
    )?;
    let kv_width = c.num_kv_heads * d;
    let k = loader.linear_rows(
        &format!("{p}.self_attn.k_proj"),
        kv_width,
        h,
        kv.clone(),
        bias,
    )?;
    let v = loader.linear_rows(&format!("{p}.self_attn.v_proj"), kv_width, h, kv, bias)?;
    let attention = Attention {
        qkv: dvd_nn::Linear::fuse(&[&q, &k, &v])?,
        o: loader.linear_columns(
            &format!("{p}.self_attn.o_proj"),
            h,
            c.num_heads * d,
            heads,
            bias && shard.adds_row_bias(),
        )?,
        q_norm: loader.rms_norm(&format!("{p}.self_attn.q_norm"), d, c.rms_norm_eps)?,
        k_norm: loader.rms_norm(&format!("{p}.self_attn.k_norm"), d, c.rms_norm_eps)?,
        heads: shard.heads.len(),
        kv_heads: shard.kv_heads.len(),
        head_dim: d,
    };
    let swiglu = |prefix: &str, width: usize, columns: std::ops::Range<usize>| {
        let gate = loader.linear_rows(
            &format!("{prefix}.gate_proj"),
            width,
            h,
            columns.clone(),
            false,
        )?;
        let up = loader.linear_rows(
            &format!("{prefix}.up_proj"),
            width,
            h,
            columns.clone(),
            false,
        )?;
        Ok::<_, ModelError>(SwiGlu {
            gate_up: dvd_nn::Linear::fuse(&[&gate, &up])?,
            down: loader.linear_columns(
                &format!("{prefix}.down_proj"),
                h,
                width,
                columns,
                false,
            )?,
        })
    };
    let feed_forward = match &c.moe {
        Some(m) if c.is_moe_layer(i) => {
            let shape = ExpertShape {
                count: m.num_experts,
                width: m.moe_intermediate_size,
                hidden: h,
            };
            let slice = ExpertSlice {
                experts: shard.experts.clone(),
                width: shard.expert_width.clone(),
            };
            FeedForward::Moe(Box::new(Moe::holding(
                loader.linear(&format!("{p}.mlp.gate"), m.num_experts, h, false)?,
                load_experts(loader, &format!("{p}.mlp.experts"), shape, &slice)?,
                slice.experts.start,
                m.experts_per_token,
                m.norm_topk_prob,
            )?))
        }
        _ => FeedForward::Dense(swiglu(
            &format!("{p}.mlp"),
            c.intermediate_size,
            shard.intermediate.clone(),
        )?),
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
