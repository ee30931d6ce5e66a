//! One PutRecord is one trace: the frontend's request span is the parent of
//! the storage worker's Append span, and of the cache lookup when the route
//! was stale — across real gRPC hops, carried by `traceparent` metadata.

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use freshet_e2e::{create_active_stream, stream_arn, wait_until, Cluster};
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_put_record_is_one_trace_across_services() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("freshet-test")))
        .try_init()?;

    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "traced", 1).await?;
    let map = cluster.frontend.router().map().clone();
    wait_until(Duration::from_secs(10), || {
        let map = map.clone();
        async move { !map.read(|m| m.stream_entries(&stream_arn("traced")).is_empty()) }
    })
    .await?;
    // Stale route: this PutRecord also asks the cache.
    cluster.frontend.router().invalidate(&stream_arn("traced"));
    client
        .put_record()
        .stream_name("traced")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await?;
    provider.force_flush()?;

    let spans = exporter.get_finished_spans()?;
    let put = spans
        .iter()
        .find(|s| s.name == "Kinesis.PutRecord")
        .ok_or_else(|| anyhow::anyhow!("no PutRecord span among {} spans", spans.len()))?;
    assert_eq!(put.span_kind, SpanKind::Server);
    assert_eq!(attribute(put, "rpc.method").as_deref(), Some("PutRecord"));
    assert_eq!(
        attribute(put, "aws.kinesis.stream_name").as_deref(),
        Some("traced")
    );
    // Shard-level metrics are off unless asked for: no per-shard series.
    let metrics = cluster.frontend.registry.encode();
    assert!(
        metrics.contains("kinesis_PutRecord_Success_total"),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|line| line.starts_with("kinesis_shard_") && line.contains('{')),
        "{metrics}"
    );
    let trace_id = put.span_context.trace_id();
    let calls: Vec<(String, SpanKind)> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace_id && s.name.starts_with("freshet.v1."))
        .map(|s| (s.name.to_string(), s.span_kind.clone()))
        .collect();
    // Each hop as the caller saw it (client) and as the callee served it
    // (server): the stale route's cache lookup, then the append.
    for method in [
        "freshet.v1.ShardMapCache/GetStreamShards",
        "freshet.v1.Storage/Append",
    ] {
        for kind in [SpanKind::Client, SpanKind::Server] {
            assert!(
                calls.iter().any(|(name, k)| name == method && *k == kind),
                "no {kind:?} span of {method} in {calls:?}"
            );
        }
    }
    cluster.shutdown().await;
    Ok(())
}
