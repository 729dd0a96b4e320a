//! Logging and tracing: tracing-subscriber, with OTLP export when an endpoint is configured.

use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::TestWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variables the OTLP exporter reads its endpoint from.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long dropping the guard may wait for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct TelemetryOptions {
    pub log_format: LogFormat,
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`. Without one, spans are exported
    /// only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: &'static str,
}

/// Keeps span export running; dropping it flushes the last spans and shuts the exporter down.
#[must_use = "dropping the guard stops span export"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Shutting down blocks until the batch is exported; the tonic channel it uses runs
            // on the Tokio runtime, which must not be the thread we block, so block another one.
            let done =
                std::thread::spawn(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)).join();
            match done {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "flushing spans at shutdown failed"),
                Err(_) => tracing::warn!("flushing spans at shutdown panicked"),
            }
        }
    }
}

/// Installs the global tracing subscriber: `RUST_LOG` filtering (default `info`), text or JSON
/// logs on stderr, and OTLP/gRPC span export when an endpoint is configured. OTLP export needs
/// a Tokio runtime: call this from within one. Fails if a global subscriber is already set.
pub fn init(options: TelemetryOptions) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()
        .context("invalid RUST_LOG")?;

    let (text, json) = match options.log_format {
        LogFormat::Text => (
            Some(tracing_subscriber::fmt::layer().with_writer(stderr())),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(stderr()),
            ),
        ),
    };

    let endpoint = otlp_endpoint(options.otlp_endpoint.as_deref(), |var| {
        std::env::var(var).ok()
    });
    let provider = endpoint
        .map(|endpoint| tracer_provider(endpoint.as_deref(), options.service_name))
        .transpose()?;
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(options.service_name)));

    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel)
        .try_init();
    if let Err(error) = installed {
        if let Some(provider) = provider {
            // Nothing was exported yet; this only stops the exporter's thread.
            let _ = provider.shutdown();
        }
        return Err(error).context("installing the tracing subscriber");
    }
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing::info!(
            endpoint = options
                .otlp_endpoint
                .as_deref()
                .unwrap_or("from the environment"),
            "exporting spans over OTLP/gRPC"
        );
    }
    Ok(TelemetryGuard { provider })
}

/// Logs go to stderr; under `cargo test`, through the test harness so they stay captured.
fn stderr() -> BoxMakeWriter {
    if cfg!(test) {
        BoxMakeWriter::new(TestWriter::new())
    } else {
        BoxMakeWriter::new(std::io::stderr)
    }
}

/// Whether to export spans, and where: `Some(Some(url))` from the options, `Some(None)` when
/// only the environment names one (the exporter reads it there), `None` not at all.
fn otlp_endpoint(
    configured: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<Option<String>> {
    match configured.filter(|e| !e.is_empty()) {
        Some(endpoint) => Some(Some(endpoint.to_string())),
        None => ENDPOINT_VARS
            .iter()
            .any(|var| env(var).is_some_and(|v| !v.is_empty()))
            .then_some(None),
    }
}

/// An OTLP/gRPC exporter behind a batch processor.
fn tracer_provider(
    endpoint: Option<&str>,
    service_name: &'static str,
) -> anyhow::Result<SdkTracerProvider> {
    // The tonic channel spawns its connection task here, so it needs the runtime now.
    tokio::runtime::Handle::try_current()
        .context("OTLP span export needs a Tokio runtime; initialise telemetry inside it")?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = builder.build().context("building the OTLP span exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build())
        .with_batch_exporter(exporter)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::Tracer as _;

    #[test]
    fn the_endpoint_comes_from_options_then_the_environment() {
        let none = |_: &str| None;
        assert_eq!(otlp_endpoint(None, none), None);
        assert_eq!(otlp_endpoint(Some(""), none), None);
        assert_eq!(
            otlp_endpoint(Some("http://c:4317"), none),
            Some(Some("http://c:4317".to_string()))
        );
        let env =
            |var: &str| (var == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://e:4317".into());
        assert_eq!(otlp_endpoint(None, env), Some(None));
    }

    // The one test in this process that installs the global subscriber.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_without_an_endpoint_logs_and_a_second_init_fails() {
        let guard = init(TelemetryOptions {
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            service_name: "straitd-test",
        })
        .expect("the first init succeeds");
        tracing::info!(answer = 42, "telemetry test");
        let again = init(TelemetryOptions {
            log_format: LogFormat::Json,
            otlp_endpoint: None,
            service_name: "straitd-test",
        });
        assert!(again.is_err());
        drop(guard);
    }

    #[test]
    fn otlp_export_needs_a_runtime() {
        let err = tracer_provider(Some("http://127.0.0.1:1"), "t").unwrap_err();
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_collector_does_not_hang_shutdown() {
        let provider = tracer_provider(Some("http://127.0.0.1:1"), "t").unwrap();
        provider.tracer("t").in_span("work", |_| {});
        let guard = TelemetryGuard {
            provider: Some(provider),
        };
        let start = std::time::Instant::now();
        drop(guard);
        assert!(start.elapsed() < SHUTDOWN_TIMEOUT + Duration::from_secs(2));
    }
}
