//! [`TelemetryError`]: a tracing configuration that cannot be used.

/// Why tracing could not be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint is not an `http://` URL.
    #[error(
        "{source_name}: {value:?} is not an OTLP endpoint URL (http://host:port; the exporter \
         does not speak TLS: point it at a collector beside the server)"
    )]
    Endpoint {
        /// Where the value came from (`--otlp-endpoint` or the variable).
        source_name: &'static str,
        /// The value.
        value: String,
    },
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` names a protocol dvd does not speak.
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL: {0:?} is not one of grpc, http/protobuf")]
    Protocol(String),
    /// `OTEL_TRACES_SAMPLER` names an unknown sampler.
    #[error(
        "OTEL_TRACES_SAMPLER: {0:?} is not one of always_on, always_off, traceidratio, \
         parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
    )]
    Sampler(String),
    /// `OTEL_TRACES_SAMPLER_ARG` is not a ratio.
    #[error("OTEL_TRACES_SAMPLER_ARG: {0:?} is not a ratio between 0 and 1")]
    SamplerArg(String),
    /// A numeric variable does not hold a whole number (at least 1 for sizes).
    #[error("{variable}: {value:?} is not a whole number (at least 1 for a size)")]
    Number {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// The exporter or its thread could not be started.
    #[error("starting the OTLP exporter: {0}")]
    Exporter(String),
    /// A global `tracing` subscriber was already installed.
    #[error("installing the tracing subscriber: {0}")]
    Subscriber(String),
}
