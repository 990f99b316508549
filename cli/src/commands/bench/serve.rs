//! `dvd bench serve`: load against a running deployment's OpenAI API or gRPC API, one run per
//! request rate (see `dvd_bench::serve`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use dvd_bench::serve::arrivals::Arrivals;
use dvd_bench::serve::client::{Endpoint, first_model};
use dvd_bench::serve::dataset::{self, ProbeMix, RandomMm, RequestSource, Synthetic};
use dvd_bench::serve::grpc;
use dvd_bench::serve::report::{self, ServeReport, Slo};
use dvd_bench::serve::token_prompts::TokenPrompts;
use dvd_bench::serve::{Api, Probes, RunLength, ServeBench, plot};

use super::{CountRange, SizeList, parse_request_rate, request_rate_flag};

/// Options of `dvd bench serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The deployment's base URL (its gateway; with --api grpc, its gRPC listener).
    #[arg(long, default_value_t = crate::commands::gateway::default_url())]
    url: String,
    /// `openai` (HTTP, server-sent events) or `grpc` (dvd.api.v1.InferenceService).
    #[arg(long, default_value = "openai")]
    api: String,
    /// Model id (default: the first the server lists).
    #[arg(long)]
    model: Option<String>,
    /// Load requests to send.
    #[arg(long, default_value_t = 100)]
    num_prompts: usize,
    /// Requests per second, or `inf` to send them all at once; a comma-separated list runs a
    /// sweep, one run per rate (each with fresh synthetic images).
    #[arg(long, default_value_t = request_rate_flag(Arrivals::default().rate))]
    request_rate: String,
    /// Gamma shape of the arrival gaps: 1 = Poisson, < 1 burstier.
    #[arg(long, default_value_t = Arrivals::default().burstiness)]
    burstiness: f64,
    /// Ramp the rate linearly from this many requests/s (with --ramp-up-end-rps).
    #[arg(long, requires = "ramp_up_end_rps")]
    ramp_up_start_rps: Option<f64>,
    /// ... to this many at the last request.
    #[arg(long, requires = "ramp_up_start_rps")]
    ramp_up_end_rps: Option<f64>,
    /// Most load requests in flight at once.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Seed of the arrivals and synthetic images.
    #[arg(long, default_value_t = Arrivals::default().seed)]
    seed: u64,
    /// `synthetic` (fresh images of --image-sizes in turn, the same question), `random-mm`
    /// (vLLM's: random prompts of --random-input-len words, MIN:MAX images per request, each
    /// side drawn from --image-sizes) or `jsonl` (--dataset-path).
    #[arg(long, default_value = "synthetic")]
    dataset: String,
    /// JSONL file: {"prompt": ..., "images": [paths], "max_tokens": n} per line, or
    /// VisionArena-style rows ({"conversation": [turns], "images": [paths]}: the first user turn).
    #[arg(long)]
    dataset_path: Option<PathBuf>,
    /// Square image sides (e.g. 448,896,1344): used in turn by `synthetic`, drawn at random by
    /// `random-mm`.
    #[arg(long, default_value_t = SizeList::of_sides(&Synthetic::default().sizes))]
    image_sizes: SizeList,
    /// Images per request: N, or MIN:MAX for `random-mm` (drawn uniformly, both included).
    #[arg(long, default_value_t = CountRange(Synthetic::default().images_per_request, Synthetic::default().images_per_request))]
    images_per_request: CountRange,
    /// A video workload (`synthetic`): each request carries a fresh H.264 clip sampled at N
    /// frames (one tile each, sides from --image-sizes) instead of pictures.
    #[arg(long, default_value_t = Synthetic::default().video_frames)]
    video_frames: u32,
    /// Prompt tokens of each `random-mm` request's text (counted by --tokenizer).
    #[arg(long, default_value_t = 32)]
    random_input_len: usize,
    /// The tokenizer that counts random prompts' tokens (`random-mm`, probes): a model
    /// directory, a hub id in the local Hugging Face cache, or `dvd-demo`. Default: --model, else
    /// the model the deployment lists first.
    #[arg(long)]
    tokenizer: Option<String>,
    /// The question of synthetic requests.
    #[arg(long, default_value_t = Synthetic::default().prompt)]
    prompt: String,
    /// Tokens each load request generates at most (exactly, with --ignore-eos).
    #[arg(long, default_value_t = Synthetic::default().max_tokens)]
    output_len: u32,
    /// Send vLLM's `ignore_eos` extension so every request generates exactly --output-len
    /// tokens (dvd and vLLM take it; servers without it refuse the request).
    #[arg(long)]
    ignore_eos: bool,
    /// Text-only probes per second beside the load.
    #[arg(long)]
    probe_request_rate: Option<f64>,
    /// Stop the probes after this many (needed with --num-prompts 0).
    #[arg(long)]
    probe_max_requests: Option<usize>,
    /// Prompt tokens of each probe's random prompt, MIN:MAX (drawn uniformly, both included;
    /// counted by --tokenizer, the chat template's own tokens apart): a mix of lengths, as real
    /// short requests have.
    #[arg(long, default_value_t = CountRange(Probes::DEFAULT_TOKENS.0, Probes::DEFAULT_TOKENS.1))]
    probe_input_len: CountRange,
    /// One fixed question for every probe instead of the random mix.
    #[arg(long)]
    probe_prompt: Option<String>,
    /// Tokens each probe generates.
    #[arg(long, default_value_t = Probes::DEFAULT_MAX_TOKENS)]
    probe_output_len: u32,
    /// Send load for this many seconds instead of --num-prompts requests (each run of a
    /// sweep); with --request-rate inf it needs --max-concurrency (a closed loop).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Limit of one request, seconds.
    #[arg(long, default_value_t = ServeBench::DEFAULT_TIMEOUT.as_secs_f64())]
    timeout_s: f64,
    /// SLOs for goodput, e.g. `--goodput ttft:500 --goodput tpot:50` (milliseconds).
    #[arg(long)]
    goodput: Vec<Slo>,
    /// Percentiles reported.
    #[arg(long, default_value_t = percentiles_flag(&ServeBench::DEFAULT_PERCENTILES))]
    percentiles: String,
    /// Print the JSON summary instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON summary here.
    #[arg(long)]
    result_file: Option<PathBuf>,
    /// Also write one CSV row per request here (in a sweep, with the run's rate first).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write SVG plots here: TTFT and end-to-end latency CDFs, and for a sweep, throughput and
    /// latency against the offered rate.
    #[arg(long)]
    plot_dir: Option<PathBuf>,
}

/// Runs one load per request rate and prints the reports (tables or JSON), writing the files
/// asked for.
pub fn run(args: ServeArgs) -> Result<()> {
    let rates = args
        .request_rate
        .split(',')
        .map(|r| parse_request_rate(r.trim()))
        .collect::<Result<Vec<_>>>()?;
    let runtime = super::two_worker_runtime()?;
    let needs_tokens = args.dataset == "random-mm"
        || (args.probe_request_rate.is_some() && args.probe_prompt.is_none());
    let prompts = match needs_tokens {
        true => Some(args.token_prompts(&runtime)?),
        false => None,
    };
    let mut runs = Vec::with_capacity(rates.len());
    for (i, &rate) in rates.iter().enumerate() {
        // Each run of a sweep gets fresh pictures, so the embedding cache never hides the encoder.
        let bench = args.bench(rate, args.seed + i as u64, prompts.as_ref())?;
        runs.push(runtime.block_on(bench.run())?);
    }
    let reports: Vec<&ServeReport> = runs.iter().map(|(r, _)| r).collect();
    let json = match reports.as_slice() {
        [one] => serde_json::to_string_pretty(one)?,
        all => serde_json::to_string_pretty(all)?,
    };
    if let Some(path) = &args.result_file {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        let text = match runs.as_slice() {
            [(_, outcomes)] => report::csv(outcomes),
            all => report::sweep_csv(all),
        };
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.plot_dir {
        let plotted: Vec<plot::Run> = runs
            .iter()
            .map(|(report, outcomes)| plot::Run { report, outcomes })
            .collect();
        for path in plot::write_all(dir, &plotted)? {
            eprintln!("wrote {}", path.display());
        }
    }
    match args.json {
        true => println!("{json}"),
        false => {
            for report in reports {
                println!("{report}");
            }
        }
    }
    Ok(())
}

/// `--percentiles` as it is written: comma-separated.
fn percentiles_flag(percentiles: &[f64]) -> String {
    let text: Vec<String> = percentiles.iter().map(f64::to_string).collect();
    text.join(",")
}

impl ServeArgs {
    /// The tokenizer that counts random prompts' tokens: --tokenizer, else --model, else the
    /// model the deployment lists first.
    fn token_prompts(&self, runtime: &tokio::runtime::Runtime) -> Result<TokenPrompts> {
        let name = match (&self.tokenizer, &self.model) {
            (Some(name), _) | (None, Some(name)) => name.clone(),
            (None, None) => {
                let endpoint = Endpoint::parse(&self.url)?;
                runtime.block_on(async {
                    match self.api.as_str() {
                        "grpc" => {
                            grpc::first_model(&mut grpc::connect(&endpoint.authority).await?).await
                        }
                        _ => first_model(&endpoint).await,
                    }
                })?
            }
        };
        let dir =
            dvd_checkpoint::resolve_model_dir(&crate::commands::demo_model::resolve_name(&name)?)
                .with_context(|| {
                format!(
                    "random prompts are counted in the served model's tokens, and {name:?} is no \
                     model directory or cached hub id here: name its tokenizer with --tokenizer"
                )
            })?;
        TokenPrompts::from_model(&dir)
    }

    /// The benchmark of one run at `rate`, its synthetic images from `seed`, its random prompts
    /// counted by `prompts`.
    fn bench(
        &self,
        rate: Option<f64>,
        seed: u64,
        prompts: Option<&TokenPrompts>,
    ) -> Result<ServeBench> {
        let prompts = || prompts.cloned().context("random prompts need a tokenizer");
        let sizes: Vec<u32> = self.image_sizes.0.iter().map(|&s| s as u32).collect();
        let CountRange(fewest, most) = self.images_per_request;
        if self.video_frames > 0 && self.dataset != "synthetic" {
            bail!("--video-frames needs --dataset synthetic");
        }
        let requests: Arc<dyn RequestSource> = match self.dataset.as_str() {
            "synthetic" => {
                if fewest != most {
                    bail!(
                        "--images-per-request {fewest}:{most}: a range needs --dataset random-mm"
                    );
                }
                Arc::new(Synthetic {
                    sizes,
                    images_per_request: most,
                    prompt: self.prompt.clone(),
                    max_tokens: self.output_len,
                    seed,
                    video_frames: self.video_frames,
                })
            }
            "random-mm" => Arc::new(RandomMm {
                sizes,
                images: (fewest, most),
                input_tokens: self.random_input_len,
                prompts: prompts()?,
                max_tokens: self.output_len,
                seed,
            }),
            "jsonl" => {
                let Some(path) = &self.dataset_path else {
                    bail!("--dataset jsonl needs --dataset-path");
                };
                Arc::new(dataset::from_jsonl(path, self.output_len)?)
            }
            other => bail!("unknown --dataset {other:?}: synthetic, random-mm or jsonl"),
        };
        let percentiles = self
            .percentiles
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| (0.0..=100.0).contains(v))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                anyhow::anyhow!("--percentiles: numbers between 0 and 100, comma-separated")
            })?;
        let probes = match self.probe_request_rate {
            None => None,
            Some(rate) => Some(Probes {
                rate: Some(rate),
                max_requests: self.probe_max_requests,
                requests: dataset::probes(
                    self.probe_prompt.as_deref(),
                    self.probe_output_len,
                    || {
                        Ok(ProbeMix {
                            tokens: (self.probe_input_len.0, self.probe_input_len.1),
                            prompts: prompts()?,
                            max_tokens: self.probe_output_len,
                            seed: seed ^ 0x9b0b,
                        })
                    },
                )?,
            }),
        };
        let api = match self.api.as_str() {
            "openai" => Api::OpenAi,
            "grpc" => Api::Grpc,
            other => bail!("unknown --api {other:?}: openai or grpc"),
        };
        Ok(ServeBench {
            endpoint: Endpoint::parse(&self.url)?,
            api,
            model: self.model.clone(),
            requests,
            length: match self.duration_s {
                Some(seconds) => RunLength::Seconds(seconds),
                None => RunLength::Requests(self.num_prompts),
            },
            arrivals: Arrivals {
                rate,
                burstiness: self.burstiness,
                ramp: self.ramp_up_start_rps.zip(self.ramp_up_end_rps),
                seed: self.seed,
            },
            max_concurrency: self.max_concurrency,
            probes,
            timeout: Duration::from_secs_f64(self.timeout_s.max(0.001)),
            slos: self.goodput.clone(),
            percentiles,
            progress: !self.json,
            ignore_eos: self.ignore_eos,
        })
    }
}
