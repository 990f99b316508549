//! Logs and distributed traces of a dvd process: [`install`] sets up the `tracing` subscriber
//! every command logs through (stderr, filtered by `RUST_LOG`) and, for a server given an OTLP
//! endpoint, an OpenTelemetry layer that exports dvd's spans to a collector.
//!
//! - [`TelemetryConfig`]: the endpoint, protocol, service name, sampler and batching, from
//!   `--otlp-endpoint` and the `OTEL_*` variables;
//! - `export.rs`: the span processor that never makes a request wait, counting what it drops
//!   ([`spans_dropped`], exposed as `dvd_trace_spans_dropped_total`);
//! - [`propagation`]: W3C `traceparent` in and out of gRPC metadata and HTTP headers.

mod config;
mod error;
mod export;
pub mod propagation;
mod sampler;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter as _};
use tracing::{Level, Metadata};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use config::{BatchSettings, Protocol, TelemetryConfig};
pub use error::TelemetryError;
pub use export::QueuedExport;
pub use sampler::SamplerChoice;

use crate::Exposition;

/// Spans of this process that never reached the collector.
static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Finished spans this process dropped: its export queue was full, or an export failed or
/// timed out (a collector that is down or slow).
pub fn spans_dropped() -> u64 {
    SPANS_DROPPED.load(Ordering::Relaxed)
}

/// Adds `dvd_trace_spans_dropped_total` to a server's metrics.
pub fn expose(exposition: &mut Exposition) {
    exposition.counter(
        "dvd_trace_spans_dropped_total",
        "Finished trace spans dropped instead of exported (queue full, collector failed or slow).",
        spans_dropped(),
    );
}

/// The process's tracing, exported until dropped (dropping it sends what is still queued, for
/// at most a few seconds).
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "flushing trace spans at exit");
        }
    }
}

/// Installs the process's `tracing` subscriber: log lines on stderr as `RUST_LOG` says (`warn`
/// by default) and, with `traces`, dvd's spans exported over OTLP.
pub fn install(traces: Option<&TelemetryConfig>) -> Result<Telemetry, TelemetryError> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")));
    let provider = traces.map(provider).transpose()?;
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("dvd"))
            .with_threads(false)
            .with_filter(FilterFn::new(dvd_spans))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    Ok(Telemetry { provider })
}

/// What is exported: dvd's own spans and events (info and above; events become events of the
/// span they happen in); nothing from the libraries below it (the exporter's own gRPC calls
/// included).
fn dvd_spans(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("dvd") && *meta.level() <= Level::INFO
}

/// The tracer provider `config` describes, exporting through a [`QueuedExport`].
fn provider(config: &TelemetryConfig) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let exporter_config = config.clone();
    let exporter_resource = resource.clone();
    let processor = QueuedExport::start(
        move || {
            let mut exporter = exporter(&exporter_config)?;
            exporter.set_resource(&exporter_resource);
            Ok(exporter)
        },
        config.batch,
        &SPANS_DROPPED,
    )?;
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(config.sampler.sampler())
        .with_span_processor(processor)
        .build())
}

/// The OTLP exporter for `config`'s protocol and endpoint (built on the export thread).
fn exporter(config: &TelemetryConfig) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let built = match config.protocol {
        Protocol::Grpc => builder
            .with_tonic()
            .with_endpoint(config.traces_url())
            .with_timeout(config.batch.export_timeout)
            .build(),
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.traces_url())
            .with_timeout(config.batch.export_timeout)
            .build(),
    };
    built.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use opentelemetry::trace::Tracer;

    use super::*;

    /// Over `http/protobuf` the exporter POSTs protobuf to `<endpoint>/v1/traces`.
    #[test]
    fn http_protobuf_posts_to_v1_traces() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = Vec::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = n.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
                head.push(line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            reader
                .into_inner()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            (head, body)
        });
        let config = TelemetryConfig::resolve(Some(&endpoint), "dvd-test", |name| {
            (name == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/protobuf".to_owned())
        })
        .unwrap()
        .unwrap();
        let provider = provider(&config).unwrap();
        provider.tracer("test").in_span("one", |_| {});
        provider.force_flush().unwrap();
        let (head, body) = received.join().unwrap();
        assert!(head[0].starts_with("POST /v1/traces "), "{head:?}");
        assert!(
            head.iter()
                .any(|h| h.eq_ignore_ascii_case("content-type: application/x-protobuf\r\n")),
            "{head:?}"
        );
        // The span's name and the service name are in the protobuf body.
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("one") && text.contains("dvd-test"), "{text}");
        provider.shutdown().unwrap();
    }
}
