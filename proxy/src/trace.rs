//! W3C trace context and span export: a server span per request, child of the caller's
//! `traceparent` (or a new trace), whose id goes upstream as the new parent; spans are exported
//! over OTLP/gRPC. Without an endpoint none of this runs and both headers pass through as sent.

use std::str::FromStr;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// How long shutdown may wait for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("OTLP span export needs a Tokio runtime; start it inside one")]
    NoRuntime,
    #[error("building the OTLP span exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Span export to one OTLP/gRPC collector.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// A request's server span; it ends (and is queued for export) when dropped.
#[derive(Debug)]
pub struct ServerSpan(opentelemetry_sdk::trace::Span);

/// A parsed `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: TraceFlags,
}

impl Tracing {
    /// Exports to `endpoint` (e.g. `http://127.0.0.1:4317`) as `service_name`, through a batch
    /// processor. The exporter's channel runs on the current Tokio runtime.
    pub fn new(endpoint: &str, service_name: &str) -> Result<Tracing, TraceError> {
        tokio::runtime::Handle::try_current().map_err(|_| TraceError::NoRuntime)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|source| TraceError::Exporter {
                endpoint: endpoint.to_string(),
                source,
            })?;
        let provider = SdkTracerProvider::builder()
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_string())
                    .build(),
            )
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer("strait-proxy");
        Ok(Tracing { provider, tracer })
    }

    /// Starts the span for a request and points its `traceparent` at it for the upstream. A
    /// valid incoming `traceparent` makes the span its child (sampled as the caller says) and
    /// `tracestate` stays as sent; otherwise a new trace starts and a stale `tracestate` goes.
    pub fn start(&self, name: String, method: &str, headers: &mut HeaderMap) -> ServerSpan {
        let incoming = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let parent = match incoming {
            Some(tp) => {
                let state = headers
                    .get(TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| TraceState::from_str(v).ok())
                    .unwrap_or_default();
                Context::new().with_remote_span_context(SpanContext::new(
                    tp.trace_id,
                    tp.parent_id,
                    tp.flags,
                    true,
                    state,
                ))
            }
            None => {
                headers.remove(TRACESTATE);
                Context::new()
            }
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method.to_string())])
            .start_with_context(&self.tracer, &parent);
        let sc = span.span_context();
        let value = TraceParent {
            trace_id: sc.trace_id(),
            parent_id: sc.span_id(),
            flags: sc.trace_flags(),
        }
        .to_string();
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(TRACEPARENT, v);
        }
        ServerSpan(span)
    }

    /// Exports what is queued now.
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "flushing spans failed");
        }
    }

    /// Exports the last spans and stops the exporter; blocks, so run it off the runtime's
    /// worker threads.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(%error, "flushing spans at shutdown failed");
        }
    }
}

impl ServerSpan {
    /// What routing chose.
    pub fn routed(&mut self, route: &str, cluster: Option<&str>) {
        self.0
            .set_attribute(KeyValue::new("route.name", route.to_string()));
        if let Some(cluster) = cluster {
            self.0
                .set_attribute(KeyValue::new("upstream_cluster", cluster.to_string()));
        }
    }

    /// The status sent downstream; 5xx marks the span as an error, as Envoy does.
    pub fn responded(&mut self, status: u16) {
        self.0.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            self.0.set_status(Status::error(""));
        }
    }
}

impl TraceParent {
    /// Parses a `traceparent` as W3C Trace Context level 1 says: version 00 is exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>`; later versions may append `-...`; `ff`, upper-case hex
    /// and all-zero ids are invalid.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim_matches([' ', '\t']);
        let b = value.as_bytes();
        let hex = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        };
        let version = value.get(..2)?;
        if !hex(version) || version == "ff" {
            return None;
        }
        match (version, b.len()) {
            (_, n) if n < 55 => return None,
            ("00", 55) => {}
            ("00", _) => return None,
            (_, 55) => {}
            (_, _) if b[55] == b'-' => {}
            _ => return None,
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let (trace, parent, flags) = (value.get(3..35)?, value.get(36..52)?, value.get(53..55)?);
        if !hex(trace) || !hex(parent) || !hex(flags) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let parent_id = SpanId::from_hex(parent).ok()?;
        if trace_id == TraceId::INVALID || parent_id == SpanId::INVALID {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent {
            trace_id,
            parent_id,
            // Level 1 defines only the sampled bit; we speak version 00.
            flags: TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        })
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.parent_id,
            self.flags.to_u8()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_a_valid_traceparent() {
        let tp = TraceParent::parse(VALID).expect("valid");
        assert_eq!(
            tp.trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
        );
        assert_eq!(
            tp.parent_id,
            SpanId::from_hex("00f067aa0ba902b7").expect("hex")
        );
        assert!(tp.flags.is_sampled());
        assert_eq!(tp.to_string(), VALID);
        let unsampled = TraceParent::parse(&VALID.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.flags.is_sampled());
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields after a dash.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }
}
