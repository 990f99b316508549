//! CPU-f32 against device agreement (`dvd bench gpu-check`): runs a checkpoint's vision encoder
//! and language model on the CPU in f32 and on the device in its dtype (bf16 on GPUs) on the
//! same inputs, and reports how far the device's outputs are from the CPU's. The language
//! scenario drives every path of the GPU forward: a long first prefill (flash attention over
//! the chunk's own keys), a second chunk after cached positions (flash attention over gathered
//! pool blocks), a short prompt beside it (paged kernel), and batched decode steps (paged
//! kernel, split over the context).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor};
use dvd_language_server::engine::kv::{KvPool, KvPoolConfig, PagedSequence};
use dvd_language_server::model::{LanguageModel, LoadOptions, SequenceCache, SequenceStep};
use dvd_vision_server::model::{Routing, VisionModel};
use serde::Serialize;

/// What to compare.
#[derive(Debug, Clone)]
pub struct GpuCheck {
    /// Checkpoint directory.
    pub model: PathBuf,
    /// The device under test.
    pub device: Device,
    /// Its dtype.
    pub dtype: DType,
    /// Tiles encoded.
    pub tiles: usize,
    /// Rows of the first prefill chunk.
    pub first_chunk: usize,
    /// Lowest cosine similarity accepted.
    pub min_cosine: f64,
}

/// `dvd bench gpu-check`'s defaults: 3 tiles, a 70-row first chunk, cosine at least 0.99, on
/// the CPU in f32; `model` is empty and the device is the CPU (set them).
impl Default for GpuCheck {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            device: Device::Cpu,
            dtype: DType::F32,
            tiles: 3,
            first_chunk: 70,
            min_cosine: 0.99,
        }
    }
}

/// Agreement of one output.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// What was compared.
    pub what: String,
    /// Cosine similarity of the flattened outputs.
    pub cosine: f64,
    /// Largest absolute difference over the largest absolute CPU value.
    pub max_rel_diff: f64,
    /// Rows whose argmax agrees (language logits), of rows.
    pub argmax_agree: Option<(usize, usize)>,
}

/// All comparisons; `pass` when every cosine reaches the threshold.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Checkpoint.
    pub model: String,
    /// Device under test.
    pub device: String,
    /// Its dtype.
    pub dtype: String,
    /// Per output.
    pub agreements: Vec<Agreement>,
    /// Every cosine >= the threshold.
    pub pass: bool,
}

impl GpuCheck {
    /// Runs both halves that the checkpoint has.
    pub fn run(&self) -> Result<CheckReport> {
        let mut agreements = Vec::new();
        let config = dvd_checkpoint::read_json(&self.model.join("config.json"))?;
        if config.get("vision_config").is_some() {
            agreements.push(self.vision()?);
        }
        agreements.extend(self.language()?);
        let pass = agreements.iter().all(|a| a.cosine >= self.min_cosine);
        Ok(CheckReport {
            model: self.model.display().to_string(),
            device: format!("{:?}", self.device.location()),
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            agreements,
            pass,
        })
    }

    fn cpu_options(&self) -> LoadOptions {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }

    fn device_options(&self) -> LoadOptions {
        LoadOptions {
            dtype: self.dtype,
            device: self.device.clone(),
        }
    }

    fn vision(&self) -> Result<Agreement> {
        let cpu =
            VisionModel::load(&self.model, &self.cpu_options()).context("vision on the CPU")?;
        let dev = VisionModel::load(&self.model, &self.device_options())
            .context("vision on the device")?;
        let side = cpu.config().tiling.tile_size as usize;
        let pixels = seeded((self.tiles, 3, side, side), 1)?;
        let reference = cpu.encode(&pixels, Routing::Off)?.features;
        let tested = dev
            .encode(&pixels.to_device(&self.device)?, Routing::Off)?
            .features;
        compare("vision features", &reference, &tested, false)
    }

    fn language(&self) -> Result<Vec<Agreement>> {
        let cpu =
            LanguageModel::load(&self.model, &self.cpu_options()).context("language on the CPU")?;
        let dev = LanguageModel::load(&self.model, &self.device_options())
            .context("language on the device")?;
        let c = cpu.config().clone();
        let (first, second, short, steps) = (self.first_chunk, 24, 5, 3);
        let total = first + second + steps + short;
        let embeds = (seeded((total, c.hidden_size), 2)? * 0.5)?;
        let block_size = 16;
        let pool = Arc::new(KvPool::new(
            KvPoolConfig {
                layers: c.num_layers,
                kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                block_size,
                blocks: 2 * total.div_ceil(block_size) + 4,
            },
            self.dtype,
            &self.device,
        )?);
        let paged = |n: usize| -> Result<PagedSequence> {
            let mut s = PagedSequence::new(pool.clone());
            s.reserve(n).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(s)
        };
        let (mut a_cpu, mut b_cpu) = (cpu.new_cache(), cpu.new_cache());
        let (mut a_dev, mut b_dev) = (paged(first + second + steps)?, paged(short + steps)?);
        let rows = |start: usize, n: usize| embeds.narrow(0, start, n);
        let mut out = Vec::new();

        // 1. First prefill alone.
        let step =
            |model: &LanguageModel, a: &mut dyn SequenceCache, x: Tensor| -> Result<Tensor> {
                Ok(model.forward(&mut [SequenceStep {
                    embeds: x,
                    cache: a,
                }])?)
            };
        let x = rows(0, first)?;
        let r = step(&cpu, &mut a_cpu, x.clone())?;
        let t = step(&dev, &mut a_dev, x.to_device(&self.device)?)?;
        out.push(compare("prefill (flash, no cache)", &r, &t, true)?);

        // 2. A second chunk after the cached prefix, batched with a short new prompt.
        let pair = |model: &LanguageModel,
                    a: &mut dyn SequenceCache,
                    b: &mut dyn SequenceCache,
                    xa: Tensor,
                    xb: Tensor|
         -> Result<Tensor> {
            Ok(model.forward(&mut [
                SequenceStep {
                    embeds: xa,
                    cache: a,
                },
                SequenceStep {
                    embeds: xb,
                    cache: b,
                },
            ])?)
        };
        let (xa, xb) = (rows(first, second)?, rows(first + second, short)?);
        let r = pair(&cpu, &mut a_cpu, &mut b_cpu, xa.clone(), xb.clone())?;
        let t = pair(
            &dev,
            &mut a_dev,
            &mut b_dev,
            xa.to_device(&self.device)?,
            xb.to_device(&self.device)?,
        )?;
        out.push(compare(
            "chunk after prefix (flash, gathered) + short prompt (paged)",
            &r,
            &t,
            true,
        )?);

        // 3. Decode steps of both.
        let base = first + second + short;
        let mut reference = Vec::new();
        let mut tested = Vec::new();
        for i in 0..steps {
            let (xa, xb) = (rows(base + i, 1)?, rows(base + i, 1)?);
            reference.push(pair(&cpu, &mut a_cpu, &mut b_cpu, xa.clone(), xb.clone())?);
            tested.push(pair(
                &dev,
                &mut a_dev,
                &mut b_dev,
                xa.to_device(&self.device)?,
                xb.to_device(&self.device)?,
            )?);
        }
        let reference = Tensor::cat(&reference, 0)?;
        let tested = Tensor::cat(&tested, 0)?;
        out.push(compare("decode steps (paged)", &reference, &tested, true)?);
        if a_cpu.len() != SequenceCache::len(&a_dev) {
            bail!("the caches disagree on length");
        }
        Ok(out)
    }
}

/// A seeded normal tensor on the CPU (the same values on every machine).
fn seeded(shape: impl Into<candle_core::Shape>, seed: u64) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    // SplitMix64 + Box-Muller: no dependence on candle's or rand's generators.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let (u, v) = (next().max(1e-12), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

fn compare(what: &str, reference: &Tensor, tested: &Tensor, logits: bool) -> Result<Agreement> {
    let r = reference.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let t = tested.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    if r.dims() != t.dims() {
        bail!("{what}: shapes differ: {:?} vs {:?}", r.dims(), t.dims());
    }
    let dot = (&r * &t)?.sum_all()?.to_scalar::<f32>()? as f64;
    let nr = r.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let nt = t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let max_diff = (&r - &t)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let max_ref = r.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let argmax_agree = if logits {
        let a = r.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let b = t.argmax(D::Minus1)?.to_vec1::<u32>()?;
        Some((a.iter().zip(&b).filter(|(x, y)| x == y).count(), a.len()))
    } else {
        None
    };
    Ok(Agreement {
        what: what.to_string(),
        cosine: dot / (nr.sqrt() * nt.sqrt()).max(f64::MIN_POSITIVE),
        max_rel_diff: max_diff / max_ref.max(f64::MIN_POSITIVE),
        argmax_agree,
    })
}
