//! The metastore's rows as Rust values, and their decoding. States are
//! enums ([`freshet_types::state`]); a stored text no variant names is an
//! error here, not a surprise later.

use freshet_types::{
    CommitmentStatus, ShardLevelMetrics, ShardState, StreamMode, StreamStatus, Voters,
};
use sqlx::Row;

use crate::error::{MetastoreError, Result};

#[derive(Debug, Clone)]
pub struct StreamRow {
    pub stream_uid: i64,
    pub account_id: String,
    pub region: String,
    pub stream_name: String,
    pub stream_arn: String,
    pub status: StreamStatus,
    pub stream_mode: StreamMode,
    pub retention_hours: i32,
    pub max_record_size_kib: i32,
    pub created_at_ms: i64,
    /// ON_DEMAND only: MiB/s of write capacity kept ready while set.
    pub warm_throughput_mibps: Option<i32>,
    /// The shard-level metrics enhanced monitoring has on.
    pub shard_level_metrics: ShardLevelMetrics,
    /// Records that arrived before this (ms) stay expired, whatever the
    /// retention period becomes (raised by a retention increase).
    pub expired_before_ms: i64,
    /// AUTO record distribution (on-demand streams only).
    pub auto_record_distribution: bool,
}

/// An account's minimum-throughput billing commitment.
#[derive(Debug, Clone, PartialEq)]
pub struct Commitment {
    /// As of now.
    pub status: CommitmentStatus,
    pub started_at_ms: Option<i64>,
    /// When a scheduled disable takes (or took) effect.
    pub ends_at_ms: Option<i64>,
    /// 24 h after the start.
    pub earliest_end_ms: Option<i64>,
}

impl Commitment {
    /// Whether the commitment is in force now.
    pub fn is_active(&self) -> bool {
        self.status.is_in_force()
    }
}

#[derive(Debug, Clone)]
pub struct ShardRow {
    pub stream_uid: i64,
    pub shard_id: String,
    pub starting_hash_key: String,
    pub ending_hash_key: String,
    pub parent_shard_id: Option<String>,
    pub adjacent_parent_shard_id: Option<String>,
    pub sequence_base: u64,
    pub state: ShardState,
    /// CLOSED only: the shard holds exactly the offsets below this.
    pub ending_offset: Option<u64>,
    pub leader_worker_id: String,
    /// Every copy of the current segment but the leader's — voters of
    /// either configuration and learners: the leader sends each of them
    /// every batch.
    pub replica_worker_ids: Vec<String>,
    /// Whose copies count (the leader's too): see [`Voters`].
    pub voters: Voters,
    pub epoch: u64,
    /// Goes up each time the shard starts or stops being sealed (see
    /// migration 0010): a seal is completed only at the generation it
    /// began at.
    pub close_generation: u64,
    /// The current segment of the shard's log (the one `leader_worker_id`
    /// and `replica_worker_ids` hold) and its first offset.
    pub segment_index: u32,
    pub segment_start_offset: u64,
    /// The earlier segments, oldest first.
    pub sealed_segments: Vec<SealedSegmentRow>,
}

impl ShardRow {
    /// The replicas that do not vote (yet): they receive every batch and
    /// count for nothing until they are promoted.
    pub fn learners(&self) -> Vec<String> {
        self.replica_worker_ids
            .iter()
            .filter(|id| !self.voters.contains(id))
            .cloned()
            .collect()
    }

    /// Whether the shard counts as open in `stream`: OPEN, or CLOSING in an
    /// ACTIVE stream — that is a move to another worker under way (worker
    /// balancing), after which it is OPEN again; resharding closes shards
    /// only while the stream is UPDATING.
    pub fn is_open_in(&self, stream: &StreamRow) -> bool {
        self.state.counts_as_open(stream.status)
    }
}

/// A sealed segment of a shard's log, kept on the workers that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedSegmentRow {
    pub index: u32,
    pub start_offset: u64,
    /// Exclusive.
    pub end_offset: u64,
    pub final_epoch: u64,
    /// Its last leader first.
    pub worker_ids: Vec<String>,
    /// Arrival time of its newest record (0 if it holds none).
    #[serde(default)]
    pub last_arrival_ms: i64,
}

#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub worker_id: String,
    pub availability_zone: String,
    pub address: String,
    /// Seconds since the last heartbeat, by Postgres's clock.
    pub seconds_since_heartbeat: f64,
}

pub(crate) const STREAM_COLUMNS: &str =
    "stream_uid, account_id, region, stream_name, stream_arn, status, stream_mode, \
     retention_hours, max_record_size_kib, created_at_ms, warm_throughput_mibps, shard_level_metrics, \
     expired_before_ms, auto_record_distribution";

pub(crate) const SHARD_SELECT: &str = "SELECT stream_uid, shard_id, starting_hash_key, ending_hash_key, parent_shard_id, \
     adjacent_parent_shard_id, sequence_base, ending_offset, state, leader_worker_id, replica_worker_ids, voter_ids, next_voter_ids, epoch, \
     close_generation, segment_index, segment_start_offset, sealed_segments::text AS sealed_segments \
     FROM shards";

pub(crate) fn shard_from_row(row: &sqlx::postgres::PgRow) -> Result<ShardRow> {
    Ok(ShardRow {
        stream_uid: row.try_get("stream_uid")?,
        shard_id: row.try_get("shard_id")?,
        starting_hash_key: row.try_get("starting_hash_key")?,
        ending_hash_key: row.try_get("ending_hash_key")?,
        parent_shard_id: row.try_get("parent_shard_id")?,
        adjacent_parent_shard_id: row.try_get("adjacent_parent_shard_id")?,
        sequence_base: row.try_get::<i64, _>("sequence_base")? as u64,
        ending_offset: row
            .try_get::<Option<i64>, _>("ending_offset")?
            .map(|offset| offset as u64),
        state: row.try_get::<String, _>("state")?.parse()?,
        leader_worker_id: row.try_get("leader_worker_id")?,
        voters: voters_from_row(row)?,
        replica_worker_ids: row.try_get("replica_worker_ids")?,
        epoch: row.try_get::<i64, _>("epoch")? as u64,
        close_generation: row.try_get::<i64, _>("close_generation")? as u64,
        segment_index: row.try_get::<i32, _>("segment_index")? as u32,
        segment_start_offset: row.try_get::<i64, _>("segment_start_offset")? as u64,
        sealed_segments: serde_json::from_str(&row.try_get::<String, _>("sealed_segments")?)
            .map_err(|e| MetastoreError::Corrupt(format!("sealed segments: {e}")))?,
    })
}

/// A shard row's voters; a row written without any (by a binary older
/// than migration 0009) counts every copy, as such a binary did.
fn voters_from_row(row: &sqlx::postgres::PgRow) -> Result<Voters> {
    let voters: Vec<String> = row.try_get("voter_ids")?;
    if voters.is_empty() {
        let leader: String = row.try_get("leader_worker_id")?;
        let replicas: Vec<String> = row.try_get("replica_worker_ids")?;
        return Ok(Voters::Stable(
            std::iter::once(leader).chain(replicas).collect(),
        ));
    }
    let next: Vec<String> = row.try_get("next_voter_ids")?;
    Ok(Voters::from_lists(&voters, &next))
}

pub(crate) fn stream_from_row(row: &sqlx::postgres::PgRow) -> Result<StreamRow> {
    Ok(StreamRow {
        stream_uid: row.try_get("stream_uid")?,
        account_id: row.try_get("account_id")?,
        region: row.try_get("region")?,
        stream_name: row.try_get("stream_name")?,
        stream_arn: row.try_get("stream_arn")?,
        status: row.try_get::<String, _>("status")?.parse()?,
        stream_mode: row.try_get::<String, _>("stream_mode")?.parse()?,
        retention_hours: row.try_get("retention_hours")?,
        max_record_size_kib: row.try_get("max_record_size_kib")?,
        created_at_ms: row.try_get("created_at_ms")?,
        warm_throughput_mibps: row.try_get("warm_throughput_mibps")?,
        shard_level_metrics: metrics_set(row.try_get("shard_level_metrics")?)?,
        expired_before_ms: row.try_get("expired_before_ms")?,
        auto_record_distribution: row.try_get("auto_record_distribution")?,
    })
}

/// A stored set of shard-level metrics (the column's CHECK keeps it in
/// 0..=127; anything else is corrupt).
pub(crate) fn metrics_set(stored: i32) -> Result<ShardLevelMetrics> {
    u32::try_from(stored)
        .ok()
        .filter(|bits| ShardLevelMetrics::from_bits(*bits).bits() == *bits)
        .map(ShardLevelMetrics::from_bits)
        .ok_or_else(|| MetastoreError::Corrupt(format!("shard-level metrics {stored}")))
}

/// Decodes every row with `decode`.
pub(crate) fn decode_all<T>(
    rows: &[sqlx::postgres::PgRow],
    decode: fn(&sqlx::postgres::PgRow) -> Result<T>,
) -> Result<Vec<T>> {
    rows.iter().map(decode).collect()
}
