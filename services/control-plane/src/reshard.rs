//! Resharding: SplitShard, MergeShards and UpdateShardCount.
//!
//! Every change of a stream's shards is one or more *steps*, each closing
//! one or two parents and opening their children:
//!
//! 1. membership marks the parents CLOSING — from then on their leaders
//!    refuse appends, including those already queued, *before* writing
//!    them (so the frontend routes them again, to the children);
//! 2. each parent's leader seals it (`Storage/SealShard`): through the
//!    shard's writer queue, after every batch written while it was open,
//!    it commits its whole log with its replicas and answers where it ends;
//! 3. membership publishes, in one change-log batch, the parents CLOSED
//!    with those ending offsets and the children OPEN (with larger sequence
//!    bases, so every child record sorts after every parent record).
//!
//! Every record a parent acknowledged is therefore below its ending offset,
//! and every record of a key acknowledged afterwards is in a child: a
//! consumer that reads parents to their end before their children sees each
//! key in acknowledgement order. Writers routed to a CLOSING parent are
//! refused before anything is written and retry on the children.
//!
//! Like Kinesis, the calls answer at once and the stream is UPDATING until
//! the steps are done; UpdateShardCount (UNIFORM_SCALING) is a series of
//! splits at the target's boundaries, then merges of the pieces between them.

use freshet_errors::ErrorCode;
use freshet_types::{ShardState, StreamStatus};
use std::time::Duration;

use freshet_metastore::{ShardRow, StreamRow};
use freshet_proto::v1::*;
use freshet_types::{HashKey, HashKeyRange, ShardId};
use tonic::Status;

use crate::{internal, sequence_base, ControlPlaneService};

/// How long one step may keep retrying a seal (a failover may be under way).
const SEAL_PATIENCE: Duration = Duration::from_secs(60);
/// Most UpdateShardCount calls per stream in a rolling 24 hours.
const SHARD_COUNT_UPDATES_PER_DAY: i64 = 10;
/// Most open shards UpdateShardCount scales a stream to.
const MAX_SHARDS_PER_STREAM: u32 = 10_000;

/// Where a sealed shard's log ends.
pub(crate) struct SealOutcome {
    pub ending_offset: u64,
    /// The epoch it was sealed at.
    pub epoch: u64,
    /// Arrival time of its newest record (0 if it holds none).
    pub last_arrival_ms: i64,
}

/// One split or merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Split { shard_id: String, at: HashKey },
    Merge { lower: String, upper: String },
}

pub(crate) fn range_of(row: &ShardRow) -> anyhow::Result<HashKeyRange> {
    Ok(HashKeyRange {
        start: HashKey::parse_decimal(&row.starting_hash_key)
            .map_err(|e| anyhow::anyhow!("shard {}: {}", row.shard_id, e.0))?,
        end: HashKey::parse_decimal(&row.ending_hash_key)
            .map_err(|e| anyhow::anyhow!("shard {}: {}", row.shard_id, e.0))?,
    })
}

/// The next step towards `target` shards of equal width, or `None` once
/// the open shards are exactly those: first split any shard a target
/// boundary falls inside, then merge neighbours no boundary separates.
fn next_uniform_step(open: &[(String, HashKeyRange)], target: u32) -> Option<Step> {
    let boundaries: Vec<HashKey> = HashKeyRange::split_evenly(target)
        .into_iter()
        .skip(1)
        .map(|r| r.start)
        .collect();
    for (shard_id, range) in open {
        if let Some(at) = boundaries
            .iter()
            .find(|b| range.start < **b && **b <= range.end)
        {
            return Some(Step::Split {
                shard_id: shard_id.clone(),
                at: *at,
            });
        }
    }
    let mut sorted: Vec<&(String, HashKeyRange)> = open.iter().collect();
    sorted.sort_by_key(|(_, range)| range.start);
    sorted.windows(2).find_map(|pair| {
        let (lower, upper) = (pair[0], pair[1]);
        let adjacent = lower.1.end.0.checked_add(1) == Some(upper.1.start.0);
        (adjacent && !boundaries.contains(&upper.1.start)).then(|| Step::Merge {
            lower: lower.0.clone(),
            upper: upper.0.clone(),
        })
    })
}

fn shard_not_found(shard_id: &str, stream: &StreamRow) -> Status {
    ErrorCode::ResourceNotFound.status(format!(
        "Could not find shard {shard_id} in stream {} under account {}.",
        stream.stream_name, stream.account_id
    ))
}

fn not_eligible(shard_id: &str, stream: &StreamRow) -> Status {
    ErrorCode::InvalidArgument.status(format!(
        "Shard {shard_id} in stream {} under account {} has already been merged or split, and thus is not eligible for merging or splitting.",
        stream.stream_name, stream.account_id
    ))
}

pub(crate) fn not_active(stream: &StreamRow) -> Status {
    ErrorCode::ResourceInUse.status(format!(
        "Stream {} under account {} not ACTIVE, instead in state {}",
        stream.stream_name, stream.account_id, stream.status
    ))
}

impl ControlPlaneService {
    /// The stream's shards, and the one named `shard_id` if it is open.
    async fn open_shard(
        &self,
        stream: &StreamRow,
        shard_id: &str,
    ) -> Result<(Vec<ShardRow>, ShardRow), Status> {
        let rows = self
            .store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?;
        let wanted = ShardId::parse(shard_id).ok_or_else(|| shard_not_found(shard_id, stream))?;
        let row = rows
            .iter()
            .find(|r| ShardId::parse(&r.shard_id) == Some(wanted))
            .cloned()
            .ok_or_else(|| shard_not_found(shard_id, stream))?;
        if !row.is_open_in(stream) {
            return Err(not_eligible(&row.shard_id, stream));
        }
        Ok((rows, row))
    }

    /// Refuses unless `extra` more open shards fit the account's limit.
    async fn check_shard_limit(&self, stream: &StreamRow, extra: u32) -> Result<(), Status> {
        let used = self
            .store
            .open_shard_count(&stream.account_id, &stream.region)
            .await
            .map_err(internal)?;
        if used + i64::from(extra) > i64::from(self.shard_limit) {
            return Err(ErrorCode::LimitExceeded.status(format!(
                "This request would exceed the shard limit for the account {} in {}. Current shard count for the account: {used}. \
                 Limit: {}. Number of additional shards that would have resulted from this request: {extra}. \
                 Refer to the AWS Service Limits page (https://docs.aws.amazon.com/general/latest/gr/aws_service_limits.html) \
                 for current limits and how to request higher limits.",
                stream.account_id,
                stream.region,
                self.shard_limit
            )));
        }
        Ok(())
    }

    /// ACTIVE → UPDATING, or ResourceInUseException.
    pub(crate) async fn begin_update(&self, stream: &StreamRow) -> Result<(), Status> {
        if self
            .store
            .begin_stream_update(stream.stream_uid)
            .await
            .map_err(internal)?
        {
            Ok(())
        } else {
            Err(not_active(stream))
        }
    }

    pub(crate) async fn split_shard_checked(
        &self,
        request: SplitShardRequest,
    ) -> Result<(), Status> {
        let stream = self.existing_stream(&request).await?;
        let (_, parent) = self.open_shard(&stream, &request.shard_to_split).await?;
        self.check_shard_limit(&stream, 1).await?;
        let range = range_of(&parent).map_err(internal)?;
        let at = HashKey::parse_decimal(&request.new_starting_hash_key)
            .map_err(|e| ErrorCode::InvalidArgument.status(e.0))?;
        let inside = range.start.0.checked_add(1).is_some_and(|low| at.0 > low) && at < range.end;
        if !inside {
            return Err(ErrorCode::InvalidArgument.status(format!(
                "NewStartingHashKey {} used in SplitShard() on shard {} in stream {} under account {} is not both greater than one plus the shard's StartingHashKey {} and less than the shard's EndingHashKey {}.",
                request.new_starting_hash_key, parent.shard_id, stream.stream_name, stream.account_id,
                parent.starting_hash_key, parent.ending_hash_key
            )));
        }
        if stream.status != StreamStatus::Active {
            return Err(not_active(&stream));
        }
        self.begin_update(&stream).await?;
        self.spawn_steps(
            stream,
            vec![Step::Split {
                shard_id: parent.shard_id,
                at,
            }],
            None,
        );
        Ok(())
    }

    pub(crate) async fn merge_shards_checked(
        &self,
        request: MergeShardsRequest,
    ) -> Result<(), Status> {
        let stream = self.existing_stream(&request).await?;
        let (_, first) = self.open_shard(&stream, &request.shard_to_merge).await?;
        let (_, second) = self
            .open_shard(&stream, &request.adjacent_shard_to_merge)
            .await?;
        let (a, b) = (
            range_of(&first).map_err(internal)?,
            range_of(&second).map_err(internal)?,
        );
        let adjacent =
            a.end.0.checked_add(1) == Some(b.start.0) || b.end.0.checked_add(1) == Some(a.start.0);
        if !adjacent {
            return Err(ErrorCode::InvalidArgument.status(format!(
                "Shards {} and {} in stream {} under account {} are not an adjacent pair of shards eligible for merging",
                first.shard_id, second.shard_id, stream.stream_name, stream.account_id
            )));
        }
        if stream.status != StreamStatus::Active {
            return Err(not_active(&stream));
        }
        self.begin_update(&stream).await?;
        self.spawn_steps(
            stream,
            vec![Step::Merge {
                lower: first.shard_id,
                upper: second.shard_id,
            }],
            None,
        );
        Ok(())
    }

    pub(crate) async fn update_shard_count_checked(
        &self,
        request: UpdateShardCountRequest,
    ) -> Result<UpdateShardCountResponse, Status> {
        let stream = self.existing_stream(&request).await?;
        let rows = self
            .store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?;
        let current = rows.iter().filter(|r| r.is_open_in(&stream)).count() as u32;
        let target = request.target_shard_count;
        let limit_exceeded = |why: String| {
            ErrorCode::LimitExceeded.status(format!(
                "UpdateShardCount of stream {} under account {} from {current} to {target} shards: {why}",
                stream.stream_name, stream.account_id
            ))
        };
        if u64::from(target) > 2 * u64::from(current) {
            return Err(limit_exceeded(format!(
                "a stream can scale up to at most double its current shard count ({})",
                2 * current
            )));
        }
        if 2 * u64::from(target) < u64::from(current) {
            return Err(limit_exceeded(format!(
                "a stream can scale down to at least half its current shard count ({})",
                current.div_ceil(2)
            )));
        }
        if target > MAX_SHARDS_PER_STREAM {
            return Err(limit_exceeded(format!(
                "a stream can have at most {MAX_SHARDS_PER_STREAM} shards"
            )));
        }
        if stream.status != StreamStatus::Active {
            return Err(not_active(&stream));
        }
        if target > current {
            self.check_shard_limit(&stream, target - current).await?;
        }
        if !self
            .store
            .record_shard_count_update(stream.stream_uid, SHARD_COUNT_UPDATES_PER_DAY)
            .await
            .map_err(internal)?
        {
            return Err(limit_exceeded(format!(
                "a stream can be scaled at most {SHARD_COUNT_UPDATES_PER_DAY} times in a rolling 24 hours"
            )));
        }
        self.begin_update(&stream).await?;
        self.spawn_steps(stream, Vec::new(), Some(target));
        Ok(UpdateShardCountResponse {
            current_shard_count: current,
            target_shard_count: target,
        })
    }

    /// Runs `steps` (then, with `uniform_target`, whatever steps lead to
    /// that many equal shards) in the background, and sets the stream
    /// ACTIVE again when done.
    pub(crate) fn spawn_steps(
        &self,
        stream: StreamRow,
        steps: Vec<Step>,
        uniform_target: Option<u32>,
    ) {
        let service = self.clone();
        // Tracked: shutdown lets a step under way finish (within its
        // deadline) rather than cut it between a seal and its publication.
        self.tasks.spawn(async move {
            // One change of a stream's shards at a time: a worker-balancing
            // move under way finishes first (`balancer.rs`).
            let _changing = service.stream_lock(stream.stream_uid).lock_owned().await;
            // A shard left CLOSING by a move that was given up would be a
            // hole in the steps' view of the open shards.
            let result = match service.reopen_closing_shards(&stream).await {
                Ok(()) => service.run_steps(&stream, steps, uniform_target).await,
                Err(error) => Err(error.context("reopen a shard left closing")),
            };
            if let Err(error) = &result {
                tracing::error!(
                    stream_name = stream.stream_name,
                    "resharding failed to {error:#}; abandoning the unfinished step"
                );
            }
            // A failover racing the reopen makes it fail its epoch guard;
            // reading the rows again and retrying settles it.
            for attempt in 1..=10 {
                match service.finish_update(&stream).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(
                            stream_name = stream.stream_name,
                            attempt,
                            "failed to {error:#}; retrying"
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            tracing::error!(
                stream_name = stream.stream_name,
                "could not finish the update; the stream stays UPDATING until the control plane restarts"
            );
        });
    }

    /// Ends an update: an unfinished step's CLOSING parents are reopened
    /// (its children were never opened, so the stream is as before the
    /// step), then the stream is ACTIVE again.
    pub(crate) async fn finish_update(&self, stream: &StreamRow) -> anyhow::Result<()> {
        self.reopen_closing_shards(stream).await?;
        Ok(self.store.end_stream_update(stream.stream_uid).await?)
    }

    /// Reopens the stream's CLOSING shards (a step or move given up).
    pub(crate) async fn reopen_closing_shards(&self, stream: &StreamRow) -> anyhow::Result<()> {
        let closing: Vec<String> = self
            .store
            .shards_of(stream.stream_uid)
            .await?
            .into_iter()
            .filter(|r| r.state == ShardState::Closing)
            .map(|r| r.shard_id)
            .collect();
        if !closing.is_empty() {
            self.membership
                .clone()
                .reopen_shards(ReopenShardsRequest {
                    stream_uid: stream.stream_uid,
                    shard_ids: closing,
                })
                .await
                .map_err(|s| anyhow::anyhow!("reopen shards: {}", s.message()))?;
        }
        Ok(())
    }

    /// At start-up: no step runs yet, so a stream left UPDATING was being
    /// resharded by a control plane that stopped; its unfinished step is
    /// abandoned (see [`ControlPlaneService::finish_update`]).
    pub(crate) async fn recover_interrupted_updates(&self) -> anyhow::Result<()> {
        for stream in self
            .store
            .streams_with_status(StreamStatus::Updating)
            .await?
        {
            tracing::warn!(
                stream_name = stream.stream_name,
                "finishing an update interrupted by a restart"
            );
            self.finish_update(&stream).await?;
        }
        Ok(())
    }

    async fn run_steps(
        &self,
        stream: &StreamRow,
        steps: Vec<Step>,
        uniform_target: Option<u32>,
    ) -> anyhow::Result<()> {
        for step in steps {
            self.run_step(stream, step).await?;
        }
        let Some(target) = uniform_target else {
            return Ok(());
        };
        loop {
            let open: Vec<(String, HashKeyRange)> = self
                .store
                .shards_of(stream.stream_uid)
                .await?
                .iter()
                .filter(|r| r.state == ShardState::Open)
                .map(|r| range_of(r).map(|range| (r.shard_id.clone(), range)))
                .collect::<anyhow::Result<_>>()?;
            match next_uniform_step(&open, target) {
                Some(step) => self.run_step(stream, step).await?,
                None => return Ok(()),
            }
        }
    }

    /// One split or merge: close the parents, seal them, open the children.
    async fn run_step(&self, stream: &StreamRow, step: Step) -> anyhow::Result<()> {
        let rows = self.store.shards_of(stream.stream_uid).await?;
        let row = |id: &str| {
            rows.iter()
                .find(|r| r.shard_id == id)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("shard {id} vanished"))
        };
        let next_number = rows
            .iter()
            .filter_map(|r| ShardId::parse(&r.shard_id))
            .map(|id| id.0 + 1)
            .max()
            .unwrap_or(0);
        let child = |offset: u32, range: HashKeyRange, parent: &str, adjacent: &str| {
            let id = ShardId(next_number + offset);
            ShardToPlace {
                shard_id: id.to_string(),
                starting_hash_key: range.start.to_string(),
                ending_hash_key: range.end.to_string(),
                parent_shard_id: parent.to_owned(),
                adjacent_parent_shard_id: adjacent.to_owned(),
                sequence_base: sequence_base(stream.stream_uid, id),
            }
        };
        let (parents, children) = match &step {
            Step::Split { shard_id, at } => {
                let range = range_of(&row(shard_id)?)?;
                let low = HashKeyRange {
                    start: range.start,
                    end: HashKey(at.0 - 1),
                };
                let high = HashKeyRange {
                    start: *at,
                    end: range.end,
                };
                (
                    vec![shard_id.clone()],
                    vec![child(0, low, shard_id, ""), child(1, high, shard_id, "")],
                )
            }
            Step::Merge { lower, upper } => {
                let (a, b) = (range_of(&row(lower)?)?, range_of(&row(upper)?)?);
                let union = HashKeyRange {
                    start: a.start.min(b.start),
                    end: a.end.max(b.end),
                };
                (
                    vec![lower.clone(), upper.clone()],
                    vec![child(0, union, lower, upper)],
                )
            }
        };
        tracing::info!(stream_name = stream.stream_name, ?step, "resharding step");
        let kind = match &step {
            Step::Split { .. } => "split",
            Step::Merge { .. } => "merge",
        };
        self.metrics
            .reshard_steps
            .get_or_create(&crate::metrics::StepLabel { step: kind })
            .inc();
        let mut membership = self.membership.clone();
        let closed = membership
            .close_shards(CloseShardsRequest {
                stream_uid: stream.stream_uid,
                shard_ids: parents.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("close {parents:?}: {}", s.message()))?
            .into_inner()
            .entries;
        let mut sealed = Vec::with_capacity(parents.len());
        for shard_id in &parents {
            let close_generation = close_generation_of(&closed, shard_id)?;
            let outcome = self.seal(stream, shard_id, SEAL_PATIENCE).await?;
            sealed.push(SealedShard {
                shard_id: shard_id.clone(),
                ending_offset: outcome.ending_offset,
                close_generation,
            });
        }
        membership
            .complete_reshard(CompleteReshardRequest {
                stream_uid: stream.stream_uid,
                sealed,
                children,
            })
            .await
            .map_err(|s| anyhow::anyhow!("open the children of {parents:?}: {}", s.message()))?;
        Ok(())
    }

    /// Asks a CLOSING shard's current leader to seal it, following
    /// failovers for up to `patience`.
    pub(crate) async fn seal(
        &self,
        stream: &StreamRow,
        shard_id: &str,
        patience: Duration,
    ) -> anyhow::Result<SealOutcome> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let outcome = self
                .seal_once(stream, shard_id, left.max(Duration::from_millis(100)))
                .await;
            match outcome {
                Ok(end) => return Ok(end),
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(error.context(format!("seal {shard_id}")))
                }
                Err(error) => {
                    tracing::debug!(shard_id, "seal failed, retrying: {error:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// One `SealShard` call, given at most `timeout`.
    async fn seal_once(
        &self,
        stream: &StreamRow,
        shard_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<SealOutcome> {
        let row = self
            .store
            .shards_of(stream.stream_uid)
            .await?
            .into_iter()
            .find(|r| r.shard_id == shard_id)
            .ok_or_else(|| anyhow::anyhow!("shard {shard_id} vanished"))?;
        let address = self
            .store
            .list_workers()
            .await?
            .into_iter()
            .find(|w| w.worker_id == row.leader_worker_id)
            .map(|w| w.address)
            .ok_or_else(|| anyhow::anyhow!("leader {} is not registered", row.leader_worker_id))?;
        let mut storage = self.storage.get(&address)?;
        let request = freshet_server::request_with_deadline(
            SealShardRequest {
                shard: Some(ShardKey {
                    stream_uid: stream.stream_uid,
                    shard_id: shard_id.to_owned(),
                }),
                epoch: row.epoch,
            },
            timeout.min(Duration::from_secs(10)),
        );
        let response = storage
            .seal_shard(request)
            .await
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        Ok(SealOutcome {
            ending_offset: response.ending_offset,
            epoch: row.epoch,
            last_arrival_ms: response.last_arrival_ms,
        })
    }
}

/// The close generation `CloseShards` answered with for `shard_id`: the
/// seal is completed only at it (see `ShardMapEntry.close_generation`).
pub(crate) fn close_generation_of(
    closed: &[freshet_proto::v1::ShardMapEntry],
    shard_id: &str,
) -> anyhow::Result<u64> {
    closed
        .iter()
        .find(|e| e.key.as_ref().is_some_and(|k| k.shard_id == shard_id))
        .map(|e| e.close_generation)
        .ok_or_else(|| anyhow::anyhow!("membership did not answer for closing shard {shard_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(ranges: Vec<HashKeyRange>) -> Vec<(String, HashKeyRange)> {
        ranges
            .into_iter()
            .enumerate()
            .map(|(i, r)| (ShardId(i as u32).to_string(), r))
            .collect()
    }

    #[test]
    fn shards_on_either_side_of_a_hole_are_never_merged() {
        // Shard 1 missing from the open shards (a move given up, say).
        let mut open = shards(HashKeyRange::split_evenly(4));
        open.remove(1);
        assert_eq!(
            next_uniform_step(&open, 2),
            Some(Step::Merge {
                lower: ShardId(2).to_string(),
                upper: ShardId(3).to_string(),
            })
        );
    }

    /// Applies steps until none is left; returns the final ranges.
    fn scale(from: u32, to: u32) -> (Vec<HashKeyRange>, usize) {
        let mut open = shards(HashKeyRange::split_evenly(from));
        let mut next = from;
        let mut steps = 0;
        while let Some(step) = next_uniform_step(&open, to) {
            steps += 1;
            assert!(steps < 100, "no progress scaling {from} → {to}");
            match step {
                Step::Split { shard_id, at } => {
                    let at_index = open
                        .iter()
                        .position(|(id, _)| *id == shard_id)
                        .expect("shard");
                    let (_, range) = open.remove(at_index);
                    for r in [
                        HashKeyRange {
                            start: range.start,
                            end: HashKey(at.0 - 1),
                        },
                        HashKeyRange {
                            start: at,
                            end: range.end,
                        },
                    ] {
                        open.push((ShardId(next).to_string(), r));
                        next += 1;
                    }
                }
                Step::Merge { lower, upper } => {
                    let a = open.iter().find(|(id, _)| *id == lower).expect("lower").1;
                    let b = open.iter().find(|(id, _)| *id == upper).expect("upper").1;
                    open.retain(|(id, _)| *id != lower && *id != upper);
                    open.push((
                        ShardId(next).to_string(),
                        HashKeyRange {
                            start: a.start.min(b.start),
                            end: a.end.max(b.end),
                        },
                    ));
                    next += 1;
                }
            }
        }
        let mut ranges: Vec<HashKeyRange> = open.into_iter().map(|(_, r)| r).collect();
        ranges.sort_by_key(|r| r.start);
        (ranges, steps)
    }

    #[test]
    fn uniform_scaling_ends_with_equal_shards_whatever_the_start() {
        for (from, to) in [
            (4, 8),
            (4, 3),
            (3, 2),
            (2, 4),
            (5, 7),
            (8, 4),
            (1, 2),
            (6, 6),
        ] {
            let (ranges, _) = scale(from, to);
            assert_eq!(ranges, HashKeyRange::split_evenly(to), "{from} → {to}");
        }
    }

    #[test]
    fn doubling_is_one_split_per_shard() {
        assert_eq!(scale(4, 8).1, 4);
        assert_eq!(scale(4, 4).1, 0);
    }
}
