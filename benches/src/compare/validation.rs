//! The planner tested on what it did not see (`dvd bench compare --validate-splits`): fit
//! [`Profile`] on one vision and one language server, then predict and measure other splits.
//! Every server gets the same CPU share (`dvd up --vision-cpu-quota/--language-cpu-quota`,
//! a cgroup each), so on a 2-core machine 2V:1L, 1V:2L and 2V:2L run in fractional units,
//! the stand-in for GPUs of one kind.
//!
//! Every deployment runs a closed loop of [`IN_FLIGHT_PER_SERVER`] requests per server.
//!
//! The fit: the 1:1 deployment's vision stage alone and language stage alone give each
//! server's capacity, and its pipelined throughput over the slower of them its efficiency, as
//! `dvd bench plan --profile` reads a compare report. The check: each split's measured
//! throughput against [`Profile::predict`] for it, `error` = |predicted - measured| / measured.

use anyhow::Result;
use serde::Serialize;

use super::client_cores::ClientRuntime;
use super::deployment::Deployment;
use super::{CompareBench, median};
use crate::plan::Profile;

/// The fit the predictions come from.
#[derive(Debug, Clone, Serialize)]
pub struct PlanFit {
    /// CPU time of each server, in cores.
    pub unit_cores: f64,
    /// Requests/s one vision server of one unit sustains alone (the fit).
    pub fit_vision_capacity: f64,
    /// Requests/s one language server of one unit sustains alone (the fit).
    pub fit_language_capacity: f64,
    /// The 1:1 pipeline's throughput over its slower stage (the fit).
    pub fit_efficiency: f64,
    /// The 1:1 pipeline's measured requests/s.
    pub fit_request_throughput: f64,
    /// The largest `error` of the splits checked.
    pub max_error: f64,
}

/// One split's prediction against its measurement.
#[derive(Debug, Clone, Serialize)]
pub struct SplitCheck {
    /// `2V:1L`: vision and language servers.
    pub split: String,
    /// From the 1:1 fit.
    pub predicted_rps: f64,
    /// Measured on the split, median over rounds.
    pub measured_rps: f64,
    /// |predicted - measured| / measured.
    pub error: f64,
}

/// Requests in flight per server of a validation run (a closed loop): enough to keep every
/// server of the slower pool busy, few enough that a fractional-core vision server's queue does
/// not outlast the language server's wait for features.
pub const IN_FLIGHT_PER_SERVER: usize = 2;

/// Fits on 1V:1L and checks every split of `bench.validate_splits`; each deployment runs the
/// load with [`IN_FLIGHT_PER_SERVER`] requests in flight per server.
pub fn run(
    bench: &CompareBench,
    runtime: &ClientRuntime,
    progress: &mut dyn FnMut(&str),
) -> Result<(PlanFit, Vec<SplitCheck>)> {
    let sized = |vision: usize, language: usize| CompareBench {
        max_concurrency: Some(IN_FLIGHT_PER_SERVER * (vision + language)),
        ..bench.clone()
    };
    let unit = bench.split_unit_cores;
    progress(&format!(
        "plan validation: fitting on 1V:1L, each server capped at {unit} cores"
    ));
    let fit = start(bench, 1, 1)?;
    let bench_1_1 = sized(1, 1);
    let bench = &bench_1_1;
    let (image_prompt_tokens, _) = runtime.block_on(bench.warm_up(&fit))??;
    let (mut vision, mut language, mut pipeline) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..bench.rounds.max(1) {
        progress(&format!(
            "plan validation, 1V:1L round {}: image load",
            round + 1
        ));
        let (loaded, _) = runtime.block_on(bench.loaded(&fit, round, None))??;
        let answered = loaded.completed.max(1);
        pipeline.push(loaded.request_throughput);
        let (v, (l, _)) = bench.stages_alone(
            runtime,
            &fit,
            answered,
            round,
            image_prompt_tokens,
            progress,
        )?;
        vision.push(v);
        language.push(l.request_throughput);
    }
    drop(fit);
    let (vision, language, pipeline) = (median(&vision), median(&language), median(&pipeline));
    let profile = Profile {
        vision_capacity: vision,
        language_capacity: language,
        efficiency: pipeline / vision.min(language).max(f64::MIN_POSITIVE),
        coupled_efficiency: 1.0,
        source: "dvd bench compare --validate-splits (1V:1L)".into(),
    };
    let mut splits = Vec::new();
    for &(v, l) in &bench.validate_splits {
        let bench = &sized(v, l);
        let split = format!("{v}V:{l}L");
        let predicted = profile.predict(v, l, None)?.predicted_request_throughput;
        let deployment = start(bench, v, l)?;
        runtime.block_on(bench.warm_up(&deployment))??;
        let mut measured = Vec::new();
        for round in 0..bench.rounds.max(1) {
            progress(&format!(
                "plan validation, {split} round {}: image load (predicted {predicted:.3} req/s)",
                round + 1
            ));
            let (loaded, _) = runtime.block_on(bench.loaded(&deployment, round, None))??;
            measured.push(loaded.request_throughput);
        }
        let measured = median(&measured);
        splits.push(SplitCheck {
            split,
            predicted_rps: predicted,
            measured_rps: measured,
            error: error(predicted, measured),
        });
    }
    let fit = PlanFit {
        unit_cores: unit,
        fit_vision_capacity: vision,
        fit_language_capacity: language,
        fit_efficiency: profile.efficiency,
        fit_request_throughput: pipeline,
        max_error: splits.iter().map(|s| s.error).fold(0.0, f64::max),
    };
    Ok((fit, splits))
}

/// `dvd up` with `vision` and `language` servers of one unit each.
fn start(bench: &CompareBench, vision: usize, language: usize) -> Result<Deployment> {
    let unit = bench.split_unit_cores.to_string();
    let mut args: Vec<String> = vec![
        "--vision".into(),
        vision.to_string(),
        "--language".into(),
        language.to_string(),
        "--vision-cpu-quota".into(),
        unit.clone(),
        "--language-cpu-quota".into(),
        unit,
    ];
    args.extend(bench.engine_args());
    Deployment::start(&bench.exe, &bench.model, &args)
}

/// |predicted - measured| / measured (infinite when nothing was measured).
fn error(predicted: f64, measured: f64) -> f64 {
    match measured > 0.0 {
        true => (predicted - measured).abs() / measured,
        false => f64::INFINITY,
    }
}

/// Parses `2V:1L,1V:2L` into (vision, language) server counts.
pub fn parse_splits(text: &str) -> Result<Vec<(usize, usize)>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let parse = || -> Option<(usize, usize)> {
                let (v, l) = s.split_once(':')?;
                let v = v.trim().strip_suffix(['V', 'v'])?.parse().ok()?;
                let l = l.trim().strip_suffix(['L', 'l'])?.parse().ok()?;
                (v > 0 && l > 0).then_some((v, l))
            };
            parse().ok_or_else(|| {
                anyhow::anyhow!("split {s:?}: expected NV:ML with N and M at least 1 (e.g. 2V:1L)")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn splits_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_splits("2V:1L, 1v:2l,2V:2L").unwrap(),
            vec![(2, 1), (1, 2), (2, 2)]
        );
        for bad in ["2:1", "0V:1L", "2V", "xV:1L", "2L:1V"] {
            assert!(parse_splits(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_are_relative_to_the_measurement() {
        assert!((error(1.1, 1.0) - 0.1).abs() < 1e-12);
        assert!((error(0.9, 1.0) - 0.1).abs() < 1e-12);
        assert!(error(1.0, 0.0).is_infinite());
    }
}
