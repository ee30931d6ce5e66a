//! One upstream per shard per frontend: every subscription at a shard's
//! tip reads the same `Follow` stream from the shard's leader, fanned out
//! here, instead of each opening its own.
//!
//! A [`Feed`] is that shared upstream for one route — (stream incarnation,
//! shard, epoch, segment) — and keeps the messages it received last in a
//! ring bounded by bytes ([`FEED_BYTES`]). A subscription reads the ring
//! through a [`Cursor`] at its own position and pace; one that falls out of
//! the ring's back (a slow subscriber) is told it is [`FeedItem::Behind`]
//! and catches up on an upstream of its own, joining again once it reaches
//! the tip. So a slow subscriber never slows the others, and the ring is
//! all a fast shard costs this frontend.
//!
//! Invariant, enforced by [`Ring::push`]: the ring's messages are
//! contiguous — each one starts where the one before ended — so a cursor
//! reading from offset `p` gets every committed record from `p` on, in
//! order, or learns it cannot (`Behind`, or the feed's end). A feed ends
//! when its upstream does (the segment ended, leadership moved, the worker
//! failed) or when no cursor holds it any more; subscriptions then route
//! again exactly as for an upstream of their own.
//!
//! An event made of a whole message is the same bytes for every subscriber
//! of the same protocol, so each message keeps its encoded frame for the
//! subscribers after the first ([`FedMessage::frame`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use freshet_errors::ErrorCode;
use freshet_metrics::{Counter, Gauge};
use freshet_proto::v1::ReadResponse;
use tokio::sync::watch;
use tonic::Streaming;

use crate::cbor::Protocol;

/// What a feed may hold for its cursors, in [`cost`] units (about bytes
/// of memory): a couple of seconds of a shard's writes at the highest
/// rates a shard takes.
pub const FEED_BYTES: u64 = 8 * 1024 * 1024;
/// Messages a feed holds at most, whatever their size.
const FEED_MESSAGES: usize = 4096;
/// How often an idle feed checks that someone still reads it.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The route a feed follows: one shard segment, led at one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FeedKey {
    pub stream_uid: i64,
    pub shard_id: String,
    pub epoch: u64,
    pub segment: u32,
}

/// Why a feed (or an upstream of a subscription's own) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEnd {
    /// The worker sent the segment to its end (as far as it knows it).
    Finished,
    /// The worker no longer leads the segment at the feed's epoch.
    Moved,
    /// The worker failed or could not be reached.
    Failed(String),
}

impl FeedEnd {
    /// How an upstream's error ends it.
    pub fn of_status(status: &tonic::Status) -> FeedEnd {
        if ErrorCode::of_status(status) == ErrorCode::NotWritten {
            FeedEnd::Moved
        } else {
            FeedEnd::Failed(status.message().to_owned())
        }
    }
}

/// One message from the worker, with the event frames made of it whole
/// (and the MillisBehindLatest each was made with).
pub struct FedMessage {
    pub read: ReadResponse,
    frames: [OnceLock<(i64, Bytes)>; 2],
}

/// What a message costs a ring, about, in bytes of memory: its records'
/// data, a JSON and a CBOR frame of them (base64 included), and the
/// structures around them.
fn cost(read: &ReadResponse) -> u64 {
    let data: u64 = read
        .records
        .iter()
        .map(|r| (r.data.len() + r.partition_key.len()) as u64)
        .sum();
    3 * data + 128 * read.records.len() as u64 + 256
}

/// Where the shard's tip stands as a feed last heard: what a message's
/// reader is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    /// Where the committed log ended.
    pub committed_offset: u64,
    /// How far behind the tip the message's last record is.
    pub millis_behind: i64,
}

impl FedMessage {
    pub fn new(read: ReadResponse) -> FedMessage {
        FedMessage {
            read,
            frames: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The event frame of this whole message in `protocol` saying it is
    /// `millis_behind` the tip: made by `make` the first time it is asked
    /// for, and again (not kept) for another `millis_behind`.
    pub fn frame(
        &self,
        protocol: Protocol,
        millis_behind: i64,
        make: impl FnOnce() -> Result<Bytes, String>,
    ) -> Result<Bytes, String> {
        let slot = &self.frames[match protocol {
            Protocol::Json => 0,
            Protocol::Cbor => 1,
        }];
        match slot.get() {
            Some((made_with, frame)) if *made_with == millis_behind => Ok(frame.clone()),
            Some(_) => make(),
            None => {
                let frame = make()?;
                Ok(slot.get_or_init(|| (millis_behind, frame)).1.clone())
            }
        }
    }
}

/// What a cursor reads next.
pub enum FeedItem {
    /// The message holding the cursor's position (its records from the
    /// position on are the ones to deliver), and the tip as the feed last
    /// heard it.
    Message(Arc<FedMessage>, Tip),
    /// The position is older than anything the ring still holds.
    Behind,
    /// The feed ended, everything it received having been read.
    Ended(FeedEnd),
}

/// The messages a feed holds, contiguous from `first_offset` to
/// `next_offset`.
struct Ring {
    messages: VecDeque<Arc<FedMessage>>,
    first_offset: u64,
    next_offset: u64,
    /// What the messages cost, by [`cost`].
    cost: u64,
    /// The newest message's tip, and its last record's arrival.
    tip: Tip,
    newest_arrival_ms: i64,
    end: Option<FeedEnd>,
}

impl Ring {
    fn starting_at(offset: u64) -> Ring {
        Ring {
            messages: VecDeque::new(),
            first_offset: offset,
            next_offset: offset,
            cost: 0,
            tip: Tip {
                committed_offset: offset,
                millis_behind: 0,
            },
            newest_arrival_ms: 0,
            end: None,
        }
    }

    /// Appends the upstream's next message, dropping the oldest beyond
    /// [`FEED_BYTES`] or [`FEED_MESSAGES`]. A message that does not
    /// continue the ring ends it: a gap would lose records silently.
    fn push(&mut self, read: ReadResponse) {
        let Some(first) = read.records.first().map(|r| r.offset) else {
            // Only a follow's first answer is empty (`Follow` sends no
            // other empty message): where its start resolved to (raised to
            // the trim horizon, if it had to be).
            if self.messages.is_empty() {
                self.first_offset = read.next_offset;
                self.next_offset = read.next_offset;
            }
            return;
        };
        if first != self.next_offset {
            self.end = Some(FeedEnd::Failed(format!(
                "the shard's upstream skipped from offset {} to {first}",
                self.next_offset
            )));
            return;
        }
        self.next_offset = read.next_offset;
        self.tip = Tip {
            committed_offset: read.committed_offset,
            millis_behind: read.millis_behind_latest,
        };
        self.newest_arrival_ms = read.records.last().map_or(0, |r| r.arrival_ms);
        self.cost += cost(&read);
        self.messages.push_back(Arc::new(FedMessage::new(read)));
        while (self.cost > FEED_BYTES || self.messages.len() > FEED_MESSAGES)
            && self.messages.len() > 1
        {
            if let Some(oldest) = self.messages.pop_front() {
                self.cost -= cost(&oldest.read);
                self.first_offset = oldest.read.next_offset;
            }
        }
    }

    /// What a cursor at `position` reads, or `None` to wait for more.
    fn at(&self, position: u64) -> Option<FeedItem> {
        if position < self.first_offset {
            // Behind an ended feed, catching up on the same route would
            // fail the same way: route again.
            return Some(match &self.end {
                Some(end) => FeedItem::Ended(end.clone()),
                None => FeedItem::Behind,
            });
        }
        let index = self
            .messages
            .partition_point(|m| m.read.next_offset <= position);
        match (self.messages.get(index), &self.end) {
            (Some(message), _) => {
                // An older message is behind the tip by the newest one's
                // lag plus the time between their last records.
                let last_arrival = message.read.records.last().map_or(0, |r| r.arrival_ms);
                let tip = Tip {
                    committed_offset: self.tip.committed_offset,
                    millis_behind: self.tip.millis_behind
                        + (self.newest_arrival_ms - last_arrival).max(0),
                };
                Some(FeedItem::Message(message.clone(), tip))
            }
            (None, Some(end)) => Some(FeedItem::Ended(end.clone())),
            (None, None) => None,
        }
    }
}

/// A shard's shared upstream on this frontend.
pub struct Feed {
    key: FeedKey,
    ring: Mutex<Ring>,
    /// Bumped on every change to the ring, waking the cursors.
    changes: watch::Sender<u64>,
}

impl Feed {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    fn push(&self, read: ReadResponse) {
        self.ring().push(read);
        self.changed();
    }

    fn end(&self, end: FeedEnd) {
        self.ring().end.get_or_insert(end);
        self.changed();
    }
}

/// One subscription's place in a feed.
pub struct Cursor {
    feed: Arc<Feed>,
    changes: watch::Receiver<u64>,
}

impl Cursor {
    /// The message holding `position`, once the feed has it; or why it
    /// cannot be read here.
    pub async fn next(&mut self, position: u64) -> FeedItem {
        loop {
            self.changes.borrow_and_update();
            if let Some(item) = self.feed.ring().at(position) {
                return item;
            }
            if self.changes.changed().await.is_err() {
                return FeedItem::Ended(FeedEnd::Failed("the shard's feed stopped".to_owned()));
            }
        }
    }
}

/// An upstream being opened: the worker's `Follow` stream from the feed's
/// start, or why there is none.
pub type Opening = std::pin::Pin<
    Box<dyn Future<Output = Result<Streaming<ReadResponse>, FeedEnd>> + Send + 'static>,
>;

/// Counts an open upstream in a gauge while it lives.
pub struct UpstreamCount(Gauge);

impl UpstreamCount {
    pub fn new(gauge: &Gauge) -> UpstreamCount {
        gauge.inc();
        UpstreamCount(gauge.clone())
    }
}

impl Drop for UpstreamCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// This frontend's feeds, by route.
pub struct Feeds {
    feeds: Mutex<HashMap<FeedKey, Weak<Feed>>>,
    /// Shared upstreams open now.
    pub shared: Gauge,
    /// Subscriptions' own upstreams open now (catching up from behind the
    /// tip, or reading sealed segments).
    pub own: Gauge,
    /// Times a subscription fell out of a feed's ring (too slow for it).
    pub fell_behind: Counter,
}

impl Feeds {
    pub fn new(registry: &freshet_metrics::Registry) -> Feeds {
        Feeds {
            feeds: Mutex::new(HashMap::new()),
            shared: registry.gauge(
                "freshet_fan_out_shared_upstreams",
                "Follow streams this frontend shares among the subscriptions at a shard's tip \
                 (one closes within a second of its last reader leaving).",
            ),
            own: registry.gauge(
                "freshet_fan_out_own_upstreams",
                "Follow streams of a single subscription (catching up, or reading sealed segments).",
            ),
            fell_behind: registry.counter(
                "freshet_fan_out_fell_behind",
                "Subscriptions that fell out of their shard's shared upstream (too slow for it) \
                 and caught up on their own.",
            ),
        }
    }

    /// A cursor at `position` on `key`'s feed, if one runs and still holds
    /// `position`.
    pub fn join(&self, key: &FeedKey, position: u64) -> Option<Cursor> {
        let feed = self.lock().get(key).and_then(Weak::upgrade)?;
        Self::cursor_at(feed, position)
    }

    /// A cursor at `position` on `key`'s feed, starting the feed at
    /// `position` (with the upstream `open` makes) if none runs. `None` if
    /// a running feed no longer holds `position`.
    pub fn join_or_start(
        &self,
        key: &FeedKey,
        position: u64,
        open: impl FnOnce() -> Opening,
    ) -> Option<Cursor> {
        let feed = {
            let mut feeds = self.lock();
            // An ended feed is replaced: its route may be followed again
            // (a worker back from a restart at the same epoch).
            let running = feeds
                .get(key)
                .and_then(Weak::upgrade)
                .filter(|feed| feed.ring().end.is_none());
            if let Some(feed) = running {
                feed
            } else {
                feeds.retain(|_, feed| feed.strong_count() > 0);
                let feed = Arc::new(Feed {
                    key: key.clone(),
                    ring: Mutex::new(Ring::starting_at(position)),
                    changes: watch::channel(0).0,
                });
                feeds.insert(key.clone(), Arc::downgrade(&feed));
                tokio::spawn(pump(
                    Arc::downgrade(&feed),
                    open(),
                    UpstreamCount::new(&self.shared),
                ));
                feed
            }
        };
        Self::cursor_at(feed, position)
    }

    fn cursor_at(feed: Arc<Feed>, position: u64) -> Option<Cursor> {
        {
            let ring = feed.ring();
            if position < ring.first_offset || ring.end.is_some() {
                return None;
            }
        }
        let changes = feed.changes.subscribe();
        Some(Cursor { feed, changes })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FeedKey, Weak<Feed>>> {
        self.feeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Ends a feed however its pump stops (a panic included), so no cursor
/// waits on a feed nothing fills.
struct EndOnDrop(Weak<Feed>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(feed) = self.0.upgrade() {
            feed.end(FeedEnd::Failed("the shard's feed stopped".to_owned()));
        }
    }
}

/// Reads a feed's upstream into its ring until the upstream ends or no
/// cursor holds the feed.
async fn pump(feed: Weak<Feed>, opening: Opening, count: UpstreamCount) {
    let _end_on_drop = EndOnDrop(feed.clone());
    let mut upstream = match opening.await {
        Ok(upstream) => upstream,
        Err(end) => {
            if let Some(feed) = feed.upgrade() {
                feed.end(end);
            }
            return;
        }
    };
    let mut idle = tokio::time::interval(IDLE_CHECK);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            message = upstream.message() => {
                let Some(feed) = feed.upgrade() else { return };
                match message {
                    Ok(Some(read)) => {
                        feed.push(read);
                        if feed.ring().end.is_some() {
                            break None;
                        }
                    }
                    Ok(None) => break Some(FeedEnd::Finished),
                    Err(status) => break Some(FeedEnd::of_status(&status)),
                }
            }
            _ = idle.tick() => {
                if feed.strong_count() == 0 {
                    return;
                }
            }
        }
    };
    if let (Some(feed), Some(end)) = (feed.upgrade(), end) {
        tracing::debug!(key = ?feed.key, ?end, "a shard's feed ended");
        feed.end(end);
    }
    drop(count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_proto::v1::StoredRecord;

    fn read(first: u64, count: u64, bytes: usize) -> ReadResponse {
        ReadResponse {
            records: (first..first + count)
                .map(|offset| StoredRecord {
                    offset,
                    arrival_ms: 0,
                    partition_key: String::new(),
                    data: vec![0; bytes].into(),
                })
                .collect(),
            next_offset: first + count,
            millis_behind_latest: 0,
            sequence_base: 1,
            committed_offset: first + count,
        }
    }

    fn offsets(item: Option<FeedItem>) -> Option<(u64, u64)> {
        match item {
            Some(FeedItem::Message(m, _)) => Some((m.read.records[0].offset, m.read.next_offset)),
            _ => None,
        }
    }

    #[test]
    fn a_cursor_reads_the_message_holding_its_position_and_waits_at_the_end() {
        let mut ring = Ring::starting_at(10);
        ring.push(read(10, 5, 1));
        ring.push(read(15, 5, 1));
        assert_eq!(offsets(ring.at(10)), Some((10, 15)));
        assert_eq!(offsets(ring.at(17)), Some((15, 20)));
        assert!(ring.at(20).is_none(), "at the tip: wait");
        assert!(matches!(ring.at(9), Some(FeedItem::Behind)));
    }

    #[test]
    fn the_oldest_messages_go_once_the_ring_is_full_and_their_readers_are_behind() {
        let mut ring = Ring::starting_at(0);
        let big = (FEED_BYTES / 6) as usize - 1000;
        ring.push(read(0, 1, big));
        ring.push(read(1, 1, big));
        ring.push(read(2, 1, big));
        assert_eq!(ring.first_offset, 1);
        assert!(matches!(ring.at(0), Some(FeedItem::Behind)));
        assert_eq!(offsets(ring.at(1)), Some((1, 2)));
    }

    #[test]
    fn an_older_message_is_behind_the_tip_by_the_time_to_the_newest() {
        let mut ring = Ring::starting_at(0);
        let mut older = read(0, 2, 1);
        older.records[1].arrival_ms = 1_000;
        let mut newest = read(2, 2, 1);
        newest.records[1].arrival_ms = 1_700;
        newest.millis_behind_latest = 5;
        newest.committed_offset = 4;
        ring.push(older);
        ring.push(newest);
        let Some(FeedItem::Message(_, tip)) = ring.at(0) else {
            panic!("a message holds offset 0");
        };
        assert_eq!(
            tip,
            Tip {
                committed_offset: 4,
                millis_behind: 705
            }
        );
    }

    #[test]
    fn a_gap_ends_the_feed_rather_than_skip_records() {
        let mut ring = Ring::starting_at(0);
        ring.push(read(0, 2, 1));
        ring.push(read(5, 2, 1));
        assert_eq!(ring.next_offset, 2);
        assert!(matches!(
            ring.at(2),
            Some(FeedItem::Ended(FeedEnd::Failed(_)))
        ));
        // What came before the gap is still read first.
        assert_eq!(offsets(ring.at(1)), Some((0, 2)));
    }

    #[test]
    fn an_empty_first_answer_moves_the_start_to_where_it_resolved() {
        let mut ring = Ring::starting_at(3);
        ring.push(read(7, 0, 0));
        assert_eq!((ring.first_offset, ring.next_offset), (7, 7));
        assert!(matches!(ring.at(5), Some(FeedItem::Behind)));
    }

    #[tokio::test]
    async fn cursors_wake_when_the_feed_grows_and_see_its_end() {
        let feed = Arc::new(Feed {
            key: FeedKey {
                stream_uid: 1,
                shard_id: "shardId-000000000000".to_owned(),
                epoch: 1,
                segment: 0,
            },
            ring: Mutex::new(Ring::starting_at(0)),
            changes: watch::channel(0).0,
        });
        let mut cursor = Feeds::cursor_at(feed.clone(), 0).expect("holds 0");
        let waiting = tokio::spawn(async move {
            let first = cursor.next(0).await;
            let second = cursor.next(3).await;
            (first, second)
        });
        tokio::task::yield_now().await;
        feed.push(read(0, 3, 1));
        feed.end(FeedEnd::Moved);
        let (first, second) = waiting.await.expect("cursor task");
        assert_eq!(offsets(Some(first)), Some((0, 3)));
        assert!(matches!(second, FeedItem::Ended(FeedEnd::Moved)));
        // An ended feed takes no new cursors.
        assert!(Feeds::cursor_at(feed, 3).is_none());
    }
}
