//! The read side of a shard log: where it starts, offsets by arrival time,
//! reads of committed (or, for a catching-up replica, uncommitted) records,
//! and retention, which drops whole sealed segments.

use super::*;

impl ShardLog {
    /// The oldest offset still stored.
    pub fn trim_horizon(&self) -> u64 {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        view.segments
            .first()
            .map(|segment| segment.base_offset())
            .unwrap_or(view.next_offset)
    }

    /// The first offset whose arrival time is at or after `timestamp_ms`
    /// (the log's end if there is none).
    pub fn offset_at_timestamp(&self, timestamp_ms: i64) -> LogResult<u64> {
        let (segments, next_offset) = {
            let view = self.view.read().unwrap_or_else(|p| p.into_inner());
            (view.segments.clone(), view.next_offset)
        };
        for segment in &segments {
            // Arrival times never decrease: the segments before the one
            // holding the time end before it.
            if segment
                .last_arrival_ms()
                .is_some_and(|last| last < timestamp_ms)
            {
                continue;
            }
            if let Some(offset) = segment.first_offset_at_or_after(timestamp_ms)? {
                return Ok(offset);
            }
        }
        Ok(next_offset)
    }

    /// Reads committed records starting at `from_offset` (moved up to the
    /// trim horizon if older), at most `max_records` and about `max_bytes`
    /// of data — always at least one record when one is available.
    pub fn read(
        &self,
        from_offset: u64,
        max_records: usize,
        max_bytes: u64,
    ) -> LogResult<ReadBatch> {
        self.read_below(from_offset, max_records, max_bytes, true)
    }

    /// Like [`ShardLog::read`], but includes durable records not yet
    /// committed (a leader sending a lagging replica what it misses).
    pub fn read_uncommitted(
        &self,
        from_offset: u64,
        max_records: usize,
        max_bytes: u64,
    ) -> LogResult<ReadBatch> {
        self.read_below(from_offset, max_records, max_bytes, false)
    }

    fn read_below(
        &self,
        from_offset: u64,
        max_records: usize,
        max_bytes: u64,
        committed_only: bool,
    ) -> LogResult<ReadBatch> {
        let (segments, next_offset) = {
            let view = self.view.read().unwrap_or_else(|p| p.into_inner());
            let end = if committed_only {
                view.committed
            } else {
                view.next_offset
            };
            (view.segments.clone(), end)
        };
        let latest_arrival_ms = segments.iter().rev().find_map(|s| s.last_arrival_ms());
        let horizon = segments
            .first()
            .map(|s| s.base_offset())
            .unwrap_or(next_offset);
        let mut offset = from_offset.max(horizon);
        let mut records = Vec::new();
        let mut bytes = 0u64;
        for segment in &segments {
            if records.len() >= max_records || offset >= next_offset {
                break;
            }
            if offset >= segment.next_offset() {
                continue;
            }
            let budget = max_bytes.saturating_sub(bytes);
            let wanted = (max_records - records.len()).min((next_offset - offset) as usize);
            let chunk = segment.read(offset, wanted, budget, records.is_empty())?;
            for record in chunk {
                bytes += segment::frame_len(&record) as u64;
                offset = record.offset + 1;
                records.push(record);
            }
            // A segment that stopped short ran out of budget: the next
            // segment must not be read past the gap.
            if offset < segment.next_offset() {
                break;
            }
        }
        Ok(ReadBatch {
            records,
            next_offset: offset,
            latest_arrival_ms,
        })
    }

    /// Deletes sealed segments whose newest record arrived before
    /// `cutoff_ms`. Returns how many segments were removed.
    ///
    /// Invariant: only committed records expire. A segment holding a
    /// record above the commit point stays, however old: that record may
    /// yet be committed (by this copy's leadership or a later one) and
    /// answered as landed, so it must still be here to be replicated.
    /// (The deterministic simulator found a leader trimming a record it
    /// had written but not committed, then acknowledging it.)
    pub fn trim_older_than(&self, cutoff_ms: i64) -> LogResult<usize> {
        let removable: Vec<Arc<Segment>> = {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            let committed = view.committed;
            let sealed = view.segments.len().saturating_sub(1);
            let count = view.segments[..sealed]
                .iter()
                .take_while(|s| {
                    s.next_offset() <= committed
                        && s.last_arrival_ms().is_some_and(|last| last < cutoff_ms)
                })
                .count();
            view.segments.drain(..count).collect()
        };
        for segment in &removable {
            segment.remove_files("remove expired segment")?;
        }
        Ok(removable.len())
    }
}
