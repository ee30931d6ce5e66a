//! Producers that write while a test breaks things, and the check that
//! every record they were told was written can be read back exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

/// What background writers remember of the records they were told were
/// written.
pub trait Acknowledged: Default + Clone + Send + 'static {
    /// Records acknowledged so far.
    fn count(&self) -> usize;
}

/// Unique payloads.
impl Acknowledged for HashSet<String> {
    fn count(&self) -> usize {
        self.len()
    }
}

/// Per partition key, the numbers of its records in acknowledgement order.
impl Acknowledged for HashMap<String, Vec<u64>> {
    fn count(&self) -> usize {
        self.values().map(Vec::len).sum()
    }
}

/// Loops that write while a test breaks things, until told to stop (each
/// is bounded too), sharing what was acknowledged.
pub struct WriterLoops<T> {
    acknowledged: Arc<Mutex<T>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// What one loop holds: whether to stop, and where to note acknowledgements.
#[derive(Clone)]
pub struct WriterLoop<T> {
    acknowledged: Arc<Mutex<T>>,
    stop: Arc<AtomicBool>,
}

impl<T> WriterLoop<T> {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn acknowledge(&self, note: impl FnOnce(&mut T)) {
        note(&mut self.acknowledged.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

impl<T: Acknowledged> WriterLoops<T> {
    /// Starts `loops` tasks, each `body(its number, its handle)`.
    pub fn spawn<F, Fut>(loops: usize, mut body: F) -> WriterLoops<T>
    where
        F: FnMut(usize, WriterLoop<T>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = WriterLoop {
            acknowledged: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let tasks = (0..loops)
            .map(|n| tokio::spawn(body(n, handle.clone())))
            .collect();
        WriterLoops {
            acknowledged: handle.acknowledged,
            stop: handle.stop,
            tasks,
        }
    }

    /// Records acknowledged so far.
    pub fn count(&self) -> usize {
        self.acknowledged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count()
    }

    /// Stops the loops and returns everything acknowledged.
    pub async fn stop(self) -> anyhow::Result<T> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await??;
        }
        let acknowledged = self
            .acknowledged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(acknowledged)
    }
}

/// `client` without the SDK's own retries: a PutRecords whose connection a
/// killed service dropped may have been written, and sending it again
/// would store its records twice — a duplicate the client makes, which
/// Kinesis does not prevent either. Producers go on with new records.
pub fn without_sdk_retries(client: &aws_sdk_kinesis::Client) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::from_conf(
        client
            .config()
            .to_builder()
            .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
            .build(),
    )
}

/// PutRecords entries whose data is the payload and whose partition key is
/// the payload too.
pub fn self_keyed_entries(payloads: &[String]) -> anyhow::Result<Vec<PutRecordsRequestEntry>> {
    let entries = payloads
        .iter()
        .map(|p| {
            PutRecordsRequestEntry::builder()
                .partition_key(p)
                .data(Blob::new(p.as_bytes()))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(entries)
}

/// Concurrent PutRecords loops, each record's payload unique.
pub type Producers = WriterLoops<HashSet<String>>;

const MAX_BATCHES: usize = 2_000;

impl Producers {
    /// Starts `count` producers writing batches of `batch_size` records,
    /// each stopping when told or after `MAX_BATCHES` batches.
    pub fn start(
        client: &aws_sdk_kinesis::Client,
        stream: &str,
        count: usize,
        batch_size: usize,
    ) -> Producers {
        WriterLoops::spawn(count, |producer, writer| {
            let (client, stream) = (client.clone(), stream.to_owned());
            async move {
                for batch in 0..MAX_BATCHES {
                    if writer.stopping() {
                        break;
                    }
                    let payloads: Vec<String> = (0..batch_size)
                        .map(|i| format!("{stream}-p{producer}-b{batch}-r{i}"))
                        .collect();
                    let entries = self_keyed_entries(&payloads)?;
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
                    writer.acknowledge(|acked: &mut HashSet<String>| {
                        for (payload, result) in payloads.into_iter().zip(output.records) {
                            if result.error_code.is_none() {
                                acked.insert(payload);
                            }
                        }
                    });
                }
                anyhow::Ok(())
            }
        })
    }
}

/// What producers that send failed records again came to: each payload
/// is in exactly one set once they stop.
#[derive(Debug, Default, Clone)]
pub struct RetriedOutcomes {
    /// Acknowledged, at some attempt.
    pub acknowledged: HashSet<String>,
    /// Reported as failed at its last attempt (the producer stopped).
    pub failed: HashSet<String>,
    /// In a request that got no PutRecords answer at all: may or may not
    /// be written (never sent again, so never written twice).
    pub unanswered: HashSet<String>,
}

impl Acknowledged for RetriedOutcomes {
    fn count(&self) -> usize {
        self.acknowledged.len()
    }
}

/// PutRecords loops that send the records a response marked failed again,
/// with new ones, until acknowledged — what the SDK docs ask a producer to
/// do. A whole request that fails is not sent again (the client cannot
/// know what became of it).
pub type RetryingProducers = WriterLoops<RetriedOutcomes>;

impl RetryingProducers {
    /// Starts `count` producers sending `batch_size` records per request
    /// (failed ones first), each stopping when told or after `MAX_BATCHES`
    /// requests; a stopping producer sends its failed records a few more
    /// times first.
    pub fn start_retrying(
        client: &aws_sdk_kinesis::Client,
        stream: &str,
        count: usize,
        batch_size: usize,
    ) -> RetryingProducers {
        WriterLoops::spawn(count, |producer, writer| {
            let (client, stream) = (client.clone(), stream.to_owned());
            async move {
                let mut failed: Vec<String> = Vec::new();
                let mut next = 0usize;
                let mut last_tries = 0;
                for _ in 0..MAX_BATCHES {
                    if writer.stopping() {
                        if failed.is_empty() || last_tries == 5 {
                            break;
                        }
                        last_tries += 1;
                    }
                    let mut payloads = std::mem::take(&mut failed);
                    while payloads.len() < batch_size && !writer.stopping() {
                        payloads.push(format!("{stream}-p{producer}-r{next}"));
                        next += 1;
                    }
                    let entries = self_keyed_entries(&payloads)?;
                    let sent = client
                        .put_records()
                        .stream_name(&stream)
                        .set_records(Some(entries))
                        .send();
                    let Ok(Ok(output)) = tokio::time::timeout(Duration::from_secs(90), sent).await
                    else {
                        writer.acknowledge(|o: &mut RetriedOutcomes| o.unanswered.extend(payloads));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    writer.acknowledge(|o: &mut RetriedOutcomes| {
                        for (payload, result) in payloads.into_iter().zip(output.records) {
                            if result.error_code.is_none() {
                                o.failed.remove(&payload);
                                o.acknowledged.insert(payload);
                            } else {
                                o.failed.insert(payload.clone());
                                failed.push(payload);
                            }
                        }
                    });
                    if !failed.is_empty() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                anyhow::Ok(())
            }
        })
    }
}

/// Reads `stream` back after retrying producers stopped: every acknowledged
/// payload once, no payload twice, and none that was reported as failed
/// at its last attempt — a failure means not written.
pub async fn assert_failures_were_not_written(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    outcomes: &RetriedOutcomes,
) -> anyhow::Result<()> {
    assert_acknowledged_readable_once(client, stream, &outcomes.acknowledged).await?;
    let mut written_after_failing = Vec::new();
    for record in crate::read_stream(client, stream).await? {
        let payload = String::from_utf8(record.data.into_inner())?;
        if outcomes.failed.contains(&payload) {
            written_after_failing.push(payload);
        }
    }
    anyhow::ensure!(
        written_after_failing.is_empty(),
        "{} records reported as failed were written, e.g. {:?}",
        written_after_failing.len(),
        written_after_failing.first()
    );
    Ok(())
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
