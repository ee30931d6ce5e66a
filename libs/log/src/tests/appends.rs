//! Keyed appends: a log finds an append again by its key — after a
//! restart, on a replica, never after the append was truncated away — and
//! a frame carrying a key reads back like any other record.

use tempfile::tempdir;

use super::{epochs, record, small_segments};
use crate::{AppendKey, AppendMark, HeldAppend, NewRecord, ShardLog, APPEND_KEYS_REMEMBERED};

fn key(call: u64) -> AppendKey {
    AppendKey {
        frontend: 0xfeed,
        call,
    }
}

/// `count` records of one keyed append: the last carries the mark.
fn keyed(call: u64, count: u32) -> Vec<NewRecord> {
    let mut records: Vec<NewRecord> = (0..count)
        .map(|i| record("k", &format!("call {call} record {i}")))
        .collect();
    if let Some(last) = records.last_mut() {
        last.ends_append = Some(AppendMark {
            key: key(call),
            records: count,
        });
    }
    records
}

#[test]
fn a_keyed_append_is_found_again_after_a_restart() {
    let dir = tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    log.append(&[record("k", "unkeyed")], 5).expect("append");
    log.append(&keyed(1, 3), 7).expect("append");
    log.append(&keyed(2, 1), 9).expect("append");
    let first = HeldAppend {
        first_offset: 1,
        records: 3,
        arrival_ms: 7,
    };
    assert_eq!(log.find_append(&key(1)), Some(first));
    assert_eq!(log.find_append(&key(3)), None);
    // The mark is part of the record: it reads back, and the data is intact.
    let records = super::read_all(&log);
    assert_eq!(records[3].ends_append.map(|m| m.key), Some(key(1)));
    assert_eq!(&records[3].data[..], b"call 1 record 2");
    assert_eq!(records[2].ends_append, None);

    drop(log);
    let log = ShardLog::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(log.find_append(&key(1)), Some(first));
    assert_eq!(log.find_append(&key(2)).map(|h| h.first_offset), Some(4));
}

#[test]
fn a_truncated_append_is_forgotten_and_its_key_can_be_written_again() {
    let dir = tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    log.replicate(1, &epochs(&[(1, 0)]), 0, 1, &keyed(1, 2))
        .expect("replicate");
    log.replicate(1, &epochs(&[(1, 0)]), 2, 1, &keyed(2, 2))
        .expect("replicate");
    assert!(
        log.find_append(&key(2)).is_some(),
        "a replica keeps keys too"
    );
    // A new leader never had the second append: it is dropped, key and all
    // (its first record is enough to lose it).
    log.replicate(2, &epochs(&[(1, 0), (2, 3)]), 3, 1, &[])
        .expect("replicate");
    assert!(log.find_append(&key(1)).is_some());
    assert_eq!(log.find_append(&key(2)), None);
    drop(log);
    let log = ShardLog::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(log.find_append(&key(2)), None, "gone from disk too");
}

#[test]
fn a_replica_refuses_a_record_it_holds_with_another_mark() {
    let dir = tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    let history = epochs(&[(1, 0)]);
    log.replicate(1, &history, 0, 1, &keyed(1, 2))
        .expect("replicate");
    let mut other = keyed(1, 2);
    other[1].ends_append = Some(AppendMark {
        key: key(9),
        records: 2,
    });
    let refused = log.replicate(1, &history, 0, 1, &other);
    assert!(
        matches!(refused, Err(crate::LogError::Diverged { offset: 1, .. })),
        "{refused:?}"
    );
    // The same batch again is kept as it is.
    let again = log.replicate(1, &history, 0, 1, &keyed(1, 2));
    assert!(again.is_ok_and(|r| r.accepted));
}

#[test]
fn only_the_newest_keys_are_remembered() {
    let dir = tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), crate::LogConfig::default()).expect("open");
    let appends = APPEND_KEYS_REMEMBERED as u64 + 10;
    for call in 0..appends {
        log.append(&keyed(call, 1), 0).expect("append");
    }
    assert_eq!(log.find_append(&key(9)), None, "the oldest are forgotten");
    assert!(log.find_append(&key(10)).is_some());
    assert!(log.find_append(&key(appends - 1)).is_some());
    // ... and the log says so: a key not found may be a forgotten one.
    assert!(!log.remembers_appends_since(0));
    assert!(log.remembers_appends_since(1));
    drop(log);
    let log = ShardLog::open(dir.path(), crate::LogConfig::default()).expect("reopen");
    assert_eq!(log.find_append(&key(9)), None);
    assert!(log.find_append(&key(10)).is_some());
}
