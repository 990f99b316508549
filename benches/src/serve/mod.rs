//! `dvd bench serve`: a load generator for a running deployment's OpenAI-compatible API, in
//! the manner of `vllm bench serve`. Requests (synthetic images at chosen resolutions, or a
//! JSONL file) go out on a seeded Poisson/gamma schedule (or all at once, or on a linear ramp),
//! optionally bounded in concurrency; text-only probes can run beside them at their own rate to
//! measure how much the image load delays short requests. Every request streams, and its time
//! to first token, inter-token gaps and end-to-end latency are recorded.
//!
//! - [`arrivals`]: send times. [`dataset`]: request contents. [`client`]: one timed streamed
//!   request over HTTP/1.1 (OpenAI API); [`grpc`]: the same over the public gRPC API.
//!   [`report`]: the summary (vLLM's field names) and CSV rows. [`token_prompts`]: random
//!   prompts of a length in the served model's tokens.

pub mod arrivals;
pub mod client;
pub mod dataset;
pub mod grpc;
pub mod plot;
pub mod report;
pub mod token_prompts;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use arrivals::Arrivals;
use client::{Ask, Endpoint, chat, first_model};
use dataset::{Kind, RequestSource, RequestSpec};
use report::{Outcome, RequestError, RunInfo, ServeReport, Slo};

/// Text-only probes sent beside the load.
#[derive(Debug, Clone)]
pub struct Probes {
    /// Probes per second (Poisson); `None`: back to back, each sent when the one before has
    /// answered (probes alone on an idle server, measured quickly).
    pub rate: Option<f64>,
    /// Stop after this many (without a load, required).
    pub max_requests: Option<usize>,
    /// Probe `i` (a [`dataset::ProbeMix`], or one fixed question).
    pub requests: Arc<dyn RequestSource>,
}

impl Probes {
    /// Prompt tokens of a probe unless told otherwise: drawn from 20 to 200, a realistic mix of
    /// short chat prompts rather than one length.
    pub const DEFAULT_TOKENS: (usize, usize) = (20, 200);
    /// Tokens each probe generates unless told otherwise.
    pub const DEFAULT_MAX_TOKENS: u32 = 16;
    /// Probe samples behind a p99 (`100 / (100 - 99)`): the fewest a run should collect.
    pub const P99_SAMPLES: usize = 100;
}

/// How long a run sends load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunLength {
    /// This many load requests.
    Requests(usize),
    /// Load requests until this many seconds have passed (a steady-state run); those in
    /// flight then finish and count.
    Seconds(f64),
}

/// Which of the gateway's APIs the requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI-compatible HTTP (`/v1/chat/completions`, server-sent events).
    OpenAi,
    /// `dvd.api.v1.InferenceService/Chat` (the URL names the gRPC listener).
    Grpc,
}

/// A run.
#[derive(Debug, Clone)]
pub struct ServeBench {
    /// The API's address.
    pub endpoint: Endpoint,
    /// Which API.
    pub api: Api,
    /// Model id (default: the first the server lists).
    pub model: Option<String>,
    /// The load requests, in sending order.
    pub requests: Arc<dyn RequestSource>,
    /// How many are sent, or for how long.
    pub length: RunLength,
    /// When they are sent.
    pub arrivals: Arrivals,
    /// Most load requests in flight.
    pub max_concurrency: Option<usize>,
    /// Interference probes.
    pub probes: Option<Probes>,
    /// Limit of one request.
    pub timeout: Duration,
    /// Goodput SLOs.
    pub slos: Vec<Slo>,
    /// Percentiles reported.
    pub percentiles: Vec<f64>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Send vLLM's `ignore_eos` (dvd and vLLM take it; other servers refuse the field), so
    /// every request generates exactly its `max_tokens`. Off: the field is not sent.
    pub ignore_eos: bool,
}

impl ServeBench {
    /// The limit of one request unless told otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
    /// The percentiles reported unless told otherwise.
    pub const DEFAULT_PERCENTILES: [f64; 3] = [50.0, 90.0, 99.0];

    /// Runs the load (and probes) to completion; returns the summary and every outcome.
    pub async fn run(&self) -> Result<(ServeReport, Vec<Outcome>)> {
        let (limit, deadline) = match self.length {
            RunLength::Requests(n) => (n, None),
            RunLength::Seconds(s) if s > 0.0 && s.is_finite() => (usize::MAX, Some(s)),
            RunLength::Seconds(s) => bail!("a run's duration must be positive, got {s} s"),
        };
        if limit == 0 && self.probes.as_ref().and_then(|p| p.max_requests).is_none() {
            bail!("nothing to send: no load requests and no --probe-max-requests");
        }
        if let Some(Some(rate)) = self.probes.as_ref().map(|p| p.rate)
            && !(rate > 0.0 && rate.is_finite())
        {
            bail!("the probe rate must be positive and finite");
        }
        let mut schedule: Box<dyn Iterator<Item = f64> + Send> = match deadline {
            None => Box::new(self.arrivals.schedule(limit)?.into_iter()),
            Some(_)
                if self.arrivals.rate.is_none()
                    && self.arrivals.ramp.is_none()
                    && self.max_concurrency.is_none() =>
            {
                bail!("a timed run at an infinite rate needs --max-concurrency (a closed loop)")
            }
            Some(seconds) => self.arrivals.until(seconds)?,
        };
        // A counted run makes its requests before the clock starts, as the load they stand for
        // would exist before it is sent; a timed run makes each when it is due.
        let mut made = match self.length {
            RunLength::Requests(n) => Some(self.requests.requests(n)?.into_iter()),
            RunLength::Seconds(_) => None,
        };
        let target = match self.api {
            Api::OpenAi => Target::OpenAi(self.endpoint.clone()),
            Api::Grpc => Target::Grpc(grpc::connect(&self.endpoint.authority).await?),
        };
        let model = match (&self.model, &target) {
            (Some(m), _) => m.clone(),
            (None, Target::OpenAi(endpoint)) => first_model(endpoint).await?,
            (None, Target::Grpc(client)) => grpc::first_model(&mut client.clone()).await?,
        };
        let bar = progress_bar(self.progress, self.length);
        let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
        let tracker = TaskTracker::new();
        let load_done = CancellationToken::new();
        let start = Instant::now();
        let end = deadline.map(|s| start + Duration::from_secs_f64(s));
        let request = Request {
            tracker: tracker.clone(),
            target,
            model: model.clone(),
            outcomes: tx,
            start,
            timeout: self.timeout,
            ignore_eos: self.ignore_eos,
        };
        if let Some(probes) = self.probes.clone() {
            let (request, done) = (request.clone(), load_done.clone());
            let seed = self.arrivals.seed ^ 0x9e37_79b9;
            tracker.spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let gap = probes.rate.map(Exp::new).transpose();
                let Ok(gap) = gap else { return };
                // Back to back: one probe in flight.
                let alone = Arc::new(Semaphore::new(1));
                let mut sent = 0;
                while probes.max_requests.is_none_or(|m| sent < m) {
                    let permit = match &gap {
                        Some(gap) => {
                            let wait = Duration::from_secs_f64(gap.sample(&mut rng));
                            tokio::select! {
                                _ = done.cancelled() => break,
                                _ = tokio::time::sleep(wait) => None,
                            }
                        }
                        None => tokio::select! {
                            _ = done.cancelled() => break,
                            permit = alone.clone().acquire_owned() => permit.ok(),
                        },
                    };
                    let Ok(spec) = probes.requests.request(sent) else {
                        break;
                    };
                    request.send(spec, permit);
                    sent += 1;
                }
            });
        }
        let semaphore = self
            .max_concurrency
            .map(|n| Arc::new(Semaphore::new(n.max(1))));
        let mut outcomes = Vec::new();
        let mut load_answered = 0;
        let record = |o: Outcome, outcomes: &mut Vec<Outcome>, answered: &mut usize| {
            if o.kind == Kind::Load {
                *answered += 1;
                bar.inc(1);
            }
            outcomes.push(o);
        };
        let mut sent = 0;
        // A timed run stops sending at its end, whatever it is waiting for.
        let past_end = async {
            match end {
                Some(end) => tokio::time::sleep_until(end.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(past_end);
        'send: while sent < limit {
            let Some(at) = schedule.next() else { break };
            let due = start + Duration::from_secs_f64(at);
            // Collect answers while waiting for the next send time.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => break,
                    _ = &mut past_end => break 'send,
                    Some(o) = rx.recv() => record(o, &mut outcomes, &mut load_answered),
                }
            }
            let permit = match &semaphore {
                Some(s) => loop {
                    tokio::select! {
                        permit = s.clone().acquire_owned() => break Some(permit?),
                        _ = &mut past_end => break 'send,
                        Some(o) = rx.recv() => record(o, &mut outcomes, &mut load_answered),
                    }
                },
                None => None,
            };
            let spec = match &mut made {
                Some(made) => made.next().context("fewer requests made than counted")?,
                None => self.requests.request(sent)?,
            };
            request.send(spec, permit);
            sent += 1;
        }
        while load_answered < sent {
            let Some(o) = rx.recv().await else { break };
            record(o, &mut outcomes, &mut load_answered);
        }
        let load_duration = start.elapsed().as_secs_f64();
        if sent > 0 {
            load_done.cancel();
        }
        tracker.close();
        drop(request);
        tracker.wait().await;
        while let Ok(o) = rx.try_recv() {
            outcomes.push(o);
        }
        bar.finish_and_clear();
        outcomes.sort_by(|a, b| a.sent_at.total_cmp(&b.sent_at));
        let info = RunInfo {
            model,
            request_rate: self.arrivals.rate,
            burstiness: self.arrivals.burstiness,
            max_concurrency: self.max_concurrency,
            num_prompts: sent,
            duration_asked_s: deadline,
            // Probes alone: until the last probe answered.
            duration: match sent {
                0 => start.elapsed().as_secs_f64(),
                _ => load_duration,
            },
        };
        let report = ServeReport::new(info, &outcomes, &self.slos, &self.percentiles);
        Ok((report, outcomes))
    }
}

/// Where requests go.
#[derive(Clone)]
enum Target {
    OpenAi(Endpoint),
    Grpc(
        dvd_proto::api::v1::inference_service_client::InferenceServiceClient<
            tonic::transport::Channel,
        >,
    ),
}

/// What every request task needs: where to send, and where its outcome goes.
#[derive(Clone)]
struct Request {
    tracker: TaskTracker,
    target: Target,
    model: String,
    outcomes: mpsc::UnboundedSender<Outcome>,
    start: Instant,
    timeout: Duration,
    ignore_eos: bool,
}

impl Request {
    /// Sends `spec` on its own task; its outcome goes to the channel, then the concurrency
    /// permit (if any) is released.
    fn send(&self, spec: RequestSpec, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
        let this = self.clone();
        self.tracker.spawn(async move {
            let sent_at = this.start.elapsed().as_secs_f64();
            let ask = Ask {
                model: &this.model,
                content: &spec.content,
                max_tokens: spec.max_tokens,
                ignore_eos: this.ignore_eos,
                timeout: this.timeout,
            };
            let result = match &this.target {
                Target::OpenAi(endpoint) => chat(endpoint, &ask).await,
                Target::Grpc(client) => grpc::chat(client, &ask).await,
            }
            .map_err(RequestError::from);
            let _ = this.outcomes.send(Outcome {
                kind: spec.kind,
                sent_at,
                images: spec.images,
                result,
            });
            drop(permit);
        });
    }
}

fn progress_bar(enabled: bool, length: RunLength) -> indicatif::ProgressBar {
    let len = match length {
        RunLength::Requests(n) if enabled && n > 0 => n,
        _ => return indicatif::ProgressBar::hidden(),
    };
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} requests answered ({per_sec})",
    ) {
        bar.set_style(style);
    }
    bar
}
