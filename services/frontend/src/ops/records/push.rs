//! The upstream of one SubscribeToShard subscription: records are pushed
//! from the shard as they commit, not polled.
//!
//! A subscription follows its shard segment by segment (`Follow` on the
//! worker holding it: a sealed segment's copy, or the current segment's
//! leader), turns each message into a `SubscribeToShardEvent`, and keeps
//! its place as the offset of the first record not yet delivered. When the
//! upstream ends — a segment finished, leadership moved, a worker died —
//! it follows again from that offset on a fresh route, so a failover or a
//! move neither loses nor repeats a record. At a closed shard's end it
//! sends the shards that continue its keys and ends.
//!
//! Back-pressure: the event channel holds one event and the worker's stream
//! one message, so a slow subscriber (HTTP/2 flow control, a full TCP
//! window) slows the reads on the worker; nothing piles up. Each
//! subscription is paced to 2 MiB/s of record data on its own, apart from
//! the shard's GetRecords budget and from other consumers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use freshet_errors::ErrorCode;
use freshet_proto::v1::{
    follow_request, ConsumerStatus, FollowRequest, ReadResponse, ShardMapEntry, ShardState,
};
use freshet_types::{ConsumerArn, SequenceNumber};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Streaming;

use super::super::replies::{ReadRecords, SubscribeToShardEventReply};
use super::super::shard_reads::sealed_segments_from;
use super::get::child_shards;
use super::{route_stream, shard_key};
use crate::cbor::Protocol;
use crate::fan_out::feed::{Cursor, FedMessage, FeedEnd, FeedItem, FeedKey, Tip, UpstreamCount};
use crate::fan_out::{event_stream, Held, Logged, Progress};
use crate::Frontend;

/// Kinesis ends every subscription after five minutes.
pub const LIFETIME: Duration = Duration::from_secs(300);
/// An idle subscription gets an empty event this often, its continuation
/// still advancing with what was delivered.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often a subscription asks the control plane whether its consumer
/// is still ACTIVE, while this frontend's map has not heard of it from the
/// change log (once it has, the map is read at every tick).
const CONSUMER_CHECK: Duration = Duration::from_secs(5);
/// How long a subscription may fail to reach its shard before it ends
/// with InternalFailureException.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// Record data per event, about (a larger record travels alone): well
/// under the 24 MiB an event-stream message may hold once base64 and JSON
/// are added, 10 MiB records included.
const EVENT_BYTES: u64 = 1024 * 1024;
/// Each subscription's read rate, in bytes of record data per second.
const BYTES_PER_SECOND: f64 = 2.0 * 1024.0 * 1024.0;

/// Where a subscription stands: the first record not yet delivered, or
/// (until the worker resolves it) a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    AtOffset(u64),
    AtTimestampMs(i64),
}

/// Why a subscription ended.
enum End {
    /// Its five minutes are up: the stream ends normally.
    Expired,
    /// The subscriber went away.
    Left,
    /// The closed shard's last event was sent.
    ShardEnded,
    /// A newer subscription of the same consumer and shard took over.
    TakenOver,
    /// The consumer was deregistered (or is no longer ACTIVE).
    ConsumerGone,
    /// The stream or shard no longer exists.
    Gone(String),
    /// The shard could not be reached for [`GIVE_UP_AFTER`].
    Failed(String),
}

/// One segment to follow, and where.
struct Target {
    segment: u32,
    /// Workers to ask, in order: a sealed segment's copies (its last leader
    /// first), or the shard's leader.
    addresses: Vec<String>,
    start: follow_request::Start,
    /// A sealed segment: its "behind latest" is measured against now.
    sealed: bool,
    /// Where the segment ends, if this route knows: a sealed segment's
    /// end, or a closed shard's.
    end: Option<u64>,
}

/// How one `Follow` call ended.
enum Followed {
    /// Its segment (or the closed shard) was delivered to the end.
    SegmentEnded,
    /// The route changed (leader, epoch or segment): follow again.
    Moved,
    /// The worker could not be reached or refused: follow again, later.
    Failed(String),
    Ended(End),
}

/// Where a subscription's records come from while it follows a segment.
enum Source {
    /// An upstream of its own: a sealed segment, or catching up to the tip.
    Own {
        upstream: Box<Streaming<ReadResponse>>,
        _open: UpstreamCount,
    },
    /// The shard's feed on this frontend, shared by the subscriptions at
    /// its tip.
    Shared(Cursor),
}

/// What a source gives next.
enum Upstream {
    /// A message, and (from a feed) the tip as the feed last heard it.
    Message(Arc<FedMessage>, Option<Tip>),
    /// The feed no longer holds this subscription's position.
    Behind,
    Ended(FeedEnd),
}

impl Source {
    /// The next message from `position` on (cancel-safe: nothing is lost
    /// when a tick wins the race).
    async fn next(&mut self, position: Position) -> Upstream {
        match self {
            Source::Own { upstream, .. } => match upstream.message().await {
                Ok(Some(read)) => Upstream::Message(Arc::new(FedMessage::new(read)), None),
                Ok(None) => Upstream::Ended(FeedEnd::Finished),
                Err(status) => Upstream::Ended(FeedEnd::of_status(&status)),
            },
            Source::Shared(cursor) => {
                let Position::AtOffset(next) = position else {
                    return Upstream::Behind;
                };
                match cursor.next(next).await {
                    FeedItem::Message(message, tip) => Upstream::Message(message, Some(tip)),
                    FeedItem::Behind => Upstream::Behind,
                    FeedItem::Ended(end) => Upstream::Ended(end),
                }
            }
        }
    }
}

/// A token bucket of record bytes, full at one second's worth.
struct Pace {
    tokens: f64,
    refilled: Instant,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            tokens: BYTES_PER_SECOND,
            refilled: Instant::now(),
        }
    }

    /// Takes `bytes`; how long to wait before reading more.
    fn take(&mut self, bytes: u64) -> Duration {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * BYTES_PER_SECOND).min(BYTES_PER_SECOND);
        self.refilled = now;
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / BYTES_PER_SECOND)
        }
    }
}

/// The continuation after the records below `next_offset`: the last
/// delivered one's sequence number — or, before any, one below the
/// shard's first — so AFTER_SEQUENCE_NUMBER of it resumes at `next_offset`.
fn continuation(sequence_base: u64, next_offset: u64) -> String {
    let next = SequenceNumber {
        base: sequence_base,
        offset: next_offset,
    }
    .to_u128();
    next.saturating_sub(1).to_string()
}

/// What to follow from `position` in `entry`'s shard: the unexpired
/// sealed segment holding it, else the current segment.
fn target_of(entry: &ShardMapEntry, position: Position, unexpired_from: i64) -> Target {
    let sealed = match position {
        Position::AtOffset(offset) => sealed_segments_from(entry, unexpired_from)
            .find(|segment| offset < segment.end_offset)
            .map(|segment| {
                (
                    segment,
                    follow_request::Start::AtOffset(offset.max(segment.start_offset)),
                )
            }),
        Position::AtTimestampMs(ms) => sealed_segments_from(entry, ms.max(unexpired_from))
            .next()
            .map(|segment| (segment, follow_request::Start::AtTimestampMs(ms))),
    };
    match sealed {
        Some((segment, start)) => Target {
            segment: segment.index,
            addresses: segment
                .addresses
                .iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect(),
            start,
            sealed: true,
            end: Some(segment.end_offset),
        },
        None => Target {
            segment: entry.segment_index,
            addresses: vec![entry.leader_address.clone()],
            start: match position {
                Position::AtOffset(offset) => {
                    follow_request::Start::AtOffset(offset.max(entry.segment_start_offset))
                }
                Position::AtTimestampMs(ms) => follow_request::Start::AtTimestampMs(ms),
            },
            sealed: false,
            end: (entry.state() == ShardState::Closed).then_some(entry.ending_offset),
        },
    }
}

/// One subscription's upstream and its event output.
pub struct Push {
    frontend: Arc<Frontend>,
    consumer: ConsumerArn,
    stream_uid: i64,
    shard_id: String,
    position: Position,
    out: mpsc::Sender<Bytes>,
    /// Where the event that says why it ended goes (after every event).
    last_out: Option<oneshot::Sender<Bytes>>,
    /// What the event payloads are written in: the request's protocol.
    protocol: Protocol,
    pace: Pace,
    sequence_base: u64,
    /// How far behind the newest record the last event was.
    millis_behind: i64,
    last_event: Instant,
    consumer_checked: Instant,
    /// The change log has told this frontend about the consumer: from now
    /// on its absence there means it is gone.
    consumer_logged: bool,
    /// Where it is, for the frontend's reports (the consumer's lag).
    progress: Option<Arc<Progress>>,
}

impl Push {
    pub fn new(
        frontend: Arc<Frontend>,
        consumer: ConsumerArn,
        stream_uid: i64,
        shard_id: String,
        position: Position,
        (out, last_out, protocol): (mpsc::Sender<Bytes>, oneshot::Sender<Bytes>, Protocol),
    ) -> Push {
        Push {
            frontend,
            consumer,
            stream_uid,
            shard_id,
            position,
            out,
            last_out: Some(last_out),
            protocol,
            pace: Pace::new(),
            sequence_base: 0,
            millis_behind: 0,
            last_event: Instant::now(),
            consumer_checked: Instant::now(),
            consumer_logged: false,
            progress: None,
        }
    }

    /// Runs the subscription to its end, holding its place in the
    /// frontend's subscriptions; the last message says why it ended, if
    /// it did not end normally.
    pub async fn run(mut self, mut held: Held) {
        self.progress = Some(held.progress.clone());
        let deadline = Instant::now() + LIFETIME;
        let end = tokio::select! {
            end = self.pump() => end,
            () = tokio::time::sleep_until(deadline) => End::Expired,
            _ = &mut held.taken_over => End::TakenOver,
        };
        let last = match &end {
            End::Expired | End::Left | End::ShardEnded => None,
            End::TakenOver => Some((
                "ResourceInUseException",
                format!(
                    "Another subscription of consumer {} to shard {} took this one over.",
                    self.consumer, self.shard_id
                ),
            )),
            End::ConsumerGone => Some((
                "ResourceInUseException",
                format!("Consumer {} is no longer ACTIVE.", self.consumer),
            )),
            End::Gone(message) => Some(("ResourceNotFoundException", message.clone())),
            End::Failed(message) => {
                tracing::warn!(consumer = %self.consumer, shard = self.shard_id, message, "subscription failed");
                Some((
                    "InternalFailureException",
                    crate::error::INTERNAL_FAILURE_MESSAGE.to_owned(),
                ))
            }
        };
        // The control plane hears it ended before the subscriber does, so
        // the subscriber may subscribe again anywhere at once.
        self.frontend
            .subscriptions
            .release_now(&held.progress, &self.frontend.control_plane)
            .await;
        if let (Some((exception, message)), Some(last_out)) = (last, self.last_out.take()) {
            let _ = last_out.send(event_stream::exception(exception, &message, self.protocol));
        }
        drop(held);
    }

    async fn pump(&mut self) -> End {
        // Since when nothing was delivered and following failed.
        let mut failing_since: Option<Instant> = None;
        loop {
            let before = self.position;
            let outcome = match self.entry().await {
                Ok(Some(entry)) => self.follow_entry(&entry).await,
                Ok(None) => {
                    return End::Gone(format!(
                        "Shard {} of the stream of consumer {} no longer exists.",
                        self.shard_id, self.consumer
                    ))
                }
                Err(message) => Followed::Failed(message),
            };
            if self.position != before {
                failing_since = None;
            }
            match outcome {
                Followed::Ended(end) => return end,
                // On to the next segment, on the same route.
                Followed::SegmentEnded => {}
                Followed::Moved => {
                    self.frontend.router.invalidate(&self.consumer.stream);
                    if self.position == before {
                        // The route may lag the worker's map: a moment.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Followed::Failed(message) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= GIVE_UP_AFTER {
                        return End::Failed(message);
                    }
                    tracing::debug!(shard = self.shard_id, message, "following the shard again");
                    if let Err(end) = self.heartbeat_if_due(false).await {
                        return end;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.frontend.router.invalidate(&self.consumer.stream);
                }
            }
        }
    }

    /// The shard's entry as routed now; `None` once the stream or shard
    /// is gone.
    async fn entry(&self) -> Result<Option<ShardMapEntry>, String> {
        match route_stream(&self.frontend, &self.consumer.stream).await {
            Ok(route) => Ok(route
                .shard(&self.shard_id)
                .filter(|e| e.key.as_ref().map(|k| k.stream_uid) == Some(self.stream_uid))
                .cloned()),
            Err(error) if error.code == ErrorCode::ResourceNotFound => Ok(None),
            Err(error) => Err(error.message),
        }
    }

    /// Delivers what `entry` says comes next: the closed shard's end, or
    /// the segment holding the position.
    async fn follow_entry(&mut self, entry: &ShardMapEntry) -> Followed {
        self.sequence_base = entry.sequence_base;
        if let Position::AtOffset(next) = self.position {
            if entry.state() == ShardState::Closed && next >= entry.ending_offset {
                return self.shard_end().await;
            }
        }
        let target = target_of(entry, self.position, self.frontend.unexpired_from(entry));
        self.follow(entry, &target).await
    }

    /// Follows one segment until it ends, the route moves on, or it fails:
    /// from the shard's feed on this frontend when this subscription is at
    /// the tip, else on an upstream of its own until it catches up.
    async fn follow(&mut self, entry: &ShardMapEntry, target: &Target) -> Followed {
        let key = FeedKey {
            stream_uid: self.stream_uid,
            shard_id: self.shard_id.clone(),
            epoch: entry.epoch,
            segment: target.segment,
        };
        // Only the current segment's tip is shared; a sealed segment is
        // history, read at each subscription's own pace.
        let shareable = !target.sealed;
        let joined = match self.position {
            Position::AtOffset(next) if shareable => self.frontend.feeds.join(&key, next),
            _ => None,
        };
        let mut source = match joined {
            Some(cursor) => Source::Shared(cursor),
            None => match self.open_own(entry, target, target.start).await {
                Ok(source) => source,
                Err(followed) => return followed,
            },
        };
        let subscriber = self.out.clone();
        let mut ticks = tokio::time::interval(HEARTBEAT / 2);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                item = source.next(self.position) => match item {
                    Upstream::Message(message, tip) => {
                        if let Err(end) = self.deliver(&message, tip, target.sealed).await {
                            return Followed::Ended(end);
                        }
                        let caught_up = message.read.next_offset >= message.read.committed_offset;
                        if shareable && caught_up && matches!(source, Source::Own { .. }) {
                            if let Some(cursor) = self.share(&key, entry) {
                                source = Source::Shared(cursor);
                            }
                        }
                    }
                    // Too slow for the feed: catch up alone.
                    Upstream::Behind => {
                        self.frontend.feeds.fell_behind.inc();
                        let Position::AtOffset(next) = self.position else {
                            return Followed::Moved;
                        };
                        let start = follow_request::Start::AtOffset(next);
                        source = match self.open_own(entry, target, start).await {
                            Ok(source) => source,
                            Err(followed) => return followed,
                        };
                    }
                    // Ended: at the segment's end, as far as this route
                    // knows it; else the worker knows more (or its task
                    // ended): route again.
                    Upstream::Ended(FeedEnd::Finished) => {
                        let reached = match (target.end, self.position) {
                            (Some(end), Position::AtOffset(next)) => next >= end,
                            _ => false,
                        };
                        return if reached { Followed::SegmentEnded } else { Followed::Moved };
                    }
                    Upstream::Ended(FeedEnd::Moved) => return Followed::Moved,
                    Upstream::Ended(FeedEnd::Failed(message)) => return Followed::Failed(message),
                },
                _ = ticks.tick() => {
                    if let Err(end) = self.heartbeat_if_due(!target.sealed).await {
                        return Followed::Ended(end);
                    }
                    if let Err(end) = self.check_consumer().await {
                        return Followed::Ended(end);
                    }
                    // A partitioned leader may not learn it was deposed:
                    // this frontend's own route decides too.
                    if let Ok(Some(now)) = self.entry().await {
                        let moved = now.epoch != entry.epoch
                            || (!target.sealed && now.segment_index != entry.segment_index);
                        if moved {
                            return Followed::Moved;
                        }
                    }
                }
                () = subscriber.closed() => return Followed::Ended(End::Left),
            }
        }
    }

    /// An upstream of this subscription's own for `target`'s segment, from
    /// `start`: from the first of its workers that answers.
    async fn open_own(
        &self,
        entry: &ShardMapEntry,
        target: &Target,
        start: follow_request::Start,
    ) -> Result<Source, Followed> {
        let request = self.follow_request(entry, target.segment, start);
        let mut last_failure = format!("no worker holds segment {}", target.segment);
        for address in &target.addresses {
            let mut client = match self.frontend.follows.client(address) {
                Ok(client) => client,
                Err(error) => {
                    last_failure = error.message;
                    continue;
                }
            };
            let call = client.follow(request.clone());
            match tokio::time::timeout(self.frontend.storage_timeout(), call).await {
                Ok(Ok(response)) => {
                    return Ok(Source::Own {
                        upstream: Box::new(response.into_inner()),
                        _open: UpstreamCount::new(&self.frontend.feeds.own),
                    })
                }
                Ok(Err(status)) => last_failure = status.message().to_owned(),
                Err(_) => last_failure = format!("{address} did not answer in time"),
            }
        }
        Err(Followed::Failed(last_failure))
    }

    /// A cursor on the shard's feed at this subscription's position,
    /// starting the feed (from the leader, at that position) if none runs.
    fn share(&self, key: &FeedKey, entry: &ShardMapEntry) -> Option<Cursor> {
        let Position::AtOffset(next) = self.position else {
            return None;
        };
        let client = self.frontend.follows.client(&entry.leader_address).ok()?;
        let request =
            self.follow_request(entry, key.segment, follow_request::Start::AtOffset(next));
        let timeout = self.frontend.storage_timeout();
        self.frontend.feeds.join_or_start(key, next, move || {
            Box::pin(async move {
                let mut client = client;
                match tokio::time::timeout(timeout, client.follow(request)).await {
                    Ok(Ok(response)) => Ok(response.into_inner()),
                    Ok(Err(status)) => Err(FeedEnd::of_status(&status)),
                    Err(_) => Err(FeedEnd::Failed(
                        "the shard's leader did not answer in time".to_owned(),
                    )),
                }
            })
        })
    }

    fn follow_request(
        &self,
        entry: &ShardMapEntry,
        segment: u32,
        start: follow_request::Start,
    ) -> FollowRequest {
        FollowRequest {
            shard: shard_key(entry),
            epoch: entry.epoch,
            segment,
            start: Some(start),
            max_records: 10_000,
            max_bytes: EVENT_BYTES,
        }
    }

    /// Sends one message's records from the subscription's position on as
    /// an event (and learns where a timestamp start resolved to), then
    /// waits out the pace. `tip`: where a feed's tip stood when it gave
    /// the message (else the message's own).
    async fn deliver(
        &mut self,
        message: &FedMessage,
        tip: Option<Tip>,
        sealed: bool,
    ) -> Result<(), End> {
        let read = &message.read;
        // A shared message may start before this subscription's position.
        let from = match self.position {
            Position::AtOffset(next) => read.records.partition_point(|r| r.offset < next),
            Position::AtTimestampMs(_) => 0,
        };
        let records = &read.records[from..];
        self.position = Position::AtOffset(read.next_offset);
        self.sequence_base = read.sequence_base;
        let tip = tip.unwrap_or(Tip {
            committed_offset: read.committed_offset,
            millis_behind: read.millis_behind_latest,
        });
        // A sealed segment's copy knows its own end, not the shard's tip.
        let tip_offset = if sealed { 0 } else { tip.committed_offset };
        let Some(last) = records.last() else {
            self.note_progress(read.next_offset, tip_offset);
            return Ok(());
        };
        self.millis_behind = if sealed {
            (self.frontend.now_ms() - last.arrival_ms).max(0)
        } else {
            tip.millis_behind
        };
        let bytes: u64 = records
            .iter()
            .map(|r| (r.data.len() + r.partition_key.len()) as u64)
            .sum();
        let event = SubscribeToShardEventReply {
            records: ReadRecords {
                sequence_base: read.sequence_base,
                records,
            },
            continuation_sequence_number: Some(continuation(read.sequence_base, read.next_offset)),
            millis_behind_latest: self.millis_behind,
            child_shards: None,
        };
        // The whole message makes the same event for every subscriber of
        // this protocol: encoded once.
        let frame = if from == 0 {
            message.frame(self.protocol, self.millis_behind, || self.encode(&event))
        } else {
            self.encode(&event)
        }
        .map_err(End::Failed)?;
        self.send_frame(frame).await?;
        // Delivered once sent, not before: a stalled subscriber is behind.
        self.note_progress(read.next_offset, tip_offset);
        let wait = self.pace.take(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// An empty event, if none went out for a heartbeat's time: the
    /// continuation still says where the subscription stands. `at_tip`:
    /// the current segment is being followed, so nothing is behind.
    async fn heartbeat_if_due(&mut self, at_tip: bool) -> Result<(), End> {
        let Position::AtOffset(next) = self.position else {
            return Ok(());
        };
        if self.last_event.elapsed() < HEARTBEAT || self.sequence_base == 0 {
            return Ok(());
        }
        if at_tip {
            self.millis_behind = 0;
            self.note_progress(next, next);
        }
        let event = SubscribeToShardEventReply {
            records: ReadRecords {
                sequence_base: self.sequence_base,
                records: &[],
            },
            continuation_sequence_number: Some(continuation(self.sequence_base, next)),
            millis_behind_latest: self.millis_behind,
            child_shards: None,
        };
        self.send(&event).await
    }

    /// The closed shard's last event: no continuation, the shards that
    /// continue its keys (once this frontend's route knows them).
    async fn shard_end(&mut self) -> Followed {
        let children = match route_stream(&self.frontend, &self.consumer.stream).await {
            Ok(route) => child_shards(&route, &self.shard_id),
            Err(error) => return Followed::Failed(error.message),
        };
        if children.is_empty() {
            // The parent's closing arrived before its children did.
            return Followed::Failed(format!(
                "the shards continuing {} are not known yet",
                self.shard_id
            ));
        }
        let event = SubscribeToShardEventReply {
            records: ReadRecords {
                sequence_base: self.sequence_base,
                records: &[],
            },
            continuation_sequence_number: None,
            millis_behind_latest: 0,
            child_shards: Some(children),
        };
        match self.send(&event).await {
            Ok(()) => Followed::Ended(End::ShardEnded),
            Err(end) => Followed::Ended(end),
        }
    }

    /// Whether the consumer is still ACTIVE: as the change log says, at
    /// every tick, once this frontend's map holds it; until then asked of
    /// the control plane every few seconds (an unreachable control plane
    /// changes nothing).
    async fn check_consumer(&mut self) -> Result<(), End> {
        match self.frontend.consumers.logged(&self.consumer) {
            Logged::Status(ConsumerStatus::Active) => {
                self.consumer_logged = true;
                return Ok(());
            }
            // Deregistered, or gone: removed from the log (its stream
            // deleted, too).
            Logged::Status(ConsumerStatus::Deleting) | Logged::Removed => {
                return Err(End::ConsumerGone)
            }
            // Seen ACTIVE in the map before, and no longer there (a
            // snapshot without it): gone.
            Logged::Unheard if self.consumer_logged => return Err(End::ConsumerGone),
            // CREATING (the map lagging the control plane that admitted
            // the subscription) or not heard of: ask the control plane.
            Logged::Status(_) | Logged::Unheard => {}
        }
        if self.consumer_checked.elapsed() < CONSUMER_CHECK {
            return Ok(());
        }
        self.consumer_checked = Instant::now();
        match self.frontend.consumers.look_up(&self.consumer).await {
            Ok(info) if info.status() == ConsumerStatus::Active => Ok(()),
            Ok(_) => Err(End::ConsumerGone),
            Err(error) if error.code == ErrorCode::ResourceNotFound => Err(End::ConsumerGone),
            Err(_) => Ok(()),
        }
    }

    /// Where the subscription is, for the frontend's reports: the records
    /// below `next_offset` delivered (or about to be), the committed log
    /// reaching `tip_offset`.
    fn note_progress(&self, next_offset: u64, tip_offset: u64) {
        if let Some(progress) = &self.progress {
            progress.delivered(next_offset, tip_offset, self.millis_behind);
        }
    }

    async fn send(&mut self, event: &SubscribeToShardEventReply<'_>) -> Result<(), End> {
        let frame = self.encode(event).map_err(End::Failed)?;
        self.send_frame(frame).await
    }

    /// `event` framed for the event stream, in the request's protocol.
    fn encode(&self, event: &SubscribeToShardEventReply<'_>) -> Result<Bytes, String> {
        let json = serde_json::to_vec(event).map_err(|error| error.to_string())?;
        let payload = self.protocol.encode(json).map_err(|e| e.to_string())?;
        Ok(event_stream::event(payload, self.protocol))
    }

    async fn send_frame(&mut self, frame: Bytes) -> Result<(), End> {
        self.out.send(frame).await.map_err(|_| End::Left)?;
        self.last_event = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continuation_is_the_last_delivered_sequence_number() {
        let base = 9;
        assert_eq!(
            continuation(base, 5),
            SequenceNumber { base, offset: 4 }.to_string()
        );
        // Nothing delivered yet: one below the shard's first.
        assert_eq!(
            continuation(base, 0),
            (SequenceNumber { base, offset: 0 }.to_u128() - 1).to_string()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_is_paced_to_two_mebibytes_a_second() {
        let mut pace = Pace::new();
        assert_eq!(pace.take(1024 * 1024), Duration::ZERO);
        assert_eq!(pace.take(1024 * 1024), Duration::ZERO);
        // Past the second's budget, one more MiB waits half a second.
        let wait = pace.take(1024 * 1024);
        assert!((wait.as_secs_f64() - 0.5).abs() < 0.01, "{wait:?}");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(pace.take(1024 * 1024), Duration::ZERO);
    }
}
