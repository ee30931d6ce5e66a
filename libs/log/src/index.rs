//! A segment's indexes: each record's file position and arrival time, by
//! `offset - base_offset`.
//!
//! The segment being written keeps them in memory ([`SegmentIndex::Memory`]),
//! extended as records are published. Once a newer segment takes over, the
//! sealed segment's indexes move to an index file beside it
//! ([`SegmentIndex::Disk`], `{base_offset:020}.index`) and are read from
//! there on demand: what a shard keeps in memory stays bounded by one
//! segment, however long its retention.
//!
//! The index file is derived data: every open rebuilds it from the
//! segment (which recovery scans and checks anyway), so it is never
//! trusted across a restart and needs no fsync. Entries are 16 bytes,
//! little-endian: `u64 position | i64 arrival_ms`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{io_error, LogError, LogResult};

/// Bytes per record in an index file.
const ENTRY_LEN: u64 = 16;

/// Where the index file of the segment at `segment_path` lives.
pub(crate) fn index_path(segment_path: &Path) -> PathBuf {
    segment_path.with_extension("index")
}

/// Removes the index file of the segment at `segment_path`, if any. Only
/// warns on failure: a file left behind is derived data, removed at the
/// next open (`ShardLog::open_from`).
pub(crate) fn remove_index_file(segment_path: &Path) {
    let path = index_path(segment_path);
    if let Err(error) = crate::remove_if_present(&path, "remove index file") {
        tracing::warn!(%error, "an index file stays behind until the next open");
    }
}

/// A segment's positions and arrival times, wherever they are kept.
pub(crate) enum SegmentIndex {
    Memory(MemoryIndex),
    Disk(DiskIndex),
}

#[derive(Default)]
pub(crate) struct MemoryIndex {
    /// File position of each record.
    pub positions: Vec<u64>,
    /// Arrival time of each record; never decreasing.
    pub arrivals: Vec<i64>,
    /// Bytes of the file that hold fsynced, published records.
    pub committed_len: u64,
}

pub(crate) struct DiskIndex {
    path: PathBuf,
    file: File,
    records: u64,
    committed_len: u64,
    first_arrival_ms: Option<i64>,
    last_arrival_ms: Option<i64>,
}

/// Writes an index file entry by entry, then opens it for reading.
pub(crate) struct IndexWriter {
    path: PathBuf,
    out: BufWriter<File>,
    records: u64,
    first_arrival_ms: Option<i64>,
    last_arrival_ms: Option<i64>,
}

impl IndexWriter {
    pub(crate) fn create(path: PathBuf) -> LogResult<IndexWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error("create index file", &path))?;
        Ok(IndexWriter {
            path,
            out: BufWriter::with_capacity(64 * 1024, file),
            records: 0,
            first_arrival_ms: None,
            last_arrival_ms: None,
        })
    }

    pub(crate) fn push(&mut self, position: u64, arrival_ms: i64) -> LogResult<()> {
        let mut entry = [0u8; ENTRY_LEN as usize];
        entry[..8].copy_from_slice(&position.to_le_bytes());
        entry[8..].copy_from_slice(&arrival_ms.to_le_bytes());
        self.out
            .write_all(&entry)
            .map_err(io_error("write index file", &self.path))?;
        self.records += 1;
        self.first_arrival_ms.get_or_insert(arrival_ms);
        self.last_arrival_ms = Some(arrival_ms);
        Ok(())
    }

    /// Completes the file; `committed_len` is where the last entry's frame
    /// ends.
    pub(crate) fn finish(self, committed_len: u64) -> LogResult<DiskIndex> {
        let file = self.out.into_inner().map_err(|error| LogError::Io {
            action: "write index file",
            path: self.path.clone(),
            source: error.into_error(),
        })?;
        drop(file);
        DiskIndex::open(
            self.path,
            self.records,
            committed_len,
            self.first_arrival_ms,
            self.last_arrival_ms,
        )
    }
}

impl MemoryIndex {
    /// Writes these indexes to `path` and answers the same questions from
    /// there (the segment was sealed: nothing is published to it again).
    pub(crate) fn to_disk(&self, path: PathBuf) -> LogResult<DiskIndex> {
        let mut writer = IndexWriter::create(path)?;
        for (position, arrival) in self.positions.iter().zip(&self.arrivals) {
            writer.push(*position, *arrival)?;
        }
        writer.finish(self.committed_len)
    }
}

impl DiskIndex {
    fn open(
        path: PathBuf,
        records: u64,
        committed_len: u64,
        first_arrival_ms: Option<i64>,
        last_arrival_ms: Option<i64>,
    ) -> LogResult<DiskIndex> {
        let file = File::open(&path).map_err(io_error("open index file", &path))?;
        Ok(DiskIndex {
            path,
            file,
            records,
            committed_len,
            first_arrival_ms,
            last_arrival_ms,
        })
    }

    /// Entries `from..from + count` (fewer past the end).
    fn entries(&self, from: u64, count: u64) -> LogResult<Vec<(u64, i64)>> {
        let count = count.min(self.records.saturating_sub(from));
        let mut bytes = vec![0u8; (count * ENTRY_LEN) as usize];
        self.file
            .read_exact_at(&mut bytes, from * ENTRY_LEN)
            .map_err(io_error("read index file", &self.path))?;
        Ok(bytes
            .chunks_exact(ENTRY_LEN as usize)
            .map(|entry| {
                let (position, arrival) = entry.split_at(8);
                (
                    u64::from_le_bytes(position.try_into().expect("8 bytes")),
                    i64::from_le_bytes(arrival.try_into().expect("8 bytes")),
                )
            })
            .collect())
    }

    /// Every entry, in memory.
    fn load(&self) -> LogResult<MemoryIndex> {
        let entries = self.entries(0, self.records)?;
        Ok(MemoryIndex {
            positions: entries.iter().map(|(position, _)| *position).collect(),
            arrivals: entries.iter().map(|(_, arrival)| *arrival).collect(),
            committed_len: self.committed_len,
        })
    }
}

/// The positions a read of up to `count` records from record `first`
/// needs: theirs, then where the last one's frame ends.
pub(crate) struct Span {
    pub positions: Vec<u64>,
    pub end: u64,
}

impl SegmentIndex {
    pub(crate) fn records(&self) -> u64 {
        match self {
            SegmentIndex::Memory(index) => index.positions.len() as u64,
            SegmentIndex::Disk(index) => index.records,
        }
    }

    pub(crate) fn committed_len(&self) -> u64 {
        match self {
            SegmentIndex::Memory(index) => index.committed_len,
            SegmentIndex::Disk(index) => index.committed_len,
        }
    }

    pub(crate) fn first_arrival_ms(&self) -> Option<i64> {
        match self {
            SegmentIndex::Memory(index) => index.arrivals.first().copied(),
            SegmentIndex::Disk(index) => index.first_arrival_ms,
        }
    }

    pub(crate) fn last_arrival_ms(&self) -> Option<i64> {
        match self {
            SegmentIndex::Memory(index) => index.arrivals.last().copied(),
            SegmentIndex::Disk(index) => index.last_arrival_ms,
        }
    }

    /// The in-memory indexes, loading them from the index file (and
    /// removing it) if the segment was sealed: a truncation makes it the
    /// segment written to again.
    pub(crate) fn in_memory(&mut self) -> LogResult<&mut MemoryIndex> {
        if let SegmentIndex::Disk(disk) = self {
            let memory = disk.load()?;
            *self = SegmentIndex::Memory(memory);
        }
        match self {
            SegmentIndex::Memory(index) => Ok(index),
            SegmentIndex::Disk(_) => unreachable!("loaded into memory just above"),
        }
    }

    /// Positions of records `first..first + count` (fewer past the end),
    /// and where the last of them ends.
    pub(crate) fn span(&self, first: u64, count: u64) -> LogResult<Span> {
        let records = self.records();
        let first = first.min(records);
        let last = first.saturating_add(count).min(records);
        match self {
            SegmentIndex::Memory(index) => Ok(Span {
                positions: index.positions[first as usize..last as usize].to_vec(),
                end: index
                    .positions
                    .get(last as usize)
                    .copied()
                    .unwrap_or(index.committed_len),
            }),
            SegmentIndex::Disk(index) => {
                // One more entry than asked for: where the last one ends.
                let mut entries = index.entries(first, last - first + 1)?;
                let end = if last < records {
                    entries.pop().map_or(index.committed_len, |(p, _)| p)
                } else {
                    index.committed_len
                };
                Ok(Span {
                    positions: entries.into_iter().map(|(position, _)| position).collect(),
                    end,
                })
            }
        }
    }

    /// The first record (from the segment's start) that arrived at or
    /// after `timestamp_ms`, if any.
    pub(crate) fn first_at_or_after(&self, timestamp_ms: i64) -> LogResult<Option<u64>> {
        match self {
            SegmentIndex::Memory(index) => {
                let at = index.arrivals.partition_point(|a| *a < timestamp_ms);
                Ok((at < index.arrivals.len()).then_some(at as u64))
            }
            SegmentIndex::Disk(index) => {
                if index.last_arrival_ms.is_none_or(|last| last < timestamp_ms) {
                    return Ok(None);
                }
                if index
                    .first_arrival_ms
                    .is_some_and(|first| first >= timestamp_ms)
                {
                    return Ok(Some(0));
                }
                // Arrival times never decrease: a binary search, one
                // entry read per step.
                let (mut low, mut high) = (0u64, index.records);
                while low < high {
                    let middle = low + (high - low) / 2;
                    let arrival = index
                        .entries(middle, 1)?
                        .first()
                        .map_or(i64::MAX, |(_, arrival)| *arrival);
                    if arrival < timestamp_ms {
                        low = middle + 1;
                    } else {
                        high = middle;
                    }
                }
                Ok((low < index.records).then_some(low))
            }
        }
    }
}
