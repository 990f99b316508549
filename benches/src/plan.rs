//! `dvd bench plan`: a capacity model of a decoupled deployment. Each stage is a pool of
//! identical servers with a measured capacity for the workload mix (requests/s per server);
//! the pipeline's throughput is that of its slowest pool, times how much of it the pipeline
//! achieves (its measured efficiency). From that it predicts throughput and per-pool
//! utilisation for V vision and L language servers, and the V:L split of a GPU budget that
//! maximises throughput.
//!
//! Capacities come from a [`Profile`]: either a `dvd bench compare` report (stage capacities
//! measured alone on this machine) or per-unit GPU rates (`dvd bench gpu`: vision tiles/s,
//! prefill tokens/s, decode steps/s at a batch size) together with the workload's shape.
//!
//! [`memory`] is another mode: what one language server of a model takes per GPU, from its
//! config alone (`dvd bench plan --model`); [`projection`] a third: coupled against DvD on a
//! GPU budget from one GPU's stage measurements (`dvd bench plan --gpu-report`).

pub mod memory;
pub mod projection;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Per-unit rates of one vision and one language server (e.g. one GPU each).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UnitRates {
    /// Vision tiles encoded per second by one server (at its batch size).
    pub vision_tiles_per_s: f64,
    /// Prompt tokens prefilled per second by one language server.
    pub prefill_tokens_per_s: f64,
    /// Decode steps per second of one language server at `decode_batch`.
    pub decode_steps_per_s: f64,
    /// Sequences per decode step.
    pub decode_batch: f64,
}

/// The workload's per-request shape.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Workload {
    /// Tiles per request (all images).
    pub tiles_per_request: f64,
    /// Prompt tokens per request (image tokens included).
    pub prompt_tokens: f64,
    /// Generated tokens per request.
    pub output_tokens: f64,
}

/// Where the capacities come from.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Requests/s one vision server sustains on the workload.
    pub vision_capacity: f64,
    /// Requests/s one language server sustains on the workload.
    pub language_capacity: f64,
    /// Achieved / slowest-stage throughput of a running pipeline (1.0 when unmeasured).
    pub efficiency: f64,
    /// Achieved / modelled throughput of coupled serving, where every unit runs both stages
    /// (1.0 when unmeasured; below 1 where the stages do not scale to the cores they share).
    pub coupled_efficiency: f64,
    /// What the numbers are.
    pub source: String,
}

impl Profile {
    /// From per-unit rates and a workload: vision = tiles/s / tiles per request; language =
    /// 1 / (prefill time + the request's share of decode steps).
    pub fn from_rates(rates: &UnitRates, workload: &Workload, efficiency: f64) -> Result<Self> {
        ensure!(
            rates.vision_tiles_per_s > 0.0
                && rates.prefill_tokens_per_s > 0.0
                && rates.decode_steps_per_s > 0.0
                && rates.decode_batch >= 1.0,
            "rates must be positive (decode_batch at least 1)"
        );
        ensure!(workload.tiles_per_request > 0.0, "a request needs tiles");
        let language_seconds = workload.prompt_tokens / rates.prefill_tokens_per_s
            + workload.output_tokens / (rates.decode_steps_per_s * rates.decode_batch);
        Ok(Self {
            vision_capacity: rates.vision_tiles_per_s / workload.tiles_per_request,
            language_capacity: 1.0 / language_seconds.max(f64::MIN_POSITIVE),
            efficiency,
            coupled_efficiency: 1.0,
            source: "per-unit rates".into(),
        })
    }

    /// Reads a profile file: a `dvd bench compare` report, or
    /// `{"rates": UnitRates, "workload": Workload, "efficiency": f64?}`.
    pub fn from_json(value: &Value) -> Result<Self> {
        if let Some(vision) = value["vision_alone_request_throughput"].as_f64() {
            let field = |name: &str| {
                value[name]
                    .as_f64()
                    .with_context(|| format!("the compare report has no {name}"))
            };
            let mut profile = Self {
                vision_capacity: vision,
                language_capacity: field("language_alone_request_throughput")?,
                efficiency: field("pipeline_efficiency")?,
                coupled_efficiency: 1.0,
                source: "dvd bench compare".into(),
            };
            // The compare run's coupled deployment had the cores of its one vision and one
            // language server: two units.
            let coupled = field("coupled_request_throughput")?;
            profile.coupled_efficiency =
                coupled / profile.predict_coupled(2).max(f64::MIN_POSITIVE);
            return Ok(profile);
        }
        let rates: UnitRates = serde_json::from_value(value["rates"].clone())
            .context("the profile's \"rates\" (vision_tiles_per_s, prefill_tokens_per_s, decode_steps_per_s, decode_batch)")?;
        let workload: Workload = serde_json::from_value(value["workload"].clone()).context(
            "the profile's \"workload\" (tiles_per_request, prompt_tokens, output_tokens)",
        )?;
        let efficiency = value["efficiency"].as_f64().unwrap_or(1.0);
        let mut profile = Self::from_rates(&rates, &workload, efficiency)?;
        profile.coupled_efficiency = value["coupled_efficiency"].as_f64().unwrap_or(1.0);
        if let Some(source) = value["source"].as_str() {
            profile.source = source.to_string();
        }
        Ok(profile)
    }

    /// The prediction for `vision` and `language` servers, with `request_rate` offered (or
    /// the pipeline saturated).
    pub fn predict(
        &self,
        vision: usize,
        language: usize,
        request_rate: Option<f64>,
    ) -> Result<Plan> {
        if vision == 0 || language == 0 {
            bail!("a deployment needs at least one vision and one language server");
        }
        let vision_pool = vision as f64 * self.vision_capacity;
        let language_pool = language as f64 * self.language_capacity;
        let capacity = vision_pool.min(language_pool) * self.efficiency;
        let offered = request_rate.unwrap_or(capacity);
        let throughput = offered.min(capacity);
        Ok(Plan {
            vision_servers: vision,
            language_servers: language,
            vision_pool_capacity: vision_pool,
            language_pool_capacity: language_pool,
            predicted_request_throughput: throughput,
            vision_utilisation: throughput / vision_pool,
            language_utilisation: throughput / language_pool,
            bottleneck: match vision_pool < language_pool {
                true => "vision".into(),
                false => "language".into(),
            },
            saturated: offered >= capacity,
        })
    }

    /// Requests/s of the coupled alternative on `units` GPUs (or cores): every unit runs both
    /// stages for its requests, so one request costs a unit `1/vision + 1/language` seconds,
    /// times the coupled efficiency.
    pub fn predict_coupled(&self, units: usize) -> f64 {
        self.coupled_efficiency * units as f64
            / (1.0 / self.vision_capacity + 1.0 / self.language_capacity)
    }

    /// Every split of `gpus` servers (at least one of each), best throughput first.
    pub fn splits(&self, gpus: usize) -> Result<Vec<Plan>> {
        ensure!(gpus >= 2, "a budget needs at least 2 GPUs (one per stage)");
        let mut plans = (1..gpus)
            .map(|v| self.predict(v, gpus - v, None))
            .collect::<Result<Vec<_>>>()?;
        plans.sort_by(|a, b| {
            b.predicted_request_throughput
                .total_cmp(&a.predicted_request_throughput)
        });
        Ok(plans)
    }
}

/// One deployment's prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Vision servers.
    pub vision_servers: usize,
    /// Language servers.
    pub language_servers: usize,
    /// Requests/s the vision pool sustains.
    pub vision_pool_capacity: f64,
    /// Requests/s the language pool sustains.
    pub language_pool_capacity: f64,
    /// Predicted requests/s.
    pub predicted_request_throughput: f64,
    /// Busy fraction of the vision pool.
    pub vision_utilisation: f64,
    /// Busy fraction of the language pool.
    pub language_utilisation: f64,
    /// The pool that limits throughput.
    pub bottleneck: String,
    /// Whether the offered load reaches the capacity.
    pub saturated: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn profile() -> Profile {
        Profile {
            vision_capacity: 2.0,
            language_capacity: 3.0,
            efficiency: 0.9,
            coupled_efficiency: 1.0,
            source: "test".into(),
        }
    }

    #[test]
    fn the_slowest_pool_bounds_throughput() {
        let plan = profile().predict(1, 1, None).unwrap();
        assert_eq!(plan.bottleneck, "vision");
        assert!((plan.predicted_request_throughput - 1.8).abs() < 1e-9);
        let plan = profile().predict(2, 1, None).unwrap();
        assert_eq!(plan.bottleneck, "language");
        assert!((plan.predicted_request_throughput - 2.7).abs() < 1e-9);
        let light = profile().predict(2, 1, Some(1.0)).unwrap();
        assert!(!light.saturated);
        assert!((light.language_utilisation - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_best_split_balances_the_pools() {
        // 5 GPUs: 3 vision (6 req/s) + 2 language (6 req/s) beats every other split.
        let best = &profile().splits(5).unwrap()[0];
        assert_eq!((best.vision_servers, best.language_servers), (3, 2));
        assert!(profile().splits(1).is_err());
    }

    #[test]
    fn coupled_units_pay_for_both_stages() {
        // 1/2 + 1/3 s per request on each unit.
        assert!((profile().predict_coupled(2) - 2.0 / (0.5 + 1.0 / 3.0)).abs() < 1e-9);
        let slower = Profile {
            coupled_efficiency: 0.5,
            ..profile()
        };
        assert!((slower.predict_coupled(2) - 1.0 / (0.5 + 1.0 / 3.0)).abs() < 1e-9);
    }

    #[test]
    fn a_compare_report_gives_both_efficiencies() {
        let report = serde_json::json!({
            "vision_alone_request_throughput": 2.0,
            "language_alone_request_throughput": 3.0,
            "pipeline_efficiency": 0.95,
            "coupled_request_throughput": 1.2,
        });
        let p = Profile::from_json(&report).unwrap();
        assert!((p.efficiency - 0.95).abs() < 1e-12);
        // Two units would serve 2 / (1/2 + 1/3) = 2.4 requests/s; the run achieved 1.2.
        assert!((p.coupled_efficiency - 0.5).abs() < 1e-9);
        assert!((p.predict_coupled(2) - 1.2).abs() < 1e-9);
    }

    #[test]
    fn unit_rates_give_per_request_capacities() {
        let rates = UnitRates {
            vision_tiles_per_s: 480.0,
            prefill_tokens_per_s: 36_000.0,
            decode_steps_per_s: 80.0,
            decode_batch: 32.0,
        };
        let workload = Workload {
            tiles_per_request: 7.0,
            prompt_tokens: 1900.0,
            output_tokens: 256.0,
        };
        let p = Profile::from_rates(&rates, &workload, 1.0).unwrap();
        assert!((p.vision_capacity - 480.0 / 7.0).abs() < 1e-9);
        let seconds = 1900.0 / 36_000.0 + 256.0 / (80.0 * 32.0);
        assert!((p.language_capacity - 1.0 / seconds).abs() < 1e-9);
        let json = serde_json::json!({"rates": rates, "workload": workload, "efficiency": 0.95});
        let read = Profile::from_json(&json).unwrap();
        assert!((read.efficiency - 0.95).abs() < 1e-12);
    }
}
