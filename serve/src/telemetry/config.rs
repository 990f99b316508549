//! [`TelemetryConfig`]: where a server's spans go, resolved from `--otlp-endpoint` and the
//! standard `OTEL_*` environment variables (the flag wins). Tracing is off unless an endpoint is
//! given one way or the other.

use std::time::Duration;

use super::error::TelemetryError;
use super::sampler::SamplerChoice;

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (`grpc`), to the endpoint as given (a collector listens on 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (`http/protobuf`), to `<endpoint>/v1/traces` (a
    /// collector listens on 4318).
    HttpProtobuf,
}

impl Protocol {
    /// Parses an `OTEL_EXPORTER_OTLP_PROTOCOL` value.
    pub fn parse(value: &str) -> Result<Self, TelemetryError> {
        match value.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            _ => Err(TelemetryError::Protocol(value.to_owned())),
        }
    }
}

/// How finished spans are batched on their way out (the `OTEL_BSP_*` variables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Longest wait before a batch that is not full is sent (`OTEL_BSP_SCHEDULE_DELAY`, ms).
    pub schedule_delay: Duration,
    /// Finished spans waiting to be sent; beyond it new ones are dropped
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue_size: usize,
    /// Most spans in one export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_export_batch_size: usize,
    /// Longest one export may take before its spans count as dropped
    /// (`OTEL_BSP_EXPORT_TIMEOUT`, ms).
    pub export_timeout: Duration,
}

impl Default for BatchSettings {
    /// The OpenTelemetry specification's defaults.
    fn default() -> Self {
        Self {
            schedule_delay: Duration::from_millis(5000),
            max_queue_size: 2048,
            max_export_batch_size: 512,
            export_timeout: Duration::from_millis(30_000),
        }
    }
}

/// Where and how a server exports its spans.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The collector's OTLP endpoint (`http://host:port`: plain HTTP/2 or HTTP/1.1, as to a
    /// collector beside the server).
    pub endpoint: String,
    /// gRPC or HTTP/protobuf.
    pub protocol: Protocol,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Which traces are recorded.
    pub sampler: SamplerChoice,
    /// How spans are batched.
    pub batch: BatchSettings,
}

impl TelemetryConfig {
    /// The configuration of a server named `default_service` (`dvd-gateway`, ...) with
    /// `--otlp-endpoint` set to `flag`, reading the environment through `env`; `None` when no
    /// endpoint is given (tracing off) or `OTEL_SDK_DISABLED` is `true`.
    pub fn resolve(
        flag: Option<&str>,
        default_service: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TelemetryError> {
        // Unset and empty are the same to the OpenTelemetry specification.
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let endpoint = match flag {
            Some(flag) => endpoint("--otlp-endpoint", flag)?,
            None => match var("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(value) => endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &value)?,
                None => return Ok(None),
            },
        };
        let protocol = match var("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(value) => Protocol::parse(&value)?,
            None => Protocol::Grpc,
        };
        let sampler = SamplerChoice::from_env(
            var("OTEL_TRACES_SAMPLER").as_deref(),
            var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        let defaults = BatchSettings::default();
        let millis = |name: &'static str, default: Duration| -> Result<Duration, TelemetryError> {
            Ok(match var(name) {
                Some(value) => Duration::from_millis(number(name, &value)?),
                None => default,
            })
        };
        let count = |name: &'static str, default: usize| -> Result<usize, TelemetryError> {
            match var(name) {
                Some(value) => match number(name, &value)? {
                    0 => Err(TelemetryError::Number {
                        variable: name,
                        value,
                    }),
                    n => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
                },
                None => Ok(default),
            }
        };
        let batch = BatchSettings {
            schedule_delay: millis("OTEL_BSP_SCHEDULE_DELAY", defaults.schedule_delay)?,
            max_queue_size: count("OTEL_BSP_MAX_QUEUE_SIZE", defaults.max_queue_size)?,
            max_export_batch_size: count(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                defaults.max_export_batch_size,
            )?,
            export_timeout: millis("OTEL_BSP_EXPORT_TIMEOUT", defaults.export_timeout)?,
        };
        Ok(Some(Self {
            endpoint,
            protocol,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_owned()),
            sampler,
            batch,
        }))
    }

    /// [`TelemetryConfig::resolve`] over the process environment.
    pub fn from_env(
        flag: Option<&str>,
        default_service: &str,
    ) -> Result<Option<Self>, TelemetryError> {
        Self::resolve(flag, default_service, |name| std::env::var(name).ok())
    }

    /// The URL spans are sent to: the endpoint itself over gRPC, `/v1/traces` under it over
    /// HTTP.
    pub fn traces_url(&self) -> String {
        match self.protocol {
            Protocol::Grpc => self.endpoint.clone(),
            Protocol::HttpProtobuf => format!("{}/v1/traces", self.endpoint.trim_end_matches('/')),
        }
    }
}

/// `value` checked as an endpoint URL (`http://` and a host), from `source`.
fn endpoint(source: &'static str, value: &str) -> Result<String, TelemetryError> {
    let value = value.trim();
    match value.strip_prefix("http://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(value.to_owned()),
        _ => Err(TelemetryError::Endpoint {
            source_name: source,
            value: value.to_owned(),
        }),
    }
}

/// `value` of variable `name` as a whole number.
fn number(name: &'static str, value: &str) -> Result<u64, TelemetryError> {
    value.trim().parse().map_err(|_| TelemetryError::Number {
        variable: name,
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(
        flag: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<Option<TelemetryConfig>, TelemetryError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetryConfig::resolve(flag, "dvd-vision", |name| vars.get(name).cloned())
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(resolve(None, &[]).unwrap(), None);
        assert_eq!(
            resolve(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap(),
            None
        );
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(resolve(Some("http://x:4317"), &disabled).unwrap(), None);
    }

    #[test]
    fn the_flag_wins_over_the_environment() {
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-env:4317")];
        let config = resolve(Some("http://from-flag:4317"), &env)
            .unwrap()
            .unwrap();
        assert_eq!(config.endpoint, "http://from-flag:4317");
        let config = resolve(None, &env).unwrap().unwrap();
        assert_eq!(config.endpoint, "http://from-env:4317");
    }

    #[test]
    fn defaults_follow_the_specification() {
        let config = resolve(Some("http://c:4317"), &[]).unwrap().unwrap();
        assert_eq!(config.protocol, Protocol::Grpc);
        assert_eq!(config.service_name, "dvd-vision");
        assert_eq!(
            config.sampler,
            SamplerChoice::ParentBased(Box::new(SamplerChoice::AlwaysOn))
        );
        assert_eq!(config.batch, BatchSettings::default());
        assert_eq!(config.traces_url(), "http://c:4317");
    }

    #[test]
    fn protocol_service_name_and_batching_come_from_the_environment() {
        let env = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "encoder-eu"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
        ];
        let config = resolve(Some("http://c:4318/"), &env).unwrap().unwrap();
        assert_eq!(config.protocol, Protocol::HttpProtobuf);
        assert_eq!(config.traces_url(), "http://c:4318/v1/traces");
        assert_eq!(config.service_name, "encoder-eu");
        assert_eq!(config.batch.schedule_delay, Duration::from_millis(100));
        assert_eq!(config.batch.max_queue_size, 64);
        assert_eq!(config.batch.max_export_batch_size, 512);
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let err = resolve(Some("collector:4317"), &[]).unwrap_err();
        assert!(err.to_string().contains("--otlp-endpoint"), "{err}");
        let err = resolve(Some("https://collector:4317"), &[]).unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
        let err = resolve(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://")]).unwrap_err();
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{err}"
        );
        let err = resolve(
            Some("http://c"),
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("grpc, http/protobuf"), "{err}");
        let err = resolve(Some("http://c"), &[("OTEL_BSP_SCHEDULE_DELAY", "soon")]).unwrap_err();
        assert!(err.to_string().contains("OTEL_BSP_SCHEDULE_DELAY"), "{err}");
        let err = resolve(Some("http://c"), &[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).unwrap_err();
        assert!(err.to_string().contains("OTEL_BSP_MAX_QUEUE_SIZE"), "{err}");
    }
}
