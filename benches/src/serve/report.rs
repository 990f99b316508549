//! The numbers of a run, under `vllm bench serve`'s field names (`completed`, `failed`,
//! `total_input_tokens`, `request_throughput`, `mean_/median_/std_/pNN_{ttft,tpot,itl,e2el}_ms`,
//! ...) so results can be compared with vLLM's; image tokens are counted separately.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::client::Timing;
use super::dataset::Kind;
use crate::stats;

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Load or probe.
    pub kind: Kind,
    /// Seconds from the start of the run at which it was sent.
    pub sent_at: f64,
    /// Images it carried.
    pub images: usize,
    /// Its timing, or why it failed.
    pub result: Result<Timing, RequestError>,
}

/// Why a request failed, as one line: its whole chain of causes (connecting, the HTTP status or
/// gRPC code, a malformed stream, the time limit), which the report lists and the CSV quotes;
/// and whether it was the server's answer to load rather than a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    message: String,
    rejection: Option<Rejection>,
}

/// A correct answer to more load than a server takes: counted apart from failures, never a
/// reason to stop a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Turned away at the door: HTTP 429 or gRPC `RESOURCE_EXHAUSTED`.
    RateLimited,
    /// A pool that cannot take work: HTTP 503 or gRPC `UNAVAILABLE`.
    Overloaded,
}

impl RequestError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            rejection: None,
        }
    }

    /// Whether the server turned the request away for load, and how.
    pub fn rejection(&self) -> Option<Rejection> {
        self.rejection
    }
}

impl From<anyhow::Error> for RequestError {
    /// Keeps the chain as the message; an HTTP 429/503 or a gRPC `RESOURCE_EXHAUSTED` /
    /// `UNAVAILABLE` status anywhere in it is a [`Rejection`].
    fn from(error: anyhow::Error) -> Self {
        let rejection = error.chain().find_map(|cause| {
            if let Some(http) = cause.downcast_ref::<super::client::HttpStatus>() {
                return match http.status {
                    429 => Some(Rejection::RateLimited),
                    503 => Some(Rejection::Overloaded),
                    _ => None,
                };
            }
            match cause.downcast_ref::<tonic::Status>()?.code() {
                tonic::Code::ResourceExhausted => Some(Rejection::RateLimited),
                tonic::Code::Unavailable => Some(Rejection::Overloaded),
                _ => None,
            }
        });
        Self {
            message: format!("{error:#}"),
            rejection,
        }
    }
}

/// A service-level objective for goodput (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slo {
    /// Time to first token.
    Ttft(f64),
    /// Time per output token after the first.
    Tpot(f64),
    /// End-to-end latency.
    E2el(f64),
}

/// Why a `--goodput` SLO does not parse; each names the text it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SloError {
    /// No `:` between name and milliseconds.
    #[error("expected NAME:MS, got {0:?}")]
    Syntax(String),
    /// The milliseconds are not a number.
    #[error("bad milliseconds in {0:?}")]
    Milliseconds(String),
    /// The milliseconds are not positive and finite.
    #[error("SLOs must be positive, got {0:?}")]
    NotPositive(String),
    /// Not `ttft`, `tpot` or `e2el`.
    #[error("unknown SLO {0:?}: ttft, tpot or e2el")]
    UnknownName(String),
}

impl std::str::FromStr for Slo {
    type Err = SloError;

    /// `ttft:500`, `tpot:50` or `e2el:10000` (milliseconds).
    fn from_str(s: &str) -> Result<Self, SloError> {
        let (name, value) = s
            .split_once(':')
            .ok_or_else(|| SloError::Syntax(s.into()))?;
        let ms: f64 = value
            .parse()
            .map_err(|_| SloError::Milliseconds(s.into()))?;
        if !(ms > 0.0 && ms.is_finite()) {
            return Err(SloError::NotPositive(s.into()));
        }
        match name {
            "ttft" => Ok(Self::Ttft(ms)),
            "tpot" => Ok(Self::Tpot(ms)),
            "e2el" => Ok(Self::E2el(ms)),
            _ => Err(SloError::UnknownName(name.into())),
        }
    }
}

/// The summary of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ServeReport {
    /// `openai-chat`.
    pub backend: String,
    /// What was asked for, and how long the run took.
    #[serde(flatten)]
    pub run: RunInfo,
    /// Load requests answered.
    pub completed: usize,
    /// Load requests failed (not counting the two kinds of rejection below).
    pub failed: usize,
    /// Load requests turned away at the door (HTTP 429, gRPC `RESOURCE_EXHAUSTED`).
    pub rejected_429: usize,
    /// Load requests refused by a pool that could not take work (HTTP 503, gRPC
    /// `UNAVAILABLE`).
    pub rejected_overload: usize,
    /// Prompt tokens of completed load requests (image tokens included).
    pub total_input_tokens: u64,
    /// Image tokens among them.
    pub total_image_tokens: u64,
    /// Generated tokens.
    pub total_output_tokens: u64,
    /// Whether the run was long enough to stand for steady state: at least
    /// [`RunInfo::STEADY_SECONDS`] or [`RunInfo::STEADY_REQUESTS`] load requests.
    pub steady_state: bool,
    /// Completed load requests per second.
    pub request_throughput: f64,
    /// Completed load requests meeting every SLO, per second (`None` without `--goodput`).
    pub request_goodput: Option<f64>,
    /// Generated tokens per second.
    pub output_throughput: f64,
    /// Prompt + generated tokens per second.
    pub total_token_throughput: f64,
    /// Image tokens per second (vision work done).
    pub image_token_throughput: f64,
    /// `mean_/median_/std_/max_/pNN_{ttft,tpot,itl,e2el}_ms` of the load requests.
    #[serde(flatten)]
    pub latencies: BTreeMap<String, f64>,
    /// Values behind each latency (`ttft`, `tpot`, `itl`, `e2el`): a `pNN` from fewer than
    /// `100 / (100 - NN)` of them is no more than their maximum, and the table says so.
    pub samples: BTreeMap<String, usize>,
    /// The text-only probes, when there were any.
    pub probes: Option<ProbeReport>,
    /// Up to 10 distinct failure messages.
    pub errors: Vec<String>,
}

/// The interference probes of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Probes answered.
    pub completed: usize,
    /// Probes failed.
    pub failed: usize,
    /// `mean_/median_/std_/max_/pNN_{ttft,e2el}_ms` of the probes.
    #[serde(flatten)]
    pub latencies: BTreeMap<String, f64>,
    /// Values behind each latency (see [`ServeReport::samples`]).
    pub samples: BTreeMap<String, usize>,
    /// Fewest, mean and most prompt tokens of the answered probes (their length mix).
    pub prompt_tokens: (u64, f64, u64),
}

/// Run parameters that go into the report as they are.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// Model id requested.
    pub model: String,
    /// Requests per second asked for (`None`: all at once).
    pub request_rate: Option<f64>,
    /// Gamma shape of the arrival gaps.
    pub burstiness: f64,
    /// Most requests in flight (`None`: unbounded).
    pub max_concurrency: Option<usize>,
    /// Load requests sent.
    pub num_prompts: usize,
    /// The length of a timed run (`--duration-s`): load was sent until then.
    pub duration_asked_s: Option<f64>,
    /// Seconds from the first send to the last load answer.
    pub duration: f64,
}

impl RunInfo {
    /// A run shorter than this (and with fewer than [`Self::STEADY_REQUESTS`] requests) may
    /// not have reached steady state.
    pub const STEADY_SECONDS: f64 = 60.0;
    /// See [`Self::STEADY_SECONDS`].
    pub const STEADY_REQUESTS: usize = 500;
}

impl ServeReport {
    /// Summarises `outcomes` (load and probes) with the percentiles asked for.
    pub fn new(info: RunInfo, outcomes: &[Outcome], slos: &[Slo], percentiles: &[f64]) -> Self {
        let load: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == Kind::Load).collect();
        let done: Vec<&Timing> = load.iter().filter_map(|o| o.result.as_ref().ok()).collect();
        let duration = info.duration.max(f64::MIN_POSITIVE);
        let input: u64 = done.iter().map(|t| t.prompt_tokens).sum();
        let images: u64 = done.iter().map(|t| t.image_tokens).sum();
        let output: u64 = done.iter().map(|t| t.output_tokens).sum();
        let ttft: Vec<f64> = done.iter().filter_map(|t| t.ttft).map(ms).collect();
        let tpot: Vec<f64> = done.iter().filter_map(|t| tpot_ms(t)).collect();
        let itl: Vec<f64> = done
            .iter()
            .flat_map(|t| t.itl.iter().copied().map(ms))
            .collect();
        let e2el: Vec<f64> = done.iter().map(|t| ms(t.e2el)).collect();
        let mut latencies = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for (name, values) in [
            ("ttft", &ttft),
            ("tpot", &tpot),
            ("itl", &itl),
            ("e2el", &e2el),
        ] {
            describe(&mut latencies, name, values, percentiles);
            samples.insert(name.to_string(), values.len());
        }
        let request_goodput = (!slos.is_empty()).then(|| {
            let good = done.iter().filter(|t| meets(t, slos)).count();
            good as f64 / duration
        });
        let probes: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == Kind::Probe).collect();
        let probes = (!probes.is_empty()).then(|| {
            let ok: Vec<&Timing> = probes
                .iter()
                .filter_map(|o| o.result.as_ref().ok())
                .collect();
            let mut latencies = BTreeMap::new();
            let ttft: Vec<f64> = ok.iter().filter_map(|t| t.ttft).map(ms).collect();
            let e2el: Vec<f64> = ok.iter().map(|t| ms(t.e2el)).collect();
            describe(&mut latencies, "ttft", &ttft, percentiles);
            describe(&mut latencies, "e2el", &e2el, percentiles);
            let samples = [("ttft", ttft.len()), ("e2el", e2el.len())]
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect();
            let lengths: Vec<u64> = ok.iter().map(|t| t.prompt_tokens).collect();
            let prompt_tokens = (
                lengths.iter().copied().min().unwrap_or(0),
                lengths.iter().sum::<u64>() as f64 / lengths.len().max(1) as f64,
                lengths.iter().copied().max().unwrap_or(0),
            );
            ProbeReport {
                prompt_tokens,
                completed: ok.len(),
                failed: probes.len() - ok.len(),
                latencies,
                samples,
            }
        });
        let rejected = |how: Rejection| {
            load.iter()
                .filter(|o| o.result.as_ref().is_err_and(|e| e.rejection() == Some(how)))
                .count()
        };
        let rejected_429 = rejected(Rejection::RateLimited);
        let rejected_overload = rejected(Rejection::Overloaded);
        let mut errors: Vec<String> = Vec::new();
        for e in outcomes.iter().filter_map(|o| o.result.as_ref().err()) {
            let message = e.to_string();
            if errors.len() < 10 && !errors.contains(&message) {
                errors.push(message);
            }
        }
        let steady_state = info.duration >= RunInfo::STEADY_SECONDS
            || info.num_prompts >= RunInfo::STEADY_REQUESTS;
        Self {
            backend: "openai-chat".into(),
            run: info,
            completed: done.len(),
            failed: load.len() - done.len() - rejected_429 - rejected_overload,
            rejected_429,
            rejected_overload,
            steady_state,
            total_input_tokens: input,
            total_image_tokens: images,
            total_output_tokens: output,
            request_throughput: done.len() as f64 / duration,
            request_goodput,
            output_throughput: output as f64 / duration,
            total_token_throughput: (input + output) as f64 / duration,
            image_token_throughput: images as f64 / duration,
            latencies,
            samples,
            probes,
            errors,
        }
    }
}

/// One CSV row per request (load and probes), with a header.
pub fn csv(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "kind,sent_at_s,ok,ttft_ms,tpot_ms,e2el_ms,prompt_tokens,image_tokens,output_tokens,images,error\n",
    );
    for o in outcomes {
        let kind = match o.kind {
            Kind::Load => "load",
            Kind::Probe => "probe",
        };
        let row = match &o.result {
            Ok(t) => format!(
                "{kind},{:.6},true,{},{},{:.3},{},{},{},{},",
                o.sent_at,
                t.ttft.map(|v| format!("{:.3}", ms(v))).unwrap_or_default(),
                tpot_ms(t).map(|v| format!("{v:.3}")).unwrap_or_default(),
                ms(t.e2el),
                t.prompt_tokens,
                t.image_tokens,
                t.output_tokens,
                o.images
            ),
            Err(e) => format!(
                "{kind},{:.6},false,,,,,,,{},\"{}\"",
                o.sent_at,
                o.images,
                e.to_string().replace('"', "'")
            ),
        };
        out.push_str(&row);
        out.push('\n');
    }
    out
}

/// The rows of every run of a sweep, each led by its run's request rate (`inf`: all at once).
pub fn sweep_csv(runs: &[(ServeReport, Vec<Outcome>)]) -> String {
    let mut out = String::new();
    for (i, (report, outcomes)) in runs.iter().enumerate() {
        let rate = report
            .run
            .request_rate
            .map_or_else(|| "inf".to_string(), |r| r.to_string());
        for (j, line) in csv(outcomes).lines().enumerate() {
            match j {
                0 if i == 0 => out.push_str(&format!("request_rate,{line}\n")),
                0 => {}
                _ => out.push_str(&format!("{rate},{line}\n")),
            }
        }
    }
    out
}

fn ms(seconds: f64) -> f64 {
    seconds * 1e3
}

/// `(e2el - ttft) / (output_tokens - 1)`, for requests that generated at least two tokens.
fn tpot_ms(t: &Timing) -> Option<f64> {
    let ttft = t.ttft?;
    (t.output_tokens > 1).then(|| ms(t.e2el - ttft) / (t.output_tokens - 1) as f64)
}

fn meets(t: &Timing, slos: &[Slo]) -> bool {
    slos.iter().all(|slo| match *slo {
        Slo::Ttft(limit) => t.ttft.is_some_and(|v| ms(v) <= limit),
        Slo::Tpot(limit) => tpot_ms(t).is_none_or(|v| v <= limit),
        Slo::E2el(limit) => ms(t.e2el) <= limit,
    })
}

/// mean, median, std and the percentiles of `values` as `{stat}_{name}_ms` (0 when empty).
fn describe(into: &mut BTreeMap<String, f64>, name: &str, values: &[f64], percentiles: &[f64]) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mean = if n == 0 {
        0.0
    } else {
        sorted.iter().sum::<f64>() / n as f64
    };
    let std = if n == 0 {
        0.0
    } else {
        (sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
    };
    into.insert(format!("mean_{name}_ms"), mean);
    into.insert(format!("median_{name}_ms"), percentile(&sorted, 50.0));
    into.insert(format!("std_{name}_ms"), std);
    into.insert(
        format!("max_{name}_ms"),
        sorted.last().copied().unwrap_or(0.0),
    );
    for &p in percentiles {
        into.insert(
            format!("p{}_{name}_ms", format_percentile(p)),
            percentile(&sorted, p),
        );
    }
}

fn format_percentile(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as u64)
    } else {
        format!("{p}")
    }
}

/// The table row of percentile `p` (as written in the key) of `name` from `n` values: `PNN`
/// when `n` can resolve it (at least `100 / (100 - NN)` values), else the maximum, said as such.
fn percentile_row(p: &str, name: &str, n: usize, value: f64, max: f64) -> (String, f64) {
    let pct: f64 = p.parse().unwrap_or(0.0);
    let needed = if pct >= 100.0 {
        usize::MAX
    } else {
        (100.0 / (100.0 - pct)).ceil() as usize
    };
    match n >= needed || pct <= 50.0 {
        true => (format!("P{p} {} (ms):", name.to_uppercase()), value),
        false => (format!("Max of {n} {} (ms):", name.to_uppercase()), max),
    }
}

/// [`stats::percentile_of_sorted`], 0 for no values (a report's figure for an empty set).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.is_empty() {
        true => 0.0,
        false => stats::percentile_of_sorted(sorted, p),
    }
}

impl fmt::Display for ServeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let get = |k: &str| self.latencies.get(k).copied().unwrap_or(0.0);
        writeln!(f, "============ Serving Benchmark Result ============")?;
        writeln!(f, "{:<40} {}", "Successful requests:", self.completed)?;
        writeln!(f, "{:<40} {}", "Failed requests:", self.failed)?;
        if self.rejected_429 + self.rejected_overload > 0 {
            writeln!(
                f,
                "{:<40} {} / {}",
                "Rejected for load (429 / overload):", self.rejected_429, self.rejected_overload
            )?;
        }
        writeln!(
            f,
            "{:<40} {:.2}",
            "Benchmark duration (s):", self.run.duration
        )?;
        if !self.steady_state {
            writeln!(
                f,
                "(shorter than {} s and {} requests: may not be steady state)",
                RunInfo::STEADY_SECONDS,
                RunInfo::STEADY_REQUESTS
            )?;
        }
        writeln!(
            f,
            "{:<40} {}",
            "Total input tokens:", self.total_input_tokens
        )?;
        writeln!(
            f,
            "{:<40} {}",
            "  of which image tokens:", self.total_image_tokens
        )?;
        writeln!(
            f,
            "{:<40} {}",
            "Total generated tokens:", self.total_output_tokens
        )?;
        writeln!(
            f,
            "{:<40} {:.2}",
            "Request throughput (req/s):", self.request_throughput
        )?;
        if let Some(g) = self.request_goodput {
            writeln!(f, "{:<40} {:.2}", "Request goodput (req/s):", g)?;
        }
        writeln!(
            f,
            "{:<40} {:.2}",
            "Output token throughput (tok/s):", self.output_throughput
        )?;
        writeln!(
            f,
            "{:<40} {:.2}",
            "Total token throughput (tok/s):", self.total_token_throughput
        )?;
        for (name, title) in [
            ("ttft", "Time to First Token"),
            ("tpot", "Time per Output Token"),
            ("itl", "Inter-token Latency"),
            ("e2el", "End-to-end Latency"),
        ] {
            writeln!(f, "{:-^50}", format!(" {title} "))?;
            writeln!(
                f,
                "{:<40} {:.2}",
                format!("Mean {} (ms):", name.to_uppercase()),
                get(&format!("mean_{name}_ms"))
            )?;
            writeln!(
                f,
                "{:<40} {:.2}",
                format!("Median {} (ms):", name.to_uppercase()),
                get(&format!("median_{name}_ms"))
            )?;
            let n = self.samples.get(name).copied().unwrap_or(0);
            for (key, value) in self
                .latencies
                .iter()
                .filter(|(k, _)| k.starts_with('p') && k.ends_with(&format!("_{name}_ms")))
            {
                let p = key.trim_start_matches('p').split('_').next().unwrap_or("");
                let (label, value) =
                    percentile_row(p, name, n, *value, get(&format!("max_{name}_ms")));
                writeln!(f, "{label:<40} {value:.2}")?;
            }
        }
        if let Some(p) = &self.probes {
            writeln!(f, "{:-^50}", " Text-only probes ")?;
            writeln!(
                f,
                "{:<40} {} ({} failed)",
                "Probes answered:", p.completed, p.failed
            )?;
            writeln!(
                f,
                "{:<40} {} / {:.0} / {}",
                "Probe prompt tokens (min / mean / max):",
                p.prompt_tokens.0,
                p.prompt_tokens.1,
                p.prompt_tokens.2
            )?;
            for (key, value) in &p.latencies {
                let pct = key
                    .strip_prefix('p')
                    .and_then(|rest| rest.split_once('_'))
                    .filter(|(pct, _)| pct.parse::<f64>().is_ok());
                match pct {
                    Some((pct, rest)) => {
                        let name = rest.trim_end_matches("_ms");
                        let n = p.samples.get(name).copied().unwrap_or(0);
                        let max = p.latencies.get(&format!("max_{name}_ms")).copied();
                        let (label, value) =
                            percentile_row(pct, name, n, *value, max.unwrap_or(0.0));
                        writeln!(f, "{label:<40} {value:.2}")?;
                    }
                    None => writeln!(f, "{:<40} {value:.2}", format!("{key}:"))?,
                }
            }
        }
        write!(f, "==================================================")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn timing(ttft: f64, e2el: f64, output_tokens: u64) -> Timing {
        Timing {
            ttft: Some(ttft),
            itl: vec![(e2el - ttft) / (output_tokens - 1) as f64; output_tokens as usize - 1],
            e2el,
            prompt_tokens: 300,
            image_tokens: 256,
            output_tokens,
            text: String::new(),
        }
    }

    fn info() -> RunInfo {
        RunInfo {
            model: "m".into(),
            request_rate: Some(2.0),
            burstiness: 1.0,
            max_concurrency: None,
            num_prompts: 3,
            duration_asked_s: None,
            duration: 2.0,
        }
    }

    #[test]
    fn overload_answers_are_counted_apart_from_failures() {
        let http = |status: u16| -> anyhow::Error {
            super::super::client::HttpStatus {
                status,
                message: "full".into(),
            }
            .into()
        };
        let grpc = |code| -> anyhow::Error { tonic::Status::new(code, "full").into() };
        let errors = [
            (http(429), Some(Rejection::RateLimited)),
            (http(503), Some(Rejection::Overloaded)),
            (http(502), None),
            (http(429).context("sending"), Some(Rejection::RateLimited)),
            (
                grpc(tonic::Code::ResourceExhausted),
                Some(Rejection::RateLimited),
            ),
            (grpc(tonic::Code::Unavailable), Some(Rejection::Overloaded)),
            (grpc(tonic::Code::Internal), None),
            (anyhow::anyhow!("HTTP 429 in a message only"), None),
        ];
        let mut outcomes = Vec::new();
        for (i, (error, expected)) in errors.into_iter().enumerate() {
            let error = RequestError::from(error);
            assert_eq!(error.rejection(), expected, "{error}");
            outcomes.push(Outcome {
                kind: Kind::Load,
                sent_at: i as f64,
                images: 1,
                result: Err(error),
            });
        }
        outcomes.push(Outcome {
            kind: Kind::Load,
            sent_at: 9.0,
            images: 1,
            result: Ok(timing(0.1, 1.1, 11)),
        });
        let report = ServeReport::new(info(), &outcomes, &[], &[99.0]);
        assert_eq!(
            (
                report.completed,
                report.failed,
                report.rejected_429,
                report.rejected_overload
            ),
            (1, 3, 3, 2)
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            (
                json["rejected_429"].as_u64(),
                json["rejected_overload"].as_u64()
            ),
            (Some(3), Some(2))
        );
        assert!(
            report
                .to_string()
                .contains("Rejected for load (429 / overload):")
        );
        assert!(!report.steady_state);
    }

    #[test]
    fn a_p99_from_fewer_than_100_values_is_shown_as_their_maximum() {
        let load = |n: usize| -> Vec<Outcome> {
            (0..n)
                .map(|i| Outcome {
                    kind: Kind::Load,
                    sent_at: i as f64,
                    images: 1,
                    result: Ok(timing(0.1 + i as f64 * 1e-3, 1.0, 2)),
                })
                .collect()
        };
        let few = ServeReport::new(info(), &load(24), &[], &[50.0, 90.0, 99.0]);
        assert_eq!(few.samples["ttft"], 24);
        let table = few.to_string();
        assert!(table.contains("Max of 24 TTFT (ms):"), "{table}");
        assert!(!table.contains("P99 TTFT"), "{table}");
        // 24 values resolve a p90 (10 needed).
        assert!(table.contains("P90 TTFT (ms):"), "{table}");
        assert!((few.latencies["max_ttft_ms"] - 123.0).abs() < 1e-6);
        let many = ServeReport::new(info(), &load(100), &[], &[99.0]);
        let table = many.to_string();
        assert!(table.contains("P99 TTFT (ms):"), "{table}");
        assert!(!table.contains("Max of"), "{table}");
    }

    #[test]
    fn vllm_field_names_percentiles_and_goodput() {
        let outcomes = vec![
            Outcome {
                kind: Kind::Load,
                sent_at: 0.0,
                images: 1,
                result: Ok(timing(0.1, 1.1, 11)),
            },
            Outcome {
                kind: Kind::Load,
                sent_at: 0.5,
                images: 1,
                result: Ok(timing(0.3, 2.3, 11)),
            },
            Outcome {
                kind: Kind::Load,
                sent_at: 1.0,
                images: 1,
                result: Err(RequestError::new("HTTP 429")),
            },
            Outcome {
                kind: Kind::Probe,
                sent_at: 0.2,
                images: 0,
                result: Ok(timing(0.05, 0.5, 10)),
            },
        ];
        let report = ServeReport::new(
            info(),
            &outcomes,
            &["ttft:200".parse().unwrap()],
            &[50.0, 99.0],
        );
        assert_eq!((report.completed, report.failed), (2, 1));
        assert_eq!(report.total_output_tokens, 22);
        assert_eq!(report.total_image_tokens, 512);
        assert!((report.request_throughput - 1.0).abs() < 1e-9);
        assert!((report.request_goodput.unwrap() - 0.5).abs() < 1e-9);
        assert!((report.latencies["mean_ttft_ms"] - 200.0).abs() < 1e-6);
        assert!((report.latencies["median_ttft_ms"] - 200.0).abs() < 1e-6);
        assert!((report.latencies["p99_ttft_ms"] - 298.0).abs() < 1e-6);
        assert!((report.latencies["mean_tpot_ms"] - 150.0).abs() < 1e-6);
        assert!((report.latencies["p50_itl_ms"] - 150.0).abs() < 1e-6);
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "completed",
            "request_throughput",
            "output_throughput",
            "total_token_throughput",
            "mean_e2el_ms",
            "p99_tpot_ms",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["probes"]["completed"], 1);
        assert_eq!(report.errors, ["HTTP 429"]);
        let csv = csv(&outcomes);
        assert_eq!(csv.lines().count(), 5);
        assert!(
            csv.lines()
                .nth(3)
                .unwrap()
                .starts_with("load,1.000000,false")
        );
    }

    #[test]
    fn slos_parse() {
        assert_eq!("tpot:50".parse::<Slo>(), Ok(Slo::Tpot(50.0)));
        assert!("ttft".parse::<Slo>().is_err());
        assert!("foo:1".parse::<Slo>().is_err());
        assert!("e2el:-1".parse::<Slo>().is_err());
    }

    #[test]
    fn sweep_rows_carry_their_rate_under_one_header() {
        let outcomes = vec![Outcome {
            kind: Kind::Load,
            sent_at: 0.0,
            images: 1,
            result: Ok(timing(0.1, 1.1, 11)),
        }];
        let mut all_at_once = info();
        all_at_once.request_rate = None;
        let runs = vec![
            (
                ServeReport::new(info(), &outcomes, &[], &[50.0]),
                outcomes.clone(),
            ),
            (
                ServeReport::new(all_at_once, &outcomes, &[], &[50.0]),
                outcomes.clone(),
            ),
        ];
        let text = sweep_csv(&runs);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("request_rate,kind,"));
        assert!(lines[1].starts_with("2,load,") && lines[2].starts_with("inf,load,"));
    }
}
