//! The shard's recent append keys: which offsets each keyed append holds,
//! so an append sent again under its key (its first outcome unknown to the
//! frontend) is answered with where it landed instead of written twice.
//!
//! The keys live in the log itself — a keyed append's last record carries
//! its [`AppendMark`] — so this index is rebuilt on open, travels to
//! replicas with the records, and loses an append's key exactly when a
//! truncation loses the append. It remembers the newest
//! [`APPEND_KEYS_REMEMBERED`] appends: a frontend resolves an unknown
//! outcome within seconds, long before that many appends follow it.

use std::collections::{HashMap, VecDeque};

use crate::{AppendKey, AppendMark};

/// How many of a shard's newest keyed appends are remembered.
pub const APPEND_KEYS_REMEMBERED: usize = 16_384;

/// Where a keyed append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldAppend {
    pub first_offset: u64,
    /// How many records it wrote (the offsets from `first_offset` on).
    pub records: u32,
    pub arrival_ms: i64,
}

impl HeldAppend {
    /// The offset after its last record.
    pub fn end_offset(&self) -> u64 {
        self.first_offset + u64::from(self.records)
    }
}

#[derive(Default)]
pub(crate) struct AppendIndex {
    by_key: HashMap<AppendKey, HeldAppend>,
    /// Keys in log order, with their appends' ends.
    order: VecDeque<(AppendKey, u64)>,
    /// The newest arrival time of an append forgotten to keep the index
    /// small: a key not found may be one of those (see
    /// [`ShardLog::remembers_appends_since`](crate::ShardLog::remembers_appends_since)).
    forgotten_arrival_ms: Option<i64>,
}

impl AppendIndex {
    /// Notes the mark found on the record at `last_offset`. A mark that
    /// claims more records than the log holds below it is damage, and is
    /// not noted.
    pub(crate) fn note(&mut self, last_offset: u64, arrival_ms: i64, mark: AppendMark) {
        let end = last_offset + 1;
        let Some(first_offset) = end.checked_sub(u64::from(mark.records)) else {
            return;
        };
        let held = HeldAppend {
            first_offset,
            records: mark.records,
            arrival_ms,
        };
        self.by_key.insert(mark.key, held);
        self.order.push_back((mark.key, end));
        while self.order.len() > APPEND_KEYS_REMEMBERED {
            if let Some((key, end)) = self.order.pop_front() {
                if let Some(forgotten) = self.by_key.get(&key).filter(|h| h.end_offset() == end) {
                    self.forgotten_arrival_ms = Some(
                        self.forgotten_arrival_ms
                            .map_or(forgotten.arrival_ms, |t| t.max(forgotten.arrival_ms)),
                    );
                }
                self.remove_if_ends_at(key, end);
            }
        }
    }

    /// Whether every append that arrived at or after `since_ms` is still
    /// remembered.
    pub(crate) fn remembers_since(&self, since_ms: i64) -> bool {
        self.forgotten_arrival_ms.is_none_or(|t| t < since_ms)
    }

    pub(crate) fn find(&self, key: &AppendKey) -> Option<HeldAppend> {
        self.by_key.get(key).copied()
    }

    /// Forgets every append with a record at or after `offset` (they were
    /// truncated away).
    pub(crate) fn forget_from(&mut self, offset: u64) {
        while let Some(&(key, end)) = self.order.back() {
            if end <= offset {
                break;
            }
            self.order.pop_back();
            self.remove_if_ends_at(key, end);
        }
    }

    /// Forgets everything (the log restarted empty at its leader's
    /// horizon: what it held had expired).
    pub(crate) fn clear(&mut self) {
        self.by_key.clear();
        self.order.clear();
        self.forgotten_arrival_ms = None;
    }

    fn remove_if_ends_at(&mut self, key: AppendKey, end: u64) {
        if self.by_key.get(&key).is_some_and(|h| h.end_offset() == end) {
            self.by_key.remove(&key);
        }
    }
}
