//! What an operator sees of Freshet: one trace per request across the
//! frontend and three storage-worker processes (received by a real OTLP
//! collector this test runs), and Prometheus metrics on every service's
//! metrics port that count exactly the load the test sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use freshet_e2e::topology::{bin_dir, workspace, DevTopology};
use freshet_e2e::{create_active_stream, kinesis_client, wait_until, workspace_binary};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One received span, with the resource it came from.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    instance: String,
    name: String,
    kind: SpanKind,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_id: Vec<u8>,
    status: StatusCode,
    attributes: HashMap<String, String>,
}

fn text_of(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(n)) => n.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                text_of(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

/// A minimal OTLP/gRPC trace collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            let instance = resource
                .get("service.instance.id")
                .cloned()
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Received {
                        service: service.clone(),
                        instance: instance.clone(),
                        kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                        status: span
                            .status
                            .as_ref()
                            .and_then(|s| StatusCode::try_from(s.code).ok())
                            .unwrap_or(StatusCode::Unset),
                        attributes: attributes(&span.attributes),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_id: span.parent_span_id,
                    });
                }
            }
        }
        self.spans
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> anyhow::Result<(Collector, String)> {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        Ok((collector, address))
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The spans of one trace, by span id.
struct Trace {
    spans: Vec<Received>,
}

impl Trace {
    fn parent_of(&self, span: &Received) -> Option<&Received> {
        self.spans.iter().find(|s| s.span_id == span.parent_id)
    }

    /// `span`'s chain of parents, nearest first.
    fn ancestors<'a>(&'a self, span: &'a Received) -> Vec<&'a Received> {
        let mut chain = Vec::new();
        let mut at = span;
        while let Some(parent) = self.parent_of(at) {
            chain.push(parent);
            at = parent;
        }
        chain
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Received> + 'a {
        self.spans.iter().filter(move |s| s.name == name)
    }

    fn children<'a>(&'a self, parent: &'a Received) -> impl Iterator<Item = &'a Received> + 'a {
        self.spans
            .iter()
            .filter(move |s| s.parent_id == parent.span_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_put_record_is_one_trace_from_the_frontend_through_the_leader_to_both_replicas(
) -> anyhow::Result<()> {
    let (collector, otlp) = Collector::start().await?;
    let data_dir = tempfile::tempdir()?;
    let topology = DevTopology::start(
        &workspace(),
        &bin_dir()?,
        data_dir.path(),
        "traces",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await?;
    let client = kinesis_client(&topology.endpoint);
    create_active_stream(&client, "traced", 1).await?;
    // A first write, so every replica has the shard's entry before the
    // write whose trace is examined.
    client
        .put_record()
        .stream_name("traced")
        .partition_key("k")
        .data(Blob::new("warm-up"))
        .send()
        .await?;
    let put = client
        .put_record()
        .stream_name("traced")
        .partition_key("k")
        .data(Blob::new("followed across processes"))
        .send()
        .await?;
    let sequence_number = put.sequence_number().to_owned();
    let missing = client
        .put_record()
        .stream_name("no-such-stream")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await;
    assert!(missing.is_err());

    // The root: the frontend's server span of this very call.
    let mut trace = None;
    wait_until(Duration::from_secs(30), || {
        let spans = collector.spans();
        let root = spans.iter().find(|s| {
            s.name == "Kinesis.PutRecord"
                && s.attributes.get("aws.kinesis.sequence_number") == Some(&sequence_number)
        });
        let found = root.map(|root| {
            let spans: Vec<Received> = spans
                .iter()
                .filter(|s| s.trace_id == root.trace_id)
                .cloned()
                .collect();
            Trace { spans }
        });
        // Complete once every process has exported its part: the three
        // copies' writes, both replicas' Replicate spans, the leader's
        // Append span (it ends after the replicas answer, so it may be
        // exported after theirs), and the refused call's span.
        let refused_arrived = spans
            .iter()
            .any(|s| s.attributes.contains_key("error.type"));
        let complete = refused_arrived
            && found.as_ref().is_some_and(|t| {
                t.named("storage.write_fsync").count() >= 3
                    && t.named("freshet.v1.Storage/Append")
                        .any(|s| s.kind == SpanKind::Server)
                    && t.named("freshet.v1.Storage/Replicate")
                        .filter(|s| s.kind == SpanKind::Server)
                        .count()
                        >= 2
            });
        if complete {
            trace = found;
        }
        async move { complete }
    })
    .await
    .context("the PutRecord's trace never arrived whole")?;
    let trace = trace.context("trace")?;
    let root = trace
        .named("Kinesis.PutRecord")
        .next()
        .context("root span")?;
    assert!(root.parent_id.is_empty(), "the call starts its trace");
    assert_eq!(root.service, "freshet-frontend");
    assert_eq!(root.kind, SpanKind::Server);
    assert_eq!(root.attributes["rpc.service"], "Kinesis");
    assert_eq!(root.attributes["rpc.method"], "PutRecord");
    assert_eq!(root.attributes["aws.kinesis.stream_name"], "traced");
    assert_eq!(
        root.attributes["aws.kinesis.shard_id"],
        "shardId-000000000000"
    );

    // Frontend → leader: a client span in the frontend, the leader's
    // server span its child, in another process.
    let append_client = trace
        .named("freshet.v1.Storage/Append")
        .find(|s| s.kind == SpanKind::Client)
        .context("the frontend's Append call")?;
    assert_eq!(append_client.service, "freshet-frontend");
    assert!(trace
        .ancestors(append_client)
        .iter()
        .any(|a| a.span_id == root.span_id));
    let append_server = trace
        .children(append_client)
        .find(|s| s.name == "freshet.v1.Storage/Append")
        .context("the leader's Append span")?;
    assert_eq!(append_server.service, "freshet-storage-worker");
    assert_eq!(append_server.kind, SpanKind::Server);
    assert_eq!(append_server.attributes["rpc.grpc.status_code"], "0");
    let leader = append_server.instance.clone();

    // The leader's group commit: its own fsync and one Replicate per
    // replica, each answered by a different worker that fsyncs it.
    let commit = trace
        .children(append_server)
        .find(|s| s.name == "storage.group_commit")
        .context("the group commit")?;
    assert_eq!(commit.attributes["records"], "1");
    assert!(trace
        .children(commit)
        .any(|s| s.name == "storage.write_fsync" && s.instance == leader));
    let replicate_calls: Vec<&Received> = trace
        .children(commit)
        .filter(|s| s.name == "freshet.v1.Storage/Replicate" && s.kind == SpanKind::Client)
        .collect();
    assert_eq!(replicate_calls.len(), 2, "one Replicate per replica");
    let mut replicas = Vec::new();
    for call in replicate_calls {
        let served = trace
            .children(call)
            .find(|s| s.kind == SpanKind::Server)
            .context("a replica's Replicate span")?;
        assert_eq!(served.name, "freshet.v1.Storage/Replicate");
        assert_ne!(served.instance, leader);
        assert!(trace
            .children(served)
            .any(|s| s.name == "storage.write_fsync"));
        replicas.push(served.instance.clone());
    }
    replicas.sort();
    replicas.dedup();
    assert_eq!(replicas.len(), 2, "two different replicas: {replicas:?}");

    // The services' own background calls (heartbeats, timer polls) are
    // counted in their metrics but are no traces of their own.
    let spans = collector.spans();
    let background: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name.ends_with("/Heartbeat") || s.name.ends_with("/Now"))
        .collect();
    assert!(background.is_empty(), "{background:?}");

    // A caller's mistake is recorded, but is not the server's error.
    let spans = collector.spans();
    let refused = spans
        .iter()
        .find(|s| {
            s.name == "Kinesis.PutRecord"
                && s.attributes.get("error.type").map(String::as_str)
                    == Some("ResourceNotFoundException")
        })
        .context("the refused PutRecord's span")?;
    assert_eq!(refused.attributes["http.response.status_code"], "400");
    assert_ne!(refused.status, StatusCode::Error);
    topology.stop().await;
    Ok(())
}

/// `GET /metrics` on 127.0.0.1:`port`.
async fn scrape(port: u16) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: freshet\r\nconnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    anyhow::ensure!(text.starts_with("HTTP/1.1 200"), "scrape of {port}: {text}");
    Ok(text)
}

/// The value of the sample `series` (name and labels, exactly as
/// exposed), if the text has it.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

fn stream_series(name: &str) -> String {
    format!("{name}{{StreamName=\"metered\",AccountId=\"000000000000\",Region=\"us-east-1\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_metrics_that_count_the_load_it_was_given() -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let topology = DevTopology::start(
        &workspace(),
        &bin_dir()?,
        data_dir.path(),
        "metrics",
        &[("FRESHET_SHARD_LEVEL_METRICS", "true")],
    )
    .await?;
    let client = kinesis_client(&topology.endpoint);
    create_active_stream(&client, "metered", 2).await?;
    // Known load: 5 PutRecord of 10 bytes with 1-byte keys, one PutRecords
    // of 3 records, then every record read back from each shard.
    for index in 0..5 {
        client
            .put_record()
            .stream_name("metered")
            .partition_key(index.to_string())
            .data(Blob::new(vec![b'x'; 10]))
            .send()
            .await?;
    }
    let entries = (0..3)
        .map(|index| {
            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key(format!("batch-{index}"))
                .data(Blob::new(vec![b'y'; 20]))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let batch = client
        .put_records()
        .stream_name("metered")
        .set_records(Some(entries))
        .send()
        .await?;
    assert_eq!(batch.failed_record_count(), Some(0));
    let shards = freshet_e2e::shard_ids(&client, "metered").await?;
    let mut read = 0;
    for shard in &shards {
        let iterator = client
            .get_shard_iterator()
            .stream_name("metered")
            .shard_id(shard)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator()
            .context("iterator")?
            .to_owned();
        let records = client.get_records().shard_iterator(iterator).send().await?;
        read += records.records().len();
    }
    assert_eq!(read, 8);

    let base = topology.metrics_port;
    let frontend = scrape(base).await?;
    let expect = |name: &str, value: f64| {
        assert_eq!(
            sample(&frontend, &stream_series(name)),
            Some(value),
            "{name} in:\n{frontend}"
        );
    };
    expect("kinesis_PutRecord_Success_total", 5.0);
    expect("kinesis_PutRecord_Bytes_total", 5.0 * 11.0);
    expect("kinesis_PutRecord_Latency_milliseconds_count", 5.0);
    expect("kinesis_PutRecords_Success_total", 1.0);
    expect("kinesis_PutRecords_TotalRecords_total", 3.0);
    expect("kinesis_PutRecords_SuccessfulRecords_total", 3.0);
    expect("kinesis_PutRecords_FailedRecords_total", 0.0);
    expect("kinesis_PutRecords_ThrottledRecords_total", 0.0);
    expect("kinesis_PutRecords_Bytes_total", 3.0 * 27.0);
    expect("kinesis_IncomingRecords_total", 8.0);
    expect("kinesis_IncomingBytes_total", 5.0 * 11.0 + 3.0 * 27.0);
    expect("kinesis_GetRecords_Success_total", shards.len() as f64);
    expect("kinesis_GetRecords_Records_total", 8.0);
    expect("kinesis_OutgoingRecords_total", 8.0);
    expect("kinesis_OutgoingBytes_total", 5.0 * 11.0 + 3.0 * 27.0);
    expect(
        "kinesis_GetRecords_IteratorAgeMilliseconds_count",
        shards.len() as f64,
    );
    // Shard level: the per-shard counts add up to the stream's.
    let per_shard: f64 = shards
        .iter()
        .filter_map(|shard| {
            sample(
                &frontend,
                &format!("kinesis_shard_IncomingRecords_total{{StreamName=\"metered\",AccountId=\"000000000000\",Region=\"us-east-1\",ShardId=\"{shard}\"}}"),
            )
        })
        .sum();
    assert_eq!(per_shard, 8.0, "{frontend}");

    // The cache, asked directly: once for a stream it knows, once for one
    // that does not exist (which only Postgres can say).
    let mut cache = freshet_server::cache_client(freshet_server::grpc_channel(
        &format!("127.0.0.1:{}", topology.grpc_port + 2),
        &freshet_server::InternalToken::none(),
    )?);
    for stream_name in ["metered", "never-created"] {
        cache
            .get_stream_shards(freshet_proto::v1::GetStreamShardsRequest {
                account_id: "000000000000".to_owned(),
                region: "us-east-1".to_owned(),
                stream_name: stream_name.to_owned(),
            })
            .await?;
    }
    let cache_text = scrape(base + 3).await?;
    assert_eq!(
        sample(
            &cache_text,
            "freshet_grpc_server_requests_total{rpc_service=\"freshet.v1.ShardMapCache\",rpc_method=\"GetStreamShards\",code=\"OK\"}"
        ),
        Some(2.0),
        "{cache_text}"
    );
    let lookups = |result: &str| {
        sample(
            &cache_text,
            &format!("freshet_cache_lookups_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(lookups("miss") >= 1.0, "{cache_text}");
    assert_eq!(lookups("hit") + lookups("miss"), 2.0, "{cache_text}");

    // Every internal service counts the gRPC calls it answered.
    for (offset, series) in [
        (1, "freshet_grpc_server_requests_total{rpc_service=\"freshet.v1.Timer\",rpc_method=\"Now\",code=\"OK\"}"),
        (4, "freshet_grpc_server_requests_total{rpc_service=\"freshet.v1.ControlPlane\",rpc_method=\"CreateStream\",code=\"OK\"}"),
        (2, "freshet_grpc_server_requests_total{rpc_service=\"freshet.v1.Membership\",rpc_method=\"PlaceShards\",code=\"OK\"}"),
        (10, "freshet_grpc_server_duration_seconds_count{rpc_service=\"freshet.v1.Storage\",rpc_method=\"Replicate\"}"),
    ] {
        let text = scrape(base + offset).await?;
        assert!(
            sample(&text, series).is_some_and(|count| count >= 1.0),
            "{series} on {}:\n{text}",
            base + offset
        );
    }
    assert_eq!(
        sample(
            &scrape(base + 4).await?,
            "freshet_grpc_server_requests_total{rpc_service=\"freshet.v1.ControlPlane\",rpc_method=\"CreateStream\",code=\"OK\"}"
        ),
        Some(1.0)
    );
    // Membership: every subscriber (the frontend, the cache, three
    // workers) was handed the new stream's shards, and it sees three
    // workers alive.
    wait_until(Duration::from_secs(10), || async {
        let Ok(text) = scrape(base + 2).await else {
            return false;
        };
        sample(&text, "freshet_membership_workers_alive") == Some(3.0)
            && sample(&text, "freshet_membership_change_propagation_seconds_count")
                .is_some_and(|count| count >= 5.0)
    })
    .await
    .context("membership's metrics")?;
    // The workers: every record went through a group commit, fsynced on
    // its leader and on replicas; each worker renews its lease.
    let mut committed_records = 0.0;
    let mut commits = 0.0;
    let (mut leader_fsyncs, mut replica_fsyncs) = (0.0, 0.0);
    for offset in 10..13 {
        let text = scrape(base + offset).await?;
        committed_records +=
            sample(&text, "freshet_storage_group_commit_records_sum").unwrap_or(0.0);
        commits += sample(&text, "freshet_storage_group_commit_records_count").unwrap_or(0.0);
        let fsyncs = |role: &str| {
            sample(
                &text,
                &format!("freshet_storage_fsync_seconds_count{{role=\"{role}\"}}"),
            )
            .unwrap_or(0.0)
        };
        leader_fsyncs += fsyncs("leader");
        replica_fsyncs += fsyncs("replica");
        assert!(
            sample(&text, "freshet_storage_lease_renewals_total").unwrap_or(0.0) >= 1.0,
            "{text}"
        );
    }
    assert_eq!(
        committed_records, 8.0,
        "records through leaders' group commits"
    );
    assert_eq!(leader_fsyncs, commits, "one leader fsync per group commit");
    assert!(
        replica_fsyncs >= commits,
        "a majority fsynced every commit: {replica_fsyncs} replica writes, {commits} commits"
    );
    topology.stop().await;
    Ok(())
}

/// The first line a `freshet-timer` started with `args` writes to a pipe.
async fn first_log_line(args: &[&str]) -> anyhow::Result<String> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(workspace_binary("freshet-timer")?)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("no log line")??
        .context("no log line")?;
    child.kill().await?;
    Ok(line)
}

#[tokio::test]
async fn logs_written_to_a_pipe_carry_no_colour_and_json_logs_are_json() -> anyhow::Result<()> {
    let text = first_log_line(&[]).await?;
    assert!(text.contains("timer serving grpc"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a piped log: {text:?}"
    );

    let json = first_log_line(&["--log-format", "json"]).await?;
    let line: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(line["level"], "INFO", "{json}");
    assert_eq!(line["message"], "timer serving grpc", "{json}");
    assert!(line["fields"]["addr"].as_str().is_some(), "{json}");
    Ok(())
}
