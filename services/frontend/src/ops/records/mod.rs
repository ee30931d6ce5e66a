//! Data-plane operations: PutRecord and PutRecords (`put.rs`, through
//! `reroute.rs`), GetShardIterator and GetRecords (`get.rs`), and
//! SubscribeToShard (`subscribe.rs`, records pushed by `push.rs`).
//!
//! # The write path
//! validate every record → look up the stream's route (snapshot, else
//! cache) → pick each record's shard by MD5(partition key) or its
//! ExplicitHashKey → one append per shard to its leader, in parallel,
//! carrying the epoch the route names — concurrent requests' appends to one
//! shard share `Append` calls (`coalescer.rs`) → answer with sequence
//! numbers.
//!
//! An append its leader refused before writing anything
//! ([`freshet_errors::ErrorCode::NotWritten`]: a stale epoch, a worker that
//! does not lead or does not know the placement yet, a closing shard) is
//! routed again on a freshly read route and retried until a 5 s deadline
//! (`reroute.rs`). A failure that leaves the outcome unknown is resolved
//! under the append's idempotency key before anyone is answered
//! (`coalescer.rs`), so a record reported as failed was not written. A
//! read refused the same way is retried once.

mod get;
mod push;
mod put;
mod reroute;
mod subscribe;

pub use get::{get_records, get_shard_iterator};
pub(crate) use get::{GetRecordsInput, GetShardIteratorInput};
pub use put::{put_record, put_records};
pub(crate) use put::{PutRecordInput, PutRecordsInput};
pub use subscribe::subscribe_to_shard;
pub(crate) use subscribe::SubscribeToShardInput;

use freshet_errors::ErrorCode;
use freshet_proto::v1::{GetShardTailRequest, ShardKey, ShardMapEntry};
use freshet_shardmap::StreamRoute;
use freshet_types::StreamArn;

use crate::error::{KinesisError, KinesisResult};
use crate::Frontend;

fn dry_run_error() -> KinesisError {
    KinesisError::new(
        ErrorCode::DryRun,
        "The request was rejected because the DryRun parameter was specified",
    )
}

/// Looks the stream up; `ResourceNotFoundException` if it does not exist.
async fn route_stream(frontend: &Frontend, stream: &StreamArn) -> KinesisResult<StreamRoute> {
    // The call's span (see `http_api.rs`) learns which stream it is about.
    tracing::Span::current().record("aws.kinesis.stream_name", stream.stream_name.as_str());
    frontend
        .router
        .stream_route(stream)
        .await
        .map_err(|error| KinesisError::internal(error.to_string()))?
        .ok_or_else(|| KinesisError::stream_not_found(stream))
}

/// Where the shard's committed log ends (where LATEST starts), asked of
/// its leader.
async fn shard_tail(frontend: &Frontend, entry: &ShardMapEntry) -> KinesisResult<u64> {
    let mut client = frontend.storage.client(&entry.leader_address)?;
    let tail = client
        .get_shard_tail(frontend.storage_request(GetShardTailRequest {
            shard: shard_key(entry),
            epoch: entry.epoch,
        }))
        .await
        .map_err(|status| {
            KinesisError::internal(format!(
                "read the tail of {}: {}",
                shard_id_of(entry),
                status.message()
            ))
        })?;
    Ok(tail.into_inner().next_offset)
}

fn shard_key(entry: &ShardMapEntry) -> Option<ShardKey> {
    entry.key.clone()
}

fn shard_id_of(entry: &ShardMapEntry) -> String {
    entry
        .key
        .as_ref()
        .map(|k| k.shard_id.clone())
        .unwrap_or_default()
}

/// Whether a storage worker refused before acting (its placement or epoch
/// moved on): route again and retry.
fn refused_before_acting(status: &tonic::Status) -> bool {
    ErrorCode::of_status(status) == ErrorCode::NotWritten
}

/// A shard's write or read limit is spent (the records or call refused
/// were not written or served).
fn rate_exceeded(entry: &ShardMapEntry) -> KinesisError {
    KinesisError::new(
        ErrorCode::ProvisionedThroughputExceeded,
        format!(
            "Rate exceeded for shard {} in stream {} under account {}.",
            shard_id_of(entry),
            entry.stream_name,
            entry.account_id
        ),
    )
}
