//! Appends a request's records to their shards' leaders, routing again
//! whatever was refused before it was written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use freshet_errors::ErrorCode;
use freshet_proto::v1::{RecordToAppend, ShardMapEntry};
use freshet_shardmap::StreamRoute;
use freshet_types::{HashKey, SequenceNumber, StreamArn};

use super::{rate_exceeded, route_stream, shard_id_of};

use crate::coalescer::AppendOutcome;
use crate::error::{KinesisError, KinesisResult};
use crate::Frontend;

/// How long a write keeps being routed again after refusals made before
/// anything was written: a failover, or its shard being closed by a split
/// or merge while the children are not yet open.
const REROUTE_DEADLINE: Duration = Duration::from_secs(5);

/// Where one record landed.
pub(super) struct Landed {
    /// Shared by every record of one append.
    pub(super) shard_id: Arc<str>,
    pub(super) sequence_number: SequenceNumber,
}

/// Appends records to the open shards that cover their hash keys, one
/// append per shard. A group its worker refused before writing is routed
/// again on a fresh route and retried until [`REROUTE_DEADLINE`]. An
/// append whose outcome was unknown reaches here already resolved
/// (`coalescer.rs`); one still unknown after that is reported as
/// InternalFailure, perhaps written (the client decides). Answers per
/// record, in input order.
pub(super) async fn append_records(
    frontend: &Frontend,
    stream: &StreamArn,
    mut route: StreamRoute,
    records: Vec<(HashKey, RecordToAppend)>,
) -> Vec<KinesisResult<Landed>> {
    let deadline = tokio::time::Instant::now() + REROUTE_DEADLINE;
    let mut results: Vec<Option<KinesisResult<Landed>>> = records.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..records.len()).collect();
    let mut round = 0u32;
    while !pending.is_empty() {
        // Group by shard; a key whose shard is being closed waits a round.
        let mut by_shard: BTreeMap<String, (ShardMapEntry, Vec<usize>)> = BTreeMap::new();
        let mut waiting = Vec::new();
        for index in pending {
            match route.shard_for_hash_key(records[index].0) {
                Some(entry) => by_shard
                    .entry(shard_id_of(entry))
                    .or_insert_with(|| (entry.clone(), Vec::new()))
                    .1
                    .push(index),
                None => waiting.push(index),
            }
        }
        let appends = by_shard.into_values().map(|(entry, indexes)| {
            let batch: Vec<RecordToAppend> =
                indexes.iter().map(|&i| records[i].1.clone()).collect();
            async move {
                let outcome = frontend.appends.append(stream, &entry, batch).await;
                (entry, indexes, outcome)
            }
        });
        pending = waiting;
        for (entry, indexes, outcome) in futures::future::join_all(appends).await {
            match outcome {
                AppendOutcome::Written(appended) => {
                    let shard_id: Arc<str> = shard_id_of(&entry).into();
                    let written = indexes.len().saturating_sub(appended.throttled as usize);
                    for (position, index) in indexes.into_iter().enumerate() {
                        if position >= written {
                            results[index] = Some(Err(rate_exceeded(&entry)));
                            continue;
                        }
                        results[index] = Some(Ok(Landed {
                            shard_id: shard_id.clone(),
                            sequence_number: SequenceNumber {
                                base: appended.sequence_base,
                                offset: appended.first_offset + position as u64,
                            },
                        }));
                    }
                }
                AppendOutcome::NotWritten(reason) => {
                    tracing::debug!(
                        shard_id = shard_id_of(&entry),
                        reason,
                        "append refused before writing; routing again"
                    );
                    pending.extend(indexes);
                }
                AppendOutcome::Failed(code, message) => {
                    let error = match code {
                        ErrorCode::ProvisionedThroughputExceeded => rate_exceeded(&entry),
                        _ => KinesisError::internal(format!(
                            "append to {} failed: {message}",
                            shard_id_of(&entry)
                        )),
                    };
                    for index in indexes {
                        results[index] = Some(Err(error.clone()));
                    }
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            for index in pending.drain(..) {
                results[index] = Some(Err(KinesisError::internal(
                    "the shard for this record was unavailable (failover or resharding under way)",
                )));
            }
            break;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(u64::from(round.min(10)) * 10)).await;
        frontend.router.invalidate(stream);
        match route_stream(frontend, stream).await {
            Ok(fresh) => route = fresh,
            Err(error) => {
                for index in pending.drain(..) {
                    results[index] = Some(Err(error.clone()));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(KinesisError::internal("record was not written"))))
        .collect()
}
