//! Reads across the segments of a shard's log.
//!
//! A shard that worker balancing moved has sealed segments on the workers
//! that wrote them, then its current segment on its leader (see
//! `ShardMapEntry`). Offsets continue from one segment to the next, so a
//! read goes to the segment holding its first offset and never past that
//! segment's end; the next iterator then points into the next segment. A
//! sealed segment is served by any complete copy, its last leader first.

use freshet_proto::v1::read_request::Start;
use freshet_proto::v1::{ReadRequest, ReadResponse, SealedSegment, ShardMapEntry};

use crate::Frontend;

/// What a read of one segment returned.
pub(super) struct SegmentRead {
    pub response: ReadResponse,
    /// Served by a sealed segment (its own "behind latest" is not the
    /// shard's).
    pub sealed: bool,
}

/// The sealed segment holding `offset`, if it is not in the current one.
fn sealed_segment_at(entry: &ShardMapEntry, offset: u64) -> Option<&SealedSegment> {
    if offset >= entry.segment_start_offset {
        return None;
    }
    entry
        .sealed_segments
        .iter()
        .find(|segment| offset < segment.end_offset)
}

/// Reads from `start`: in the segment holding that offset, or — for a
/// timestamp — in the first segment with a record at or after it.
pub(super) async fn read_shard(
    frontend: &Frontend,
    entry: &ShardMapEntry,
    start: Start,
    max_records: u32,
) -> Result<SegmentRead, tonic::Status> {
    match start {
        Start::AtOffset(offset) => match sealed_segment_at(entry, offset) {
            Some(segment) => read_sealed(frontend, entry, segment, start, max_records).await,
            None => read_current(frontend, entry, start, max_records).await,
        },
        Start::AtTimestampMs(_) => {
            for segment in &entry.sealed_segments {
                let read = read_sealed(frontend, entry, segment, start, max_records).await?;
                if !read.response.records.is_empty() {
                    return Ok(read);
                }
            }
            read_current(frontend, entry, start, max_records).await
        }
    }
}

fn request(entry: &ShardMapEntry, segment: u32, start: Start, max_records: u32) -> ReadRequest {
    ReadRequest {
        shard: entry.key.clone(),
        epoch: entry.epoch,
        start: Some(start),
        max_records,
        max_bytes: 10 * 1024 * 1024,
        segment,
    }
}

/// The current segment, from the shard's leader.
async fn read_current(
    frontend: &Frontend,
    entry: &ShardMapEntry,
    start: Start,
    max_records: u32,
) -> Result<SegmentRead, tonic::Status> {
    let mut client = frontend
        .storage
        .client(&entry.leader_address)
        .map_err(|error| tonic::Status::internal(error.message))?;
    let request = request(entry, entry.segment_index, start, max_records);
    let response = client
        .read(frontend.storage_request(request))
        .await?
        .into_inner();
    Ok(SegmentRead {
        response,
        sealed: false,
    })
}

/// A sealed segment, from the first of its copies that can serve it.
async fn read_sealed(
    frontend: &Frontend,
    entry: &ShardMapEntry,
    segment: &SealedSegment,
    start: Start,
    max_records: u32,
) -> Result<SegmentRead, tonic::Status> {
    let mut last_error =
        tonic::Status::unavailable(format!("no copy of segment {} is placed", segment.index));
    for address in segment.addresses.iter().filter(|a| !a.is_empty()) {
        let mut client = match frontend.storage.client(address) {
            Ok(client) => client,
            Err(error) => {
                last_error = tonic::Status::internal(error.message);
                continue;
            }
        };
        let request = request(entry, segment.index, start, max_records);
        match client.read(frontend.storage_request(request)).await {
            Ok(response) => {
                return Ok(SegmentRead {
                    response: response.into_inner(),
                    sealed: true,
                })
            }
            // The shard's read limit: the caller is throttled, whichever
            // copy it reads.
            Err(status) if status.code() == tonic::Code::ResourceExhausted => return Err(status),
            // This copy is gone or incomplete: the next may serve it.
            Err(status) => last_error = status,
        }
    }
    Err(tonic::Status::new(
        last_error.code(),
        format!(
            "no copy of segment {} of shard {} could be read: {}",
            segment.index,
            entry.key.as_ref().map_or("", |k| k.shard_id.as_str()),
            last_error.message()
        ),
    ))
}
