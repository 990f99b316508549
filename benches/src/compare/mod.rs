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
pub mod vision_alone;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use dvd_language_server::engine::SchedulerConfig;
use serde::Serialize;
use serde_json::Value;

use crate::serve::arrivals::Arrivals;
use crate::serve::client::Endpoint;
use crate::serve::dataset::{RequestSpec, Synthetic};
use crate::serve::report::ServeReport;
use crate::serve::{Api, Probes, ServeBench};
use client_cores::ClientRuntime;
use deployment::Deployment;

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareBench {
    /// The `dvd` executable that starts the deployments.
    pub exe: PathBuf,
    /// Model directory or hub id.
    pub model: String,
    /// Image requests in the loaded runs.
    pub requests: usize,
    /// Image sides, used in turn.
    pub sizes: Vec<u32>,
    /// Images per request.
    pub images_per_request: usize,
    /// The question asked with the images.
    pub prompt: String,
    /// Tokens each image request generates.
    pub max_tokens: u32,
    /// Image requests per second (`None`: all at once, saturating the deployment).
    pub request_rate: Option<f64>,
    /// Text-only probes per second during the loaded runs.
    pub probe_rate: f64,
    /// Probes in each unloaded run.
    pub probe_requests: usize,
    /// The probes' question.
    pub probe_prompt: String,
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
    /// Limit of one request.
    pub timeout: Duration,
}

/// `dvd bench compare`'s defaults: 24 requests at once of one 448-px picture (the serve
/// benchmark's synthetic request) generating 16 tokens, 2 probes/s (12 alone) of the serve
/// benchmark's probe generating 4 tokens, vision on core 0 and language and gateway on core 1,
/// the engine's default step budget, seed 0, one round, the serve benchmark's request limit;
/// `exe` and `model` are empty (set them).
impl Default for CompareBench {
    fn default() -> Self {
        let synthetic = Synthetic::default();
        Self {
            exe: PathBuf::new(),
            model: String::new(),
            requests: 24,
            sizes: synthetic.sizes,
            images_per_request: synthetic.images_per_request,
            prompt: synthetic.prompt,
            max_tokens: 16,
            request_rate: None,
            probe_rate: 2.0,
            probe_requests: 12,
            probe_prompt: Probes::DEFAULT_PROMPT.into(),
            probe_max_tokens: 4,
            vision_cpus: "0".into(),
            language_cpus: "1".into(),
            gateway_cpus: "1".into(),
            max_step_tokens: SchedulerConfig::default().max_step_tokens,
            long_prefill_tokens: None,
            client_cpus: None,
            seed: 0,
            rounds: 1,
            timeout: ServeBench::DEFAULT_TIMEOUT,
        }
    }
}

/// p99 TTFT of the probes, ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProbeTtft {
    /// Without image load.
    pub unloaded_p99_ms: f64,
    /// Beside the image load.
    pub loaded_p99_ms: f64,
}

impl ProbeTtft {
    /// loaded p99 / unloaded p99.
    pub fn inflation(&self) -> f64 {
        self.loaded_p99_ms / self.unloaded_p99_ms.max(f64::MIN_POSITIVE)
    }
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
}

impl Measured {
    /// Over rounds: the loaded run of median throughput, and the median of each probe p99.
    fn median(rounds: Vec<Measured>) -> Measured {
        let probes = ProbeTtft {
            unloaded_p99_ms: median(rounds.iter().map(|m| m.probes.unloaded_p99_ms).collect()),
            loaded_p99_ms: median(rounds.iter().map(|m| m.probes.loaded_p99_ms).collect()),
        };
        Measured {
            loaded: median_by_throughput(rounds.into_iter().map(|m| m.loaded)),
            probes,
        }
    }
}

/// The median (the mean of the middle two for an even count; 0 for none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
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
    pub fn run(&self, mut progress: impl FnMut(&str)) -> Result<CompareReport> {
        if self.requests == 0 || self.probe_requests == 0 {
            bail!("--num-prompts and --probe-requests must be at least 1");
        }
        let runtime = ClientRuntime::new(self.client_cpus.as_deref())?;
        let rounds = self.rounds.max(1);
        // Every round sends pictures of its own, so the vision server's cache serves none.
        let loads = (0..rounds)
            .map(|r| self.synthetic(self.seed + r as u64).requests(self.requests))
            .collect::<Result<Vec<_>>>()?;

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
        let vision = dvd.addresses.vision.first().context("no vision server")?;
        let mut dvd_rounds = Vec::new();
        let mut vision_rounds = Vec::new();
        let mut language_rounds = Vec::new();
        for (r, load) in loads.iter().enumerate() {
            let round = format!("DvD, round {} of {rounds}", r + 1);
            progress(&format!(
                "{round}: probes alone, then image load with probes"
            ));
            dvd_rounds.push(runtime.block_on(self.measure(&dvd, load))??);
            progress(&format!("{round}: the vision stage alone"));
            let fresh = self
                .synthetic((self.seed + r as u64) ^ 0x5eed)
                .requests(self.requests)?
                .iter()
                .map(image_files)
                .collect::<Result<Vec<_>>>()?;
            vision_rounds.push(runtime.block_on(vision_alone::throughput(vision, &fresh))??);
            progress(&format!("{round}: the language stage alone"));
            let seed = self.seed + r as u64;
            language_rounds.push(runtime.block_on(self.language_alone(
                &dvd,
                image_prompt_tokens,
                seed,
            ))??);
        }
        drop(dvd);

        progress("coupled: starting dvd up --coupled");
        let mut coupled_args = vec!["--coupled".to_string()];
        coupled_args.extend(self.engine_args());
        let coupled = Deployment::start(&self.exe, &self.model, &coupled_args)?;
        runtime.block_on(self.warm_up(&coupled))??;
        let mut coupled_rounds = Vec::new();
        for (r, load) in loads.iter().enumerate() {
            progress(&format!(
                "coupled, round {} of {rounds}: probes alone, then image load with probes",
                r + 1
            ));
            coupled_rounds.push(runtime.block_on(self.measure(&coupled, load))??);
        }
        drop(coupled);

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
        let dvd_measured = Measured::median(dvd_rounds);
        let coupled_measured = Measured::median(coupled_rounds);
        let vision_alone = median(vision_rounds);
        let text_tokens = median(language_rounds.iter().map(|(_, t)| *t).collect());
        let language_alone = median_by_throughput(language_rounds.into_iter().map(|(r, _)| r));
        let slowest = vision_alone.min(language_alone.request_throughput);
        let dvd_thr = dvd_measured.loaded.request_throughput;
        let coupled_thr = coupled_measured.loaded.request_throughput;
        Ok(CompareReport {
            rounds,
            each_round,
            coupled_request_throughput: coupled_thr,
            dvd_request_throughput: dvd_thr,
            dvd_speedup: dvd_thr / coupled_thr.max(f64::MIN_POSITIVE),
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
        })
    }

    /// The language engine's options, the same in both deployments.
    fn engine_args(&self) -> Vec<String> {
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
        }
    }

    fn serve_bench(
        &self,
        deployment: &Deployment,
        requests: Vec<RequestSpec>,
    ) -> Result<ServeBench> {
        Ok(ServeBench {
            endpoint: Endpoint::parse(&deployment.url())?,
            api: Api::OpenAi,
            model: None,
            requests,
            arrivals: Arrivals {
                rate: self.request_rate,
                seed: self.seed,
                ..Arrivals::default()
            },
            max_concurrency: None,
            probes: None,
            timeout: self.timeout,
            slos: Vec::new(),
            percentiles: ServeBench::DEFAULT_PERCENTILES.to_vec(),
            progress: false,
            // Both sides are dvd: every request generates exactly its tokens.
            ignore_eos: true,
        })
    }

    fn probes(&self, max_requests: Option<usize>) -> Probes {
        Probes {
            rate: self.probe_rate,
            max_requests,
            prompt: self.probe_prompt.clone(),
            max_tokens: self.probe_max_tokens,
        }
    }

    /// One image request (its own image) and one probe, so both paths are warm; returns the
    /// image request's prompt and image tokens.
    async fn warm_up(&self, deployment: &Deployment) -> Result<(u64, u64)> {
        let mut warm = self.synthetic(self.seed ^ 0xa11).requests(1)?;
        // The text request goes as load too: a run waits for its load requests only.
        warm.push(RequestSpec {
            kind: crate::serve::dataset::Kind::Load,
            ..crate::serve::dataset::probe(&self.probe_prompt, self.probe_max_tokens)
        });
        let (_, outcomes) = self.serve_bench(deployment, warm)?.run().await?;
        let image = outcomes
            .iter()
            .find(|o| o.images > 0)
            .context("the warm-up image request")?;
        match &image.result {
            Ok(t) => Ok((t.prompt_tokens, t.image_tokens)),
            Err(e) => bail!("warm-up image request failed: {e}"),
        }
    }

    /// Probes alone, then the image load with probes beside it.
    async fn measure(&self, deployment: &Deployment, load: &[RequestSpec]) -> Result<Measured> {
        let mut alone = self.serve_bench(deployment, Vec::new())?;
        alone.probes = Some(self.probes(Some(self.probe_requests)));
        let (unloaded, _) = alone.run().await?;
        let mut loaded = self.serve_bench(deployment, load.to_vec())?;
        loaded.probes = Some(self.probes(None));
        let (loaded, _) = loaded.run().await?;
        if loaded.failed > 0 {
            bail!(
                "{} of {} image requests failed: {:?}",
                loaded.failed,
                loaded.run.num_prompts,
                loaded.errors
            );
        }
        let probes_done = loaded.probes.as_ref().map_or(0, |p| p.completed);
        if probes_done < 3 {
            bail!(
                "only {probes_done} probes answered during the image load ({:.1} s): raise \
                 --num-prompts or --probe-request-rate",
                loaded.run.duration
            );
        }
        let p99 = |r: &ServeReport| -> Result<f64> {
            r.probes
                .as_ref()
                .and_then(|p| p.latencies.get("p99_ttft_ms").copied())
                .context("no probe answered")
        };
        Ok(Measured {
            probes: ProbeTtft {
                unloaded_p99_ms: p99(&unloaded)?,
                loaded_p99_ms: p99(&loaded)?,
            },
            loaded,
        })
    }

    /// Text requests of `target` prompt tokens, as many as the load, sent the same way; `seed`
    /// picks their words.
    async fn language_alone(
        &self,
        deployment: &Deployment,
        target: u64,
        seed: u64,
    ) -> Result<(ServeReport, f64)> {
        // Calibrate words per token with two prompts of different lengths (the difference
        // cancels the chat template's tokens).
        let calibration = |words: usize, seed: u64| {
            language_alone::requests(language_alone::prompts(1, words, seed), 1)
        };
        let mut tokens = Vec::new();
        for (words, seed) in [(50usize, 1u64), (150, 2)] {
            let (report, _) = self
                .serve_bench(deployment, calibration(words, self.seed ^ seed))?
                .run()
                .await?;
            if report.completed != 1 {
                bail!("calibration request failed: {:?}", report.errors);
            }
            tokens.push(report.total_input_tokens);
        }
        let per_word = tokens[1].saturating_sub(tokens[0]) as f64 / 100.0;
        let overhead = (tokens[0] as f64 - 50.0 * per_word).max(0.0) as u64;
        let words = language_alone::words_for(target, 50, tokens[0], overhead)?;
        let prompts = language_alone::prompts(self.requests, words, seed ^ 0x1a46);
        let requests = language_alone::requests(prompts, self.max_tokens);
        let (report, _) = self.serve_bench(deployment, requests)?.run().await?;
        if report.failed > 0 {
            bail!("language-alone requests failed: {:?}", report.errors);
        }
        let mean_tokens = report.total_input_tokens as f64 / report.completed.max(1) as f64;
        Ok((report, mean_tokens))
    }
}

/// The encoded image files of a request whose parts carry `data:` URLs.
fn image_files(spec: &RequestSpec) -> Result<Vec<Vec<u8>>> {
    let Value::Array(parts) = &spec.content else {
        return Ok(Vec::new());
    };
    parts
        .iter()
        .filter_map(|p| p["image_url"]["url"].as_str())
        .map(|url| {
            let (_, data) = url
                .split_once(";base64,")
                .context("not a base64 data URL")?;
            Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
        })
        .collect()
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
            "| image requests/s | {:.3} | {:.3} ({:.2}x) |\n",
            self.coupled_request_throughput, self.dvd_request_throughput, self.dvd_speedup
        ));
        out.push_str(&format!(
            "| probe p99 TTFT unloaded / loaded (ms) | {:.0} / {:.0} ({:.2}x) | {:.0} / {:.0} ({:.2}x) |\n",
            self.probes_coupled.unloaded_p99_ms,
            self.probes_coupled.loaded_p99_ms,
            self.probe_ttft_p99_inflation_coupled,
            self.probes_dvd.unloaded_p99_ms,
            self.probes_dvd.loaded_p99_ms,
            self.probe_ttft_p99_inflation_dvd,
        ));
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_no_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
