//! Producers that write while a test breaks things, and the check that
//! every record they were told was written can be read back exactly once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

/// Concurrent PutRecords loops, each record's payload unique, remembering
/// which records were acknowledged. Bounded: each loop stops when told, or
/// after `MAX_BATCHES` batches.
pub struct Producers {
    acknowledged: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

const MAX_BATCHES: usize = 2_000;

impl Producers {
    /// Starts `count` producers writing batches of `batch_size` records.
    pub fn start(
        client: &aws_sdk_kinesis::Client,
        stream: &str,
        count: usize,
        batch_size: usize,
    ) -> Producers {
        let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..count)
            .map(|producer| {
                let (client, stream, acknowledged, stop) = (
                    client.clone(),
                    stream.to_owned(),
                    acknowledged.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    for batch in 0..MAX_BATCHES {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let payloads: Vec<String> = (0..batch_size)
                            .map(|i| format!("{stream}-p{producer}-b{batch}-r{i}"))
                            .collect();
                        let entries = payloads
                            .iter()
                            .map(|p| {
                                PutRecordsRequestEntry::builder()
                                    .partition_key(p)
                                    .data(Blob::new(p.as_bytes()))
                                    .build()
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        let Ok(output) = client
                            .put_records()
                            .stream_name(&stream)
                            .set_records(Some(entries))
                            .send()
                            .await
                        else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let mut acked = acknowledged.lock().unwrap_or_else(|p| p.into_inner());
                        for (payload, result) in payloads.into_iter().zip(output.records) {
                            if result.error_code.is_none() {
                                acked.push(payload);
                            }
                        }
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        Producers {
            acknowledged,
            stop,
            tasks,
        }
    }

    /// Records acknowledged so far.
    pub fn count(&self) -> usize {
        self.acknowledged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Stops the producers and returns every acknowledged payload.
    pub async fn stop(self) -> anyhow::Result<HashSet<String>> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await??;
        }
        let acknowledged = self
            .acknowledged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(acknowledged.into_iter().collect())
    }
}

/// Reads every shard of `stream` from TRIM_HORIZON: each acknowledged
/// payload must be there, nothing may be there twice, and nothing may be
/// there that no producer wrote (a torn or corrupt record served).
pub async fn assert_acknowledged_readable_once(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    acknowledged: &HashSet<String>,
) -> anyhow::Result<()> {
    // A leader that restarted serves its records again once it has
    // re-committed them with its replicas (within a heartbeat or two), so
    // the stream is read again until everything shows or time is up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = HashSet::new();
        for record in crate::read_stream(client, stream).await? {
            let payload = String::from_utf8(record.data.into_inner())?;
            anyhow::ensure!(
                payload.starts_with(&format!("{stream}-p")),
                "garbage served: {payload:?}"
            );
            anyhow::ensure!(seen.insert(payload.clone()), "{payload} read twice");
        }
        let missing: Vec<&String> = acknowledged.difference(&seen).collect();
        if missing.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} acknowledged records lost, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
