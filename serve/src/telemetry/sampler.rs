//! [`SamplerChoice`]: which traces a server records, from `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`.

use opentelemetry_sdk::trace::Sampler;

use super::error::TelemetryError;

/// A sampler named as the OpenTelemetry specification names them.
#[derive(Debug, Clone, PartialEq)]
pub enum SamplerChoice {
    /// Every trace (`always_on`).
    AlwaysOn,
    /// None (`always_off`).
    AlwaysOff,
    /// This fraction of traces, by trace id (`traceidratio`).
    TraceIdRatio(f64),
    /// The caller's decision when there is a caller, else the inner choice
    /// (`parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`).
    ParentBased(Box<SamplerChoice>),
}

impl SamplerChoice {
    /// The sampler `name` and `arg` choose; without a name, `parentbased_always_on` (the
    /// specification's default). A ratio's argument defaults to 1.
    pub fn from_env(name: Option<&str>, arg: Option<&str>) -> Result<Self, TelemetryError> {
        let ratio = || -> Result<f64, TelemetryError> {
            let Some(arg) = arg else {
                return Ok(1.0);
            };
            match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(TelemetryError::SamplerArg(arg.to_owned())),
            }
        };
        let parent_based = |inner: Self| Self::ParentBased(Box::new(inner));
        Ok(
            match name.map(str::trim).unwrap_or("parentbased_always_on") {
                "always_on" => Self::AlwaysOn,
                "always_off" => Self::AlwaysOff,
                "traceidratio" => Self::TraceIdRatio(ratio()?),
                "parentbased_always_on" => parent_based(Self::AlwaysOn),
                "parentbased_always_off" => parent_based(Self::AlwaysOff),
                "parentbased_traceidratio" => parent_based(Self::TraceIdRatio(ratio()?)),
                other => return Err(TelemetryError::Sampler(other.to_owned())),
            },
        )
    }

    /// The SDK's sampler for this choice.
    pub fn sampler(&self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(*r),
            Self::ParentBased(inner) => Sampler::ParentBased(Box::new(inner.sampler())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_arguments_parse() {
        let parse = |name, arg| SamplerChoice::from_env(name, arg).unwrap();
        assert_eq!(parse(Some("always_on"), None), SamplerChoice::AlwaysOn);
        assert_eq!(
            parse(Some("always_off"), Some("0.3")),
            SamplerChoice::AlwaysOff
        );
        assert_eq!(
            parse(Some("traceidratio"), Some("0.25")),
            SamplerChoice::TraceIdRatio(0.25)
        );
        assert_eq!(
            parse(Some("traceidratio"), None),
            SamplerChoice::TraceIdRatio(1.0)
        );
        assert_eq!(
            parse(Some("parentbased_traceidratio"), Some("0.5")),
            SamplerChoice::ParentBased(Box::new(SamplerChoice::TraceIdRatio(0.5)))
        );
        assert_eq!(
            parse(Some("parentbased_always_off"), None),
            SamplerChoice::ParentBased(Box::new(SamplerChoice::AlwaysOff))
        );
        assert_eq!(
            parse(None, None),
            SamplerChoice::ParentBased(Box::new(SamplerChoice::AlwaysOn))
        );
    }

    #[test]
    fn unknown_names_and_bad_ratios_are_refused() {
        let err = SamplerChoice::from_env(Some("jaeger_remote"), None).unwrap_err();
        assert!(err.to_string().contains("jaeger_remote"), "{err}");
        for bad in ["1.5", "-0.1", "half"] {
            let err = SamplerChoice::from_env(Some("traceidratio"), Some(bad)).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
