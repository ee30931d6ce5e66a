//! JSON-lines logs: one object per event with its time, level, message and
//! fields, the span it happened in, and the OpenTelemetry trace and span
//! ids, so a log search can jump to the trace (and back).

use std::fmt;
use std::io::Write as _;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The JSON log layer.
pub(crate) struct JsonLines {
    dispatch: std::sync::OnceLock<WeakDispatch>,
    writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync>,
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

impl JsonLines {
    /// Writes JSON lines to `writer` (stdout for a service).
    pub(crate) fn new<W>(writer: W) -> JsonLines
    where
        W: Fn() -> Box<dyn std::io::Write> + Send + Sync + 'static,
    {
        JsonLines {
            dispatch: std::sync::OnceLock::new(),
            writer: Box::new(writer),
        }
    }

    fn line<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> Map<String, Value>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let mut line = Map::new();
        line.insert(
            "timestamp".to_owned(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        line.insert("level".to_owned(), event.metadata().level().as_str().into());
        line.insert("target".to_owned(), event.metadata().target().into());
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        if let Some(message) = fields.remove("message") {
            line.insert("message".to_owned(), message);
        }
        if !fields.is_empty() {
            line.insert("fields".to_owned(), Value::Object(fields));
        }
        let Some(span) = ctx.event_span(event) else {
            return line;
        };
        let names: Vec<&str> = span.scope().from_root().map(|s| s.name()).collect();
        line.insert("span".to_owned(), span.name().into());
        line.insert("spans".to_owned(), names.join(":").into());
        // The ids live in the OpenTelemetry layer's data for the span; it
        // is reached through the dispatcher this layer was registered with
        // (inside a callback, `Span::current()` sees no dispatcher at all).
        let context = self
            .dispatch
            .get()
            .and_then(WeakDispatch::upgrade)
            .and_then(|dispatch| tracing_opentelemetry::get_otel_context(&span.id(), &dispatch));
        if let Some(context) = context {
            let span_context = context.span().span_context().clone();
            if span_context.is_valid() {
                line.insert(
                    "trace_id".to_owned(),
                    span_context.trace_id().to_string().into(),
                );
                line.insert(
                    "span_id".to_owned(),
                    span_context.span_id().to_string().into(),
                );
            }
        }
        line
    }
}

impl<S> Layer<S> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let line = Value::Object(self.line(event, &ctx));
        let mut text = line.to_string();
        text.push('\n');
        // One write per line, so lines from several threads never mix.
        let _ = (self.writer)().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::Layer as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_its_fields_span_and_trace_ids() {
        let captured = Captured::default();
        let writer = captured.clone();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        // As a service runs it with RUST_LOG=warn: info spans still
        // reach the log layer, so a warning carries its request's ids.
        let filter = crate::EventsAndSpans {
            events: tracing_subscriber::EnvFilter::new("warn"),
            spans: tracing_subscriber::EnvFilter::new("info"),
        };
        let subscriber = tracing_subscriber::registry()
            .with(
                JsonLines::new(move || Box::new(writer.clone()))
                    .with_filter(filter)
                    .boxed(),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let expected_trace_id = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("kinesis", operation = "PutRecord");
            let _entered = span.enter();
            tracing::info!("filtered out");
            tracing::warn!(
                shard_id = "shardId-000000000000",
                records = 3,
                "append \"failed\""
            );
            span.context().span().span_context().trace_id().to_string()
        });
        let bytes = captured.0.lock().expect("captured").clone();
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(!text.contains('\u{1b}'), "no escape codes: {text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: Value = serde_json::from_str(lines[0]).expect("one JSON object");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "append \"failed\"");
        assert_eq!(line["fields"]["shard_id"], "shardId-000000000000");
        assert_eq!(line["fields"]["records"], 3);
        assert_eq!(line["span"], "kinesis");
        assert_eq!(line["trace_id"], expected_trace_id.as_str());
        assert_eq!(line["trace_id"].as_str().map(str::len), Some(32));
        assert_eq!(line["span_id"].as_str().map(str::len), Some(16));
    }
}
