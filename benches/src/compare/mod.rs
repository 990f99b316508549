//! `dvd bench compare`: the same image workload against the coupled baseline (`dvd up
//! --coupled`: vision, language and gateway in one process on the same cores) and against DvD
//! (`dvd up` with the vision and language servers pinned to cores of their own, standing in
//! for separate GPUs). For each it measures request throughput and the TTFT of text-only
//! probes with and without the image load (interference). For DvD it also measures each stage
//! alone on its own cores ([`vision_alone`], [`language_alone`]) and reports the **pipeline
//! efficiency**: achieved throughput / the capacity of the slowest stage.
//!
//! [`deployment`]: starting and stopping `dvd up`; [`client_cores`]: where the load generator
//! runs.

pub mod client_cores;
pub mod deployment;
pub mod language_alone;
pub mod validation;
pub mod vision_alone;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use dvd_language_server::engine::SchedulerConfig;
use dvd_proto::vision::v1::{ImageInput, VideoOptions, image_input};
use serde::Serialize;
use serde_json::Value;

use crate::serve::arrivals::Arrivals;
use crate::serve::client::Endpoint;
use crate::serve::dataset::{self, Kind, ProbeMix, RequestSource, RequestSpec, Synthetic};
use crate::serve::report::{Outcome, ServeReport};
use crate::serve::token_prompts::TokenPrompts;
use crate::serve::{Api, Probes, RunLength, ServeBench};
use crate::stats::{bootstrap_ci95, mean, median, percentile};
use client_cores::ClientRuntime;
use deployment::Deployment;

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareBench {
    /// The `dvd` executable that starts the deployments.
    pub exe: PathBuf,
    /// Model directory or hub id.
    pub model: String,
    /// How long each loaded run sends image requests: a count, or seconds (steady state).
    pub length: RunLength,
    /// Most image requests in flight (`None`: unbounded); with an infinite rate, a closed loop.
    pub max_concurrency: Option<usize>,
    /// Image sides, used in turn.
    pub sizes: Vec<u32>,
    /// Images per request.
    pub images_per_request: usize,
    /// With N > 0, each request carries a fresh clip sampled at N frames instead of pictures.
    pub video_frames: u32,
    /// The question asked with the images.
    pub prompt: String,
    /// Tokens each image request generates.
    pub max_tokens: u32,
    /// Image requests per second (`None`: all at once, saturating the deployment).
    pub request_rate: Option<f64>,
    /// Text-only probes per second during the loaded runs.
    pub probe_rate: f64,
    /// Probes in each unloaded run, sent back to back.
    pub probe_requests: usize,
    /// Fewest and most prompt tokens of a probe's random prompt (the model's tokenizer counts).
    pub probe_tokens: (usize, usize),
    /// One fixed question for every probe instead (`None`: the random mix).
    pub probe_prompt: Option<String>,
    /// Tokens each probe generates.
    pub probe_max_tokens: u32,
    /// Cores of the DvD vision servers, language servers and gateway.
    pub vision_cpus: String,
    /// See `vision_cpus`.
    pub language_cpus: String,
    /// See `vision_cpus`.
    pub gateway_cpus: String,
    /// The language engine's step budget in both deployments (`dvd up --max-step-tokens`).
    pub max_step_tokens: usize,
    /// Cap on the step tokens of long prompts in both deployments (`dvd up
    /// --long-prefill-tokens`).
    pub long_prefill_tokens: Option<usize>,
    /// Cores of this process's load generator and feature listener (`None`: any).
    pub client_cpus: Option<Vec<usize>>,
    /// Seed of the images and arrivals (round `r` uses `seed + r`).
    pub seed: u64,
    /// Times each measurement runs; the report gives medians.
    pub rounds: usize,
    /// Splits (vision, language servers) to predict from a 1:1 fit and measure, each server
    /// capped at `split_unit_cores` (empty: none).
    pub validate_splits: Vec<(usize, usize)>,
    /// CPU time of each server in the validation runs, in cores.
    pub split_unit_cores: f64,
    /// Limit of one request.
    pub timeout: Duration,
}

/// `dvd bench compare`'s defaults: image requests of one 448-px picture (the serve benchmark's
/// synthetic request) generating 16 tokens, 16 in flight for 60 s (a closed loop in steady
/// state), 2 probes/s of 20 to 200 random words generating 4 tokens (100 alone, back to back:
/// enough for a p99), vision on core 0 and language and gateway on core 1, the engine's default step budget,
/// seed 0, one round, the serve benchmark's request limit; `exe` and `model` are empty (set
/// them).
impl Default for CompareBench {
    fn default() -> Self {
        let synthetic = Synthetic::default();
        Self {
            exe: PathBuf::new(),
            model: String::new(),
            length: RunLength::Seconds(60.0),
            max_concurrency: Some(16),
            sizes: synthetic.sizes,
            images_per_request: synthetic.images_per_request,
            video_frames: synthetic.video_frames,
            prompt: synthetic.prompt,
            max_tokens: 16,
            request_rate: None,
            probe_rate: 2.0,
            probe_requests: Probes::P99_SAMPLES,
            probe_tokens: Probes::DEFAULT_TOKENS,
            probe_prompt: None,
            probe_max_tokens: 4,
            vision_cpus: "0".into(),
            language_cpus: "1".into(),
            gateway_cpus: "1".into(),
            max_step_tokens: SchedulerConfig::default().max_step_tokens,
            long_prefill_tokens: None,
            client_cpus: None,
            seed: 0,
            rounds: 1,
            validate_splits: Vec::new(),
            split_unit_cores: 0.25,
            timeout: ServeBench::DEFAULT_TIMEOUT,
        }
    }
}

/// p99 TTFT of the probes, ms, and how many probes stand behind each (a p99 of fewer than
/// 100 is their maximum, and the table says so).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProbeTtft {
    /// Without image load.
    pub unloaded_p99_ms: f64,
    /// Beside the image load.
    pub loaded_p99_ms: f64,
    /// Probes answered without image load.
    pub unloaded_samples: usize,
    /// Probes answered beside the image load.
    pub loaded_samples: usize,
}

impl ProbeTtft {
    /// loaded p99 / unloaded p99.
    pub fn inflation(&self) -> f64 {
        self.loaded_p99_ms / self.unloaded_p99_ms.max(f64::MIN_POSITIVE)
    }

    /// "p99" when both runs have the samples for one, else "max of N / M".
    fn label(&self) -> String {
        match self.unloaded_samples.min(self.loaded_samples) >= Probes::P99_SAMPLES {
            true => "p99".into(),
            false => format!("max of {} / {}", self.unloaded_samples, self.loaded_samples),
        }
    }
}

/// 95% bootstrap confidence intervals of the headline ratios (see [`CompareBench::run`]).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Intervals {
    /// Of `dvd_speedup`: throughput windows of the loaded runs, resampled.
    pub dvd_speedup: Option<(f64, f64)>,
    /// Of `probe_ttft_p99_inflation_dvd`: the probe TTFTs, resampled.
    pub probe_ttft_p99_inflation_dvd: Option<(f64, f64)>,
    /// Of `probe_ttft_p99_inflation_coupled`.
    pub probe_ttft_p99_inflation_coupled: Option<(f64, f64)>,
}

/// The comparison (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// Rounds each figure is the median of.
    pub rounds: usize,
    /// The headline figures of every round, for their spread.
    pub each_round: Vec<RoundFigures>,
    /// Image requests per second, coupled (median over rounds, like every figure here).
    pub coupled_request_throughput: f64,
    /// Image requests per second, DvD.
    pub dvd_request_throughput: f64,
    /// DvD / coupled.
    pub dvd_speedup: f64,
    /// 95% confidence intervals of the ratios.
    pub ci95: Intervals,
    /// Image requests turned away at the door (HTTP 429), over every loaded run.
    pub rejected_429: usize,
    /// Image requests refused by a full pool (HTTP 503), over every loaded run.
    pub rejected_overload: usize,
    /// DvD throughput / min(vision alone, language alone).
    pub pipeline_efficiency: f64,
    /// Probe p99 TTFT loaded / unloaded, DvD.
    pub probe_ttft_p99_inflation_dvd: f64,
    /// Probe p99 TTFT loaded / unloaded, coupled.
    pub probe_ttft_p99_inflation_coupled: f64,
    /// The vision stage alone on its cores, requests/s.
    pub vision_alone_request_throughput: f64,
    /// The language stage alone on its cores (text prompts of the same length), requests/s.
    pub language_alone_request_throughput: f64,
    /// Which stage limits DvD: "vision" or "language".
    pub bottleneck: String,
    /// Prompt tokens of one image request (image tokens included).
    pub image_request_prompt_tokens: u64,
    /// Image tokens of one image request.
    pub image_request_image_tokens: u64,
    /// Mean prompt tokens of the language-alone text requests.
    pub text_request_prompt_tokens: f64,
    /// Probe TTFTs, DvD.
    pub probes_dvd: ProbeTtft,
    /// Probe TTFTs, coupled.
    pub probes_coupled: ProbeTtft,
    /// The DvD loaded run in full.
    pub dvd: ServeReport,
    /// The coupled loaded run in full.
    pub coupled: ServeReport,
    /// The language-alone run in full.
    pub language_alone: ServeReport,
    /// The fit behind `plan_validation` (`--validate-splits`).
    pub plan_fit: Option<validation::PlanFit>,
    /// The planner tested on splits it was not fitted on (`--validate-splits`; else empty).
    pub plan_validation: Vec<validation::SplitCheck>,
}

/// The headline figures of one round.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RoundFigures {
    /// Image requests per second, DvD.
    pub dvd_request_throughput: f64,
    /// Image requests per second, coupled.
    pub coupled_request_throughput: f64,
    /// The vision stage alone, requests/s.
    pub vision_alone_request_throughput: f64,
    /// The language stage alone, requests/s.
    pub language_alone_request_throughput: f64,
    /// This round's DvD throughput / its slowest stage alone.
    pub pipeline_efficiency: f64,
    /// Probe p99 TTFT loaded / unloaded, DvD.
    pub probe_ttft_p99_inflation_dvd: f64,
    /// Probe p99 TTFT loaded / unloaded, coupled.
    pub probe_ttft_p99_inflation_coupled: f64,
}

/// Results of one deployment's runs.
struct Measured {
    loaded: ServeReport,
    probes: ProbeTtft,
    /// Completions per second in each of [`WINDOWS`] equal spans of the loaded run.
    windows: Vec<f64>,
    /// Probe TTFTs (ms) without and beside the load.
    unloaded_ttfts: Vec<f64>,
    loaded_ttfts: Vec<f64>,
}

/// Spans a loaded run is cut into for the throughput's confidence interval (batch means).
const WINDOWS: usize = 10;
/// Bootstrap resamples behind each interval.
const RESAMPLES: usize = 2000;

impl Measured {
    /// Over rounds: the loaded run of median throughput, the median of each probe p99, and
    /// every round's windows and probe samples pooled.
    fn median(rounds: Vec<Measured>) -> Measured {
        let probes = ProbeTtft {
            unloaded_p99_ms: median(
                &rounds
                    .iter()
                    .map(|m| m.probes.unloaded_p99_ms)
                    .collect::<Vec<_>>(),
            ),
            loaded_p99_ms: median(
                &rounds
                    .iter()
                    .map(|m| m.probes.loaded_p99_ms)
                    .collect::<Vec<_>>(),
            ),
            unloaded_samples: rounds
                .iter()
                .map(|m| m.probes.unloaded_samples)
                .min()
                .unwrap_or(0),
            loaded_samples: rounds
                .iter()
                .map(|m| m.probes.loaded_samples)
                .min()
                .unwrap_or(0),
        };
        let pooled = |f: fn(&Measured) -> &Vec<f64>| -> Vec<f64> {
            rounds.iter().flat_map(|m| f(m).iter().copied()).collect()
        };
        let windows = pooled(|m| &m.windows);
        let unloaded_ttfts = pooled(|m| &m.unloaded_ttfts);
        let loaded_ttfts = pooled(|m| &m.loaded_ttfts);
        Measured {
            loaded: median_by_throughput(rounds.into_iter().map(|m| m.loaded)),
            probes,
            windows,
            unloaded_ttfts,
            loaded_ttfts,
        }
    }

    /// The interval of loaded p99 / unloaded p99 of the probes.
    fn inflation_ci(&self, seed: u64) -> Option<(f64, f64)> {
        let ratio = |loaded: &[f64], unloaded: &[f64]| {
            percentile(loaded, 99.0) / percentile(unloaded, 99.0)
        };
        bootstrap_ci95(
            &self.loaded_ttfts,
            &self.unloaded_ttfts,
            ratio,
            RESAMPLES,
            seed,
        )
    }
}

/// Completions per second of the load requests in each of `WINDOWS` equal spans of a run.
fn throughput_windows(outcomes: &[Outcome], duration: f64) -> Vec<f64> {
    let span = duration / WINDOWS as f64;
    let mut counts = vec![0usize; WINDOWS];
    for o in outcomes.iter().filter(|o| o.kind == Kind::Load) {
        if let Ok(t) = &o.result {
            let at = ((o.sent_at + t.e2el) / span) as usize;
            counts[at.min(WINDOWS - 1)] += 1;
        }
    }
    counts
        .into_iter()
        .map(|c| c as f64 / span.max(f64::MIN_POSITIVE))
        .collect()
}

/// The TTFTs (ms) of the answered probes.
fn probe_ttfts(outcomes: &[Outcome]) -> Vec<f64> {
    outcomes
        .iter()
        .filter(|o| o.kind == Kind::Probe)
        .filter_map(|o| o.result.as_ref().ok()?.ttft)
        .map(|s| s * 1e3)
        .collect()
}

/// The report of median request throughput (the lower middle one for an even count).
fn median_by_throughput(reports: impl Iterator<Item = ServeReport>) -> ServeReport {
    let mut reports: Vec<ServeReport> = reports.collect();
    reports.sort_by(|a, b| a.request_throughput.total_cmp(&b.request_throughput));
    let middle = reports.len().saturating_sub(1) / 2;
    reports.swap_remove(middle)
}

impl CompareBench {
    /// Runs everything (DvD first, then coupled), printing progress through `progress`.
    ///
    /// Each deployment: probes alone, then the image load with probes beside it; DvD's stages
    /// alone on as many requests as its loaded run answered. The confidence interval of the
    /// speedup resamples the loaded runs' throughput in [`WINDOWS`] equal spans (batch means;
    /// a closed-loop timed run is stationary, so its spans are comparable); those of the probe
    /// inflations resample the probes' TTFTs.
    pub fn run(&self, mut progress: impl FnMut(&str)) -> Result<CompareReport> {
        if self.length == RunLength::Requests(0) || self.probe_requests == 0 {
            bail!("--num-prompts and --probe-requests must be at least 1");
        }
        let runtime = ClientRuntime::new(self.client_cpus.as_deref())?;
        let rounds = self.rounds.max(1);

        progress("DvD: starting dvd up with pinned cores");
        let mut dvd_args = vec![
            "--vision-cpus".into(),
            self.vision_cpus.clone(),
            "--language-cpus".into(),
            self.language_cpus.clone(),
            "--gateway-cpus".into(),
            self.gateway_cpus.clone(),
        ];
        dvd_args.extend(self.engine_args());
        let dvd = Deployment::start(&self.exe, &self.model, &dvd_args)?;
        let (image_prompt_tokens, image_tokens) = runtime.block_on(self.warm_up(&dvd))??;
        let mut dvd_rounds = Vec::new();
        let mut vision_rounds = Vec::new();
        let mut language_rounds = Vec::new();
        for r in 0..rounds {
            let round = format!("DvD, round {} of {rounds}", r + 1);
            progress(&format!(
                "{round}: probes alone, then image load with probes"
            ));
            let measured = runtime.block_on(self.measure(&dvd, r))??;
            // The stages alone do the work the pipeline did.
            let answered = measured.loaded.completed.max(1);
            dvd_rounds.push(measured);
            let (vision, language) =
                self.stages_alone(&runtime, &dvd, answered, r, image_prompt_tokens, &mut |s| {
                    progress(&format!("{round}: {s}"))
                })?;
            vision_rounds.push(vision);
            language_rounds.push(language);
        }
        drop(dvd);

        progress("coupled: starting dvd up --coupled");
        let mut coupled_args = vec!["--coupled".to_string()];
        coupled_args.extend(self.engine_args());
        let coupled = Deployment::start(&self.exe, &self.model, &coupled_args)?;
        runtime.block_on(self.warm_up(&coupled))??;
        let mut coupled_rounds = Vec::new();
        for r in 0..rounds {
            progress(&format!(
                "coupled, round {} of {rounds}: probes alone, then image load with probes",
                r + 1
            ));
            coupled_rounds.push(runtime.block_on(self.measure(&coupled, r))??);
        }
        drop(coupled);

        let (plan_fit, plan_validation) = match self.validate_splits.is_empty() {
            true => (None, Vec::new()),
            false => {
                let (fit, splits) = validation::run(self, &runtime, &mut progress)?;
                (Some(fit), splits)
            }
        };

        let each_round = (0..rounds)
            .map(|r| {
                let dvd = &dvd_rounds[r];
                let coupled = &coupled_rounds[r];
                let language = language_rounds[r].0.request_throughput;
                RoundFigures {
                    dvd_request_throughput: dvd.loaded.request_throughput,
                    coupled_request_throughput: coupled.loaded.request_throughput,
                    vision_alone_request_throughput: vision_rounds[r],
                    language_alone_request_throughput: language,
                    pipeline_efficiency: dvd.loaded.request_throughput
                        / vision_rounds[r].min(language).max(f64::MIN_POSITIVE),
                    probe_ttft_p99_inflation_dvd: dvd.probes.inflation(),
                    probe_ttft_p99_inflation_coupled: coupled.probes.inflation(),
                }
            })
            .collect();
        let rejected = |f: fn(&ServeReport) -> usize| -> usize {
            dvd_rounds
                .iter()
                .chain(&coupled_rounds)
                .map(|m| f(&m.loaded))
                .sum()
        };
        let rejected_429 = rejected(|r| r.rejected_429);
        let rejected_overload = rejected(|r| r.rejected_overload);
        let dvd_measured = Measured::median(dvd_rounds);
        let coupled_measured = Measured::median(coupled_rounds);
        let vision_alone = median(&vision_rounds);
        let text_tokens = median(&language_rounds.iter().map(|(_, t)| *t).collect::<Vec<_>>());
        let language_alone = median_by_throughput(language_rounds.into_iter().map(|(r, _)| r));
        let slowest = vision_alone.min(language_alone.request_throughput);
        let dvd_thr = dvd_measured.loaded.request_throughput;
        let coupled_thr = coupled_measured.loaded.request_throughput;
        let ci95 = Intervals {
            dvd_speedup: bootstrap_ci95(
                &dvd_measured.windows,
                &coupled_measured.windows,
                |a, b| mean(a) / mean(b),
                RESAMPLES,
                self.seed,
            ),
            probe_ttft_p99_inflation_dvd: dvd_measured.inflation_ci(self.seed + 1),
            probe_ttft_p99_inflation_coupled: coupled_measured.inflation_ci(self.seed + 2),
        };
        Ok(CompareReport {
            rounds,
            each_round,
            coupled_request_throughput: coupled_thr,
            dvd_request_throughput: dvd_thr,
            dvd_speedup: dvd_thr / coupled_thr.max(f64::MIN_POSITIVE),
            ci95,
            rejected_429,
            rejected_overload,
            pipeline_efficiency: dvd_thr / slowest.max(f64::MIN_POSITIVE),
            probe_ttft_p99_inflation_dvd: dvd_measured.probes.inflation(),
            probe_ttft_p99_inflation_coupled: coupled_measured.probes.inflation(),
            vision_alone_request_throughput: vision_alone,
            language_alone_request_throughput: language_alone.request_throughput,
            bottleneck: match vision_alone < language_alone.request_throughput {
                true => "vision".into(),
                false => "language".into(),
            },
            image_request_prompt_tokens: image_prompt_tokens,
            image_request_image_tokens: image_tokens,
            text_request_prompt_tokens: text_tokens,
            probes_dvd: dvd_measured.probes,
            probes_coupled: coupled_measured.probes,
            dvd: dvd_measured.loaded,
            coupled: coupled_measured.loaded,
            language_alone,
            plan_fit,
            plan_validation,
        })
    }

    /// Each DvD stage alone on `requests` requests of round `round`: requests/s of the vision
    /// server (straight to its `Encode`), and the language stage's run with the mean prompt
    /// tokens of its text requests (as long as the image requests' `image_prompt_tokens`).
    pub(crate) fn stages_alone(
        &self,
        runtime: &ClientRuntime,
        deployment: &Deployment,
        requests: usize,
        round: usize,
        image_prompt_tokens: u64,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(f64, (ServeReport, f64))> {
        progress(&format!("the vision stage alone ({requests} requests)"));
        let vision = deployment
            .addresses
            .vision
            .first()
            .context("no vision server")?;
        let fresh = self
            .synthetic((self.seed + round as u64) ^ 0x5eed)
            .requests(requests)?
            .iter()
            .map(vision_inputs)
            .collect::<Result<Vec<_>>>()?;
        let concurrency = self.max_concurrency.unwrap_or(requests);
        let vision = runtime.block_on(vision_alone::throughput(vision, &fresh, concurrency))??;
        progress(&format!("the language stage alone ({requests} requests)"));
        let language = runtime.block_on(self.language_alone(
            deployment,
            image_prompt_tokens,
            requests,
            self.seed + round as u64,
        ))??;
        Ok((vision, language))
    }

    /// The language engine's options, the same in both deployments.
    pub(crate) fn engine_args(&self) -> Vec<String> {
        let mut args = vec![
            "--max-step-tokens".to_string(),
            self.max_step_tokens.to_string(),
        ];
        if let Some(n) = self.long_prefill_tokens {
            args.extend(["--long-prefill-tokens".to_string(), n.to_string()]);
        }
        args
    }

    fn synthetic(&self, seed: u64) -> Synthetic {
        Synthetic {
            sizes: self.sizes.clone(),
            images_per_request: self.images_per_request,
            prompt: self.prompt.clone(),
            max_tokens: self.max_tokens,
            seed,
            video_frames: self.video_frames,
        }
    }

    fn serve_bench(
        &self,
        deployment: &Deployment,
        requests: Arc<dyn RequestSource>,
        length: RunLength,
    ) -> Result<ServeBench> {
        Ok(ServeBench {
            endpoint: Endpoint::parse(&deployment.url())?,
            api: Api::OpenAi,
            model: None,
            requests,
            length,
            arrivals: Arrivals {
                rate: self.request_rate,
                seed: self.seed,
                ..Arrivals::default()
            },
            max_concurrency: self.max_concurrency,
            probes: None,
            timeout: self.timeout,
            slos: Vec::new(),
            percentiles: ServeBench::DEFAULT_PERCENTILES.to_vec(),
            progress: false,
            // Both sides are dvd: every request generates exactly its tokens.
            ignore_eos: true,
        })
    }

    /// Random prompts counted by the compared model's tokenizer.
    fn token_prompts(&self) -> Result<TokenPrompts> {
        TokenPrompts::from_model(&dvd_checkpoint::resolve_model_dir(&self.model)?)
    }

    /// Probes at `rate` (`None`: back to back), each of round `round` its own prompt.
    fn probes(
        &self,
        rate: Option<f64>,
        max_requests: Option<usize>,
        round: usize,
    ) -> Result<Probes> {
        // The loaded run's probes differ from the unloaded run's: no prefix cache hits.
        let requests =
            dataset::probes(self.probe_prompt.as_deref(), self.probe_max_tokens, || {
                Ok(ProbeMix {
                    tokens: self.probe_tokens,
                    prompts: self.token_prompts()?,
                    max_tokens: self.probe_max_tokens,
                    seed: (self.seed + round as u64) ^ if rate.is_some() { 0x10ad } else { 0x9b0b },
                })
            })?;
        Ok(Probes {
            rate,
            max_requests,
            requests,
        })
    }

    /// One image request (its own image) and one probe, so both paths are warm; returns the
    /// image request's prompt and image tokens.
    pub(crate) async fn warm_up(&self, deployment: &Deployment) -> Result<(u64, u64)> {
        let mut warm = self.synthetic(self.seed ^ 0xa11).requests(1)?;
        // The text request goes as load too: a run waits for its load requests only.
        warm.push(RequestSpec {
            kind: Kind::Load,
            ..self.probes(None, None, usize::MAX)?.requests.request(0)?
        });
        let n = warm.len();
        let (_, outcomes) = self
            .serve_bench(deployment, Arc::new(warm), RunLength::Requests(n))?
            .run()
            .await?;
        let image = outcomes
            .iter()
            .find(|o| o.images > 0)
            .context("the warm-up image request")?;
        match &image.result {
            Ok(t) => Ok((t.prompt_tokens, t.image_tokens)),
            Err(e) => bail!("warm-up image request failed: {e}"),
        }
    }

    /// Round `round`: probes alone, then the image load with probes beside it.
    async fn measure(&self, deployment: &Deployment, round: usize) -> Result<Measured> {
        let mut alone =
            self.serve_bench(deployment, Arc::new(Vec::new()), RunLength::Requests(0))?;
        // Alone: back to back, each probe on an idle deployment.
        alone.probes = Some(self.probes(None, Some(self.probe_requests), round)?);
        let (unloaded, unloaded_outcomes) = alone.run().await?;
        let probes = self.probes(Some(self.probe_rate), None, round)?;
        let (loaded, outcomes) = self.loaded(deployment, round, Some(probes)).await?;
        let p99 = |r: &ServeReport| -> Result<(f64, usize)> {
            let probes = r.probes.as_ref().context("no probes ran")?;
            match probes.completed {
                0 => bail!(
                    "no probe answered{}: raise --probe-request-rate or the run's length",
                    match r.run.num_prompts {
                        0 => String::new(),
                        _ => format!(" during the image load ({:.1} s)", r.run.duration),
                    }
                ),
                n => Ok((
                    probes.latencies.get("p99_ttft_ms").copied().unwrap_or(0.0),
                    n,
                )),
            }
        };
        let (unloaded_p99_ms, unloaded_samples) = p99(&unloaded)?;
        let (loaded_p99_ms, loaded_samples) = p99(&loaded)?;
        Ok(Measured {
            probes: ProbeTtft {
                unloaded_p99_ms,
                loaded_p99_ms,
                unloaded_samples,
                loaded_samples,
            },
            windows: throughput_windows(&outcomes, loaded.run.duration),
            unloaded_ttfts: probe_ttfts(&unloaded_outcomes),
            loaded_ttfts: probe_ttfts(&outcomes),
            loaded,
        })
    }

    /// The image load of round `round` (pictures of the round's own), with `probes` beside it.
    /// Overload answers (429, 503) are counted, not fatal; any other failure is.
    pub(crate) async fn loaded(
        &self,
        deployment: &Deployment,
        round: usize,
        probes: Option<Probes>,
    ) -> Result<(ServeReport, Vec<Outcome>)> {
        let load = Arc::new(self.synthetic(self.seed + round as u64));
        let mut bench = self.serve_bench(deployment, load, self.length)?;
        bench.probes = probes;
        let (report, outcomes) = bench.run().await?;
        if report.failed > 0 {
            bail!(
                "{} of {} image requests failed: {:?}",
                report.failed,
                report.run.num_prompts,
                report.errors
            );
        }
        Ok((report, outcomes))
    }

    /// `count` text requests of `target` prompt tokens, sent the way the load is; `seed`
    /// picks their words.
    async fn language_alone(
        &self,
        deployment: &Deployment,
        target: u64,
        count: usize,
        seed: u64,
    ) -> Result<(ServeReport, f64)> {
        // One request measures the chat template's tokens around a prompt.
        let prompts = self.token_prompts()?;
        let calibration = language_alone::texts(&prompts, 1, 50, self.seed ^ 1)?;
        let (report, _) = self
            .serve_bench(
                deployment,
                Arc::new(language_alone::requests(calibration.clone(), 1)),
                RunLength::Requests(1),
            )?
            .run()
            .await?;
        if report.completed != 1 {
            bail!("calibration request failed: {:?}", report.errors);
        }
        let overhead =
            language_alone::overhead(&prompts, &calibration[0], report.total_input_tokens)?;
        let tokens = usize::try_from(target.saturating_sub(overhead).max(1))?;
        let prompts = language_alone::texts(&prompts, count, tokens, seed ^ 0x1a46)?;
        let requests = language_alone::requests(prompts, self.max_tokens);
        let (report, _) = self
            .serve_bench(deployment, Arc::new(requests), RunLength::Requests(count))?
            .run()
            .await?;
        if report.failed > 0 {
            bail!("language-alone requests failed: {:?}", report.errors);
        }
        let mean_tokens = report.total_input_tokens as f64 / report.completed.max(1) as f64;
        Ok((report, mean_tokens))
    }
}

/// The vision inputs of a request whose parts carry `data:` URLs: each image's file, each
/// video's file with the frames it asks for.
fn vision_inputs(spec: &RequestSpec) -> Result<Vec<ImageInput>> {
    let Value::Array(parts) = &spec.content else {
        return Ok(Vec::new());
    };
    let data = |url: &str| -> Result<bytes::Bytes> {
        let (_, data) = url
            .split_once(";base64,")
            .context("not a base64 data URL")?;
        Ok(base64::engine::general_purpose::STANDARD
            .decode(data)?
            .into())
    };
    let mut inputs = Vec::new();
    for part in parts {
        let (url, video) = if let Some(url) = part["image_url"]["url"].as_str() {
            (url, None)
        } else if let Some(url) = part["video_url"]["url"].as_str() {
            let field = |name: &str| part["video_url"][name].as_u64().unwrap_or(0) as u32;
            let options = VideoOptions {
                num_frames: field("num_frames"),
                max_tiles: field("max_tiles"),
            };
            (url, Some(options))
        } else {
            continue;
        };
        inputs.push(ImageInput {
            source: Some(image_input::Source::Data(data(url)?)),
            content_hash: None,
            video,
        });
    }
    Ok(inputs)
}

impl CompareReport {
    /// A Markdown summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.rounds > 1 {
            let efficiencies: Vec<String> = self
                .each_round
                .iter()
                .map(|r| format!("{:.2}", r.pipeline_efficiency))
                .collect();
            out.push_str(&format!(
                "Medians of {} rounds (pipeline efficiency by round: {}).\n\n",
                self.rounds,
                efficiencies.join(", ")
            ));
        }
        out.push_str(
            "| | coupled (one process, shared cores) | DvD (pinned cores) |\n|---|---|---|\n",
        );
        out.push_str(&format!(
            "| image requests/s | {:.3} | {:.3} ({:.2}x{}) |\n",
            self.coupled_request_throughput,
            self.dvd_request_throughput,
            self.dvd_speedup,
            interval(self.ci95.dvd_speedup)
        ));
        let probes = |p: &ProbeTtft, inflation: f64, ci: Option<(f64, f64)>| {
            format!(
                "{}: {:.0} / {:.0} ({:.2}x{})",
                p.label(),
                p.unloaded_p99_ms,
                p.loaded_p99_ms,
                inflation,
                interval(ci)
            )
        };
        out.push_str(&format!(
            "| probe TTFT unloaded / loaded (ms) | {} | {} |\n",
            probes(
                &self.probes_coupled,
                self.probe_ttft_p99_inflation_coupled,
                self.ci95.probe_ttft_p99_inflation_coupled
            ),
            probes(
                &self.probes_dvd,
                self.probe_ttft_p99_inflation_dvd,
                self.ci95.probe_ttft_p99_inflation_dvd
            ),
        ));
        if self.rejected_429 + self.rejected_overload > 0 {
            out.push_str(&format!(
                "\nRejected for load: {} with 429, {} with 503 (counted, not failures).\n",
                self.rejected_429, self.rejected_overload
            ));
        }
        out.push_str(&format!(
            "\nDvD stages alone: vision {:.3} req/s, language {:.3} req/s ({:.0}-token text prompts \
             for {}-token image prompts); bottleneck {}; pipeline efficiency {:.2}\n",
            self.vision_alone_request_throughput,
            self.language_alone_request_throughput,
            self.text_request_prompt_tokens,
            self.image_request_prompt_tokens,
            self.bottleneck,
            self.pipeline_efficiency
        ));
        if let Some(v) = &self.plan_fit {
            out.push_str(&format!(
                "\nThe planner, fitted on 1V:1L with {} cores per server (vision {:.3} req/s, \
                 language {:.3} req/s, efficiency {:.2}; measured {:.3} req/s), on splits it did \
                 not see:\n\n| split | predicted req/s | measured req/s | error |\n|---|---|---|---|\n",
                v.unit_cores,
                v.fit_vision_capacity,
                v.fit_language_capacity,
                v.fit_efficiency,
                v.fit_request_throughput
            ));
            for split in &self.plan_validation {
                out.push_str(&format!(
                    "| {} | {:.3} | {:.3} | {:.1}% |\n",
                    split.split,
                    split.predicted_rps,
                    split.measured_rps,
                    100.0 * split.error
                ));
            }
        }
        out
    }
}

/// `, 95% CI lo-hi` when there is an interval.
fn interval(ci: Option<(f64, f64)>) -> String {
    ci.map_or_else(String::new, |(lo, hi)| format!(", 95% CI {lo:.2}-{hi:.2}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::serve::client::Timing;

    #[test]
    fn throughput_windows_count_completions_where_they_happened() {
        let done = |sent_at: f64, e2el: f64| Outcome {
            kind: Kind::Load,
            sent_at,
            images: 1,
            result: Ok(Timing {
                e2el,
                ..Timing::default()
            }),
        };
        // A 10 s run: two completions in the first second, one in the last, a probe ignored.
        let mut outcomes = vec![
            done(0.0, 0.5),
            done(0.2, 0.5),
            done(9.0, 0.9),
            done(9.0, 5.0),
        ];
        outcomes.push(Outcome {
            kind: Kind::Probe,
            ..done(1.0, 1.0)
        });
        let windows = throughput_windows(&outcomes, 10.0);
        assert_eq!(windows.len(), WINDOWS);
        assert_eq!(windows[0], 2.0);
        // Finishing after the run's end (a drain) counts in the last span.
        assert_eq!(windows[9], 2.0);
        assert_eq!(windows.iter().sum::<f64>(), 4.0);
    }

    #[test]
    fn a_probe_p99_from_too_few_samples_is_labelled_a_maximum() {
        let mut p = ProbeTtft {
            unloaded_p99_ms: 10.0,
            loaded_p99_ms: 30.0,
            unloaded_samples: 100,
            loaded_samples: 120,
        };
        assert_eq!(p.label(), "p99");
        assert_eq!(p.inflation(), 3.0);
        p.loaded_samples = 12;
        assert_eq!(p.label(), "max of 100 / 12");
    }
}
