//! `Follow`: a SubscribeToShard's upstream. Committed records of one
//! segment are pushed as they commit — what is committed already first,
//! then each commit as the log's commit point moves — to a frontend that
//! fans them out to its subscribers.
//!
//! Only committed records are ever sent (the log's reads stop at the commit
//! point), so a subscriber sees exactly what a GetRecords reader would. The
//! stream ends OK at a sealed segment's end (or a closed shard's), and with
//! FAILED_PRECONDITION (NotWritten) as soon as this worker is seen not to
//! lead the shard's current segment at the caller's epoch: the frontend
//! then follows the new leader from where it got to, so a failover neither
//! loses nor repeats a record.

use std::sync::Arc;
use std::time::Duration;

use freshet_errors::ErrorCode;
use freshet_proto::v1::read_request::Start;
use freshet_proto::v1::{follow_request, FollowRequest, ReadResponse, ShardState};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::service::{read_committed, Access, FollowStream, StorageService};
use crate::writer::OpenShard;

/// How often an idle follower checks that this worker still leads the
/// segment (a commit wakes it sooner).
const LEADERSHIP_CHECK: Duration = Duration::from_secs(1);

/// Where a followed segment stands, by this worker's shard map.
enum SegmentState {
    /// Still being written here, at the caller's epoch.
    Open,
    /// Sealed, or its shard closed: it ends at this offset.
    EndsAt(u64),
}

impl StorageService {
    pub(crate) async fn follow_segment(
        &self,
        request: FollowRequest,
    ) -> Result<FollowStream, Status> {
        let shard = self
            .authorize(
                request.shard.as_ref(),
                request.epoch,
                Access::Read {
                    segment: Some(request.segment),
                },
            )
            .await?;
        // One message ahead at most: a slow subscriber slows these reads
        // (HTTP/2 and TCP flow control reach back here), nothing piles up.
        let (sender, receiver) = mpsc::channel(1);
        let service = self.clone();
        tokio::spawn(async move {
            if let Err(status) = service.push_commits(&shard, &request, &sender).await {
                // Not waited for: a stalled reader must not keep this task.
                // (Without it, the stream just ends; the caller sees it
                // did not reach the segment's end and follows again.)
                let _ = sender.try_send(Err(status));
            }
        });
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }

    /// Sends committed records from the requested start until the segment
    /// ends (Ok), leadership moves (Err), or the caller leaves (Ok).
    async fn push_commits(
        &self,
        shard: &Arc<OpenShard>,
        request: &FollowRequest,
        sender: &mpsc::Sender<Result<ReadResponse, Status>>,
    ) -> Result<(), Status> {
        let mut commits = shard.log.watch_commits();
        let mut start = request.start.map(|start| match start {
            follow_request::Start::AtOffset(offset) => Start::AtOffset(offset),
            follow_request::Start::AtTimestampMs(ms) => Start::AtTimestampMs(ms),
        });
        // Where the next record to send is, once the start is resolved.
        let mut next: Option<u64> = None;
        loop {
            let committed = *commits.borrow_and_update();
            let state = self.segment_state(request)?;
            if next.is_none_or(|next| next < committed) {
                let read = read_committed(
                    shard,
                    next.map(Start::AtOffset).or(start.take()),
                    self.unexpired_from(request.shard.as_ref()),
                    request.max_records,
                    request.max_bytes,
                )
                .await?;
                // The first answer is sent even when empty: it tells the
                // caller where its start (a timestamp) resolved to.
                let first = next.is_none();
                let advanced = next != Some(read.next_offset);
                next = Some(read.next_offset);
                if first || !read.records.is_empty() {
                    // A reader that stalls holds this send, never a shutdown.
                    tokio::select! {
                        sent = sender.send(Ok(read)) => {
                            if sent.is_err() {
                                return Ok(());
                            }
                        }
                        () = self.follows_stop.cancelled() => {
                            return Err(ErrorCode::Unavailable.status("the worker is shutting down"));
                        }
                    }
                }
                if advanced {
                    continue;
                }
            }
            if let (SegmentState::EndsAt(end), Some(next)) = (state, next) {
                if next >= end {
                    return Ok(());
                }
            }
            tokio::select! {
                changed = commits.changed() => {
                    if changed.is_err() {
                        return Err(ErrorCode::NotWritten.status("the shard's log closed here"));
                    }
                }
                () = tokio::time::sleep(LEADERSHIP_CHECK) => {}
                () = sender.closed() => return Ok(()),
                () = self.follows_stop.cancelled() => {
                    return Err(ErrorCode::Unavailable.status("the worker is shutting down"));
                }
            }
        }
    }

    /// Whether the followed segment is still open here, or where it ends;
    /// NotWritten once this worker does not lead it at the caller's epoch.
    fn segment_state(&self, request: &FollowRequest) -> Result<SegmentState, Status> {
        let key = request
            .shard
            .as_ref()
            .ok_or_else(|| ErrorCode::InvalidArgument.status("shard is required"))?;
        let entry = self
            .map
            .read(|map| map.get(key.stream_uid, &key.shard_id).cloned())
            .ok_or_else(|| {
                ErrorCode::ResourceNotFound.status(format!(
                    "shard {} of stream {} is no longer in the shard map",
                    key.shard_id, key.stream_uid
                ))
            })?;
        if request.segment < entry.segment_index {
            let sealed = entry
                .sealed_segments
                .iter()
                .find(|s| s.index == request.segment)
                .ok_or_else(|| {
                    ErrorCode::NotWritten.status(format!(
                        "segment {} of shard {} is not listed",
                        request.segment, key.shard_id
                    ))
                })?;
            return Ok(SegmentState::EndsAt(sealed.end_offset));
        }
        if entry.epoch != request.epoch || entry.leader_worker_id != self.worker_id {
            return Err(ErrorCode::NotWritten.status(format!(
                "shard {} moved on from epoch {} (now epoch {}, led by {})",
                key.shard_id, request.epoch, entry.epoch, entry.leader_worker_id
            )));
        }
        if entry.state() == ShardState::Closed {
            return Ok(SegmentState::EndsAt(entry.ending_offset));
        }
        Ok(SegmentState::Open)
    }
}
