//! W3C trace context (`traceparent`, `tracestate`) across processes: written into the gRPC
//! metadata of calls a server makes, read from the gRPC metadata or HTTP headers of calls it
//! receives, so that every process's spans join the caller's trace.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes the current span's trace context into `metadata` (nothing when tracing is off or the
/// span is not recorded).
pub fn inject_current(metadata: &mut MetadataMap) {
    inject(&Span::current(), metadata);
}

/// Writes `span`'s trace context into `metadata`.
pub fn inject(span: &Span, metadata: &mut MetadataMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut MetadataInjector(metadata));
}

/// A `tonic::Request` for `message` carrying the current span's trace context.
pub fn traced_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    inject_current(request.metadata_mut());
    request
}

/// Makes the trace context in `metadata` (from a caller) `span`'s parent; a call without one
/// leaves `span` a root. Call before `span` is first entered.
pub fn follow_metadata(span: &Span, metadata: &MetadataMap) {
    let context = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    let _ = span.set_parent(context);
}

/// Makes the trace context in the HTTP `headers` `span`'s parent, as [`follow_metadata`].
pub fn follow_headers(span: &Span, headers: &http::HeaderMap) {
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(context);
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::Context;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_context_survives_metadata_and_headers() {
        let propagator = TraceContextPropagator::new();
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", TRACEPARENT.parse().unwrap());
        let context = propagator.extract(&HeaderExtractor(&headers));
        let span = context.span();
        let remote = span.span_context();
        assert!(remote.is_valid() && remote.is_remote() && remote.is_sampled());

        let mut metadata = MetadataMap::new();
        propagator.inject_context(&context, &mut MetadataInjector(&mut metadata));
        assert_eq!(metadata.get("traceparent").unwrap(), TRACEPARENT);
        let back = propagator.extract(&MetadataExtractor(&metadata));
        assert_eq!(back.span().span_context().trace_id(), remote.trace_id());
        assert_eq!(back.span().span_context().span_id(), remote.span_id());
    }

    #[test]
    fn no_context_writes_nothing() {
        let context = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::INVALID,
            SpanId::INVALID,
            TraceFlags::default(),
            true,
            TraceState::default(),
        ));
        let mut metadata = MetadataMap::new();
        TraceContextPropagator::new()
            .inject_context(&context, &mut MetadataInjector(&mut metadata));
        assert!(metadata.is_empty());
        // Without a tracing layer the current span has no context either.
        inject_current(&mut metadata);
        assert!(metadata.is_empty());
    }
}
