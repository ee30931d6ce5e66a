//! The stream metrics Kinesis publishes to CloudWatch, with CloudWatch's
//! names and units (`docs/metrics.md`): per stream always, per shard for
//! the shard-level metrics a stream has switched on with
//! EnableEnhancedMonitoring (its shard-map entries carry the set; callers
//! pass it), or for every stream with `--shard-level-metrics`. Recorded
//! where an operation knows its outcome: `ops/records/{put,get}.rs`.

use std::collections::HashMap;
use std::time::Instant;

use freshet_metrics::{
    as_millis, Buckets, Counter, EncodeLabelSet, Family, HistogramFamily, Registry,
};
use freshet_types::ShardLevelMetric::{
    IncomingBytes, IncomingRecords, IteratorAgeMilliseconds, OutgoingBytes, OutgoingRecords,
    ReadProvisionedThroughputExceeded, WriteProvisionedThroughputExceeded,
};
use freshet_types::{ShardLevelMetric, ShardLevelMetrics, StreamArn};

/// CloudWatch's stream dimensions (plus the account and region a stream
/// lives in: one Freshet serves many).
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    StreamName: String,
    AccountId: String,
    Region: String,
}

impl StreamLabels {
    fn of(stream: &StreamArn) -> StreamLabels {
        StreamLabels {
            StreamName: stream.stream_name.to_string(),
            AccountId: stream.account_id.to_string(),
            Region: stream.region.to_string(),
        }
    }
}

#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    StreamName: String,
    AccountId: String,
    Region: String,
    ShardId: String,
}

type Counters = Family<StreamLabels, Counter>;
type ShardCounters = Family<ShardLabels, Counter>;

/// How a PutRecords entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryOutcome {
    Landed,
    Throttled,
    Failed,
}

/// What one GetRecords returned.
pub struct ReadOutcome {
    pub records: u64,
    pub bytes: u64,
    /// Now minus the arrival of the last record returned (0 at the tip).
    pub iterator_age_ms: i64,
}

struct ShardLevel {
    incoming_bytes: ShardCounters,
    incoming_records: ShardCounters,
    outgoing_bytes: ShardCounters,
    outgoing_records: ShardCounters,
    iterator_age: HistogramFamily<ShardLabels>,
    write_exceeded: ShardCounters,
    read_exceeded: ShardCounters,
}

/// The frontend's metrics.
pub struct FrontendMetrics {
    incoming_bytes: Counters,
    incoming_records: Counters,
    outgoing_bytes: Counters,
    outgoing_records: Counters,
    put_record_bytes: Counters,
    put_record_latency: HistogramFamily<StreamLabels>,
    put_record_success: Counters,
    put_records_bytes: Counters,
    put_records_latency: HistogramFamily<StreamLabels>,
    put_records_records: Counters,
    put_records_success: Counters,
    put_records_successful: Counters,
    put_records_failed: Counters,
    put_records_throttled: Counters,
    put_records_total: Counters,
    get_records_bytes: Counters,
    get_records_latency: HistogramFamily<StreamLabels>,
    get_records_records: Counters,
    get_records_success: Counters,
    get_records_iterator_age: HistogramFamily<StreamLabels>,
    read_exceeded: Counters,
    write_exceeded: Counters,
    shard_level: ShardLevel,
    /// Every stream's shard-level metrics, whatever it switched on.
    all_shard_level: bool,
}

fn kinesis(registry: &Registry, name: &str, help: &str) -> Counters {
    registry.counter_family(&format!("kinesis_{name}"), help)
}

fn latency(registry: &Registry, name: &str, help: &str) -> HistogramFamily<StreamLabels> {
    registry.histogram_family(&format!("kinesis_{name}"), help, Buckets::Milliseconds)
}

impl FrontendMetrics {
    pub fn register(registry: &Registry, all_shard_level: bool) -> FrontendMetrics {
        let shard_level = ShardLevel {
            incoming_bytes: registry
                .counter_family("kinesis_shard_IncomingBytes", "Bytes put to the shard."),
            incoming_records: registry
                .counter_family("kinesis_shard_IncomingRecords", "Records put to the shard."),
            outgoing_bytes: registry
                .counter_family("kinesis_shard_OutgoingBytes", "Bytes read from the shard."),
            outgoing_records: registry.counter_family(
                "kinesis_shard_OutgoingRecords",
                "Records read from the shard.",
            ),
            iterator_age: registry.histogram_family(
                "kinesis_shard_IteratorAgeMilliseconds",
                "Age of the last record of each GetRecords on the shard.",
                Buckets::AgeMilliseconds,
            ),
            write_exceeded: registry.counter_family(
                "kinesis_shard_WriteProvisionedThroughputExceeded",
                "Records refused for the shard's write limits.",
            ),
            read_exceeded: registry.counter_family(
                "kinesis_shard_ReadProvisionedThroughputExceeded",
                "GetRecords calls refused for the shard's read limits.",
            ),
        };
        FrontendMetrics {
            incoming_bytes: kinesis(
                registry,
                "IncomingBytes",
                "Bytes put to the stream (PutRecord and PutRecords).",
            ),
            incoming_records: kinesis(registry, "IncomingRecords", "Records put to the stream."),
            outgoing_bytes: kinesis(registry, "OutgoingBytes", "Bytes returned by GetRecords."),
            outgoing_records: kinesis(
                registry,
                "OutgoingRecords",
                "Records returned by GetRecords.",
            ),
            put_record_bytes: kinesis(registry, "PutRecord_Bytes", "Bytes put with PutRecord."),
            put_record_latency: latency(
                registry,
                "PutRecord_Latency_milliseconds",
                "PutRecord latency.",
            ),
            put_record_success: kinesis(
                registry,
                "PutRecord_Success",
                "Successful PutRecord calls.",
            ),
            put_records_bytes: kinesis(registry, "PutRecords_Bytes", "Bytes put with PutRecords."),
            put_records_latency: latency(
                registry,
                "PutRecords_Latency_milliseconds",
                "PutRecords latency.",
            ),
            put_records_records: kinesis(
                registry,
                "PutRecords_Records",
                "Records put with PutRecords (deprecated in CloudWatch: SuccessfulRecords).",
            ),
            put_records_success: kinesis(
                registry,
                "PutRecords_Success",
                "PutRecords calls at least one record of which succeeded.",
            ),
            put_records_successful: kinesis(
                registry,
                "PutRecords_SuccessfulRecords",
                "Records PutRecords wrote.",
            ),
            put_records_failed: kinesis(
                registry,
                "PutRecords_FailedRecords",
                "Records PutRecords failed for internal reasons.",
            ),
            put_records_throttled: kinesis(
                registry,
                "PutRecords_ThrottledRecords",
                "Records PutRecords refused for throughput limits.",
            ),
            put_records_total: kinesis(
                registry,
                "PutRecords_TotalRecords",
                "Records sent in PutRecords calls.",
            ),
            get_records_bytes: kinesis(registry, "GetRecords_Bytes", "Bytes GetRecords returned."),
            get_records_latency: latency(
                registry,
                "GetRecords_Latency_milliseconds",
                "GetRecords latency.",
            ),
            get_records_records: kinesis(
                registry,
                "GetRecords_Records",
                "Records GetRecords returned.",
            ),
            get_records_success: kinesis(
                registry,
                "GetRecords_Success",
                "Successful GetRecords calls.",
            ),
            get_records_iterator_age: registry.histogram_family(
                "kinesis_GetRecords_IteratorAgeMilliseconds",
                "Age of the last record of each GetRecords (0 at the tip of the stream).",
                Buckets::AgeMilliseconds,
            ),
            read_exceeded: kinesis(
                registry,
                "ReadProvisionedThroughputExceeded",
                "GetRecords calls refused for read limits.",
            ),
            write_exceeded: kinesis(
                registry,
                "WriteProvisionedThroughputExceeded",
                "Records refused for write limits.",
            ),
            shard_level,
            all_shard_level,
        }
    }

    /// The shard's labels when `metric` is kept per shard for the stream
    /// (it has `enabled` on).
    fn shard(
        &self,
        enabled: ShardLevelMetrics,
        metric: ShardLevelMetric,
        stream: &StreamArn,
        shard_id: &str,
    ) -> Option<ShardLabels> {
        (self.all_shard_level || enabled.contains(metric)).then(|| ShardLabels {
            StreamName: stream.stream_name.to_string(),
            AccountId: stream.account_id.to_string(),
            Region: stream.region.to_string(),
            ShardId: shard_id.to_owned(),
        })
    }

    fn incoming(
        &self,
        labels: &StreamLabels,
        (stream, enabled): (&StreamArn, ShardLevelMetrics),
        shard_id: &str,
        bytes: u64,
    ) {
        self.incoming_bytes.get_or_create(labels).inc_by(bytes);
        self.incoming_records.get_or_create(labels).inc();
        let level = &self.shard_level;
        if let Some(shard) = self.shard(enabled, IncomingBytes, stream, shard_id) {
            level.incoming_bytes.get_or_create(&shard).inc_by(bytes);
        }
        if let Some(shard) = self.shard(enabled, IncomingRecords, stream, shard_id) {
            level.incoming_records.get_or_create(&shard).inc();
        }
    }

    fn write_refused(
        &self,
        labels: &StreamLabels,
        (stream, enabled): (&StreamArn, ShardLevelMetrics),
        shard_id: Option<&str>,
    ) {
        self.write_exceeded.get_or_create(labels).inc();
        let exceeded = WriteProvisionedThroughputExceeded;
        if let Some(shard) = shard_id.and_then(|id| self.shard(enabled, exceeded, stream, id)) {
            self.shard_level.write_exceeded.get_or_create(&shard).inc();
        }
    }

    /// Whether a write metric is kept per shard for a stream that has
    /// `enabled` on (then callers say which shard each record was meant
    /// for).
    pub fn per_shard(&self, enabled: ShardLevelMetrics) -> bool {
        self.all_shard_level
            || [
                IncomingBytes,
                IncomingRecords,
                WriteProvisionedThroughputExceeded,
            ]
            .into_iter()
            .any(|metric| enabled.contains(metric))
    }

    /// A PutRecord of `bytes` that ended in `outcome`: the shard it landed
    /// on, or how it failed and the shard it was meant for.
    pub fn put_record(
        &self,
        (stream, enabled): (&StreamArn, ShardLevelMetrics),
        started: Instant,
        bytes: u64,
        outcome: Result<&str, (EntryOutcome, Option<&str>)>,
    ) {
        let labels = StreamLabels::of(stream);
        self.put_record_latency
            .get_or_create(&labels)
            .observe(as_millis(started.elapsed()));
        match outcome {
            Ok(shard_id) => {
                self.put_record_success.get_or_create(&labels).inc();
                self.put_record_bytes.get_or_create(&labels).inc_by(bytes);
                self.incoming(&labels, (stream, enabled), shard_id, bytes);
            }
            Err((EntryOutcome::Throttled, shard_id)) => {
                self.write_refused(&labels, (stream, enabled), shard_id)
            }
            Err(_) => {}
        }
    }

    /// A PutRecords whose entries ended as `entries` say: each with its
    /// bytes and the shard it landed on. Counted per call, not per record
    /// (a call carries up to 500): each family is looked up once.
    pub fn put_records<'a>(
        &self,
        (stream, enabled): (&StreamArn, ShardLevelMetrics),
        started: Instant,
        entries: impl Iterator<Item = (EntryOutcome, u64, Option<&'a str>)>,
    ) {
        let labels = StreamLabels::of(stream);
        self.put_records_latency
            .get_or_create(&labels)
            .observe(as_millis(started.elapsed()));
        let (mut total, mut landed, mut throttled, mut failed, mut bytes) = (0, 0, 0, 0, 0);
        // Per shard, only when shard-level metrics are on: (bytes, records).
        let per_shard_on = self.per_shard(enabled);
        let mut per_shard: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut throttled_per_shard: HashMap<&str, u64> = HashMap::new();
        for (outcome, size, shard_id) in entries {
            total += 1;
            match outcome {
                EntryOutcome::Landed => {
                    landed += 1;
                    bytes += size;
                    if let (true, Some(shard_id)) = (per_shard_on, shard_id) {
                        let counts = per_shard.entry(shard_id).or_default();
                        counts.0 += size;
                        counts.1 += 1;
                    }
                }
                EntryOutcome::Throttled => {
                    throttled += 1;
                    if let (true, Some(shard_id)) = (per_shard_on, shard_id) {
                        *throttled_per_shard.entry(shard_id).or_default() += 1;
                    }
                }
                EntryOutcome::Failed => failed += 1,
            }
        }
        if landed > 0 {
            self.put_records_success.get_or_create(&labels).inc();
        }
        self.put_records_total.get_or_create(&labels).inc_by(total);
        self.put_records_successful
            .get_or_create(&labels)
            .inc_by(landed);
        self.put_records_records
            .get_or_create(&labels)
            .inc_by(landed);
        self.put_records_throttled
            .get_or_create(&labels)
            .inc_by(throttled);
        self.put_records_failed
            .get_or_create(&labels)
            .inc_by(failed);
        self.put_records_bytes.get_or_create(&labels).inc_by(bytes);
        self.incoming_bytes.get_or_create(&labels).inc_by(bytes);
        self.incoming_records.get_or_create(&labels).inc_by(landed);
        if throttled > 0 {
            self.write_exceeded.get_or_create(&labels).inc_by(throttled);
        }
        let level = &self.shard_level;
        for (shard_id, (bytes, records)) in per_shard {
            if let Some(shard) = self.shard(enabled, IncomingBytes, stream, shard_id) {
                level.incoming_bytes.get_or_create(&shard).inc_by(bytes);
            }
            if let Some(shard) = self.shard(enabled, IncomingRecords, stream, shard_id) {
                level.incoming_records.get_or_create(&shard).inc_by(records);
            }
        }
        let exceeded = WriteProvisionedThroughputExceeded;
        for (shard_id, records) in throttled_per_shard {
            if let Some(shard) = self.shard(enabled, exceeded, stream, shard_id) {
                level.write_exceeded.get_or_create(&shard).inc_by(records);
            }
        }
    }

    /// A GetRecords on `shard_id`: what it returned, or that it was
    /// throttled (`None`).
    pub fn get_records(
        &self,
        (stream, enabled): (&StreamArn, ShardLevelMetrics),
        shard_id: &str,
        started: Instant,
        outcome: Option<&ReadOutcome>,
    ) {
        let labels = StreamLabels::of(stream);
        self.get_records_latency
            .get_or_create(&labels)
            .observe(as_millis(started.elapsed()));
        let level = &self.shard_level;
        let Some(read) = outcome else {
            self.read_exceeded.get_or_create(&labels).inc();
            let exceeded = ReadProvisionedThroughputExceeded;
            if let Some(shard) = self.shard(enabled, exceeded, stream, shard_id) {
                level.read_exceeded.get_or_create(&shard).inc();
            }
            return;
        };
        self.get_records_success.get_or_create(&labels).inc();
        self.get_records_records
            .get_or_create(&labels)
            .inc_by(read.records);
        self.get_records_bytes
            .get_or_create(&labels)
            .inc_by(read.bytes);
        self.outgoing_records
            .get_or_create(&labels)
            .inc_by(read.records);
        self.outgoing_bytes
            .get_or_create(&labels)
            .inc_by(read.bytes);
        let age = read.iterator_age_ms.max(0) as f64;
        self.get_records_iterator_age
            .get_or_create(&labels)
            .observe(age);
        if let Some(shard) = self.shard(enabled, OutgoingRecords, stream, shard_id) {
            level
                .outgoing_records
                .get_or_create(&shard)
                .inc_by(read.records);
        }
        if let Some(shard) = self.shard(enabled, OutgoingBytes, stream, shard_id) {
            level
                .outgoing_bytes
                .get_or_create(&shard)
                .inc_by(read.bytes);
        }
        if let Some(shard) = self.shard(enabled, IteratorAgeMilliseconds, stream, shard_id) {
            level.iterator_age.get_or_create(&shard).observe(age);
        }
    }
}
