//! The values a shard log takes and gives: its tunables, records as
//! written and as stored, and where an append or a read ended.

use bytes::Bytes;

/// Tunables of a shard log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_max_bytes: u64,
    /// ... or once its first record is this old (so retention can trim it).
    pub segment_max_age_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age_ms: 60 * 60 * 1000,
        }
    }
}

/// Names one append call of one frontend (its idempotency key): an append
/// sent again under the same key is answered with where it landed the
/// first time, if it did (see [`ShardLog::find_append`](crate::ShardLog::find_append)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppendKey {
    /// Drawn at random when the frontend starts.
    pub frontend: u64,
    /// Counts the frontend's calls.
    pub call: u64,
}

/// Stored on the last record of a keyed append: the key, and how many
/// records the append wrote — the offsets ending at that record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendMark {
    pub key: AppendKey,
    pub records: u32,
}

/// A record handed to [`ShardLog::append`](crate::ShardLog::append).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub partition_key: String,
    pub data: Bytes,
    /// Set on the last record of a keyed append.
    pub ends_append: Option<AppendMark>,
}

impl NewRecord {
    /// A record outside any keyed append.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> NewRecord {
        NewRecord {
            partition_key: partition_key.into(),
            data: data.into(),
            ends_append: None,
        }
    }
}

/// A checksum over a batch's records, in order (each one's key and data,
/// with their lengths, and its append mark): what a leader sends with a
/// batch so a replica can refuse one that was damaged on the way.
pub fn batch_checksum<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a [u8], Option<AppendMark>)>,
) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for (partition_key, data, mark) in records {
        hasher.update(&(partition_key.len() as u64).to_le_bytes());
        hasher.update(partition_key.as_bytes());
        hasher.update(&(data.len() as u64).to_le_bytes());
        hasher.update(data);
        if let Some(mark) = mark {
            hasher.update(&[1]);
            hasher.update(&mark.key.frontend.to_le_bytes());
            hasher.update(&mark.key.call.to_le_bytes());
            hasher.update(&mark.records.to_le_bytes());
        }
    }
    hasher.finalize()
}

/// A record as stored. Two are equal when they are the same record: where
/// the write that stored it ended (`write_continues`) may differ between
/// copies and does not count.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub offset: u64,
    pub arrival_ms: i64,
    pub partition_key: String,
    pub data: Bytes,
    /// Set on the last record of a keyed append.
    pub ends_append: Option<AppendMark>,
    /// The write it was stored with goes on after it: writes land whole
    /// (recovery drops a torn one), and a copy catching up is sent whole
    /// writes, so it never holds an append in part.
    pub write_continues: bool,
}

impl PartialEq for StoredRecord {
    fn eq(&self, other: &StoredRecord) -> bool {
        self.offset == other.offset
            && self.arrival_ms == other.arrival_ms
            && self.partition_key == other.partition_key
            && self.data == other.data
            && self.ends_append == other.ends_append
    }
}

impl Eq for StoredRecord {}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first record; the rest follow densely.
    pub first_offset: u64,
    /// Arrival time given to every record of the batch.
    pub arrival_ms: i64,
}

/// Result of a read.
#[derive(Debug, Clone)]
pub struct ReadBatch {
    pub records: Vec<StoredRecord>,
    /// The offset the next read should start from.
    pub next_offset: u64,
    /// Arrival time of the newest record in the log, if any.
    pub latest_arrival_ms: Option<i64>,
}
