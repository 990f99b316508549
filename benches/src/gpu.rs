//! GPU benchmark (`dvd bench gpu`): on one device, in one run, the serving code paths' speed at
//! InternVL3.5 shapes: vision encoder tiles/s at several batch sizes (`VisionModel::encode`:
//! InternViT, pixel shuffle, projector), one prefill of a long image prompt and decode steps at
//! batch 1 and 32 over a long context (`LanguageModel::forward` over the engine's paged KV
//! pool, greedy argmax on the device), and the device's copy bandwidth for the decode bound.
//! `tools/gpu/torch_baseline.py` measures the same workloads with PyTorch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use dvd_language_server::engine::kv::{KvPool, KvPoolConfig, PagedSequence};
use dvd_language_server::model::{LanguageModel, LoadOptions, SequenceStep};
use dvd_vision_server::model::{Routing, VisionModel};
use serde::Serialize;

use crate::stats::median;

/// What to measure.
#[derive(Debug, Clone)]
pub struct GpuBench {
    /// Checkpoint directory (both halves of an InternVL3.5 checkpoint).
    pub model: PathBuf,
    /// Device (a CUDA device; the CPU works too, slowly).
    pub device: Device,
    /// Compute dtype.
    pub dtype: DType,
    /// Tiles per vision batch.
    pub vision_batches: Vec<usize>,
    /// Prompt rows of the prefill (e.g. 7 tiles x 256 + 108 text = 1900).
    pub prefill_tokens: usize,
    /// Sequences per decode step.
    pub decode_batches: Vec<usize>,
    /// Cached positions before the timed decode steps.
    pub context: usize,
    /// Timed repetitions (medians reported); warm-ups run first.
    pub iters: usize,
    /// KV block size.
    pub block_size: usize,
    /// Skip the vision part.
    pub skip_vision: bool,
    /// Skip the language part.
    pub skip_language: bool,
    /// Also time each GPU kernel alone (`cuda` builds).
    pub kernels: bool,
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct GpuReport {
    /// Device as candle names it.
    pub device: String,
    /// Compute dtype.
    pub dtype: String,
    /// Device-to-device copy, GB/s counting bytes read and written.
    pub copy_bandwidth_gbps: f64,
    /// Vision tiles/s per batch size.
    pub vision: Vec<VisionPoint>,
    /// Prefill (None when skipped).
    pub prefill: Option<PrefillPoint>,
    /// Decode per batch size.
    pub decode: Vec<DecodePoint>,
    /// Bytes of the language weights a decode step reads (every layer and lm_head, not the
    /// embedding table).
    pub decode_weight_bytes: u64,
    /// `decode_weight_bytes` / copy bandwidth: the batch-1 decode step's memory-bound time, ms.
    pub decode_bound_ms: f64,
    /// Each GPU kernel alone (with `--kernels`).
    #[cfg(feature = "cuda")]
    pub kernels: Vec<crate::gpu_kernels::KernelPoint>,
}

/// One vision batch size.
#[derive(Debug, Clone, Serialize)]
pub struct VisionPoint {
    /// Tiles per batch.
    pub batch: usize,
    /// Median milliseconds per batch.
    pub ms: f64,
    /// Tiles per second.
    pub tiles_per_s: f64,
}

/// The prefill.
#[derive(Debug, Clone, Serialize)]
pub struct PrefillPoint {
    /// Prompt rows.
    pub tokens: usize,
    /// Median milliseconds.
    pub ms: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
}

/// One decode batch size.
#[derive(Debug, Clone, Serialize)]
pub struct DecodePoint {
    /// Sequences.
    pub batch: usize,
    /// Cached positions at the first timed step.
    pub context: usize,
    /// Median milliseconds per step (forward + argmax + ids to the host).
    pub ms_per_step: f64,
    /// Median milliseconds until the forward call returns, before the wait for the GPU: the
    /// host's time to enqueue a step. Close to `ms_per_step` means the step is host-bound.
    pub enqueue_ms: f64,
}

impl GpuBench {
    /// Runs every part.
    pub fn run(&self) -> Result<GpuReport> {
        let copy = copy_bandwidth(&self.device)?;
        #[cfg(feature = "cuda")]
        let kernels = match self.kernels && self.device.is_cuda() {
            true => crate::gpu_kernels::run(&self.device)?,
            false => Vec::new(),
        };
        let vision = match self.skip_vision {
            true => Vec::new(),
            false => self.vision()?,
        };
        let (prefill, decode, weight_bytes) = match self.skip_language {
            true => (None, Vec::new(), 0),
            false => self.language()?,
        };
        Ok(GpuReport {
            device: format!("{:?}", self.device.location()),
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            copy_bandwidth_gbps: copy,
            vision,
            prefill,
            decode,
            decode_weight_bytes: weight_bytes,
            decode_bound_ms: weight_bytes as f64 / (copy * 1e9) * 1e3,
            #[cfg(feature = "cuda")]
            kernels,
        })
    }

    fn options(&self) -> LoadOptions {
        LoadOptions {
            dtype: self.dtype,
            device: self.device.clone(),
        }
    }

    fn vision(&self) -> Result<Vec<VisionPoint>> {
        let model = VisionModel::load(&self.model, &self.options())
            .with_context(|| format!("loading the vision model from {}", self.model.display()))?;
        let side = model.config().tiling.tile_size as usize;
        let mut points = Vec::new();
        for &batch in &self.vision_batches {
            let pixels = Tensor::randn(0f32, 1.0, (batch, 3, side, side), &self.device)?;
            let ms = self.time(|| {
                let encoded = model.encode(&pixels, Routing::Off)?;
                encoded.features.device().synchronize()?;
                Ok(())
            })?;
            points.push(VisionPoint {
                batch,
                ms,
                tiles_per_s: batch as f64 / (ms / 1e3),
            });
        }
        Ok(points)
    }

    fn language(&self) -> Result<(Option<PrefillPoint>, Vec<DecodePoint>, u64)> {
        let model = LanguageModel::load(&self.model, &self.options())
            .with_context(|| format!("loading the language model from {}", self.model.display()))?;
        let c = model.config().clone();
        let weight_bytes = decode_weight_bytes(&model) * self.dtype.size_in_bytes() as u64;
        let most = self.decode_batches.iter().copied().max().unwrap_or(1);
        let positions = (self.context + 2 * self.iters + 8).max(self.prefill_tokens);
        let per_sequence = positions.div_ceil(self.block_size) + 1;
        let pool = Arc::new(KvPool::new(
            KvPoolConfig {
                layers: c.num_layers,
                kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                block_size: self.block_size,
                blocks: per_sequence * most.max(1),
            },
            self.dtype,
            &self.device,
        )?);
        let embeds = |n: usize| -> Result<Tensor> {
            Ok(
                (Tensor::randn(0f32, 1.0, (n, c.hidden_size), &self.device)? * 0.05)?
                    .to_dtype(self.dtype)?,
            )
        };
        let fresh = |tokens: usize| -> Result<PagedSequence> {
            let mut seq = PagedSequence::new(pool.clone());
            seq.reserve(tokens).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(seq)
        };

        let prompt = embeds(self.prefill_tokens)?;
        let prefill_ms = self.time(|| {
            let mut seq = fresh(self.prefill_tokens)?;
            let logits = model.forward(&mut [SequenceStep {
                embeds: prompt.clone(),
                cache: &mut seq,
            }])?;
            logits.device().synchronize()?;
            Ok(())
        })?;
        let prefill = PrefillPoint {
            tokens: self.prefill_tokens,
            ms: prefill_ms,
            tokens_per_s: self.prefill_tokens as f64 / (prefill_ms / 1e3),
        };

        let mut decode = Vec::new();
        for &batch in &self.decode_batches {
            let mut seqs = Vec::with_capacity(batch);
            let context = embeds(self.context)?;
            for _ in 0..batch {
                let mut seq = fresh(positions)?;
                // Fill the context in chunks, as the engine's chunked prefill would.
                for start in (0..self.context).step_by(2048) {
                    let n = 2048.min(self.context - start);
                    model.forward(&mut [SequenceStep {
                        embeds: context.narrow(0, start, n)?,
                        cache: &mut seq,
                    }])?;
                }
                seqs.push(seq);
            }
            let step = embeds(batch)?;
            let mut enqueue = Vec::new();
            let ms = self.time(|| {
                let started = Instant::now();
                let mut steps: Vec<SequenceStep<'_>> = seqs
                    .iter_mut()
                    .enumerate()
                    .map(|(i, seq)| {
                        Ok(SequenceStep {
                            embeds: step.narrow(0, i, 1)?,
                            cache: seq,
                        })
                    })
                    .collect::<Result<_>>()?;
                let logits = model.forward(&mut steps)?;
                enqueue.push(started.elapsed().as_secs_f64() * 1e3);
                let ids = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
                if ids.len() != batch {
                    bail!("argmax gave {} ids for {batch} sequences", ids.len());
                }
                Ok(())
            })?;
            decode.push(DecodePoint {
                batch,
                context: self.context,
                ms_per_step: ms,
                enqueue_ms: median(&enqueue),
            });
        }
        Ok((Some(prefill), decode, weight_bytes))
    }

    /// Median milliseconds of `iters` runs of `f` after two warm-ups.
    fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        for _ in 0..2 {
            f()?;
        }
        let mut samples = Vec::with_capacity(self.iters);
        for _ in 0..self.iters.max(1) {
            let started = Instant::now();
            f()?;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(&samples))
    }
}

/// Parameters a decode step reads: every layer's matrices and lm_head (not the embeddings).
fn decode_weight_bytes(model: &LanguageModel) -> u64 {
    let c = model.config();
    let (h, d) = (c.hidden_size as u64, c.head_dim as u64);
    let attention =
        (c.num_heads as u64 + 2 * c.num_kv_heads as u64) * d * h + c.num_heads as u64 * d * h;
    let mlp = match &c.moe {
        // Top-k experts per token (batch 1) plus the router.
        Some(m) => {
            (m.experts_per_token as u64) * 3 * m.moe_intermediate_size as u64 * h
                + m.num_experts as u64 * h
        }
        None => 3 * c.intermediate_size as u64 * h,
    };
    c.num_layers as u64 * (attention + mlp) + c.vocab_size as u64 * h
}

/// Device-to-device copy bandwidth, GB/s counting bytes read and written: on CUDA the driver's
/// copy of 1 GiB (median of 10), elsewhere a tensor copy into a preallocated tensor.
pub(crate) fn copy_bandwidth(device: &Device) -> Result<f64> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return Ok(dvd_kernels::copy_bandwidth_gbps(device, 1 << 30, 10)?);
    }
    let elems = 256usize << 20; // 1 GiB of f32
    let src = Tensor::ones(elems, DType::F32, device)?;
    let dst = Tensor::zeros(elems, DType::F32, device)?;
    let mut samples = Vec::new();
    for i in 0..13 {
        device.synchronize()?;
        let started = Instant::now();
        dst.slice_set(&src, 0, 0)?;
        device.synchronize()?;
        if i >= 3 {
            samples.push(2.0 * (elems * 4) as f64 / started.elapsed().as_secs_f64() / 1e9);
        }
    }
    Ok(median(&samples))
}
