//! Gateway metrics in the Prometheus text exposition format: requests by front door and outcome,
//! latency histograms (time to first token, inter-token, end to end, and each pipeline stage),
//! pool sizes and health, embedding-cache hits and feature bytes moved.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use std::time::Duration;

pub use dvd_serve::Histogram;

/// Pipeline stages timed per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Vision server: waiting before preprocessing.
    VisionQueue,
    /// Vision server: decode and tile.
    Preprocess,
    /// Vision server: encoder.
    Encode,
    /// Vision server: writing features to the transport.
    Transfer,
    /// Language server: waiting for features after admission.
    FeatureWait,
    /// Language server: prefill.
    Prefill,
    /// Language server: decode.
    Decode,
}

impl Stage {
    const ALL: [Stage; 7] = [
        Stage::VisionQueue,
        Stage::Preprocess,
        Stage::Encode,
        Stage::Transfer,
        Stage::FeatureWait,
        Stage::Prefill,
        Stage::Decode,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::VisionQueue => "vision_queue",
            Self::Preprocess => "preprocess",
            Self::Encode => "encode",
            Self::Transfer => "transfer",
            Self::FeatureWait => "feature_wait",
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

/// Health of one pool at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGauge {
    /// `vision` or `language`.
    pub pool: &'static str,
    /// Members.
    pub members: usize,
    /// Members whose last check passed.
    pub healthy: usize,
}

/// Every metric of the gateway.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Time to first token.
    pub ttft: Histogram,
    /// Between consecutive streamed deltas.
    pub inter_token: Histogram,
    /// Whole request.
    pub end_to_end: Histogram,
    stages: [Histogram; 7],
    images: AtomicU64,
    cache_hits: AtomicU64,
    feature_bytes: AtomicU64,
    retries: AtomicU64,
    busy_waits: AtomicU64,
}

impl Metrics {
    /// Counts a finished request: `front` is `http` or `grpc`, `outcome` a status (`200`, `429`,
    /// `OK`, `UNAVAILABLE`...).
    pub fn request(&self, front: &'static str, outcome: impl Into<String>) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((front, outcome.into()))
            .or_default() += 1;
    }

    /// Records a stage's time.
    pub fn stage(&self, stage: Stage, d: Duration) {
        if let Some(i) = Stage::ALL.iter().position(|&s| s == stage) {
            self.stages[i].observe(d);
        }
    }

    /// Counts an encoded image and whether the vision server's cache had it.
    pub fn image(&self, cache_hit: bool) {
        self.images.fetch_add(1, Ordering::Relaxed);
        if cache_hit {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts feature bytes a vision server sent for a request.
    pub fn feature_bytes(&self, bytes: u64) {
        self.feature_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a retried attempt.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a wait of an admitted request for a full pool to take it.
    pub fn busy_wait(&self) {
        self.busy_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition, with the pools' gauges.
    pub fn render(&self, pools: &[PoolGauge]) -> String {
        let mut out = String::new();
        out.push_str("# HELP dvd_gateway_requests_total Requests by front door and outcome.\n");
        out.push_str("# TYPE dvd_gateway_requests_total counter\n");
        for ((front, outcome), n) in self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "dvd_gateway_requests_total{{front=\"{front}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        for (name, help, h) in [
            (
                "dvd_gateway_ttft_seconds",
                "Time to first token.",
                &self.ttft,
            ),
            (
                "dvd_gateway_inter_token_seconds",
                "Time between streamed deltas.",
                &self.inter_token,
            ),
            (
                "dvd_gateway_request_seconds",
                "End-to-end request time.",
                &self.end_to_end,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(&mut out, name, "");
        }
        out.push_str("# HELP dvd_gateway_stage_seconds Time per pipeline stage.\n");
        out.push_str("# TYPE dvd_gateway_stage_seconds histogram\n");
        for (stage, h) in Stage::ALL.iter().zip(&self.stages) {
            h.render(
                &mut out,
                "dvd_gateway_stage_seconds",
                &format!("stage=\"{}\"", stage.name()),
            );
        }
        out.push_str("# HELP dvd_gateway_pool_servers Servers per pool and health.\n");
        out.push_str("# TYPE dvd_gateway_pool_servers gauge\n");
        for p in pools {
            let _ = writeln!(
                out,
                "dvd_gateway_pool_servers{{pool=\"{}\",state=\"healthy\"}} {}",
                p.pool, p.healthy
            );
            let _ = writeln!(
                out,
                "dvd_gateway_pool_servers{{pool=\"{}\",state=\"unhealthy\"}} {}",
                p.pool,
                p.members - p.healthy
            );
        }
        let images = self.images.load(Ordering::Relaxed);
        let hits = self.cache_hits.load(Ordering::Relaxed);
        for (name, kind, help, value) in [
            (
                "dvd_gateway_images_total",
                "counter",
                "Images encoded.",
                images as f64,
            ),
            (
                "dvd_gateway_embedding_cache_hits_total",
                "counter",
                "Images served from a vision server's embedding cache.",
                hits as f64,
            ),
            (
                "dvd_gateway_embedding_cache_hit_ratio",
                "gauge",
                "Embedding-cache hits over images.",
                if images == 0 {
                    0.0
                } else {
                    hits as f64 / images as f64
                },
            ),
            (
                "dvd_gateway_feature_bytes_total",
                "counter",
                "Feature bytes sent from vision to language servers.",
                self.feature_bytes.load(Ordering::Relaxed) as f64,
            ),
            (
                "dvd_gateway_retries_total",
                "counter",
                "Requests retried after a vision-stage failure.",
                self.retries.load(Ordering::Relaxed) as f64,
            ),
            (
                "dvd_gateway_busy_waits_total",
                "counter",
                "Waits of admitted requests for a full vision or language server to take them.",
                self.busy_waits.load(Ordering::Relaxed) as f64,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.request("http", "200");
        m.request("http", "200");
        m.ttft.observe(Duration::from_millis(30));
        m.stage(Stage::Encode, Duration::from_millis(7));
        m.image(true);
        m.image(false);
        let text = m.render(&[PoolGauge {
            pool: "vision",
            members: 2,
            healthy: 1,
        }]);
        assert!(text.contains("dvd_gateway_requests_total{front=\"http\",outcome=\"200\"} 2"));
        assert!(text.contains("dvd_gateway_ttft_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("dvd_gateway_ttft_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("dvd_gateway_ttft_seconds_count 1"));
        assert!(text.contains("dvd_gateway_stage_seconds_count{stage=\"encode\"} 1"));
        assert!(text.contains("dvd_gateway_pool_servers{pool=\"vision\",state=\"unhealthy\"} 1"));
        assert!(text.contains("dvd_gateway_embedding_cache_hit_ratio 0.5"));
    }
}
