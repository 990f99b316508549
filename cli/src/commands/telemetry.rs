//! `--otlp-endpoint`: where a server exports its traces (OpenTelemetry, OTLP), beside the
//! standard `OTEL_*` variables (see `dvd_serve::telemetry`).

use anyhow::Result;
use clap::Args;
use dvd_serve::telemetry::TelemetryConfig;

/// `--otlp-endpoint`.
#[derive(Debug, Clone, Default, Args)]
pub struct TelemetryArgs {
    /// Export traces to this OpenTelemetry collector (OTLP, `http://host:port`; gRPC unless
    /// OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf). Wins over OTEL_EXPORTER_OTLP_ENDPOINT;
    /// without either, tracing is off.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
}

impl TelemetryArgs {
    /// The tracing of a process whose spans are `service`'s (unless OTEL_SERVICE_NAME says
    /// otherwise); `None` when off.
    pub fn config(&self, service: &str) -> Result<Option<TelemetryConfig>> {
        Ok(TelemetryConfig::from_env(
            self.otlp_endpoint.as_deref(),
            service,
        )?)
    }

    /// The flag as a child process's arguments (empty when not given).
    pub fn to_args(&self) -> Vec<String> {
        self.otlp_endpoint
            .iter()
            .flat_map(|e| ["--otlp-endpoint".to_string(), e.clone()])
            .collect()
    }
}
