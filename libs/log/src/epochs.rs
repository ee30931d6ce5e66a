//! The leader-epoch history of a shard log (Kafka's KIP-101 leader-epoch
//! cache, and the "term of an entry" of Raft).
//!
//! An entry `(epoch, start_offset)` says: records from `start_offset` up to
//! the next entry's start were written by the leader of `epoch`. A leader of
//! epoch E writes each offset at most once (see the storage worker's write
//! loop), so two copies whose histories agree below an offset hold the same
//! records below it. That is what lets a replica find, on first contact with
//! a new leader, exactly where its copy stops matching — and drop only what
//! the new leader never had.
//!
//! A leader adds its own entry `(E, end of its log)` *before* it writes or
//! replicates anything at E. A replica adopts the leader's whole history on
//! first contact. An entry whose start lies beyond a copy's end describes
//! records still to come; [`EpochHistory::last_epoch`] ignores it, so a copy
//! counts as "at epoch E" only once it holds everything E's leader held when
//! it took over (the role of Raft's no-op entry).
//!
//! On disk: `epochs` in the log directory, one `epoch start_offset` pair per
//! line, replaced atomically (write, fsync, rename, fsync directory).

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::{io_error, LogError, LogResult};

const FILE_NAME: &str = "epochs";

/// Where one leader's records begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: u64,
    pub start_offset: u64,
}

/// A shard log's epoch history: epochs strictly increase, starts never
/// decrease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    entries: Vec<EpochStart>,
}

impl EpochHistory {
    /// A history from entries another copy sent; refused unless ordered.
    pub fn from_entries(entries: Vec<EpochStart>) -> LogResult<EpochHistory> {
        let ordered = entries
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset <= w[1].start_offset);
        if !ordered {
            return Err(LogError::BadEpochHistory(format!("{entries:?}")));
        }
        Ok(EpochHistory { entries })
    }

    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    /// The newest epoch this copy has heard of (0 for none).
    pub fn latest_epoch(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.epoch)
    }

    /// The epoch that wrote the record at `offset` (0 before any entry).
    pub fn epoch_at(&self, offset: u64) -> u64 {
        let after = self.entries.partition_point(|e| e.start_offset <= offset);
        after.checked_sub(1).map_or(0, |i| self.entries[i].epoch)
    }

    /// The epoch a copy ending at `end` is current with: the newest entry
    /// that starts at or before `end`. Failover promotes the copy with the
    /// greatest `(last_epoch, end)`, as Raft elects by last term, then length.
    pub fn last_epoch(&self, end: u64) -> u64 {
        self.entries
            .iter()
            .rev()
            .find(|e| e.start_offset <= end)
            .map_or(0, |e| e.epoch)
    }

    /// The first offset of `held` (the offsets a copy stores) at which
    /// this copy's records and a copy with history `other` were written
    /// under different epochs (so may differ); `held.end` if there is none.
    /// Offsets below `held.start` are not compared: a copy whose oldest
    /// records expired, or that restarted at a leader's horizon, holds
    /// nothing there to differ.
    pub fn divergence(&self, other: &EpochHistory, held: std::ops::Range<u64>) -> u64 {
        let mut boundaries: Vec<u64> = self
            .entries
            .iter()
            .chain(&other.entries)
            .map(|e| e.start_offset)
            .filter(|b| *b > held.start)
            .chain(std::iter::once(held.start))
            .collect();
        boundaries.sort_unstable();
        boundaries.dedup();
        // Both epoch functions are constant between consecutive boundaries.
        boundaries
            .into_iter()
            .take_while(|b| *b < held.end)
            .find(|b| self.epoch_at(*b) != other.epoch_at(*b))
            .unwrap_or(held.end)
    }

    /// Starts `epoch` at `start_offset` (a new leader at its log's end).
    /// Entries starting beyond it are dropped first: a copy promoted before
    /// it caught up with an epoch it had adopted never held those records,
    /// and the history must stay ordered (Kafka truncates its leader-epoch
    /// cache the same way).
    pub(crate) fn begin(&mut self, epoch: u64, start_offset: u64) {
        self.entries.retain(|e| e.start_offset <= start_offset);
        debug_assert!(epoch > self.latest_epoch());
        self.entries.push(EpochStart {
            epoch,
            start_offset,
        });
    }

    pub(crate) fn load(dir: &Path) -> LogResult<EpochHistory> {
        let path = dir.join(FILE_NAME);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(EpochHistory::default())
            }
            Err(error) => return Err(io_error("read epoch history", &path)(error)),
        };
        EpochHistory::decode(&text).map_err(|reason| LogError::Corrupt {
            path: path.clone(),
            position: 0,
            reason,
        })
    }

    /// The history in the file's text form.
    pub(crate) fn decode(text: &str) -> Result<EpochHistory, String> {
        let mut entries = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut fields = line.split_whitespace().map(str::parse::<u64>);
            match (fields.next(), fields.next(), fields.next()) {
                (Some(Ok(epoch)), Some(Ok(start_offset)), None) => entries.push(EpochStart {
                    epoch,
                    start_offset,
                }),
                _ => return Err(format!("bad epoch history line {line:?}")),
            }
        }
        EpochHistory::from_entries(entries).map_err(|e| e.to_string())
    }

    /// The file's text form: `epoch start_offset` per line.
    pub(crate) fn encode(&self) -> String {
        self.entries
            .iter()
            .map(|entry| format!("{} {}\n", entry.epoch, entry.start_offset))
            .collect()
    }

    /// Replaces the file durably: a copy must never forget an epoch it
    /// answered a leader under.
    pub(crate) fn store(&self, dir: &Path) -> LogResult<()> {
        let path = dir.join(FILE_NAME);
        let temporary = dir.join(format!("{FILE_NAME}.new"));
        let text = self.encode();
        let mut file = File::create(&temporary).map_err(io_error("create", &temporary))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error("write", &temporary))?;
        fs::rename(&temporary, &path).map_err(io_error("replace", &path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("fsync log directory", dir))
    }
}

/// A history from `(epoch, start_offset)` pairs, for tests.
#[cfg(test)]
pub(crate) fn history(pairs: &[(u64, u64)]) -> EpochHistory {
    EpochHistory::from_entries(
        pairs
            .iter()
            .map(|&(epoch, start_offset)| EpochStart {
                epoch,
                start_offset,
            })
            .collect(),
    )
    .expect("ordered history")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_at_follows_the_entries() {
        let h = history(&[(1, 0), (3, 10), (4, 10), (6, 25)]);
        assert_eq!(h.epoch_at(0), 1);
        assert_eq!(h.epoch_at(9), 1);
        assert_eq!(h.epoch_at(10), 4, "epoch 3 wrote nothing");
        assert_eq!(h.epoch_at(1_000), 6);
        assert_eq!(EpochHistory::default().epoch_at(5), 0);
    }

    #[test]
    fn last_epoch_ignores_entries_beyond_the_copy() {
        let h = history(&[(1, 0), (2, 12)]);
        assert_eq!(h.last_epoch(5), 1, "still catching up to epoch 2's start");
        assert_eq!(
            h.last_epoch(12),
            2,
            "holds all epoch 2's leader started from"
        );
    }

    #[test]
    fn a_tail_from_a_deposed_leader_diverges_where_the_new_epoch_starts() {
        // The replica got records 10..15 from the epoch-1 leader that the
        // epoch-2 leader (which took over at 12) never saw.
        let replica = history(&[(1, 0)]);
        let leader = history(&[(1, 0), (2, 12)]);
        assert_eq!(replica.divergence(&leader, 0..15), 12);
        assert_eq!(replica.divergence(&leader, 0..11), 11, "nothing to drop");
    }

    #[test]
    fn copies_that_never_shared_an_epoch_diverge_at_its_start() {
        let replica = history(&[(1, 0), (2, 5)]);
        let leader = history(&[(1, 0), (3, 7)]);
        assert_eq!(replica.divergence(&leader, 0..9), 5);
        assert_eq!(history(&[(2, 0)]).divergence(&history(&[(3, 0)]), 0..4), 0);
    }

    #[test]
    fn offsets_a_copy_no_longer_holds_never_diverge() {
        // A copy restarted at the leader's horizon 20 knows nothing of the
        // epochs before it; only what it holds is compared.
        let restarted = history(&[]);
        let leader = history(&[(1, 0), (4, 8)]);
        assert_eq!(restarted.divergence(&leader, 20..20), 20);
        let copy = history(&[(1, 0), (2, 22)]);
        let leader = history(&[(1, 0), (3, 21)]);
        assert_eq!(copy.divergence(&leader, 20..30), 21);
        assert_eq!(copy.divergence(&leader, 25..30), 25);
    }

    #[test]
    fn a_leader_that_never_reached_an_adopted_epoch_drops_it() {
        // Adopted (2, 50) while ending at 30, then promoted at epoch 3.
        let mut h = history(&[(1, 0), (2, 50)]);
        h.begin(3, 30);
        assert_eq!(h, history(&[(1, 0), (3, 30)]));
        assert!(EpochHistory::from_entries(h.entries().to_vec()).is_ok());
    }

    #[test]
    fn an_unordered_history_is_refused() {
        assert!(EpochHistory::from_entries(vec![
            EpochStart {
                epoch: 2,
                start_offset: 0
            },
            EpochStart {
                epoch: 1,
                start_offset: 3
            },
        ])
        .is_err());
    }

    #[test]
    fn the_history_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let h = history(&[(1, 0), (4, 99)]);
        h.store(dir.path()).expect("store");
        assert_eq!(EpochHistory::load(dir.path()).expect("load"), h);
    }
}
