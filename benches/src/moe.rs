//! One mixture-of-experts block (router and experts, `dvd_nn::moe::Moe`) on random weights: time
//! per call against the memory-read bound of the weights the call touches.
//!
//! A call reads the router and every expert at least one of its tokens chose, so on a machine
//! that streams weights at `read_gbps` it cannot take less than `active_weight_bytes /
//! read_gbps`. Each timed call starts with cold caches (256 MiB read between calls), as a layer's
//! weights do in a model too large for them. `tools/bench_moe_torch.py` times transformers' `Qwen3MoeSparseMoeBlock` at the
//! same shapes.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use dvd_nn::Linear;
use dvd_nn::moe::{Experts, Moe};
use rayon::prelude::*;
use serde::Serialize;

use crate::stats::{median, range};

/// What to measure.
#[derive(Debug, Clone)]
pub struct MoeBench {
    /// Width of the tokens.
    pub hidden: usize,
    /// Experts in the block.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Width of one expert's gate and up projections.
    pub moe_intermediate: usize,
    /// Tokens per call.
    pub tokens: usize,
    /// Seed of the weights and inputs.
    pub seed: u64,
    /// Timed calls after the warm-up; the median is reported.
    pub calls: usize,
    /// Where the block runs.
    pub device: Device,
    /// Compute dtype.
    pub dtype: DType,
}

/// `dvd bench moe`'s defaults: Qwen3-30B-A3B's MoE layer (hidden 2048, 128 experts, top-8,
/// width 768) at 32 tokens, 10 calls, f32 on the CPU.
impl Default for MoeBench {
    fn default() -> Self {
        Self {
            hidden: 2048,
            experts: 128,
            top_k: 8,
            moe_intermediate: 768,
            tokens: 32,
            seed: 0,
            calls: 10,
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// One run's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct MoeReport {
    /// Time per call, milliseconds (median).
    pub ms_per_call: f64,
    /// Fastest and slowest call.
    pub range_ms: (f64, f64),
    /// Tokens per call.
    pub tokens: usize,
    /// Width of the tokens.
    pub hidden: usize,
    /// Experts in the block.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Width of one expert.
    pub moe_intermediate: usize,
    /// Compute dtype.
    pub dtype: String,
    /// Device.
    pub device: String,
    /// CPU threads the kernels use (rayon's pool).
    pub threads: usize,
    /// Distinct experts the call's tokens chose.
    pub active_experts: usize,
    /// Bytes, in the computed dtype, of those experts' weights plus the router.
    pub active_weight_bytes: usize,
    /// The machine's memory-read bandwidth measured in the same run, GB/s: on the CPU the median
    /// of the 256 MiB reads before each timed call; on GPUs the device-to-device copy bandwidth
    /// (bytes read and written).
    pub read_gbps: f64,
    /// `active_weight_bytes / read_gbps`, milliseconds.
    pub bound_ms: f64,
    /// `ms_per_call / bound_ms`.
    pub ratio_to_bound: f64,
}

impl MoeBench {
    /// Builds the block, warms it up, times it, and measures the read bandwidth.
    pub fn run(&self) -> Result<MoeReport> {
        if self.tokens == 0 || self.calls == 0 {
            bail!("moe bench: --tokens and --calls must be at least 1");
        }
        let mut seed = self.seed;
        let mut random = |shape: &[usize], scale: f32| -> Result<Tensor> {
            seed += 1;
            let n = shape.iter().product();
            let host = Tensor::from_vec(uniform(n, seed, scale), shape, &Device::Cpu)?;
            Ok(host.to_dtype(self.dtype)?.to_device(&self.device)?)
        };
        let (h, e, w) = (self.hidden, self.experts, self.moe_intermediate);
        // Expert matrices at the spread of a trained model's (std ~0.02), a router that routes.
        let experts = Experts::new(&random(&[e, 2 * w, h], 0.035)?, &random(&[e, h, w], 0.035)?)?;
        let router = Linear::new(random(&[e, h], 0.05)?, None);
        let moe = Moe::new(router, experts, self.top_k, true)?;
        let x = random(&[self.tokens, h], 1.0)?;

        let chosen: BTreeSet<u32> = moe
            .route(&x)?
            .experts
            .flatten_all()?
            .to_vec1()?
            .into_iter()
            .collect();
        let dtype_bytes = self.dtype.size_in_bytes();
        let active_weight_bytes =
            chosen.len() * moe.experts().bytes_per_expert() + e * h * dtype_bytes;

        for _ in 0..2 {
            moe.forward(&x)?;
        }
        let evictor = Evictor::new(&self.device)?;
        let mut samples = Vec::with_capacity(self.calls);
        let mut reads = Vec::with_capacity(self.calls);
        for _ in 0..self.calls {
            // Weights come from memory, as in a model whose layers do not fit in the caches;
            // the read that evicts them measures the bandwidth at that moment.
            reads.push(evictor.evict()?);
            let started = Instant::now();
            moe.forward(&x)?;
            self.device.synchronize()?;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        drop(moe);
        let read_gbps = match self.device {
            Device::Cpu => median(&reads),
            _ => crate::gpu::copy_bandwidth(&self.device)?,
        };
        let ms_per_call = median(&samples);
        let bound_ms = active_weight_bytes as f64 / (read_gbps * 1e9) * 1e3;
        Ok(MoeReport {
            ms_per_call,
            range_ms: range(&samples),
            tokens: self.tokens,
            hidden: h,
            experts: e,
            top_k: self.top_k,
            moe_intermediate: w,
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            device: format!("{:?}", self.device),
            threads: rayon::current_num_threads(),
            active_experts: chosen.len(),
            active_weight_bytes,
            read_gbps,
            bound_ms,
            ratio_to_bound: ms_per_call / bound_ms,
        })
    }
}

/// `n` values uniform in `[-scale, scale)` from a seeded xorshift.
fn uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The sum of `values` over rayon's threads, in independent lanes so the compiler keeps it in
/// vector registers: a pure read of memory.
fn parallel_sum(values: &[f32]) -> f32 {
    const LANES: usize = 16;
    values
        .par_chunks(1 << 16)
        .map(|chunk| {
            let mut lanes = [0f32; LANES];
            for block in chunk.chunks_exact(LANES) {
                for (l, v) in lanes.iter_mut().zip(block) {
                    *l += v;
                }
            }
            lanes.iter().sum::<f32>()
        })
        .sum()
}

/// Pushes the weights of the previous call out of the caches by reading 256 MiB (more than any
/// CPU's last-level cache or a GPU's L2) before each timed call; on the CPU that read, by rayon's
/// threads in independent vector lanes, is also the run's memory-read bandwidth measurement.
enum Evictor {
    Cpu(Vec<f32>),
    Device(Tensor),
}

impl Evictor {
    fn new(device: &Device) -> Result<Self> {
        const VALUES: usize = 64 << 20;
        Ok(match device {
            Device::Cpu => Self::Cpu(vec![1f32; VALUES]),
            other => Self::Device(Tensor::ones(VALUES, DType::F32, other)?),
        })
    }

    /// Reads the buffer; the read's bandwidth, GB/s.
    fn evict(&self) -> Result<f64> {
        let started = Instant::now();
        let bytes = match self {
            Self::Cpu(values) => {
                std::hint::black_box(parallel_sum(values));
                values.len() * 4
            }
            Self::Device(values) => {
                std::hint::black_box(values.sum_all()?);
                values.device().synchronize()?;
                values.elem_count() * 4
            }
        };
        Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e9)
    }
}
