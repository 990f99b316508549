//! The projection mode of `dvd bench plan` (`--gpu-report`): coupled and DvD request throughput
//! on a budget of GPUs, from one GPU's stage measurements (`dvd bench gpu`'s report: vision
//! tiles/s at several batches, prefill tokens/s, decode ms per step), for requests of a given
//! number of tiles.
//!
//! The model, a steady-state capacity model with these assumptions:
//! - A request is `tiles` tiles of `tokens_per_tile` image tokens (256; no ViR compression),
//!   `text_tokens` of text and `output_tokens` generated, decoded in batches of the report's
//!   largest measured decode batch at its measured step time.
//! - **Coupled**: every GPU runs the ViT and the language model for its own requests, one
//!   after the other; it encodes a request's tiles as one batch, at the report's tiles/s for
//!   that batch size (interpolated between measured batches). GPU-seconds per request =
//!   vision + prefill + the request's share of decode steps; throughput = GPUs / that.
//! - **DvD**: V GPUs run vision servers, batching tiles across requests at the best measured
//!   rate; the rest run language servers; the best V:L split ([`Profile::splits`]) with
//!   pipeline efficiency 1 (the stages overlap perfectly).
//! - Not modelled: latency targets, KV-cache capacity limits on the batch, interference of
//!   vision work with decode steps beyond its GPU time, the transfer of features (small against
//!   either stage), and ViR.

use anyhow::{Context, Result, ensure};
use serde::Serialize;
use serde_json::Value;

use super::{Profile, UnitRates, Workload};

/// One GPU's rates, as `dvd bench gpu` measured them.
#[derive(Debug, Clone, Serialize)]
pub struct GpuRates {
    /// What was measured (the report's device and dtype).
    pub source: String,
    /// (tiles per batch, tiles/s), by batch.
    pub vision: Vec<(f64, f64)>,
    /// Prompt tokens prefilled per second.
    pub prefill_tokens_per_s: f64,
    /// Sequences per decode step (the largest batch measured).
    pub decode_batch: f64,
    /// Decode steps per second at that batch.
    pub decode_steps_per_s: f64,
}

/// The shape of the requests projected.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RequestShape {
    /// Image tokens of one tile.
    pub tokens_per_tile: f64,
    /// Text tokens of the prompt.
    pub text_tokens: f64,
    /// Generated tokens.
    pub output_tokens: f64,
}

/// One tile count's projection.
#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    /// Tiles per request.
    pub tiles: usize,
    /// Prompt tokens per request.
    pub prompt_tokens: f64,
    /// Coupled requests/s on the budget.
    pub coupled_request_throughput: f64,
    /// DvD requests/s of the best split.
    pub dvd_request_throughput: f64,
    /// DvD / coupled.
    pub dvd_over_coupled: f64,
    /// The best split: vision GPUs.
    pub vision_gpus: usize,
    /// The best split: language GPUs.
    pub language_gpus: usize,
    /// Which pool bounds it.
    pub bottleneck: String,
}

impl GpuRates {
    /// From a `dvd bench gpu` report.
    pub fn from_report(report: &Value) -> Result<Self> {
        let number = |v: &Value, name: &str| {
            v[name]
                .as_f64()
                .with_context(|| format!("the GPU report's {name} is not a number"))
        };
        let mut vision = report["vision"]
            .as_array()
            .context("the GPU report has no \"vision\" list (a dvd bench gpu report?)")?
            .iter()
            .map(|v| Ok((number(v, "batch")?, number(v, "tiles_per_s")?)))
            .collect::<Result<Vec<_>>>()?;
        vision.sort_by(|a, b| a.0.total_cmp(&b.0));
        ensure!(
            !vision.is_empty(),
            "the GPU report measured no vision batch"
        );
        let decode = report["decode"]
            .as_array()
            .context("the GPU report has no \"decode\" list")?
            .iter()
            .map(|d| Ok((number(d, "batch")?, number(d, "ms_per_step")?)))
            .collect::<Result<Vec<_>>>()?;
        let (decode_batch, ms) = decode
            .into_iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .context("the GPU report measured no decode step")?;
        Ok(Self {
            source: format!(
                "{} {}",
                report["device"].as_str().unwrap_or("GPU"),
                report["dtype"].as_str().unwrap_or("")
            ),
            vision,
            prefill_tokens_per_s: number(&report["prefill"], "tokens_per_s")?,
            decode_batch,
            decode_steps_per_s: 1e3 / ms,
        })
    }

    /// Tiles/s encoding batches of `batch` tiles: linear between the measured batches, the
    /// nearest measured one outside them.
    pub fn vision_at(&self, batch: f64) -> f64 {
        let (first, last) = (self.vision[0], self.vision[self.vision.len() - 1]);
        if batch <= first.0 {
            return first.1;
        }
        if batch >= last.0 {
            return last.1;
        }
        self.vision
            .windows(2)
            .find(|w| batch <= w[1].0)
            .map_or(last.1, |w| {
                let f = (batch - w[0].0) / (w[1].0 - w[0].0);
                w[0].1 + f * (w[1].1 - w[0].1)
            })
    }

    /// The best measured tiles/s (a vision server batching across requests).
    pub fn vision_best(&self) -> f64 {
        self.vision.iter().map(|v| v.1).fold(0.0, f64::max)
    }

    /// Coupled and DvD throughput on `gpus` GPUs for requests of `tiles` tiles.
    pub fn project(&self, tiles: usize, shape: RequestShape, gpus: usize) -> Result<Projection> {
        ensure!(tiles > 0, "a request needs at least one tile");
        let workload = Workload {
            tiles_per_request: tiles as f64,
            prompt_tokens: tiles as f64 * shape.tokens_per_tile + shape.text_tokens,
            output_tokens: shape.output_tokens,
        };
        let rates = |vision_tiles_per_s| UnitRates {
            vision_tiles_per_s,
            prefill_tokens_per_s: self.prefill_tokens_per_s,
            decode_steps_per_s: self.decode_steps_per_s,
            decode_batch: self.decode_batch,
        };
        let dvd = Profile::from_rates(&rates(self.vision_best()), &workload, 1.0)?;
        let best = dvd.splits(gpus)?.into_iter().next().context("no split")?;
        let coupled = Profile::from_rates(&rates(self.vision_at(tiles as f64)), &workload, 1.0)?
            .predict_coupled(gpus);
        Ok(Projection {
            tiles,
            prompt_tokens: workload.prompt_tokens,
            coupled_request_throughput: coupled,
            dvd_request_throughput: best.predicted_request_throughput,
            dvd_over_coupled: best.predicted_request_throughput / coupled,
            vision_gpus: best.vision_servers,
            language_gpus: best.language_servers,
            bottleneck: best.bottleneck,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn report() -> Value {
        serde_json::json!({
            "device": "H100", "dtype": "bf16",
            "vision": [{"batch": 8, "tiles_per_s": 480.0}, {"batch": 1, "tiles_per_s": 320.0},
                       {"batch": 32, "tiles_per_s": 470.0}],
            "prefill": {"tokens": 1900, "tokens_per_s": 36000.0},
            "decode": [{"batch": 1, "ms_per_step": 8.0}, {"batch": 32, "ms_per_step": 12.5}]
        })
    }

    #[test]
    fn rates_read_the_report_and_interpolate_batches() {
        let rates = GpuRates::from_report(&report()).unwrap();
        assert_eq!(rates.decode_batch, 32.0);
        assert!((rates.decode_steps_per_s - 80.0).abs() < 1e-9);
        assert_eq!(rates.vision_at(1.0), 320.0);
        assert!((rates.vision_at(4.5) - 400.0).abs() < 1e-9);
        assert_eq!(rates.vision_at(64.0), 470.0);
        assert_eq!(rates.vision_best(), 480.0);
        assert!(GpuRates::from_report(&serde_json::json!({"decode": []})).is_err());
    }

    #[test]
    fn projections_follow_the_model_by_hand() {
        let rates = GpuRates::from_report(&report()).unwrap();
        let shape = RequestShape {
            tokens_per_tile: 256.0,
            text_tokens: 64.0,
            output_tokens: 256.0,
        };
        let p = rates.project(1, shape, 8).unwrap();
        // Language seconds per request: 320 / 36000 + 256 / (80 * 32).
        let language = 320.0 / 36_000.0 + 256.0 / 2560.0;
        let coupled = 8.0 / (1.0 / 320.0 + language);
        assert!((p.coupled_request_throughput - coupled).abs() < 1e-9);
        // One vision GPU (480 req/s) is far more than 7 language GPUs need.
        assert_eq!((p.vision_gpus, p.language_gpus), (1, 7));
        assert!((p.dvd_request_throughput - 7.0 / language).abs() < 1e-9);
        assert!(p.dvd_over_coupled < 1.0);
        assert!(rates.project(0, shape, 8).is_err());
    }
}
