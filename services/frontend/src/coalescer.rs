//! Coalescing of concurrent appends to one shard into one `Append` call.
//!
//! Sixteen producers calling PutRecord on a four-shard stream send about
//! four appends at a time to each shard's leader. The leader's group commit
//! already writes them as one batch, but each still cost a gRPC call on both
//! sides. Here, appends for the same shard, leader and epoch (a *lane*)
//! queue while the lane has its maximum of calls outstanding (one by
//! default, `--append-calls-per-shard`), and go as one call as soon as it
//! returns: batching end to end — frontend → leader → replicas. One call at
//! a time per shard mirrors the leader's group commit, which writes one
//! batch at a time anyway; allowing two measured slower (the second call
//! split the leader's next batch instead of joining it).
//!
//! What each caller sees is what it would have seen alone:
//! - its records stay contiguous and in its order, so its offsets are the
//!   call's first offset plus its position in the call;
//! - the leader's write limit refuses a suffix of a call's records, so a
//!   caller is refused exactly its records in that suffix;
//! - an error answers every caller of the call with the same outcome: a
//!   refusal before writing ([`AppendOutcome::NotWritten`], which each
//!   caller retries on its own fresh route, as before) or a failure after
//!   which its records may or may not have been written — the same
//!   uncertainty as a call of its own; the appends queued behind a failed
//!   call are sent back unsent (`NotWritten`), so they are routed again at
//!   once instead of waiting out another deadline on a leader that just
//!   failed.
//!
//! A call goes out from a task of its own, so a caller that goes away (a
//! client hanging up) never strands the callers queued behind it.
//!
//! # Unknown outcomes are resolved, not reported
//! Every call carries an idempotency key (this frontend's random number and
//! the call's), which the leader stores with the call's last record and
//! its replicas keep. When a call fails in a way that leaves its outcome
//! unknown — its leader died mid-call, lost its lease, or the deadline
//! passed — the call is sent again, the same records under the same key
//! (`resolving`), to whichever worker leads the shard now, until one
//! answers ([`RESOLVE_DEADLINE`]): where the records landed if the first
//! attempt landed, or a fresh write if it did not; for a shard closed to
//! writes meanwhile, that it is absent (then the callers route again). So
//! a record reported as failed was not written. What is left: an outcome
//! still unknown at the deadline (a shard without a leader that long), or
//! a shard that moved to a new segment meanwhile, is reported as it was
//! before — InternalFailure, perhaps written.
//!
//! Tracing: the call is a child of the first queued request's span and
//! links to the spans of the others.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshet_proto::v1::{AppendKey, AppendRequest, AppendResponse, RecordToAppend, ShardMapEntry};
use freshet_types::StreamArn;
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use freshet_errors::ErrorCode;

use crate::ops::StoragePool;

/// A coalesced call stops taking queued appends at this many bytes of
/// data and keys (the leader's group commit takes up to 16 MiB; a single
/// PutRecords carries up to 10 MiB, and always goes, alone if need be).
const MAX_CALL_BYTES: usize = 8 * 1024 * 1024;

/// How long a call whose outcome is unknown keeps being sent again to the
/// shard's current leader (a failover takes a lease timeout and an
/// election; the HTTP request's own limit is longer).
pub const RESOLVE_DEADLINE: Duration = Duration::from_secs(30);

/// Finds a shard's current entry: (stream, shard id, past the snapshot?)
/// → entry.
pub type LocateShard =
    Arc<dyn Fn(StreamArn, String, bool) -> BoxFuture<'static, Option<ShardMapEntry>> + Send + Sync>;

/// Whether a call that failed with `code` may have written its records.
fn outcome_unknown(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::MaybeWritten | ErrorCode::Unavailable | ErrorCode::Internal
    )
}

/// A random number for this frontend's keys (std's hasher keys are drawn
/// from the OS at random).
fn random_frontend_number() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// What one caller's share of a call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendShare {
    /// Offset of the caller's first record.
    pub first_offset: u64,
    pub sequence_base: u64,
    /// How many of the caller's records, at its end, the write limit refused.
    pub throttled: u32,
}

/// How one caller's append ended: the write path's three outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Acknowledged: where the caller's records landed.
    Written(AppendShare),
    /// Refused before anything was written: route again and retry.
    NotWritten(String),
    /// Not acknowledged, for the reason `code` names. Unless the code says
    /// otherwise (a spent write limit), the records may have been written.
    Failed(ErrorCode, String),
}

impl AppendOutcome {
    /// What a storage worker's (or tonic's) error status means for the
    /// append, by the code it carries.
    pub fn from_status(status: &tonic::Status) -> AppendOutcome {
        match ErrorCode::of_status(status) {
            ErrorCode::NotWritten => AppendOutcome::NotWritten(status.message().to_owned()),
            code => AppendOutcome::Failed(code, status.message().to_owned()),
        }
    }
}

/// Appends that share a lane go out together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LaneKey {
    leader_address: String,
    stream_uid: i64,
    shard_id: String,
    epoch: u64,
    segment_index: u32,
}

struct Queued {
    records: Vec<RecordToAppend>,
    bytes: usize,
    span: tracing::Span,
    reply: oneshot::Sender<AppendOutcome>,
}

#[derive(Default)]
struct Lane {
    queued: Vec<Queued>,
    in_flight: usize,
}

/// The lanes of one frontend.
pub struct AppendCoalescer {
    storage: Arc<StoragePool>,
    /// Deadline of each call.
    timeout: Duration,
    /// Calls one lane may have outstanding (at least 1).
    max_in_flight: usize,
    lanes: Mutex<HashMap<LaneKey, Lane>>,
    /// The lanes' sending tasks: shutdown waits for them.
    tasks: freshet_server::Tasks,
    /// This frontend's part of every call's key.
    frontend_number: u64,
    /// Numbers the calls.
    calls: AtomicU64,
    /// Where a call whose outcome is unknown is sent again.
    locate: LocateShard,
}

fn size_of(records: &[RecordToAppend]) -> usize {
    records
        .iter()
        .map(|r| r.data.len() + r.partition_key.len())
        .sum()
}

impl AppendCoalescer {
    pub fn new(
        storage: Arc<StoragePool>,
        timeout: Duration,
        max_in_flight: usize,
        tasks: freshet_server::Tasks,
        locate: LocateShard,
    ) -> Arc<AppendCoalescer> {
        Arc::new(AppendCoalescer {
            storage,
            timeout,
            max_in_flight: max_in_flight.max(1),
            lanes: Mutex::default(),
            tasks,
            frontend_number: random_frontend_number(),
            calls: AtomicU64::new(0),
            locate,
        })
    }

    /// Appends `records` to the shard `entry` (of `stream`) names, at its
    /// epoch, through its leader; resolves once the leader answered the
    /// call carrying them — or, if its outcome was unknown, once it is
    /// resolved (see the module docs).
    pub async fn append(
        self: &Arc<Self>,
        stream: &StreamArn,
        entry: &ShardMapEntry,
        records: Vec<RecordToAppend>,
    ) -> AppendOutcome {
        let Some(shard) = entry.key.clone() else {
            return AppendOutcome::Failed(
                ErrorCode::Internal,
                "a shard-map entry without a shard key".to_owned(),
            );
        };
        let key = LaneKey {
            leader_address: entry.leader_address.clone(),
            stream_uid: shard.stream_uid,
            shard_id: shard.shard_id,
            epoch: entry.epoch,
            segment_index: entry.segment_index,
        };
        // Fails early (a bad address) rather than in the sending task.
        if let Err(error) = self.storage.client(&key.leader_address) {
            return AppendOutcome::Failed(error.code, error.message);
        }
        let (reply, answer) = oneshot::channel();
        let start_sender = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            let lane = lanes.entry(key.clone()).or_default();
            lane.queued.push(Queued {
                bytes: size_of(&records),
                records,
                span: tracing::Span::current(),
                reply,
            });
            let start = lane.in_flight < self.max_in_flight;
            if start {
                lane.in_flight += 1;
            }
            start
        };
        if start_sender {
            self.tasks
                .spawn(self.clone().send_lane(key, stream.clone()));
        }
        answer.await.unwrap_or_else(|_| {
            AppendOutcome::Failed(
                ErrorCode::MaybeWritten,
                "the append's sending task ended without an answer".to_owned(),
            )
        })
    }

    /// Takes the next call's worth of queued appends, or closes this
    /// sender's slot in the lane (and the lane, once idle) if none wait.
    fn next_call(&self, key: &LaneKey) -> Vec<Queued> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(lane) = lanes.get_mut(key) else {
            return Vec::new();
        };
        let mut bytes = 0;
        let mut take = 0;
        for queued in &lane.queued {
            if take > 0 && bytes + queued.bytes > MAX_CALL_BYTES {
                break;
            }
            bytes += queued.bytes;
            take += 1;
        }
        if take == 0 {
            lane.in_flight -= 1;
            if lane.in_flight == 0 {
                lanes.remove(key);
            }
            return Vec::new();
        }
        lane.queued.drain(..take).collect()
    }

    /// One of a lane's senders: sends what is queued, answers its callers,
    /// and goes on until the lane's queue is empty.
    async fn send_lane(self: Arc<Self>, key: LaneKey, stream: StreamArn) {
        let mut slot = SenderSlot {
            coalescer: &self,
            key: &key,
            released: false,
        };
        loop {
            let call = self.next_call(&key);
            if call.is_empty() {
                // `next_call` gave the slot back.
                slot.released = true;
                return;
            }
            self.send_call(&key, &stream, call).await;
        }
    }

    /// Gives back a sender's slot that ended without emptying the queue
    /// (its task was cancelled, at shutdown, or panicked): the lane must
    /// not stay full of senders that no longer exist.
    fn release_abandoned_slot(&self, key: &LaneKey) {
        let queued = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            let Some(lane) = lanes.get_mut(key) else {
                return;
            };
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if lane.in_flight > 0 {
                return;
            }
            lanes
                .remove(key)
                .map(|lane| lane.queued)
                .unwrap_or_default()
        };
        for queued in queued {
            let _ = queued.reply.send(AppendOutcome::NotWritten(
                "not sent: the append's sender ended".to_owned(),
            ));
        }
    }

    async fn send_call(self: &Arc<Self>, key: &LaneKey, stream: &StreamArn, call: Vec<Queued>) {
        let span = tracing::info_span!(
            parent: &call[0].span,
            "coalesced_append",
            otel.name = "frontend.coalesced_append",
            aws.kinesis.shard_id = %key.shard_id,
            shard.epoch = key.epoch,
            requests = call.len()
        );
        for queued in &call[1..] {
            freshet_telemetry::link_to(&span, &queued.span);
        }
        let counts: Vec<usize> = call.iter().map(|q| q.records.len()).collect();
        let mut records = Vec::with_capacity(counts.iter().sum());
        let mut replies = Vec::with_capacity(call.len());
        for queued in call {
            records.extend(queued.records);
            replies.push(queued.reply);
        }
        let request = AppendRequest {
            shard: Some(freshet_proto::v1::ShardKey {
                stream_uid: key.stream_uid,
                shard_id: key.shard_id.clone(),
            }),
            epoch: key.epoch,
            records,
            key: Some(AppendKey {
                frontend: self.frontend_number,
                call: self.calls.fetch_add(1, Ordering::Relaxed),
            }),
            resolving: false,
        };
        // Kept to be sent again if the outcome is unknown (the data is
        // shared, not copied).
        let again = request.clone();
        let outcome = self
            .call(&key.leader_address, request)
            .instrument(span.clone())
            .await;
        let outcome = match outcome {
            Ok(response) => Ok(response),
            Err(status) => {
                // The leader refused, failed or did not answer in time: the
                // appends queued behind this call go back unsent, to be
                // routed again, rather than wait out another deadline on
                // the same leader one call after another.
                self.send_back_queued(key, &status);
                if outcome_unknown(ErrorCode::of_status(&status)) {
                    // Resolved in a task of its own, so the lane goes on.
                    let (coalescer, key, stream) = (self.clone(), key.clone(), stream.clone());
                    self.tasks.spawn(
                        async move {
                            let outcome = coalescer
                                .resolve(&key, &stream, again, status, &replies)
                                .await;
                            answer_callers(replies, &counts, outcome);
                        }
                        .instrument(span),
                    );
                    return;
                }
                Err(AppendOutcome::from_status(&status))
            }
        };
        answer_callers(replies, &counts, outcome);
    }

    async fn call(
        &self,
        leader_address: &str,
        request: AppendRequest,
    ) -> Result<AppendResponse, tonic::Status> {
        let mut client = self
            .storage
            .client(leader_address)
            .map_err(|error| error.code.status(error.message))?;
        client
            .append(freshet_server::request_with_deadline(request, self.timeout))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Sends a call whose outcome is unknown again, under its key, to the
    /// shard's current leader until one answers what became of it.
    async fn resolve(
        &self,
        lane: &LaneKey,
        stream: &StreamArn,
        mut request: AppendRequest,
        first_failure: tonic::Status,
        callers: &[oneshot::Sender<AppendOutcome>],
    ) -> Result<AppendResponse, AppendOutcome> {
        let deadline = tokio::time::Instant::now() + RESOLVE_DEADLINE;
        let mut last_failure = first_failure;
        request.resolving = true;
        for attempt in 1u64.. {
            tokio::time::sleep(Duration::from_millis((attempt * 50).min(500))).await;
            // Nobody left to tell (their requests ended): stop asking.
            if tokio::time::Instant::now() >= deadline || callers.iter().all(|c| c.is_closed()) {
                break;
            }
            // The route is read afresh (past the frontend's snapshot) on
            // every fourth attempt only: a failover reaches the snapshot
            // through the change log anyway.
            let afresh = attempt % 4 == 1;
            let Some(entry) = (self.locate)(stream.clone(), lane.shard_id.clone(), afresh).await
            else {
                continue;
            };
            if entry.segment_index != lane.segment_index {
                // Its first attempt went to a segment that is sealed now,
                // whose copies only serve reads.
                return Err(AppendOutcome::Failed(
                    ErrorCode::MaybeWritten,
                    format!(
                        "the append's outcome is not known: shard {} moved to a new segment meanwhile ({})",
                        lane.shard_id,
                        last_failure.message()
                    ),
                ));
            }
            request.epoch = entry.epoch;
            tracing::debug!(
                shard_id = lane.shard_id,
                epoch = entry.epoch,
                attempt,
                "resolving an append whose outcome is unknown"
            );
            match self.call(&entry.leader_address, request.clone()).await {
                Ok(response) if response.absent => {
                    return Err(AppendOutcome::NotWritten(format!(
                        "shard {} was closed without the append",
                        lane.shard_id
                    )))
                }
                Ok(response) => return Ok(response),
                Err(status) => {
                    // Only an answer settles it. A deleted stream's
                    // records are gone whatever became of them; any other
                    // refusal or failure leaves the outcome as unknown as
                    // it was: ask again.
                    if ErrorCode::of_status(&status) == ErrorCode::ResourceNotFound {
                        return Err(AppendOutcome::Failed(
                            ErrorCode::ResourceNotFound,
                            status.message().to_owned(),
                        ));
                    }
                    last_failure = status;
                }
            }
        }
        Err(AppendOutcome::Failed(
            ErrorCode::MaybeWritten,
            format!(
                "the append's outcome is still not known after {RESOLVE_DEADLINE:?}: {}",
                last_failure.message()
            ),
        ))
    }

    fn send_back_queued(&self, key: &LaneKey, cause: &tonic::Status) {
        let queued = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            match lanes.get_mut(key) {
                Some(lane) => std::mem::take(&mut lane.queued),
                None => Vec::new(),
            }
        };
        for queued in queued {
            let _ = queued.reply.send(AppendOutcome::NotWritten(format!(
                "not sent: the previous append to this shard's leader failed ({:?}: {})",
                cause.code(),
                cause.message()
            )));
        }
    }
}

/// A lane's sender slot, given back however its task ends.
struct SenderSlot<'a> {
    coalescer: &'a AppendCoalescer,
    key: &'a LaneKey,
    released: bool,
}

impl Drop for SenderSlot<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.coalescer.release_abandoned_slot(self.key);
        }
    }
}

/// Tells each caller of a call its share of the call's outcome.
fn answer_callers(
    replies: Vec<oneshot::Sender<AppendOutcome>>,
    counts: &[usize],
    outcome: Result<AppendResponse, AppendOutcome>,
) {
    match outcome {
        Ok(response) => {
            for (reply, share) in replies.into_iter().zip(shares(&response, counts)) {
                let _ = reply.send(AppendOutcome::Written(share));
            }
        }
        Err(outcome) => {
            for reply in replies {
                let _ = reply.send(outcome.clone());
            }
        }
    }
}

/// Splits one call's answer among its callers, who sent `counts` records
/// each, in order.
fn shares(response: &AppendResponse, counts: &[usize]) -> Vec<AppendShare> {
    let total: usize = counts.iter().sum();
    let written = total.saturating_sub(response.throttled as usize);
    let mut position = 0;
    counts
        .iter()
        .map(|&count| {
            let refused = (position + count).saturating_sub(written.max(position));
            let share = AppendShare {
                first_offset: response.first_offset + position as u64,
                sequence_base: response.sequence_base,
                throttled: u32::try_from(refused).unwrap_or(u32::MAX),
            };
            position += count;
            share
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(first_offset: u64, throttled: u32) -> AppendResponse {
        AppendResponse {
            first_offset,
            sequence_base: 9,
            arrival_ms: 0,
            throttled,
            absent: false,
        }
    }

    fn lane() -> LaneKey {
        LaneKey {
            leader_address: "127.0.0.1:1".to_owned(),
            stream_uid: 1,
            shard_id: "shardId-000000000000".to_owned(),
            epoch: 3,
            segment_index: 0,
        }
    }

    /// Queues an append of `bytes` bytes on `key` as `append` would, with
    /// the sender slot already taken; returns where its answer arrives.
    fn queue(
        coalescer: &AppendCoalescer,
        key: &LaneKey,
        bytes: usize,
    ) -> oneshot::Receiver<AppendOutcome> {
        let (reply, answer) = oneshot::channel();
        let mut lanes = coalescer.lanes.lock().expect("lanes");
        let lane = lanes.entry(key.clone()).or_default();
        lane.in_flight = 1;
        lane.queued.push(Queued {
            records: vec![RecordToAppend::default()],
            bytes,
            span: tracing::Span::none(),
            reply,
        });
        answer
    }

    fn coalescer() -> Arc<AppendCoalescer> {
        AppendCoalescer::new(
            Arc::new(StoragePool::new(&freshet_server::InternalToken::none())),
            Duration::from_secs(1),
            1,
            freshet_server::Tasks::new(),
            Arc::new(|_, _, _| Box::pin(async { None })),
        )
    }

    #[test]
    fn a_call_takes_what_is_queued_up_to_its_size_and_the_lane_closes_when_idle() {
        let coalescer = coalescer();
        let key = lane();
        let _first = queue(&coalescer, &key, MAX_CALL_BYTES - 10);
        let _second = queue(&coalescer, &key, 5);
        let _third = queue(&coalescer, &key, 20);
        assert_eq!(coalescer.next_call(&key).len(), 2, "the first two fit");
        assert_eq!(coalescer.next_call(&key).len(), 1);
        assert!(coalescer.next_call(&key).is_empty());
        assert!(coalescer.lanes.lock().expect("lanes").is_empty());
    }

    #[test]
    fn an_append_larger_than_a_call_still_goes_alone() {
        let coalescer = coalescer();
        let key = lane();
        let _huge = queue(&coalescer, &key, 2 * MAX_CALL_BYTES);
        let _next = queue(&coalescer, &key, 1);
        assert_eq!(coalescer.next_call(&key).len(), 1);
        assert_eq!(coalescer.next_call(&key).len(), 1);
    }

    #[test]
    fn an_abandoned_sender_sends_its_lanes_queue_back_unsent() {
        let coalescer = coalescer();
        let key = lane();
        let mut answer = queue(&coalescer, &key, 1);
        drop(SenderSlot {
            coalescer: &coalescer,
            key: &key,
            released: false,
        });
        let outcome = answer.try_recv().expect("answered");
        assert!(
            matches!(outcome, AppendOutcome::NotWritten(_)),
            "{outcome:?}"
        );
        assert!(coalescer.lanes.lock().expect("lanes").is_empty());
    }

    #[test]
    fn appends_queued_behind_a_failed_call_go_back_unsent_to_be_routed_again() {
        let coalescer = coalescer();
        let key = lane();
        let mut queued = queue(&coalescer, &key, 1);
        coalescer.send_back_queued(&key, &tonic::Status::deadline_exceeded("timed out"));
        // Refused before writing: the write path routes it again.
        match queued.try_recv().expect("answered") {
            AppendOutcome::NotWritten(message) => assert!(message.contains("timed out")),
            other => panic!("sent back as {other:?}"),
        }
    }

    #[test]
    fn a_storage_error_is_read_by_the_code_it_carries() {
        let not_written = ErrorCode::NotWritten.status("stale epoch");
        assert_eq!(
            AppendOutcome::from_status(&not_written),
            AppendOutcome::NotWritten("stale epoch".to_owned())
        );
        let throttled = ErrorCode::ProvisionedThroughputExceeded.status("slow down");
        assert!(matches!(
            AppendOutcome::from_status(&throttled),
            AppendOutcome::Failed(ErrorCode::ProvisionedThroughputExceeded, _)
        ));
        // A deadline passing mid-call: the leader may have written it.
        let cut_off = tonic::Status::deadline_exceeded("timed out");
        assert!(matches!(
            AppendOutcome::from_status(&cut_off),
            AppendOutcome::Failed(ErrorCode::MaybeWritten, _)
        ));
    }

    #[test]
    fn each_caller_gets_the_offsets_of_its_own_records() {
        let shares = shares(&response(100, 0), &[1, 3, 2]);
        let firsts: Vec<u64> = shares.iter().map(|s| s.first_offset).collect();
        assert_eq!(firsts, [100, 101, 104]);
        assert!(shares
            .iter()
            .all(|s| s.throttled == 0 && s.sequence_base == 9));
    }

    #[test]
    fn a_refused_suffix_is_refused_to_the_callers_whose_records_it_holds() {
        // 6 records, the last 4 refused: the first caller keeps its record,
        // the second keeps 1 of 3, the third loses both.
        let shares = shares(&response(0, 4), &[1, 3, 2]);
        let refused: Vec<u32> = shares.iter().map(|s| s.throttled).collect();
        assert_eq!(refused, [0, 2, 2]);
    }

    #[test]
    fn a_wholly_refused_call_refuses_every_record() {
        let shares = shares(&response(0, 5), &[2, 3]);
        let refused: Vec<u32> = shares.iter().map(|s| s.throttled).collect();
        assert_eq!(refused, [2, 3]);
    }
}
