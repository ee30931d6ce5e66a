//! The log's tests, by what they protect: `writes` (appends, reads,
//! segments, retention), `recovery` (opening after a crash or damage),
//! `replication` (a replica's side of its leader's requests, restarts at
//! the leader's horizon), `rebuild` (damaged and replaced copies) and
//! `appends` (keyed appends found again).

mod appends;
mod rebuild;
mod recovery;
mod replication;
mod writes;

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::{LogConfig, NewRecord, ShardLog, StoredRecord};

pub(crate) use crate::epochs::history as epochs;

pub(crate) fn record(key: &str, data: &str) -> NewRecord {
    NewRecord::new(key, Bytes::copy_from_slice(data.as_bytes()))
}

pub(crate) fn small_segments() -> LogConfig {
    LogConfig {
        segment_max_bytes: 200,
        segment_max_age_ms: i64::MAX,
    }
}

pub(crate) fn read_all(log: &ShardLog) -> Vec<StoredRecord> {
    log.read(0, usize::MAX, u64::MAX).expect("read").records
}

pub(crate) fn last_segment(dir: &Path) -> PathBuf {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    paths.sort();
    paths.pop().expect("a segment")
}

pub(crate) fn data_of(log: &ShardLog) -> Vec<String> {
    log.read_uncommitted(0, 1_000, u64::MAX)
        .expect("read")
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect()
}

/// A log of 20 committed records in small segments, closed.
pub(crate) fn committed_log(dir: &Path) {
    let log = ShardLog::open(dir, small_segments()).expect("open");
    for i in 0..20 {
        log.append(&[record("k", &format!("{i:040}"))], i)
            .expect("append");
    }
}

/// A leader whose records up to `horizon` expired: it led epoch 1 from 0
/// and epoch 3 from 10.
pub(crate) fn trimmed_leader(dir: &Path) -> ShardLog {
    let log = ShardLog::open(dir, small_segments()).expect("open");
    log.begin_leading(1).expect("lead");
    for i in 0..10 {
        log.append_at(1, i, i as i64 * 1_000, &[record("k", &format!("{i:040}"))])
            .expect("append");
    }
    log.begin_leading(3).expect("lead");
    for i in 10..30 {
        log.append_at(3, i, i as i64 * 1_000, &[record("k", &format!("{i:040}"))])
            .expect("append");
    }
    log.commit(30);
    log.trim_older_than(15_000).expect("trim");
    assert!(log.trim_horizon() > 10, "epoch 1's records are gone");
    log
}
