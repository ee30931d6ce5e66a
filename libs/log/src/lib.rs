//! `freshet-log`: the storage engine behind one shard — an append-only,
//! checksummed, fsynced record log on local disk. No networking: the storage
//! worker wraps it with RPC, routing and replication.
//!
//! Layout: this file holds [`ShardLog`] and its write side (open and
//! recovery, appends, replication, epochs, truncation, the commit point);
//! `read.rs` its read side and retention; `segment.rs` one segment file;
//! `epochs.rs` the leader-epoch history; `appends.rs` the recent append
//! keys; `restart.rs` a lagging copy
//! restarting at its leader's horizon; `rebuild.rs` a damaged copy
//! rebuilt from its peers; `records.rs` and `error.rs` the
//! values and errors it takes and gives.
//!
//! # On disk
//! A shard is a directory of segment files named after the offset of their
//! first record (`00000000000000000000.log`). Each record is framed as
//!
//! ```text
//! u32 body_len | u32 crc32(body) | body = u64 offset | i64 arrival_ms | u16 key_len | [mark] | key | data
//! ```
//!
//! all little-endian. The last record of a keyed append (see `appends.rs`)
//! sets the top bit of `key_len` and carries its mark:
//! `u64 frontend | u64 call | u32 records`. Every record of one write but
//! its last sets the next bit (*continues*): recovery drops a write whose
//! last record is missing, so a write lands whole or not at all. Offsets are dense (0, 1, 2, ...) and arrival times never
//! decrease, which makes both indexes below a binary search.
//!
//! # Invariants
//! - A batch is acknowledged only after `write` + `fsync` of the whole batch
//!   (group commit: one fsync per batch, not per record).
//! - Readers only ever see records that were fsynced: the in-memory index is
//!   extended after the fsync, and reads go through the index.
//! - On open, the last segment is scanned; a torn or corrupt tail (a crash in
//!   the middle of a write) is truncated away, never served. Corruption in an
//!   earlier, sealed segment, a bad frame with intact frames after it, and a
//!   log ending below its saved commit point are errors: they would mean
//!   losing acknowledged records, so the log refuses to open rather than
//!   hide it, and [`open_or_rebuild`] moves it aside and rebuilds the copy
//!   from its peers.
//! - Retention removes whole sealed segments only.
//! - Replication (see the storage worker): every record is labelled with
//!   the leader epoch that wrote it through the [`EpochHistory`], and each
//!   write names its epoch; a write from an epoch older than the newest the
//!   log has seen is refused under the writer's lock — the fence that keeps a
//!   deposed leader's late request off the log.
//! - The commit point (what readers may see) is checkpointed to
//!   `commit-point` now and then ([`ShardLog::persist_commit_point`]). After a
//!   restart the log resumes from the checkpoint, which may lag the true
//!   commit point but never passes it: records above it stay invisible until
//!   the shard's leader commits them again, so a record that was never
//!   committed is never served, and a replica can still drop it.

mod appends;
mod commits;
mod epochs;
mod error;
mod index;
mod read;
mod rebuild;
mod records;
mod restart;
mod segment;

pub mod fuzzing;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use appends::{HeldAppend, APPEND_KEYS_REMEMBERED};
pub use epochs::{EpochHistory, EpochStart};
use error::io_error;
pub use error::{LogError, LogResult};
pub use rebuild::{create_rebuilding, open_or_rebuild, Opened};
pub use records::{
    batch_checksum, AppendKey, AppendMark, Appended, LogConfig, NewRecord, ReadBatch, StoredRecord,
};
use segment::Segment;

const COMMIT_POINT_FILE: &str = "commit-point";

/// The mutable end of the log: one writer at a time.
struct Writer {
    active: File,
    active_path: PathBuf,
    active_len: u64,
    active_first_arrival_ms: Option<i64>,
    next_offset: u64,
    last_arrival_ms: i64,
    /// No record is stamped earlier than this (see `raise_arrival_floor`).
    arrival_floor_ms: i64,
    poisoned: bool,
    /// Which leader epoch wrote which records (persisted on every change).
    epochs: EpochHistory,
    /// Set while this copy is rebuilt after damage (`rebuild.rs`).
    rebuilding: Option<rebuild::Rebuilding>,
    /// The recent keyed appends (`appends.rs`).
    appends: appends::AppendIndex,
}

impl Writer {
    /// The newest epoch this log has seen; an error if `epoch` is older —
    /// the fence against a deposed leader.
    fn refuse_older_than_latest(&self, epoch: u64) -> LogResult<u64> {
        let current = self.epochs.latest_epoch();
        if epoch < current {
            return Err(LogError::StaleEpoch {
                offered: epoch,
                current,
            });
        }
        Ok(current)
    }
}

/// What a replica did with a leader's `Replicate` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicated {
    /// Whether the batch is now in the log at the offset the leader chose.
    pub accepted: bool,
    /// Where this copy's log ends afterwards.
    pub next_offset: u64,
}

/// What readers see: sealed and active segments with their committed indexes.
struct View {
    segments: Vec<Arc<Segment>>,
    /// End of the durable records.
    next_offset: u64,
    /// End of the committed records (durable on enough copies): readers
    /// see offsets below it only. Never above `next_offset`.
    committed: u64,
}

/// One shard's durable record log.
pub struct ShardLog {
    dir: PathBuf,
    config: LogConfig,
    writer: Mutex<Writer>,
    view: RwLock<View>,
    /// A copy of the writer's epoch history, readable without waiting for
    /// a write (and its fsync) to finish.
    epochs_view: RwLock<EpochHistory>,
    /// The commit point last written to `commit-point`.
    persisted_commit: Mutex<u64>,
    /// Set by [`ShardLog::fail_next_sync`]: the next write's fsync fails.
    sync_fails_next: AtomicBool,
    /// The commit point, for readers that wait for it to move
    /// ([`ShardLog::watch_commits`]).
    commits: tokio::sync::watch::Sender<u64>,
}

impl ShardLog {
    /// Opens (or creates) the log in `dir`, recovering from a crash: the
    /// torn tail of the last segment, if any, is truncated.
    pub fn open(dir: &Path, config: LogConfig) -> LogResult<ShardLog> {
        ShardLog::open_from(dir, config, 0)
    }

    /// Like [`ShardLog::open`]; a log created here (empty) starts at
    /// `start_offset` — the next segment of a shard that moved to this
    /// worker holds no offset below it. An existing log keeps its offsets.
    pub fn open_from(dir: &Path, config: LogConfig, start_offset: u64) -> LogResult<ShardLog> {
        fs::create_dir_all(dir).map_err(io_error("create log directory", dir))?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error("list log directory", dir))? {
            let entry = entry.map_err(io_error("list log directory", dir))?;
            let name = entry.file_name();
            let Some(base) = name
                .to_str()
                .and_then(|name| name.strip_suffix(".log"))
                .and_then(|stem| stem.parse::<u64>().ok())
            else {
                continue;
            };
            bases.push(base);
        }
        bases.sort_unstable();

        let saved_commit = read_commit_point(dir)?;
        let mut segments = Vec::with_capacity(bases.len());
        let mut appends = appends::AppendIndex::default();
        let mut expected_offset = bases.first().copied().unwrap_or(0);
        for (index, base) in bases.iter().copied().enumerate() {
            let path = segment_path(dir, base);
            let is_last = index + 1 == bases.len();
            if base != expected_offset {
                return Err(LogError::Corrupt {
                    path,
                    position: 0,
                    reason: format!("segment starts at offset {base}, expected {expected_offset}"),
                });
            }
            let segment = Segment::recover(&path, base, is_last, saved_commit, &mut appends)?;
            expected_offset = segment.next_offset();
            segments.push(Arc::new(segment));
        }
        if segments.is_empty() {
            segments.push(Arc::new(Segment::create(dir, start_offset)?));
        }
        remove_stray_indexes(
            dir,
            bases.split_last().map_or(&[][..], |(_, sealed)| sealed),
        )?;

        let last = segments.last().expect("at least one segment").clone();
        let active_path = last.path().to_owned();
        let active = OpenOptions::new()
            .append(true)
            .open(&active_path)
            .map_err(io_error("open active segment", &active_path))?;
        let next_offset = last.next_offset();
        let last_arrival_ms = segments
            .iter()
            .rev()
            .find_map(|segment| segment.last_arrival_ms())
            .unwrap_or(i64::MIN);
        let writer = Writer {
            active,
            active_path,
            active_len: last.committed_len(),
            active_first_arrival_ms: last.first_arrival_ms(),
            next_offset,
            last_arrival_ms,
            arrival_floor_ms: i64::MIN,
            poisoned: false,
            epochs: EpochHistory::load(dir)?,
            rebuilding: rebuild::read_rebuilding(dir)?.map(|needed_end| rebuild::Rebuilding {
                needed_end,
                heard_epoch: 0,
            }),
            appends,
        };
        let epochs_view = RwLock::new(writer.epochs.clone());
        // The checkpoint never passes the true commit point, so resuming
        // from it can hide committed records for a while, never expose
        // uncommitted ones.
        // Nothing below the first stored offset is in this log to hide.
        let first_offset = segments.first().map_or(0, |s| s.base_offset());
        // Recovery never silently drops committed records: a log that ends
        // below its saved commit point lost some (`rebuild.rs`).
        if saved_commit > next_offset {
            return Err(LogError::LostCommitted {
                committed: saved_commit,
                end: next_offset,
            });
        }
        let committed = saved_commit.max(first_offset);
        Ok(ShardLog {
            dir: dir.to_owned(),
            config,
            writer: Mutex::new(writer),
            view: RwLock::new(View {
                segments,
                next_offset,
                committed,
            }),
            persisted_commit: Mutex::new(committed),
            sync_fails_next: AtomicBool::new(false),
            epochs_view,
            commits: tokio::sync::watch::Sender::new(committed),
        })
    }

    /// Appends a batch and returns once it is durable. All records of the
    /// batch get consecutive offsets and one arrival time, never earlier
    /// than any record already in the log.
    /// A lone copy: the batch is committed (and the commit point
    /// checkpointed) as soon as it is durable.
    pub fn append(&self, records: &[NewRecord], now_ms: i64) -> LogResult<Appended> {
        let appended = {
            let mut writer = self.lock_writer();
            self.write_batch(&mut writer, records, now_ms, None)?
        };
        self.commit(appended.first_offset + records.len() as u64);
        self.persist_commit_point()?;
        Ok(appended)
    }

    /// Appends a batch durably but keeps it invisible to readers until
    /// [`ShardLog::commit`] passes it.
    pub fn append_uncommitted(&self, records: &[NewRecord], now_ms: i64) -> LogResult<Appended> {
        let mut writer = self.lock_writer();
        self.write_batch(&mut writer, records, now_ms, None)
    }

    /// The leader's write: appends a batch, uncommitted, exactly at
    /// `first_offset` (chosen beforehand with [`ShardLog::next_position`] so
    /// replicas can write it at the same time), labelled with `epoch`.
    /// Refused unless `epoch` is the newest this log knows (see
    /// [`ShardLog::begin_leading`]) and the log ends at `first_offset`.
    pub fn append_at(
        &self,
        epoch: u64,
        first_offset: u64,
        arrival_ms: i64,
        records: &[NewRecord],
    ) -> LogResult<Appended> {
        let mut writer = self.lock_writer();
        ShardLog::refuse_leading_while_rebuilding(&writer)?;
        let current = writer.epochs.latest_epoch();
        if epoch != current {
            return Err(LogError::StaleEpoch {
                offered: epoch,
                current,
            });
        }
        self.write_batch(&mut writer, records, arrival_ms, Some(first_offset))
    }

    /// Makes this copy the writer of `epoch`: records appended from here on
    /// are labelled with it. Durable before it returns, so the entry is in
    /// place before any record of the epoch is written or replicated.
    pub fn begin_leading(&self, epoch: u64) -> LogResult<()> {
        let mut writer = self.lock_writer();
        ShardLog::refuse_leading_while_rebuilding(&writer)?;
        let current = writer.refuse_older_than_latest(epoch)?;
        if epoch > current {
            let mut epochs = writer.epochs.clone();
            epochs.begin(epoch, writer.next_offset);
            epochs.store(&self.dir)?;
            self.set_epochs(&mut writer, epochs);
        }
        Ok(())
    }

    /// A replica's side of a leader's `Replicate` request, all under the
    /// writer's lock so no other request interleaves:
    /// 1. a request from an epoch older than the newest this copy has seen
    ///    is refused ([`LogError::StaleEpoch`]) — the fence against a
    ///    deposed leader;
    /// 2. on first contact with a newer leader, the copy drops every record
    ///    from where its epoch history and the leader's part (records the
    ///    leader never had, so never acknowledged) and adopts the leader's
    ///    history;
    /// 3. from a leader this copy already follows, the history must be the
    ///    one it adopted over every offset it holds — the `prev_epoch`
    ///    check of Raft's AppendEntries, over the whole log: a leader at
    ///    the same epoch with another history (its disk was replaced) is
    ///    refused ([`LogError::Diverged`]);
    /// 4. the batch (if any) continues the log: records this copy already
    ///    holds at those offsets must be the same records (one record per
    ///    offset per epoch) and are kept — a different one is refused
    ///    ([`LogError::Diverged`]), never overwritten or acknowledged — the
    ///    rest appended. A log ending before `first_offset` answers
    ///    `accepted: false` with its end, and the leader sends what is
    ///    missing first.
    ///
    /// Committed records are never dropped ([`LogError::TruncatesCommitted`]).
    pub fn replicate(
        &self,
        epoch: u64,
        leader_epochs: &EpochHistory,
        first_offset: u64,
        arrival_ms: i64,
        records: &[NewRecord],
    ) -> LogResult<Replicated> {
        let mut writer = self.lock_writer();
        let current = writer.refuse_older_than_latest(epoch)?;
        if epoch > current {
            if leader_epochs.latest_epoch() != epoch {
                return Err(LogError::BadEpochHistory(format!(
                    "a leader at epoch {epoch} sent a history ending at epoch {}",
                    leader_epochs.latest_epoch()
                )));
            }
            let held = self.trim_horizon()..writer.next_offset;
            let diverges_at = writer.epochs.divergence(leader_epochs, held);
            self.truncate_locked(&mut writer, diverges_at)?;
            leader_epochs.store(&self.dir)?;
            self.set_epochs(&mut writer, leader_epochs.clone());
        } else {
            let held = self.trim_horizon()..writer.next_offset;
            let end = held.end;
            let diverges_at = writer.epochs.divergence(leader_epochs, held);
            if diverges_at < end {
                return Err(LogError::Diverged {
                    offset: diverges_at,
                    reason: format!(
                        "the leader of epoch {epoch} sent a history that differs from the one this copy adopted"
                    ),
                });
            }
        }
        let end = writer.next_offset;
        let leader_end = first_offset + records.len() as u64;
        if first_offset > end {
            self.note_leader(&mut writer, epoch, leader_end)?;
            return Ok(Replicated {
                accepted: false,
                next_offset: end,
            });
        }
        // Below `end` this copy already matches the leader (same epochs, so
        // the same records): keep it, and append only what is new. Never
        // truncate here — a delayed request must not cut records a later
        // one added.
        let already_held = usize::try_from(end - first_offset).unwrap_or(usize::MAX);
        self.refuse_different_records(first_offset, &records[..already_held.min(records.len())])?;
        if already_held < records.len() {
            self.write_batch(&mut writer, &records[already_held..], arrival_ms, Some(end))?;
        }
        self.note_leader(&mut writer, epoch, leader_end)?;
        Ok(Replicated {
            accepted: true,
            next_offset: writer.next_offset,
        })
    }

    /// Refuses `records`, meant for offsets from `first_offset` on that
    /// this copy already holds, unless it holds exactly those.
    fn refuse_different_records(&self, first_offset: u64, records: &[NewRecord]) -> LogResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let held = self.read_uncommitted(first_offset, records.len(), u64::MAX)?;
        // Offsets below the horizon have expired here: nothing to compare.
        for stored in &held.records {
            let Some(sent) = stored
                .offset
                .checked_sub(first_offset)
                .and_then(|i| records.get(usize::try_from(i).ok()?))
            else {
                continue;
            };
            if stored.partition_key != sent.partition_key
                || stored.data != sent.data
                || stored.ends_append != sent.ends_append
            {
                return Err(LogError::Diverged {
                    offset: stored.offset,
                    reason: "this copy holds a different record there from the same epoch"
                        .to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Where the keyed append `key` landed, if this copy holds it (durable,
    /// maybe not yet committed) and it is among the newest
    /// [`APPEND_KEYS_REMEMBERED`].
    pub fn find_append(&self, key: &AppendKey) -> Option<HeldAppend> {
        self.lock_writer().appends.find(key)
    }

    /// Whether every keyed append that arrived at or after `since_ms` is
    /// still remembered: if not, a key [`ShardLog::find_append`] does not
    /// find may be one it forgot, and a caller must not take it for absent.
    pub fn remembers_appends_since(&self, since_ms: i64) -> bool {
        self.lock_writer().appends.remembers_since(since_ms)
    }

    /// This copy's epoch history (a leader sends it with every batch).
    pub fn epoch_history(&self) -> EpochHistory {
        self.epochs_view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The newest epoch this copy has heard of.
    pub fn latest_epoch(&self) -> u64 {
        self.epochs_view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .latest_epoch()
    }

    fn set_epochs(&self, writer: &mut Writer, epochs: EpochHistory) {
        *self.epochs_view.write().unwrap_or_else(|p| p.into_inner()) = epochs.clone();
        writer.epochs = epochs;
    }

    /// How current this copy is, for choosing a new leader: the epoch it
    /// is current with and where it ends (see [`EpochHistory::last_epoch`]).
    pub fn election_position(&self) -> (u64, u64) {
        let writer = self.lock_writer();
        (
            writer.epochs.last_epoch(writer.next_offset),
            writer.next_offset,
        )
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the next batch appended at `now_ms` will land: its first offset
    /// and its arrival time (never earlier than the log's last).
    pub fn next_position(&self, now_ms: i64) -> (u64, i64) {
        let writer = self.lock_writer();
        (writer.next_offset, now_ms.max(writer.last_arrival_ms))
    }

    /// Arrival time of the newest record — or, in a log that holds none
    /// yet, the arrival floor it continues from — if either is known.
    pub fn last_arrival_ms(&self) -> Option<i64> {
        Some(self.lock_writer().last_arrival_ms).filter(|ms| *ms != i64::MIN)
    }

    /// Records appended from now on arrive no earlier than `floor_ms` (a
    /// shard's next segment continues its previous one's arrival times,
    /// whatever the new leader's clock says).
    pub fn raise_arrival_floor(&self, floor_ms: i64) {
        let mut writer = self.lock_writer();
        writer.arrival_floor_ms = writer.arrival_floor_ms.max(floor_ms);
        writer.last_arrival_ms = writer.last_arrival_ms.max(floor_ms);
    }

    /// Removes every record at or after `offset`: a replica dropping a tail
    /// its new leader never had (those records were never acknowledged, or
    /// the leader would hold them). Committed records are never removed.
    pub fn truncate_to(&self, offset: u64) -> LogResult<()> {
        let mut writer = self.lock_writer();
        self.truncate_locked(&mut writer, offset)
    }

    fn truncate_locked(&self, writer: &mut Writer, offset: u64) -> LogResult<()> {
        if offset >= writer.next_offset {
            return Ok(());
        }
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        let horizon = view.segments.first().map_or(0, |s| s.base_offset());
        if offset < view.committed || offset < horizon {
            return Err(LogError::TruncatesCommitted {
                offset,
                committed: view.committed.max(horizon),
            });
        }
        let keep = view
            .segments
            .iter()
            .rposition(|segment| segment.base_offset() <= offset)
            .unwrap_or(0);
        // Before anything is removed: the kept segment, sealed or not,
        // becomes the one written to, with its indexes in memory.
        let kept = view.segments[keep].clone();
        kept.unseal()?;
        index::remove_index_file(kept.path());
        let dropped: Vec<Arc<Segment>> = view.segments.drain(keep + 1..).collect();
        for segment in &dropped {
            segment.remove_files("remove truncated segment")?;
        }
        let segment = view.segments[keep].clone();
        let length = segment.truncate_index(offset)?;
        let path = segment.path().to_owned();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error("open segment for truncation", &path))?;
        // The cut may fall inside a write: its first records, kept, must
        // not look torn to the next recovery. The last kept record becomes
        // the end of its write durably *before* the file is cut: a crash
        // in between leaves two whole writes (the replica truncates again
        // when its leader next calls), never kept records without an end.
        if let Some(last) = segment.last_frame_position()? {
            segment::end_write_at(&file, &path, last, length)?;
            file.sync_data()
                .map_err(io_error("end the write of the last kept record of", &path))?;
        }
        file.set_len(length)
            .and_then(|()| file.sync_all())
            .map_err(io_error("truncate", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("fsync log directory", &self.dir))?;
        writer.active = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error("reopen active segment", &path))?;
        writer.active_path = path;
        writer.active_len = length;
        writer.active_first_arrival_ms = segment.first_arrival_ms();
        writer.next_offset = offset;
        writer.appends.forget_from(offset);
        writer.last_arrival_ms = view
            .segments
            .iter()
            .rev()
            .find_map(|segment| segment.last_arrival_ms())
            .unwrap_or(i64::MIN)
            .max(writer.arrival_floor_ms);
        view.next_offset = offset;
        Ok(())
    }

    /// Makes the next write's fsync fail, as a failing disk's would: the
    /// write is rolled back and reported as an I/O error. For the
    /// deterministic simulator (`tests/sim`), which injects disk faults
    /// into real logs; nothing else calls it.
    #[doc(hidden)]
    pub fn fail_next_sync(&self) {
        self.sync_fails_next.store(true, Ordering::Relaxed);
    }

    fn write_batch(
        &self,
        writer: &mut Writer,
        records: &[NewRecord],
        now_ms: i64,
        expected_first: Option<u64>,
    ) -> LogResult<Appended> {
        if writer.poisoned {
            return Err(LogError::Poisoned);
        }
        if let Some(offered) = expected_first {
            if offered != writer.next_offset {
                return Err(LogError::OffsetMismatch {
                    offered,
                    expected: writer.next_offset,
                });
            }
        }
        let arrival_ms = now_ms.max(writer.last_arrival_ms);
        if self.active_segment_is_full(writer, arrival_ms) {
            self.roll_segment(writer)?;
        }

        let first_offset = writer.next_offset;
        let mut buffer = Vec::with_capacity(
            records
                .iter()
                .map(|r| {
                    segment::frame_overhead(r.ends_append) + r.partition_key.len() + r.data.len()
                })
                .sum(),
        );
        let mut positions = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            positions.push(writer.active_len + buffer.len() as u64);
            let continues = index + 1 < records.len();
            segment::encode_record(
                &mut buffer,
                first_offset + index as u64,
                arrival_ms,
                record,
                continues,
            )?;
        }

        let write_result = writer.active.write_all(&buffer).and_then(|()| {
            if self.sync_fails_next.load(Ordering::Relaxed)
                && self.sync_fails_next.swap(false, Ordering::Relaxed)
            {
                return Err(io::Error::other("fsync failed (injected)"));
            }
            writer.active.sync_data()
        });
        if let Err(source) = write_result {
            // Roll back whatever part of the batch reached the file, so the
            // next append does not land after garbage.
            // The truncation must itself be durable: otherwise a crash could
            // resurrect the partial frames in a segment that is later sealed.
            let active_len = writer.active_len;
            let rollback = writer
                .active
                .set_len(active_len)
                .and_then(|()| writer.active.sync_all());
            if rollback.is_err() {
                writer.poisoned = true;
            }
            return Err(LogError::Io {
                action: "write and fsync",
                path: writer.active_path.clone(),
                source,
            });
        }

        writer.active_len += buffer.len() as u64;
        writer.next_offset += records.len() as u64;
        writer.last_arrival_ms = arrival_ms;
        writer.active_first_arrival_ms.get_or_insert(arrival_ms);
        for (index, record) in records.iter().enumerate() {
            if let Some(mark) = record.ends_append {
                writer
                    .appends
                    .note(first_offset + index as u64, arrival_ms, mark);
            }
        }

        // Only now, after the fsync, do readers get to see the records.
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        let active = view.segments.last().expect("at least one segment").clone();
        active.publish(&positions, arrival_ms, writer.active_len);
        view.next_offset = writer.next_offset;
        Ok(Appended {
            first_offset,
            arrival_ms,
        })
    }

    fn active_segment_is_full(&self, writer: &Writer, arrival_ms: i64) -> bool {
        if writer.active_len == 0 {
            return false;
        }
        writer.active_len >= self.config.segment_max_bytes
            || writer
                .active_first_arrival_ms
                .is_some_and(|first| arrival_ms - first >= self.config.segment_max_age_ms)
    }

    fn roll_segment(&self, writer: &mut Writer) -> LogResult<()> {
        let segment = Segment::create(&self.dir, writer.next_offset)?;
        let path = segment.path().to_owned();
        let active = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error("open new segment", &path))?;
        writer.active = active;
        writer.active_path = path;
        writer.active_len = 0;
        writer.active_first_arrival_ms = None;
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        let sealed = view.segments.last().cloned();
        view.segments.push(Arc::new(segment));
        drop(view);
        // The segment just finished keeps its indexes on disk from now on.
        if let Some(sealed) = sealed {
            if let Err(error) = sealed.seal() {
                tracing::warn!(%error, "a sealed segment's indexes stay in memory");
            }
        }
        Ok(())
    }

    /// The offset the next appended record will get.
    pub fn next_offset(&self) -> u64 {
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .next_offset
    }
}

/// Creates `dir` (under `root`, which must exist) and fsyncs every directory
/// from `dir`'s parent up to `root`, so the new directory entries survive a
/// crash along with the first records written into them.
pub fn create_dir_durably(root: &Path, dir: &Path) -> LogResult<()> {
    if dir.exists() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_error("create log directory", dir))?;
    let mut current = dir.parent();
    while let Some(parent) = current {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_error("fsync directory", parent))?;
        if parent == root || !parent.starts_with(root) {
            break;
        }
        current = parent.parent();
    }
    Ok(())
}

/// The checkpointed commit point; 0 if there is none or it cannot be read
/// (a lower commit point is always safe).
fn read_commit_point(dir: &Path) -> LogResult<u64> {
    let path = dir.join(COMMIT_POINT_FILE);
    match fs::read_to_string(&path) {
        // An unreadable checkpoint hides how much was committed: the copy
        // cannot tell whether it lost committed records, so it is damaged.
        Ok(text) => text.trim().parse().map_err(|_| LogError::Corrupt {
            path: path.clone(),
            position: 0,
            reason: format!("unreadable commit point {:?}", text.trim()),
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(io_error("read commit point", &path)(error)),
    }
}

fn segment_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

/// Removes index files that belong to no sealed segment (`sealed` holds
/// their base offsets): a crash between removing a segment and its index,
/// or between a truncation reopening a sealed segment and removing its
/// index, leaves one behind. Those of sealed segments were just rewritten.
fn remove_stray_indexes(dir: &Path, sealed: &[u64]) -> LogResult<()> {
    for entry in fs::read_dir(dir).map_err(io_error("list log directory", dir))? {
        let path = entry.map_err(io_error("list log directory", dir))?.path();
        let base = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".index"))
            .and_then(|stem| stem.parse::<u64>().ok());
        if base.is_some_and(|base| sealed.binary_search(&base).is_err()) {
            remove_if_present(&path, "remove a stray index file")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// Removes `path`; one that is already gone (retention or an interrupted removal got there first)
/// is not an error.
pub(crate) fn remove_if_present(path: &Path, action: &'static str) -> LogResult<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(action, path)(error)),
    }
}
