//! Reads across the segments of a shard's log.
//!
//! A shard that worker balancing moved has sealed segments on the workers
//! that wrote them, then its current segment on its leader (see
//! `ShardMapEntry`). Offsets continue from one segment to the next, so a
//! read goes to the segment holding its first offset and never past that
//! segment's end; the next iterator then points into the next segment. A
//! sealed segment is served by any complete copy, its last leader first.

use freshet_errors::ErrorCode;
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

/// The sealed segments that may hold records arriving at or after
/// `from_ms`: not an empty one, nor one whose newest record is older (so
/// one whose records have all expired is skipped, as Kinesis trims them).
/// A segment that does not know its newest arrival (0: sealed by an older
/// version) is never skipped.
pub(super) fn sealed_segments_from(
    entry: &ShardMapEntry,
    from_ms: i64,
) -> impl Iterator<Item = &SealedSegment> {
    entry.sealed_segments.iter().filter(move |segment| {
        segment.start_offset < segment.end_offset
            && (segment.last_arrival_ms == 0 || segment.last_arrival_ms >= from_ms)
    })
}

/// Reads from `start`: in the segment holding that offset (past any whose
/// records have all expired), or — for a timestamp — in the first segment
/// with a record at or after it.
pub(super) async fn read_shard(
    frontend: &Frontend,
    entry: &ShardMapEntry,
    start: Start,
    max_records: u32,
) -> Result<SegmentRead, tonic::Status> {
    let unexpired_from = frontend.unexpired_from(entry);
    match start {
        Start::AtOffset(offset) => {
            let holding = sealed_segments_from(entry, unexpired_from)
                .find(|segment| offset < segment.end_offset);
            match holding {
                Some(segment) => {
                    // From the segment's start at the latest: the offsets
                    // before it were in segments that expired.
                    let start = Start::AtOffset(offset.max(segment.start_offset));
                    read_sealed(frontend, entry, segment, start, max_records).await
                }
                None => {
                    let start = Start::AtOffset(offset.max(entry.segment_start_offset));
                    read_current(frontend, entry, start, max_records).await
                }
            }
        }
        Start::AtTimestampMs(timestamp_ms) => {
            for segment in sealed_segments_from(entry, timestamp_ms.max(unexpired_from)) {
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
        .map_err(|error| error.code.status(error.message))?;
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
        ErrorCode::Unavailable.status(format!("no copy of segment {} is placed", segment.index));
    for address in segment.addresses.iter().filter(|a| !a.is_empty()) {
        let mut client = match frontend.storage.client(address) {
            Ok(client) => client,
            Err(error) => {
                last_error = error.code.status(error.message);
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
            Err(status)
                if ErrorCode::of_status(&status) == ErrorCode::ProvisionedThroughputExceeded =>
            {
                return Err(status)
            }
            // This copy is gone or incomplete: the next may serve it.
            Err(status) => last_error = status,
        }
    }
    Err(ErrorCode::of_status(&last_error).status(format!(
        "no copy of segment {} of shard {} could be read: {}",
        segment.index,
        entry.key.as_ref().map_or("", |k| k.shard_id.as_str()),
        last_error.message()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(index: u32, start: u64, end: u64, last_arrival_ms: i64) -> SealedSegment {
        SealedSegment {
            index,
            start_offset: start,
            end_offset: end,
            last_arrival_ms,
            ..SealedSegment::default()
        }
    }

    #[test]
    fn reads_skip_segments_with_nothing_new_enough() {
        let entry = ShardMapEntry {
            sealed_segments: vec![
                segment(0, 0, 10, 1_000),
                segment(1, 10, 10, 0),
                segment(2, 10, 25, 5_000),
                segment(3, 25, 30, 0),
            ],
            segment_index: 4,
            segment_start_offset: 30,
            ..ShardMapEntry::default()
        };
        let indexes = |from_ms| -> Vec<u32> {
            sealed_segments_from(&entry, from_ms)
                .map(|s| s.index)
                .collect()
        };
        assert_eq!(indexes(0), [0, 2, 3], "segment 1 holds nothing at all");
        assert_eq!(
            indexes(1_001),
            [2, 3],
            "segment 0 holds nothing that recent"
        );
        assert_eq!(
            indexes(5_001),
            [3],
            "a segment whose newest arrival is unknown is read"
        );
    }
}
