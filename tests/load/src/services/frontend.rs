//! The frontend: PutRecord, PutRecords and GetRecords as a Kinesis client
//! sends them — JSON over HTTP, signed with SigV4 — on a stream made
//! through the frontend itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;

use crate::driver::{Done, Failure, FnScenario};
use crate::http::{self, KinesisHttp, Protocol};
use crate::report::Heading;
use crate::setup::{Cleanups, Context, Prepared};
use crate::sigv4::Signer;

#[derive(Debug, clap::Args)]
pub struct Client {
    /// Access key id to sign with (development mode accepts any; a 12-digit
    /// one names the account).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", default_value = "test")]
    access_key: String,
    /// Secret key to sign with.
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        default_value = "test",
        hide_env_values = true
    )]
    secret_key: String,
    /// HTTP/1.1 with keep-alive (a connection per call in flight) or h2c.
    #[arg(long, value_enum, default_value = "http1")]
    protocol: Protocol,
    /// Shards of the stream made for the run.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Bytes of data per record.
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// The stream to use instead of making one (it is neither made nor
    /// deleted).
    #[arg(long)]
    stream: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// PutRecord, one record per call, a new partition key each.
    PutRecord(Client),
    /// PutRecords of --batch records.
    PutRecords {
        #[command(flatten)]
        client: Client,
        /// Records per call (1..500).
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// GetRecords round the shards, each reader's iterator moving on, from
    /// TRIM_HORIZON again at a shard's end.
    GetRecords {
        #[command(flatten)]
        client: Client,
        /// Limit of each GetRecords.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Records written to the stream before the run (spread over its
        /// shards). Default: 8,000 into the stream the run makes, none
        /// into one named with `--stream` (a run that reads does not write
        /// into a stream it did not make unless asked).
        #[arg(long)]
        prefill: Option<u64>,
    },
}

/// Calls `operation` and returns its JSON, or the exception it answered.
async fn call(
    client: &KinesisHttp,
    operation: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, Failure> {
    let answer = client
        .call(operation, Bytes::from(body.to_string()))
        .await?;
    http::ok_json(answer)
}

fn setup_error(operation: &str, failure: Failure) -> anyhow::Error {
    anyhow::anyhow!("{operation}: {}: {}", failure.kind, failure.message)
}

/// Makes the stream and waits until it is ACTIVE; registers its deletion.
async fn make_stream(
    client: &Arc<KinesisHttp>,
    name: &str,
    shards: u32,
    keep: bool,
    cleanups: &mut Cleanups,
) -> anyhow::Result<()> {
    let created = call(
        client,
        "CreateStream",
        json!({"StreamName": name, "ShardCount": shards}),
    )
    .await;
    match created {
        Ok(_) => {}
        Err(failure) if failure.kind == "ResourceInUseException" => {}
        Err(failure) => return Err(setup_error("CreateStream", failure)),
    }
    if !keep {
        let (client, name) = (client.clone(), name.to_owned());
        cleanups.push(move || async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                match call(&client, "DeleteStream", json!({"StreamName": name})).await {
                    Ok(_) => return,
                    Err(failure) if failure.kind == "ResourceNotFoundException" => return,
                    Err(failure)
                        if (failure.kind == "LimitExceededException"
                            || failure.kind == "ResourceInUseException")
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(failure) => {
                        eprintln!(
                            "freshet-load: could not delete stream {name}: {}: {}",
                            failure.kind, failure.message
                        );
                        return;
                    }
                }
            }
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match call(client, "DescribeStreamSummary", json!({"StreamName": name})).await {
            Ok(summary)
                if summary["StreamDescriptionSummary"]["StreamStatus"].as_str()
                    == Some("ACTIVE") =>
            {
                return Ok(())
            }
            Ok(_) => {}
            Err(failure) if failure.kind == "LimitExceededException" => {}
            Err(failure) => return Err(setup_error("DescribeStreamSummary", failure)),
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "stream {name} was not ACTIVE after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn shard_ids(client: &KinesisHttp, name: &str) -> anyhow::Result<Vec<String>> {
    let listed = call(client, "ListShards", json!({"StreamName": name}))
        .await
        .map_err(|f| setup_error("ListShards", f))?;
    let ids: Vec<String> = listed["Shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .filter(|s| s["SequenceNumberRange"]["EndingSequenceNumber"].is_null())
                .filter_map(|s| s["ShardId"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(!ids.is_empty(), "stream {name} has no open shard");
    Ok(ids)
}

async fn trim_horizon(client: &KinesisHttp, name: &str, shard: &str) -> Result<String, Failure> {
    let answer = call(
        client,
        "GetShardIterator",
        json!({"StreamName": name, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}),
    )
    .await?;
    answer["ShardIterator"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Failure::new("malformed answer", "GetShardIterator without an iterator"))
}

/// The decoded size of a base64 text.
fn decoded_len(text: &str) -> u64 {
    let padding = text.bytes().rev().take_while(|b| *b == b'=').count();
    (text.len() / 4 * 3).saturating_sub(padding) as u64
}

pub async fn prepare(
    context: &Context,
    scenario: Scenario,
    cleanups: &mut Cleanups,
) -> anyhow::Result<Prepared> {
    let (name, options, batch, prefill) = match scenario {
        Scenario::PutRecord(client) => ("put-record", client, 1, Some(0)),
        Scenario::PutRecords { client, batch } => ("put-records", client, batch, Some(0)),
        Scenario::GetRecords {
            client,
            batch,
            prefill,
        } => ("get-records", client, batch, prefill),
    };
    anyhow::ensure!(
        (1..=500).contains(&batch) || name == "get-records",
        "--batch must be 1..500 for PutRecords"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&batch),
        "--batch must be 1..10000 for GetRecords"
    );
    let endpoint = context
        .target_or(&context.addresses.frontend_endpoint)
        .to_owned();
    let signer = Signer {
        access_key: options.access_key.clone(),
        secret_key: options.secret_key.clone(),
        region: context.region.clone(),
    };
    let client = Arc::new(KinesisHttp::new(
        &endpoint,
        signer,
        options.protocol,
        context.connections,
    )?);
    let stream = match &options.stream {
        Some(stream) => {
            anyhow::ensure!(
                !stream.is_empty()
                    && stream.len() <= 128
                    && stream
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
                "--stream must be a Kinesis stream name (1-128 of a-z, A-Z, 0-9, - _ .)"
            );
            stream.clone()
        }
        None => {
            let stream = context.stream_name("frontend");
            make_stream(&client, &stream, options.shards, context.keep, cleanups).await?;
            stream
        }
    };
    let mut setup_lines = vec![format!(
        "stream {stream}, access key {}, {:?}; {batch} record(s) of {} B per call",
        options.access_key, options.protocol, options.record_size
    )];
    let data = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; options.record_size]);
    let size = options.record_size as u64;

    let scenario: Arc<dyn crate::driver::Scenario> = match name {
        "put-record" => {
            let (prefix, suffix) = (
                format!(r#"{{"StreamName":"{stream}","PartitionKey":"pk-"#),
                format!(r#"","Data":"{data}"}}"#),
            );
            let client = client.clone();
            Arc::new(FnScenario(move |seq: u64| {
                let body = Bytes::from(format!("{prefix}{seq}{suffix}"));
                let client = client.clone();
                async move {
                    let answer = client.call("PutRecord", body).await?;
                    http::ok_json(answer)?;
                    Ok(Done::items(1).with_bytes(size))
                }
            }))
        }
        "put-records" => {
            let prefix = format!(r#"{{"StreamName":"{stream}","Records":["#);
            let client = client.clone();
            Arc::new(FnScenario(move |seq: u64| {
                let mut body = String::with_capacity(prefix.len() + batch * (data.len() + 48));
                body.push_str(&prefix);
                for i in 0..batch {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&format!(
                        r#"{{"PartitionKey":"pk-{seq}-{i}","Data":"{data}"}}"#
                    ));
                }
                body.push_str("]}");
                let client = client.clone();
                async move {
                    let answer = client.call("PutRecords", Bytes::from(body)).await?;
                    let json = http::ok_json(answer)?;
                    let failed = json["FailedRecordCount"].as_u64().unwrap_or(0);
                    let mut done = Done::items((batch as u64).saturating_sub(failed))
                        .with_bytes((batch as u64).saturating_sub(failed) * size);
                    if failed > 0 {
                        let mut by_code = std::collections::BTreeMap::<String, u64>::new();
                        for record in json["Records"].as_array().into_iter().flatten() {
                            if let Some(code) = record["ErrorCode"].as_str() {
                                *by_code.entry(format!("record failed: {code}")).or_insert(0) += 1;
                            }
                        }
                        for (code, count) in by_code {
                            done = done.note(code, count);
                        }
                    }
                    Ok(done)
                }
            }))
        }
        _ => {
            let shards = shard_ids(&client, &stream).await?;
            let prefill = prefill.unwrap_or(if options.stream.is_some() { 0 } else { 8000 });
            if prefill > 0 {
                let started = tokio::time::Instant::now();
                fill(&client, &stream, prefill, &data).await?;
                eprintln!(
                    "freshet-load: wrote {prefill} records in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            let mut iterators = Vec::with_capacity(shards.len());
            for shard in &shards {
                let iterator = trim_horizon(&client, &stream, shard)
                    .await
                    .map_err(|f| setup_error("GetShardIterator", f))?;
                iterators.push(Mutex::new(iterator));
            }
            setup_lines.push(format!(
                "{} shards read in turn from TRIM_HORIZON; {prefill} records written first",
                shards.len()
            ));
            let state = Arc::new((shards, iterators));
            let client = client.clone();
            let stream = stream.clone();
            Arc::new(FnScenario(move |seq: u64| {
                let state = state.clone();
                let client = client.clone();
                let stream = stream.clone();
                async move {
                    let (shards, iterators) = &*state;
                    let index = seq as usize % shards.len();
                    let iterator = iterators[index]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    let json = call(
                        &client,
                        "GetRecords",
                        json!({"ShardIterator": iterator, "Limit": batch}),
                    )
                    .await?;
                    let records = json["Records"].as_array().map_or(&[][..], Vec::as_slice);
                    let bytes: u64 = records
                        .iter()
                        .filter_map(|r| r["Data"].as_str())
                        .map(decoded_len)
                        .sum();
                    let count = records.len() as u64;
                    let mut done = Done::items(count).with_bytes(bytes);
                    let next = match json["NextShardIterator"].as_str() {
                        Some(next) if count > 0 => next.to_owned(),
                        _ => {
                            done = done.note("reader back to TRIM_HORIZON", 1);
                            trim_horizon(&client, &stream, &shards[index]).await?
                        }
                    };
                    *iterators[index].lock().unwrap_or_else(|p| p.into_inner()) = next;
                    Ok(done)
                }
            }))
        }
    };
    Ok(Prepared {
        scenario,
        heading: Heading {
            service: "frontend".into(),
            scenario: name.into(),
            target: endpoint,
            items_are: "records".into(),
            setup: setup_lines,
        },
        max_concurrency: None,
        keep_alive: None,
    })
}

/// Writes `count` records with PutRecords, 500 a call, retrying what the
/// shards' write limits refused.
async fn fill(client: &KinesisHttp, stream: &str, count: u64, data: &str) -> anyhow::Result<()> {
    let mut written = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while written < count {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "prefilling {stream} took over 3 minutes"
        );
        let take = (count - written).min(500);
        let records: Vec<serde_json::Value> = (0..take)
            .map(|i| json!({"PartitionKey": format!("fill-{}", written + i), "Data": data}))
            .collect();
        let answer = call(
            client,
            "PutRecords",
            json!({"StreamName": stream, "Records": records}),
        )
        .await
        .map_err(|f| setup_error("PutRecords (prefill)", f))?;
        let failed = answer["FailedRecordCount"].as_u64().unwrap_or(0);
        written += take.saturating_sub(failed);
        if failed > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_sizes_account_for_padding() {
        let engine = base64::engine::general_purpose::STANDARD;
        for size in [0usize, 1, 2, 3, 4, 100, 1024] {
            let text = engine.encode(vec![7u8; size]);
            assert_eq!(decoded_len(&text), size as u64, "{size}");
        }
    }

    #[test]
    fn a_context_free_check_of_names() {
        // Stream names made for runs are valid Kinesis names.
        let name = format!("load-frontend-{}", crate::setup::run_id());
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        assert!(name.len() <= 128);
    }
}
