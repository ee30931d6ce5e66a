//! A copy whose log was damaged on disk is rebuilt from its peers, never
//! silently shortened.
//!
//! Opening a log finds damage two ways: a corrupt record in the middle of
//! the log ([`LogError::Corrupt`]), or a log that ends below the commit
//! point it saved ([`LogError::LostCommitted`]: committed records vanished
//! — a disk that lied about an fsync, a flipped byte in the tail). Either
//! way the copy no longer holds what it once acknowledged. Truncating to
//! what survived would let it vote in a failover as if it still held those
//! records, and elect a copy that lacks them.
//!
//! Instead [`open_or_rebuild`] moves the damaged directory aside (kept for
//! an operator to inspect) and starts an empty log marked *rebuilding*
//! (a `rebuilding` file holding the end it must reach). The leader fills it
//! like any lagging replica. Until it holds everything up to the greater of
//! the commit point it had saved and the end of the leader's log at first
//! contact after the rebuild began — so every record it may once have
//! acknowledged, under this leader or before — the copy says so
//! ([`ShardLog::rebuilding_until`]): membership does not count its answer
//! in an election, and it does not lead. Then the marker goes and it is an
//! ordinary copy again.
//!
//! The limit: damage inside the last record of the log looks exactly like
//! a torn write and is truncated as one; a copy can tell it lost committed
//! records only below its saved commit point (or by corruption followed by
//! intact records).

use super::*;

const REBUILDING_FILE: &str = "rebuilding";

/// A copy being rebuilt from its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rebuilding {
    /// The copy holds everything it may have acknowledged once its log
    /// reaches this end.
    pub(crate) needed_end: u64,
    /// The newest epoch whose leader has spoken to this copy since it
    /// opened: the end of each newer leader's log at first contact is part
    /// of `needed_end` (a deposed leader may have spoken first).
    pub(crate) heard_epoch: u64,
}

/// What [`open_or_rebuild`] found.
pub enum Opened {
    /// The log was intact (or only its unacknowledged tail was torn).
    Intact(ShardLog),
    /// The log was damaged: it was moved to `damaged_to`, and `log` is an
    /// empty copy being rebuilt.
    Rebuilding {
        log: ShardLog,
        damaged_to: PathBuf,
        error: LogError,
    },
}

/// Opens the log in `dir` like [`ShardLog::open_from`]; if it is damaged,
/// moves it to `damaged_to` (a path on the same file system, outside the
/// directories scanned for logs) and starts a rebuilding copy in `dir`.
///
/// The swap never leaves `dir` empty and unmarked, which would let an
/// empty copy vote: the replacement — marker and the damaged copy's epoch
/// history (its fence against older leaders) — is made durable beside the
/// log first (`<dir>.rebuilt`), then the damaged log is moved aside and the
/// replacement moved in; an interrupted swap is finished on the next open.
pub fn open_or_rebuild(
    dir: &Path,
    damaged_to: &Path,
    config: LogConfig,
    start_offset: u64,
) -> LogResult<Opened> {
    let replacement = replacement_dir(dir);
    finish_interrupted_swap(dir, &replacement)?;
    let error = match ShardLog::open_from(dir, config.clone(), start_offset) {
        Ok(log) => return Ok(Opened::Intact(log)),
        Err(error @ (LogError::Corrupt { .. } | LogError::LostCommitted { .. })) => error,
        Err(error) => return Err(error),
    };
    // Unreadable files say nothing: the leader's end at first contact
    // still bounds what the copy must reach.
    let saved_commit = read_commit_point(dir).unwrap_or(0);
    let needed_end = read_rebuilding(dir)
        .unwrap_or(None)
        .map_or(saved_commit, |n| n.max(saved_commit));
    let history = EpochHistory::load(dir).unwrap_or_default();

    remove_dir_if_present(&replacement)?;
    fs::create_dir(&replacement).map_err(io_error("create directory", &replacement))?;
    history.store(&replacement)?;
    write_rebuilding(&replacement, needed_end)?;
    let damaged_parent = damaged_to.parent().unwrap_or(dir);
    fs::create_dir_all(damaged_parent).map_err(io_error("create directory", damaged_parent))?;
    for parent in [dir.parent(), damaged_parent.parent()]
        .into_iter()
        .flatten()
    {
        sync_dir(parent)?;
    }
    fs::rename(dir, damaged_to).map_err(io_error("move a damaged log aside", dir))?;
    fs::rename(&replacement, dir).map_err(io_error("move a rebuilding log in", dir))?;
    for parent in [dir.parent(), Some(damaged_parent)].into_iter().flatten() {
        sync_dir(parent)?;
    }
    let log = ShardLog::open_from(dir, config, start_offset)?;
    Ok(Opened::Rebuilding {
        log,
        damaged_to: damaged_to.to_owned(),
        error,
    })
}

/// Where a rebuilding copy is prepared before it replaces `dir` (a name the
/// worker's scan of segment directories ignores).
fn replacement_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".rebuilt");
    dir.with_file_name(name)
}

/// After a crash in the middle of [`open_or_rebuild`]'s swap: if the
/// damaged log is still in place, the prepared replacement is dropped (the
/// damage is found again); if it was already moved aside, the replacement
/// moves in.
fn finish_interrupted_swap(dir: &Path, replacement: &Path) -> LogResult<()> {
    if !replacement.exists() {
        return Ok(());
    }
    let holds_log = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "log"))
        })
        .unwrap_or(false);
    if holds_log {
        return remove_dir_if_present(replacement);
    }
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_error("remove an unfinished log directory", dir))?;
    }
    fs::rename(replacement, dir).map_err(io_error("move a rebuilding log in", dir))?;
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn remove_dir_if_present(dir: &Path) -> LogResult<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("remove directory", dir)(error)),
    }
}

fn sync_dir(dir: &Path) -> LogResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", dir))
}

impl ShardLog {
    /// While this copy is being rebuilt: the end its log must reach before
    /// it may vote or lead again.
    pub fn rebuilding_until(&self) -> Option<u64> {
        self.lock_writer().rebuilding.map(|r| r.needed_end)
    }

    /// A request from the leader of `epoch`, whose log ends at
    /// `leader_end`, reached this copy: while it is rebuilt, the first such
    /// request from each newer leader raises the end it must reach (what
    /// [`ShardLog::replicate`] does with the end of the batch itself, with
    /// the leader's whole log instead). A request from an older epoch than
    /// this copy knows counts for nothing (it is refused anyway).
    pub fn hear_leader(&self, epoch: u64, leader_end: u64) -> LogResult<()> {
        let mut writer = self.lock_writer();
        if writer.refuse_older_than_latest(epoch).is_err() {
            return Ok(());
        }
        self.note_leader(&mut writer, epoch, leader_end)
    }

    /// Refuses to lead while this copy is rebuilt.
    pub(super) fn refuse_leading_while_rebuilding(writer: &Writer) -> LogResult<()> {
        match writer.rebuilding {
            Some(rebuilding) => Err(LogError::Rebuilding {
                end: writer.next_offset,
                needed_end: rebuilding.needed_end,
            }),
            None => Ok(()),
        }
    }

    /// Called under the writer's lock by every request from a leader that
    /// this copy accepted: the first one from each newer epoch raises the
    /// end it must reach to that leader's end (`leader_end`); the marker
    /// goes once the log reaches it.
    pub(super) fn note_leader(
        &self,
        writer: &mut Writer,
        epoch: u64,
        leader_end: u64,
    ) -> LogResult<()> {
        let Some(mut rebuilding) = writer.rebuilding else {
            return Ok(());
        };
        if epoch > rebuilding.heard_epoch {
            rebuilding.heard_epoch = epoch;
            if leader_end > rebuilding.needed_end {
                rebuilding.needed_end = leader_end;
                write_rebuilding(&self.dir, leader_end)?;
            }
        }
        if writer.next_offset >= rebuilding.needed_end {
            remove_if_present(&self.dir.join(REBUILDING_FILE), "remove rebuilding marker")?;
            sync_dir(&self.dir)?;
            tracing::info!(dir = %self.dir.display(), end = writer.next_offset, "a rebuilt copy holds everything it once held");
            writer.rebuilding = None;
        } else {
            writer.rebuilding = Some(rebuilding);
        }
        Ok(())
    }
}

/// Creates the log directory `dir` (its parent must exist) as a copy to
/// rebuild from its peers before it votes or leads — one a replaced disk
/// lost. Prepared beside it and renamed into place, so a crash never leaves
/// it empty and unmarked. A directory that exists is left as it is.
pub fn create_rebuilding(dir: &Path) -> LogResult<()> {
    let replacement = replacement_dir(dir);
    finish_interrupted_swap(dir, &replacement)?;
    if dir.exists() {
        return Ok(());
    }
    remove_dir_if_present(&replacement)?;
    fs::create_dir(&replacement).map_err(io_error("create directory", &replacement))?;
    write_rebuilding(&replacement, 0)?;
    fs::rename(&replacement, dir).map_err(io_error("move a rebuilding log in", dir))?;
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// The rebuilding marker of the log in `dir`, if any.
pub(crate) fn read_rebuilding(dir: &Path) -> LogResult<Option<u64>> {
    let path = dir.join(REBUILDING_FILE);
    match fs::read_to_string(&path) {
        // An unreadable marker still marks the copy, until it holds the
        // end of the leader's log at first contact.
        Ok(text) => Ok(Some(text.trim().parse().unwrap_or(0))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error("read rebuilding marker", &path)(error)),
    }
}

fn write_rebuilding(dir: &Path, needed_end: u64) -> LogResult<()> {
    let path = dir.join(REBUILDING_FILE);
    let temporary = dir.join(format!("{REBUILDING_FILE}.new"));
    File::create(&temporary)
        .and_then(|mut file| {
            file.write_all(needed_end.to_string().as_bytes())?;
            file.sync_all()
        })
        .map_err(io_error("write", &temporary))?;
    fs::rename(&temporary, &path).map_err(io_error("replace", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync log directory", dir))
}
