//! The invariants, checked as the simulation runs and once it has settled.
//! A violation ends the run with what broke, and where.

use std::collections::BTreeMap;

use std::sync::Arc;

use bytes::Bytes;
use freshet_log::ShardLog;

/// What the checker has seen happen.
#[derive(Default)]
pub struct Checker {
    /// Every committed offset's record, as the leader that committed it
    /// held it: `(partition key, data)`. Once set, never different.
    committed: BTreeMap<u64, (String, Bytes)>,
    /// Which worker committed at each epoch.
    committers: BTreeMap<u64, usize>,
    /// Acknowledged calls: call → (first offset, records).
    acknowledged: BTreeMap<u64, (u64, Vec<Bytes>)>,
    /// Calls answered "not written".
    refused: Vec<u64>,
    /// Where each sealed segment of the shard ends.
    sealed_ends: BTreeMap<u32, u64>,
}

pub type Violation = String;

impl Checker {
    /// Worker `worker`, leading at `epoch`, committed its log below `upto`
    /// (from `from`): no two workers commit at one epoch, and an offset
    /// once committed never holds another record.
    #[allow(clippy::too_many_arguments)]
    pub fn committed(
        &mut self,
        worker: usize,
        segment: u32,
        epoch: u64,
        log: &ShardLog,
        from: u64,
        upto: u64,
    ) -> Result<(), Violation> {
        if let Some(other) = self.committers.insert(epoch, worker) {
            if other != worker {
                return Err(format!(
                    "two leaders committed at epoch {epoch}: worker {other} and worker {worker}"
                ));
            }
        }
        if let Some(end) = self.sealed_ends.get(&segment).filter(|end| upto > **end) {
            return Err(format!(
                "worker {worker} committed up to {upto} at epoch {epoch}, beyond segment {segment}'s sealed end {end}"
            ));
        }
        let mut at = from;
        while at < upto {
            let batch = log
                .read_uncommitted(at, (upto - at) as usize, u64::MAX)
                .map_err(|e| format!("worker {worker} cannot read what it commits: {e}"))?;
            if batch.records.is_empty() {
                return Err(format!(
                    "worker {worker} committed {upto} but holds nothing at {at}"
                ));
            }
            for record in batch.records {
                if record.offset >= upto {
                    break;
                }
                let value = (record.partition_key.clone(), record.data.clone());
                match self.committed.get(&record.offset) {
                    Some(before) if *before != value => {
                        return Err(format!(
                            "offset {} was committed as {:?} and again as {:?} (worker {worker}, epoch {epoch})",
                            record.offset, before.1, value.1
                        ))
                    }
                    Some(_) => {}
                    None => {
                        self.committed.insert(record.offset, value);
                    }
                }
                at = record.offset + 1;
            }
        }
        Ok(())
    }

    /// A reader was served `records` from offset `from` by a leader: each
    /// must be committed, as it was committed.
    pub fn served(
        &self,
        worker: usize,
        records: &[freshet_log::StoredRecord],
    ) -> Result<(), Violation> {
        for record in records {
            match self.committed.get(&record.offset) {
                Some((key, data)) if *key == record.partition_key && *data == record.data => {}
                Some((_, data)) => {
                    return Err(format!(
                        "worker {worker} served {:?} at offset {}, committed as {data:?}",
                        record.data, record.offset
                    ))
                }
                None => {
                    return Err(format!(
                        "worker {worker} served offset {} ({:?}), never committed",
                        record.offset, record.data
                    ))
                }
            }
        }
        Ok(())
    }

    /// Call `call` was acknowledged at `first_offset`: its records are
    /// committed there, and no other call's acknowledged offsets overlap.
    pub fn acknowledged(
        &mut self,
        call: u64,
        first_offset: u64,
        data: Vec<Bytes>,
    ) -> Result<(), Violation> {
        for (i, record) in data.iter().enumerate() {
            let offset = first_offset + i as u64;
            match self.committed.get(&offset) {
                Some((_, held)) if held == record => {}
                other => {
                    return Err(format!(
                        "call {call} was acknowledged at offset {offset}, which holds {:?}",
                        other.map(|(_, d)| d)
                    ))
                }
            }
        }
        if let Some(before) = self.acknowledged.insert(call, (first_offset, data)) {
            if before.0 != first_offset {
                return Err(format!(
                    "call {call} was acknowledged at {} and again at {first_offset}",
                    before.0
                ));
            }
        }
        Ok(())
    }

    /// Segment `segment` of the shard was sealed at `end` (closed, or the
    /// shard moved on to its next segment there): every record committed
    /// so far lies below it, and nothing may be committed at or beyond it
    /// in that segment.
    pub fn sealed(&mut self, segment: u32, start: u64, end: u64) -> Result<(), Violation> {
        // ... and everything in it was committed: a seal is no further
        // than the log's commit point.
        if let Some(gap) = (start..end).find(|offset| !self.committed.contains_key(offset)) {
            return Err(format!(
                "segment {segment} was sealed at {end}, but offset {gap} was never committed"
            ));
        }
        if let Some((&last, _)) = self.committed.last_key_value() {
            if last >= end {
                return Err(format!(
                    "the shard was sealed at {end}, but offset {last} was committed"
                ));
            }
        }
        if let Some(before) = self.sealed_ends.insert(segment, end) {
            return Err(format!(
                "segment {segment} was sealed twice, at {before} and at {end}"
            ));
        }
        Ok(())
    }

    pub fn refused(&mut self, call: u64) {
        self.refused.push(call);
    }

    pub fn acknowledged_calls(&self) -> usize {
        self.acknowledged.len()
    }

    pub fn committed_records(&self) -> usize {
        self.committed.len()
    }

    /// Once settled: the shard's segments — each sealed one as the worker
    /// that sealed it holds it, then the final leader's — hold every
    /// committed record where it was committed, each call's records at
    /// most once, and none of a call that was answered "not written".
    pub fn settled(&self, segments: &[(usize, Arc<ShardLog>)]) -> Result<(), Violation> {
        let Some((leader, log)) = segments.last() else {
            return Err("no segment to check".to_owned());
        };
        let end = log.committed_offset();
        if let Some((&last, _)) = self.committed.last_key_value() {
            if last >= end {
                return Err(format!(
                    "offset {last} was committed, the final leader (worker {leader}) commits only below {end}"
                ));
            }
        }
        let mut calls_seen: BTreeMap<String, u64> = BTreeMap::new();
        for (worker, log) in segments {
            let end = log.committed_offset();
            let mut at = log.trim_horizon();
            while at < end {
                let batch = log
                    .read(at, 10_000, u64::MAX)
                    .map_err(|e| format!("worker {worker} cannot read its log: {e}"))?;
                if batch.records.is_empty() {
                    break;
                }
                self.served(*worker, &batch.records)?;
                for record in &batch.records {
                    // Data is `c<call>-r<i>`: one call's records once only.
                    let text = String::from_utf8_lossy(&record.data).into_owned();
                    if let Some((call, _)) = text.split_once('-') {
                        if record.data.ends_with(b"-r0") {
                            if let Some(before) = calls_seen.insert(call.to_owned(), record.offset)
                            {
                                return Err(format!(
                                    "call {call} is in the log twice, at {before} and at {}",
                                    record.offset
                                ));
                            }
                        }
                    }
                    at = record.offset + 1;
                }
            }
        }
        for call in &self.refused {
            if calls_seen.contains_key(&format!("c{call}")) {
                return Err(format!(
                    "call {call} was answered not written, but is in the log"
                ));
            }
        }
        Ok(())
    }

    /// Once settled: `copy` agrees with the final leader's committed log
    /// over every offset both hold.
    pub fn copy_agrees(
        &self,
        worker: usize,
        copy: &ShardLog,
        leader_log: &ShardLog,
    ) -> Result<(), Violation> {
        let end = leader_log.committed_offset().min(copy.next_offset());
        let from = copy.trim_horizon().max(leader_log.trim_horizon());
        if from >= end {
            return Ok(());
        }
        let ours = copy
            .read_uncommitted(from, (end - from) as usize, u64::MAX)
            .map_err(|e| format!("worker {worker} cannot read its copy: {e}"))?;
        for record in ours.records.iter().filter(|r| r.offset < end) {
            match self.committed.get(&record.offset) {
                Some((_, data)) if *data == record.data => {}
                other => {
                    return Err(format!(
                    "worker {worker}'s copy holds {:?} at committed offset {}, committed as {:?}",
                    record.data,
                    record.offset,
                    other.map(|(_, d)| d)
                ))
                }
            }
        }
        Ok(())
    }
}
