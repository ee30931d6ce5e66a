//! Tracing for every Freshet service: structured logs, an OpenTelemetry OTLP
//! exporter when one is configured, and W3C trace-context propagation across
//! every gRPC hop (a client interceptor injects `traceparent`, the server's
//! request span adopts it), so one PutRecord is one trace from the frontend
//! to the storage worker.
//!
//! The exporter is on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and
//! `OTEL_SDK_DISABLED` is not `true`; logs follow `RUST_LOG` (default `info`).
//!
//! Logs are text for people (coloured only when stdout is a terminal, so a
//! redirected log file holds no escape codes; `NO_COLOR` turns colour off)
//! or JSON lines for machines (`json.rs`), each carrying the trace and span
//! ids of the request it belongs to.
//!
//! Span names follow OpenTelemetry's conventions through the `otel.name`
//! and `otel.kind` fields: a Kinesis call is `Kinesis.PutRecord` (server),
//! an internal call `freshet.v1.Storage/Append` (client in the caller,
//! server in the callee), with `rpc.*` attributes and an error status when
//! the call fails.

mod json;

use std::io::IsTerminal as _;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;

/// Flushes and shuts the exporter down when dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("failed to flush traces: {error}");
            }
        }
    }
}

fn exporter_wanted() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.is_empty());
    endpoint && !disabled
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Another subscriber was installed first.
    #[error("install the tracing subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
    #[error("build the OTLP exporter: {0}")]
    Exporter(String),
}

/// How a service writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people; colour only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, with `trace_id` and `span_id`.
    Json,
}

/// A log layer's filter: events as `RUST_LOG` says, spans as the trace
/// filter says (so a warning logged inside a request still carries it).
pub(crate) struct EventsAndSpans {
    pub(crate) events: EnvFilter,
    pub(crate) spans: EnvFilter,
}

impl<S> tracing_subscriber::layer::Filter<S> for EventsAndSpans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        context: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let filter = if metadata.is_span() {
            &self.spans
        } else {
            &self.events
        };
        tracing_subscriber::layer::Filter::<S>::enabled(filter, metadata, context)
    }

    fn callsite_enabled(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        let filter = if metadata.is_span() {
            &self.spans
        } else {
            &self.events
        };
        tracing_subscriber::layer::Filter::<S>::callsite_enabled(filter, metadata)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        let events = tracing_subscriber::layer::Filter::<S>::max_level_hint(&self.events)?;
        let spans = tracing_subscriber::layer::Filter::<S>::max_level_hint(&self.spans)?;
        Some(events.max(spans))
    }
}

fn colour_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Installs the global subscriber for a service process. Call once, from
/// inside the tokio runtime, before serving.
pub fn init(
    service_name: &'static str,
    format: LogFormat,
) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Logs and traces are filtered apart: `RUST_LOG=warn` keeps the logs
    // quiet without losing a request's spans (`FRESHET_TRACE_FILTER`,
    // default `info`, decides those).
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let trace_filter =
        EnvFilter::try_from_env("FRESHET_TRACE_FILTER").unwrap_or_else(|_| EnvFilter::new("info"));
    // A log line names the spans it happened in (and, in JSON, their
    // trace ids): the log layer sees the spans tracing exports, whatever
    // level its events are filtered to.
    let log_filter = EventsAndSpans {
        events: log_filter,
        spans: EnvFilter::try_from_env("FRESHET_TRACE_FILTER")
            .unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(colour_wanted())
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => json::JsonLines::new(|| Box::new(std::io::stdout()))
            .with_filter(log_filter)
            .boxed(),
    };
    // Spans get OpenTelemetry ids when they are exported, and when JSON
    // logs need them to tie lines to traces (then nothing is exported).
    let provider = if exporter_wanted() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        Some(SdkTracerProvider::builder().with_batch_exporter(exporter))
    } else if format == LogFormat::Json {
        Some(SdkTracerProvider::builder())
    } else {
        None
    };
    let Some(provider) = provider else {
        tracing_subscriber::registry().with(fmt).try_init()?;
        return Ok(TelemetryGuard { provider: None });
    };
    let provider = provider
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name)
                .build(),
        )
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service_name))
        .with_filter(trace_filter);
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// Installs a subscriber for tests (logs to the test's captured output);
/// later calls in the same process are no-ops.
pub fn init_for_tests() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .try_init();
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

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// A W3C `traceparent` for a call made outside any request: fresh ids,
/// the *sampled* flag off. The callee's spans follow their parent and are
/// not exported, so a service's own background calls (heartbeats, timer
/// polls, idle catch-up) do not each become a trace of their own.
pub fn unsampled_traceparent() -> String {
    use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
    let ids = RandomIdGenerator::default();
    format!("00-{}-{}-00", ids.new_trace_id(), ids.new_span_id())
}

/// Writes the current span's trace context into outgoing gRPC metadata.
pub fn inject_current_context(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// The span a gRPC server opens per request, parented to the caller's trace
/// (use with `tonic::transport::Server::trace_fn`): named after the call
/// (`freshet.v1.Storage/Append`), kind server, its status recorded when
/// the call is answered.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path().trim_start_matches('/');
    let (service, method) = rpc_parts(path);
    let span = tracing::info_span!(
        "grpc",
        otel.name = path,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}

/// A gRPC path's service and method: `/freshet.v1.Storage/Append` →
/// (`freshet.v1.Storage`, `Append`); a path without a method is all service.
pub fn rpc_parts(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// Extracts a trace context from HTTP headers (the frontend uses it for
/// callers that send `traceparent`).
pub fn context_from_headers(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// Parents `span` to the trace context in HTTP `headers`, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let _ = span.set_parent(context_from_headers(headers));
}

/// Links `span` to `other`'s trace: for work done once on behalf of several
/// requests (a coalesced append), whose span can have only one parent.
pub fn link_to(span: &tracing::Span, other: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    let context = other.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.add_link(span_context);
    }
}
