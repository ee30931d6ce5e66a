//! One segment file and its in-memory indexes (offset → file position, and
//! offset → arrival time). See the crate docs for the frame layout.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use bytes::Bytes;

use crate::appends::AppendIndex;
use crate::index::{self, MemoryIndex, SegmentIndex};
use crate::{
    io_error, remove_if_present, segment_path, AppendKey, AppendMark, LogError, LogResult,
    NewRecord, StoredRecord,
};

/// `u32 body_len | u32 crc32`.
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// `u64 offset | i64 arrival_ms | u16 key_len`.
const BODY_FIXED_LEN: usize = 18;
/// Set in `key_len` when an append mark follows it.
const MARKED: u16 = 0x8000;
/// Set in `key_len` on every record of a write but its last: a write whose
/// last record is missing was torn, and recovery drops all of it.
const CONTINUES: u16 = 0x4000;
/// The bits of `key_len` that hold the key's length.
const KEY_LEN_BITS: u16 = !(MARKED | CONTINUES);
/// `u64 frontend | u64 call | u32 records`.
const MARK_LEN: usize = 20;

/// Bytes a record's frame takes beyond its key and data.
pub(crate) fn frame_overhead(mark: Option<AppendMark>) -> usize {
    FRAME_HEADER_LEN + BODY_FIXED_LEN + if mark.is_some() { MARK_LEN } else { 0 }
}

/// Bytes a record takes on disk, frame included.
pub(crate) fn frame_len(record: &StoredRecord) -> usize {
    frame_overhead(record.ends_append) + record.partition_key.len() + record.data.len()
}

/// Appends one framed record to `buffer`.
/// `continues`: the write goes on after this record.
pub(crate) fn encode_record(
    buffer: &mut Vec<u8>,
    offset: u64,
    arrival_ms: i64,
    record: &NewRecord,
    continues: bool,
) -> LogResult<()> {
    let (partition_key, data) = (&record.partition_key, &record.data);
    let too_large = || LogError::RecordTooLarge(data.len(), partition_key.len());
    let key_len = u16::try_from(partition_key.len())
        .ok()
        .filter(|len| len & !KEY_LEN_BITS == 0)
        .ok_or_else(too_large)?
        | if continues { CONTINUES } else { 0 };
    let mark_len = if record.ends_append.is_some() {
        MARK_LEN
    } else {
        0
    };
    let body_len = u32::try_from(BODY_FIXED_LEN + mark_len + partition_key.len() + data.len())
        .map_err(|_| too_large())?;
    let header_at = buffer.len();
    buffer.extend_from_slice(&body_len.to_le_bytes());
    buffer.extend_from_slice(&[0; 4]);
    let body_at = buffer.len();
    buffer.extend_from_slice(&offset.to_le_bytes());
    buffer.extend_from_slice(&arrival_ms.to_le_bytes());
    match record.ends_append {
        Some(mark) => {
            buffer.extend_from_slice(&(key_len | MARKED).to_le_bytes());
            buffer.extend_from_slice(&mark.key.frontend.to_le_bytes());
            buffer.extend_from_slice(&mark.key.call.to_le_bytes());
            buffer.extend_from_slice(&mark.records.to_le_bytes());
        }
        None => buffer.extend_from_slice(&key_len.to_le_bytes()),
    }
    buffer.extend_from_slice(partition_key.as_bytes());
    buffer.extend_from_slice(data);
    let crc = crc32fast::hash(&buffer[body_at..]);
    buffer[header_at + 4..body_at].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A frame decoded from bytes, or why it could not be.
enum Decoded {
    Record {
        record: StoredRecord,
        frame_len: usize,
    },
    /// Not enough bytes for the frame the header announces (a torn write).
    Incomplete,
    Corrupt(String),
}

fn decode_record(bytes: &Bytes, at: usize) -> Decoded {
    let rest = &bytes[at..];
    if rest.len() < FRAME_HEADER_LEN {
        return Decoded::Incomplete;
    }
    let body_len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if body_len < BODY_FIXED_LEN {
        return Decoded::Corrupt(format!("body length {body_len} is too short"));
    }
    if rest.len() < FRAME_HEADER_LEN + body_len {
        return Decoded::Incomplete;
    }
    let body = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len];
    if crc32fast::hash(body) != crc {
        return Decoded::Corrupt("checksum mismatch".to_owned());
    }
    let offset = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let arrival_ms = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let key_field = u16::from_le_bytes(body[16..18].try_into().expect("2 bytes"));
    let key_len = usize::from(key_field & KEY_LEN_BITS);
    let continues = key_field & CONTINUES != 0;
    let mark_len = if key_field & MARKED != 0 { MARK_LEN } else { 0 };
    let key_start = BODY_FIXED_LEN + mark_len;
    if key_start + key_len > body_len {
        return Decoded::Corrupt(format!("key length {key_len} exceeds the body"));
    }
    let ends_append = (mark_len > 0).then(|| {
        let mark = &body[BODY_FIXED_LEN..key_start];
        AppendMark {
            key: AppendKey {
                frontend: u64::from_le_bytes(mark[0..8].try_into().expect("8 bytes")),
                call: u64::from_le_bytes(mark[8..16].try_into().expect("8 bytes")),
            },
            records: u32::from_le_bytes(mark[16..20].try_into().expect("4 bytes")),
        }
    });
    let Ok(partition_key) = std::str::from_utf8(&body[key_start..key_start + key_len]) else {
        return Decoded::Corrupt("partition key is not UTF-8".to_owned());
    };
    let data_start = at + FRAME_HEADER_LEN + key_start + key_len;
    let data_end = at + FRAME_HEADER_LEN + body_len;
    Decoded::Record {
        record: StoredRecord {
            offset,
            arrival_ms,
            partition_key: partition_key.to_owned(),
            data: bytes.slice(data_start..data_end),
            ends_append,
            write_continues: continues,
        },
        frame_len: FRAME_HEADER_LEN + body_len,
    }
}

/// Whether any well-formed frame with an offset at or after `expected`
/// starts at or after byte `from` (a recovery-time scan).
fn valid_frame_after(bytes: &Bytes, from: usize, expected: u64) -> bool {
    (from..bytes.len().saturating_sub(FRAME_HEADER_LEN + BODY_FIXED_LEN)).any(|at| {
        matches!(decode_record(bytes, at), Decoded::Record { record, .. } if record.offset >= expected)
    })
}

pub(crate) struct Segment {
    path: PathBuf,
    base_offset: u64,
    file: File,
    index: RwLock<SegmentIndex>,
}

impl Segment {
    /// Creates an empty segment file and makes its directory entry durable.
    pub(crate) fn create(dir: &Path, base_offset: u64) -> LogResult<Segment> {
        let path = segment_path(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("create segment", &path))?;
        file.sync_all()
            .map_err(io_error("fsync new segment", &path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("fsync log directory", dir))?;
        Ok(Segment {
            path,
            base_offset,
            file,
            index: RwLock::new(SegmentIndex::Memory(MemoryIndex::default())),
        })
    }

    /// Scans an existing segment and rebuilds its indexes: in memory for
    /// the last segment (where a torn or corrupt tail is truncated), in
    /// its index file for a sealed one (where any damage is an error).
    /// The append marks found are noted in `appends`, in log order.
    /// Records below `committed_floor` (the saved commit point) are never
    /// dropped as part of an unfinished write: they were committed.
    pub(crate) fn recover(
        path: &Path,
        base_offset: u64,
        is_last: bool,
        committed_floor: u64,
        appends: &mut AppendIndex,
    ) -> LogResult<Segment> {
        let index = if is_last {
            SegmentIndex::Memory(recover_last(path, base_offset, committed_floor, appends)?)
        } else {
            // Derived data: if the index file cannot be written (a full
            // disk), the indexes stay in memory rather than fail the open.
            let memory = recover_sealed(path, base_offset, appends)?;
            match memory.to_disk(index::index_path(path)) {
                Ok(disk) => SegmentIndex::Disk(disk),
                Err(error) => {
                    tracing::warn!(%error, "a sealed segment's indexes stay in memory");
                    SegmentIndex::Memory(memory)
                }
            }
        };
        let file = File::open(path).map_err(io_error("open segment", path))?;
        Ok(Segment {
            path: path.to_owned(),
            base_offset,
            file,
            index: RwLock::new(index),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn base_offset(&self) -> u64 {
        self.base_offset
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, SegmentIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, SegmentIndex> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn next_offset(&self) -> u64 {
        self.base_offset + self.index().records()
    }

    pub(crate) fn committed_len(&self) -> u64 {
        self.index().committed_len()
    }

    pub(crate) fn first_arrival_ms(&self) -> Option<i64> {
        self.index().first_arrival_ms()
    }

    pub(crate) fn last_arrival_ms(&self) -> Option<i64> {
        self.index().last_arrival_ms()
    }

    /// Whether its indexes are in its index file (not in memory).
    #[cfg(test)]
    pub(crate) fn indexes_on_disk(&self) -> bool {
        matches!(&*self.index(), SegmentIndex::Disk(_))
    }

    /// Moves a sealed segment's indexes to its index file: from now on
    /// they cost no memory. On failure they stay in memory (nothing is
    /// lost; the next open writes the file).
    pub(crate) fn seal(&self) -> LogResult<()> {
        let disk = match &*self.index() {
            SegmentIndex::Memory(memory) => memory.to_disk(index::index_path(&self.path))?,
            SegmentIndex::Disk(_) => return Ok(()),
        };
        *self.index_mut() = SegmentIndex::Disk(disk);
        Ok(())
    }

    /// Removes the segment's files: the log, then its index (one left
    /// behind by a crash in between is removed at the next open).
    pub(crate) fn remove_files(&self, action: &'static str) -> LogResult<()> {
        remove_if_present(&self.path, action)?;
        index::remove_index_file(&self.path);
        Ok(())
    }

    /// Brings a sealed segment's indexes back into memory (a truncation
    /// is about to make it the segment written to).
    pub(crate) fn unseal(&self) -> LogResult<()> {
        self.index_mut().in_memory().map(|_| ())
    }

    /// Forgets every record at or after `offset` and returns the file length
    /// that keeps the rest (the caller truncates the file). A sealed
    /// segment's indexes come back into memory: it is written to again.
    pub(crate) fn truncate_index(&self, offset: u64) -> LogResult<u64> {
        let mut guard = self.index_mut();
        let index = guard.in_memory()?;
        let keep = offset.saturating_sub(self.base_offset) as usize;
        if keep < index.positions.len() {
            index.committed_len = index.positions[keep];
            index.positions.truncate(keep);
            index.arrivals.truncate(keep);
        }
        Ok(index.committed_len)
    }

    /// File position of the last record it holds, if any.
    pub(crate) fn last_frame_position(&self) -> LogResult<Option<u64>> {
        let index = self.index();
        match index.records().checked_sub(1) {
            Some(last) => Ok(index.span(last, 1)?.positions.first().copied()),
            None => Ok(None),
        }
    }

    /// Makes fsynced records visible to readers.
    ///
    /// Invariant: records are published to the active segment only, whose
    /// indexes are in memory (a segment's go to disk when it is sealed, and
    /// come back before a truncation makes it active again).
    pub(crate) fn publish(&self, positions: &[u64], arrival_ms: i64, committed_len: u64) {
        let mut guard = self.index_mut();
        let SegmentIndex::Memory(index) = &mut *guard else {
            unreachable!("records are published to the active segment only")
        };
        index.positions.extend_from_slice(positions);
        index
            .arrivals
            .extend(std::iter::repeat_n(arrival_ms, positions.len()));
        index.committed_len = committed_len;
    }

    pub(crate) fn first_offset_at_or_after(&self, timestamp_ms: i64) -> LogResult<Option<u64>> {
        Ok(self
            .index()
            .first_at_or_after(timestamp_ms)?
            .map(|at| self.base_offset + at))
    }

    /// Reads up to `max_records` records from `from_offset`, stopping before
    /// `max_bytes` of frames unless `at_least_one` and nothing was read yet.
    pub(crate) fn read(
        &self,
        from_offset: u64,
        max_records: usize,
        max_bytes: u64,
        at_least_one: bool,
    ) -> LogResult<Vec<StoredRecord>> {
        let Some(first) = from_offset.checked_sub(self.base_offset) else {
            return Ok(Vec::new());
        };
        let span = {
            let index = self.index();
            if first >= index.records() {
                return Ok(Vec::new());
            }
            index.span(first, max_records as u64)?
        };
        let positions = &span.positions;
        let Some(&start) = positions.first() else {
            return Ok(Vec::new());
        };
        let frame_end = |i: usize| positions.get(i + 1).copied().unwrap_or(span.end);
        let mut last = 0;
        if !at_least_one && frame_end(0) - start > max_bytes {
            return Ok(Vec::new());
        }
        while last + 1 < positions.len() && frame_end(last + 1) - start <= max_bytes {
            last += 1;
        }
        let end = frame_end(last);
        let mut buffer = vec![0u8; (end - start) as usize];
        self.file
            .read_exact_at(&mut buffer, start)
            .map_err(io_error("read segment", &self.path))?;
        let bytes = Bytes::from(buffer);
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            match decode_record(&bytes, at) {
                Decoded::Record { record, frame_len } => {
                    records.push(record);
                    at += frame_len;
                }
                Decoded::Incomplete | Decoded::Corrupt(_) => {
                    return Err(LogError::Corrupt {
                        path: self.path.clone(),
                        position: start + at as u64,
                        reason: "committed record failed to decode".to_owned(),
                    })
                }
            }
        }
        Ok(records)
    }
}

/// Scans the last segment — the one written to — into in-memory indexes.
/// A torn tail (a crash in the middle of a write) is truncated away; a bad
/// frame with intact frames after it is an error.
fn recover_last(
    path: &Path,
    base_offset: u64,
    committed_floor: u64,
    appends: &mut AppendIndex,
) -> LogResult<MemoryIndex> {
    let bytes = Bytes::from(fs::read(path).map_err(io_error("read segment", path))?);
    let mut index = MemoryIndex::default();
    let mut position = 0usize;
    // Why recovery stopped before the end of the file, if it did.
    let mut problem: Option<String> = None;
    // Where the last whole write ends: its records and its bytes.
    let (mut whole_records, mut whole_len) = (0usize, 0usize);
    let mut marks = Vec::new();
    while position < bytes.len() {
        match decode_record(&bytes, position) {
            Decoded::Record { record, frame_len } => {
                let continues = record.write_continues;
                let expected = base_offset + index.positions.len() as u64;
                if record.offset != expected {
                    problem = Some(format!(
                        "record has offset {}, expected {expected}",
                        record.offset
                    ));
                    break;
                }
                index.positions.push(position as u64);
                index.arrivals.push(record.arrival_ms);
                if let Some(mark) = record.ends_append {
                    marks.push((record.offset, record.arrival_ms, mark));
                }
                position += frame_len;
                if !continues {
                    (whole_records, whole_len) = (index.positions.len(), position);
                }
            }
            Decoded::Incomplete => {
                problem = Some("incomplete frame".to_owned());
                break;
            }
            Decoded::Corrupt(reason) => {
                problem = Some(reason);
                break;
            }
        }
    }
    if problem.is_none() && whole_len < position {
        // The file ends inside a write: its last record never reached
        // the disk, so none of it was acknowledged. Drop all of it —
        // a write lands whole or not at all (what makes an append's
        // key, on its last record, stand for the whole append).
        problem = Some("a write without its last record".to_owned());
    }
    // Where the scan stopped, for telling a torn tail from damage.
    let (stopped_at, expected) = (position, base_offset + index.positions.len() as u64);
    let floor = usize::try_from(committed_floor.saturating_sub(base_offset))
        .unwrap_or(usize::MAX)
        .min(index.positions.len());
    if whole_records < floor {
        whole_records = floor;
        whole_len = index
            .positions
            .get(floor)
            .map_or(stopped_at, |p| *p as usize);
    }
    if problem.is_some() && whole_len < position {
        index.positions.truncate(whole_records);
        index.arrivals.truncate(whole_records);
        position = whole_len;
    }
    let whole_end = base_offset + whole_records as u64;
    for (offset, arrival_ms, mark) in marks {
        if offset < whole_end {
            appends.note(offset, arrival_ms, mark);
        }
    }
    if let Some(reason) = problem {
        // Only a torn *tail* may be cut: a bad frame followed by a good
        // one is corruption of acknowledged data, not a crashed write.
        // That holds for a frame whose length runs past the end of the
        // file too — a damaged length field, with intact records after
        // it, must not pass for a torn write. (The checksum covers the
        // body the length selects, so a length changed to anything that
        // still fits the file fails it.) A copy found corrupt is
        // rebuilt from its peers (`rebuild.rs`), so a torn write taken
        // for damage costs a rebuild, never a record.
        let is_torn_tail = !valid_frame_after(&bytes, stopped_at + 1, expected);
        if !is_torn_tail {
            return Err(LogError::Corrupt {
                path: path.to_owned(),
                position: stopped_at as u64,
                reason,
            });
        }
        tracing::warn!(
            path = %path.display(),
            position,
            dropped_bytes = bytes.len() - position,
            %reason,
            "truncating torn tail of segment"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error("open segment for truncation", path))?;
        file.set_len(position as u64)
            .and_then(|()| file.sync_all())
            .map_err(io_error("truncate torn tail of", path))?;
    }
    index.committed_len = position as u64;
    Ok(index)
}

/// Scans a sealed segment frame by frame (never the whole file in memory)
/// into its indexes, which its caller then moves to the index file.
/// Any damage (a bad or incomplete frame, an offset out of order, a write
/// without its last record) is an error: a sealed segment was whole when
/// the next one began, so damage here is damage to acknowledged records.
fn recover_sealed(
    path: &Path,
    base_offset: u64,
    appends: &mut AppendIndex,
) -> LogResult<MemoryIndex> {
    let file = File::open(path).map_err(io_error("open sealed segment", path))?;
    let file_len = file
        .metadata()
        .map_err(io_error("read the length of", path))?
        .len();
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    let mut index = MemoryIndex::default();
    let corrupt = |position: u64, reason: String| LogError::Corrupt {
        path: path.to_owned(),
        position,
        reason,
    };
    let (mut position, mut continues) = (0u64, false);
    while position < file_len {
        let remaining = file_len - position;
        let mut header = [0u8; FRAME_HEADER_LEN];
        if remaining < FRAME_HEADER_LEN as u64 {
            return Err(corrupt(position, "incomplete frame".to_owned()));
        }
        reader
            .read_exact(&mut header)
            .map_err(io_error("read sealed segment", path))?;
        let body_len = u64::from(u32::from_le_bytes(
            header[0..4].try_into().expect("4 bytes"),
        ));
        // Bounded by the file: a damaged length never allocates more.
        if FRAME_HEADER_LEN as u64 + body_len > remaining {
            return Err(corrupt(position, "incomplete frame".to_owned()));
        }
        let mut frame = vec![0u8; FRAME_HEADER_LEN + body_len as usize];
        frame[..FRAME_HEADER_LEN].copy_from_slice(&header);
        reader
            .read_exact(&mut frame[FRAME_HEADER_LEN..])
            .map_err(io_error("read sealed segment", path))?;
        match decode_record(&Bytes::from(frame), 0) {
            Decoded::Record { record, frame_len } => {
                let expected = base_offset + index.positions.len() as u64;
                if record.offset != expected {
                    return Err(corrupt(
                        position,
                        format!("record has offset {}, expected {expected}", record.offset),
                    ));
                }
                index.positions.push(position);
                index.arrivals.push(record.arrival_ms);
                if let Some(mark) = record.ends_append {
                    // No torn tail to drop here: every mark counts.
                    appends.note(record.offset, record.arrival_ms, mark);
                }
                continues = record.write_continues;
                position += frame_len as u64;
            }
            Decoded::Incomplete => return Err(corrupt(position, "incomplete frame".to_owned())),
            Decoded::Corrupt(reason) => return Err(corrupt(position, reason)),
        }
    }
    if continues {
        return Err(corrupt(
            position,
            "a write without its last record".to_owned(),
        ));
    }
    index.committed_len = position;
    Ok(index)
}

/// How much of a sealed segment recovery reads at a time.
const SCAN_BUFFER_BYTES: usize = 256 * 1024;

/// Makes the frame at `position` (ending at `end`) in `file` the last of
/// its write: clears its *continues* bit, if set, and its checksum with it.
/// A truncation that cuts a write keeps its first records; without this,
/// recovery would take them for a torn write and drop them.
pub(crate) fn end_write_at(file: &File, path: &Path, position: u64, end: u64) -> LogResult<()> {
    let length = usize::try_from(end.saturating_sub(position)).unwrap_or(0);
    if length < FRAME_HEADER_LEN + BODY_FIXED_LEN {
        return Ok(());
    }
    let mut frame = vec![0u8; length];
    file.read_exact_at(&mut frame, position)
        .map_err(io_error("read the last kept frame of", path))?;
    // Only a sound frame is rewritten: never a valid checksum over damage.
    let body_len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if body_len != length - FRAME_HEADER_LEN || crc32fast::hash(&frame[FRAME_HEADER_LEN..]) != crc {
        return Err(LogError::Corrupt {
            path: path.to_owned(),
            position,
            reason: "the last record kept by a truncation does not check out".to_owned(),
        });
    }
    let key_at = FRAME_HEADER_LEN + 16;
    let key_field = u16::from_le_bytes([frame[key_at], frame[key_at + 1]]);
    if key_field & CONTINUES == 0 {
        return Ok(());
    }
    frame[key_at..key_at + 2].copy_from_slice(&(key_field & !CONTINUES).to_le_bytes());
    let crc = crc32fast::hash(&frame[FRAME_HEADER_LEN..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&frame[..FRAME_HEADER_LEN + BODY_FIXED_LEN], position)
        .map_err(io_error("end the write of the last kept frame of", path))
}
