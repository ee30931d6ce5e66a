use std::fs::OpenOptions;
use std::io::Write;

use super::*;
use bytes::Bytes;

fn record(key: &str, data: &str) -> NewRecord {
    NewRecord {
        partition_key: key.to_owned(),
        data: Bytes::copy_from_slice(data.as_bytes()),
    }
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_max_bytes: 200,
        segment_max_age_ms: i64::MAX,
    }
}

fn read_all(log: &ShardLog) -> Vec<StoredRecord> {
    log.read(0, usize::MAX, u64::MAX).expect("read").records
}

#[test]
fn appended_records_read_back_in_order_with_dense_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    let first = log
        .append(&[record("a", "1"), record("b", "2")], 1_000)
        .expect("append");
    let second = log.append(&[record("c", "3")], 2_000).expect("append");
    assert_eq!(first.first_offset, 0);
    assert_eq!(second.first_offset, 2);
    let records = read_all(&log);
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.offset,
                r.partition_key.as_str(),
                &r.data[..],
                r.arrival_ms,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, "a", &b"1"[..], 1_000),
            (1, "b", &b"2"[..], 1_000),
            (2, "c", &b"3"[..], 2_000)
        ]
    );
    assert_eq!(log.next_offset(), 3);
}

#[test]
fn arrival_times_never_go_backwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    log.append(&[record("a", "1")], 5_000).expect("append");
    let late = log.append(&[record("a", "2")], 4_000).expect("append");
    assert_eq!(late.arrival_ms, 5_000);
}

#[test]
fn reopening_recovers_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = ShardLog::open(dir.path(), small_segments()).expect("open");
        for i in 0..50 {
            log.append(&[record("k", &format!("value-{i}"))], i)
                .expect("append");
        }
    }
    let log = ShardLog::open(dir.path(), small_segments()).expect("reopen");
    let records = read_all(&log);
    assert_eq!(records.len(), 50);
    assert_eq!(records[49].data, Bytes::from("value-49"));
    let next = log
        .append(&[record("k", "after")], 100)
        .expect("append after reopen");
    assert_eq!(next.first_offset, 50);
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    paths.sort();
    paths.pop().expect("a segment")
}

#[test]
fn a_torn_tail_is_truncated_not_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
        log.append(&[record("a", "kept-1"), record("b", "kept-2")], 1)
            .expect("append");
    }
    let segment = last_segment(dir.path());
    let intact_len = fs::metadata(&segment).expect("stat").len();
    // A crash halfway through the next frame: a header announcing 100 bytes
    // of body, followed by only a few of them.
    let mut file = OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open");
    file.write_all(&100u32.to_le_bytes()).expect("write");
    file.write_all(&[1, 2, 3, 4, 5, 6, 7]).expect("write");
    drop(file);

    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("reopen");
    assert_eq!(read_all(&log).len(), 2);
    assert_eq!(fs::metadata(&segment).expect("stat").len(), intact_len);
    let next = log.append(&[record("c", "new")], 2).expect("append");
    assert_eq!(next.first_offset, 2);
    assert_eq!(read_all(&log)[2].data, Bytes::from("new"));
}

#[test]
fn an_uncommitted_tail_with_a_bad_checksum_is_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
        log.append(&[record("a", "good")], 1).expect("append");
        log.append_uncommitted(&[record("b", "flipped")], 2)
            .expect("append");
    }
    let segment = last_segment(dir.path());
    let mut bytes = fs::read(&segment).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&segment, &bytes).expect("write");

    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("reopen");
    let records = read_all(&log);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].data, Bytes::from("good"));
}

#[test]
fn corruption_in_a_sealed_segment_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = ShardLog::open(dir.path(), small_segments()).expect("open");
        for i in 0..20 {
            log.append(
                &[record("k", "0123456789012345678901234567890123456789")],
                i,
            )
            .expect("append");
        }
    }
    let mut paths: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("e").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    paths.sort();
    assert!(paths.len() > 2, "expected several segments");
    let mut bytes = fs::read(&paths[0]).expect("read");
    bytes[12] ^= 0xff;
    fs::write(&paths[0], &bytes).expect("write");
    assert!(matches!(
        ShardLog::open(dir.path(), small_segments()),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn reads_respect_record_and_byte_limits_but_return_at_least_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    for i in 0..30 {
        log.append(&[record("k", &format!("{i:040}"))], i)
            .expect("append");
    }
    let batch = log.read(5, 10, u64::MAX).expect("read");
    assert_eq!(batch.records.len(), 10);
    assert_eq!(batch.records[0].offset, 5);
    assert_eq!(batch.next_offset, 15);
    let tiny = log.read(0, 100, 1).expect("read");
    assert_eq!(tiny.records.len(), 1);
    let across_segments = log.read(0, 100, u64::MAX).expect("read");
    assert_eq!(across_segments.records.len(), 30);
    assert_eq!(across_segments.latest_arrival_ms, Some(29));
}

#[test]
fn timestamps_find_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    for i in 0..20 {
        log.append(&[record("k", "0123456789")], i * 10)
            .expect("append");
    }
    assert_eq!(log.offset_at_timestamp(0), 0);
    assert_eq!(log.offset_at_timestamp(55), 6);
    assert_eq!(log.offset_at_timestamp(60), 6);
    assert_eq!(log.offset_at_timestamp(10_000), 20);
}

#[test]
fn retention_removes_only_old_sealed_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    for i in 0..30 {
        log.append(&[record("k", &format!("{i:040}"))], i * 1_000)
            .expect("append");
    }
    let removed = log.trim_older_than(10_000).expect("trim");
    assert!(removed > 0);
    let horizon = log.trim_horizon();
    assert!(horizon > 0 && horizon <= 10);
    let records = read_all(&log);
    assert_eq!(records[0].offset, horizon);
    assert_eq!(records.last().map(|r| r.offset), Some(29));
    // Everything is old now, but the active segment stays.
    log.trim_older_than(i64::MAX).expect("trim");
    assert!(!log.read(0, 100, u64::MAX).expect("read").records.is_empty());
}

#[test]
fn a_bad_frame_followed_by_good_ones_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
        for i in 0..5 {
            log.append(&[record("k", &format!("acknowledged-{i}"))], i)
                .expect("append");
        }
    }
    let segment = last_segment(dir.path());
    let mut bytes = fs::read(&segment).expect("read");
    // Flip a byte inside the second record's body.
    let second_record_body = 8 + 18 + 1 + "acknowledged-0".len() + 8 + 20;
    bytes[second_record_body] ^= 0xff;
    fs::write(&segment, &bytes).expect("write");
    assert!(matches!(
        ShardLog::open(dir.path(), LogConfig::default()),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn a_byte_limited_read_does_not_skip_into_the_next_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    for i in 0..30 {
        log.append(&[record("k", &format!("{i:040}"))], i)
            .expect("append");
    }
    // Budgets that run out inside a segment, at every size.
    for budget in 1..400 {
        let batch = log.read(0, 100, budget).expect("read");
        let offsets: Vec<u64> = batch.records.iter().map(|r| r.offset).collect();
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, expected, "budget {budget}");
        assert_eq!(batch.next_offset, offsets.len() as u64);
    }
}

#[test]
fn uncommitted_records_are_durable_but_unread_until_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    log.append(&[record("a", "committed")], 1).expect("append");
    let pending = log
        .append_uncommitted(&[record("b", "pending")], 2)
        .expect("append");
    assert_eq!(pending.first_offset, 1);
    assert_eq!(
        read_all(&log).len(),
        1,
        "a pending record must not be served"
    );
    assert_eq!(
        log.read_uncommitted(0, 10, u64::MAX)
            .expect("read")
            .records
            .len(),
        2
    );
    assert_eq!((log.committed_offset(), log.next_offset()), (1, 2));
    log.commit(2);
    assert_eq!(read_all(&log).len(), 2);
    // Commit never runs ahead of what is durable.
    log.commit(99);
    assert_eq!(log.committed_offset(), 2);
}

use crate::epochs::history as epochs;

fn data_of(log: &ShardLog) -> Vec<String> {
    log.read_uncommitted(0, 1_000, u64::MAX)
        .expect("read")
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect()
}

#[test]
fn a_replica_appends_only_where_its_log_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    let leader = epochs(&[(1, 0)]);
    let two = [record("a", "0"), record("a", "1")];
    let done = log.replicate(1, &leader, 0, 10, &two).expect("replicate");
    assert_eq!((done.accepted, done.next_offset), (true, 2));
    let gap = log
        .replicate(1, &leader, 5, 11, &[record("a", "5")])
        .expect("replicate");
    assert_eq!(
        (gap.accepted, gap.next_offset),
        (false, 2),
        "a gap is refused with where the log ends"
    );
    let next = log
        .replicate(1, &leader, 2, 12, &[record("a", "2")])
        .expect("replicate");
    assert_eq!((next.accepted, next.next_offset), (true, 3));
    assert_eq!(data_of(&log), ["0", "1", "2"]);
}

#[test]
fn a_write_from_an_older_epoch_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    log.replicate(2, &epochs(&[(2, 0)]), 0, 1, &[record("a", "new leader")])
        .expect("replicate");
    let late = log.replicate(1, &epochs(&[(1, 0)]), 1, 1, &[record("a", "deposed")]);
    assert!(matches!(
        late,
        Err(LogError::StaleEpoch {
            offered: 1,
            current: 2
        })
    ));
    assert!(matches!(
        log.append_at(1, 1, 1, &[record("a", "deposed")]),
        Err(LogError::StaleEpoch { .. })
    ));
    assert_eq!(data_of(&log), ["new leader"]);
    // The fence survives a restart.
    drop(log);
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("reopen");
    assert_eq!(log.latest_epoch(), 2);
}

#[test]
fn a_new_leader_makes_a_replica_drop_only_the_tail_it_never_had() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    let old = epochs(&[(1, 0)]);
    let batch: Vec<NewRecord> = (0..5).map(|i| record("k", &format!("e1-{i}"))).collect();
    log.replicate(1, &old, 0, 1, &batch).expect("replicate");
    log.commit(2);
    // The epoch-2 leader took over holding records 0..3 of epoch 1.
    let new = epochs(&[(1, 0), (2, 3)]);
    let first = log
        .replicate(2, &new, 3, 2, &[record("k", "e2-3")])
        .expect("replicate");
    assert_eq!((first.accepted, first.next_offset), (true, 4));
    assert_eq!(data_of(&log), ["e1-0", "e1-1", "e1-2", "e2-3"]);
    assert_eq!(log.election_position(), (2, 4));
}

#[test]
fn a_divergence_below_the_commit_point_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    let batch: Vec<NewRecord> = (0..4).map(|i| record("k", &format!("{i}"))).collect();
    log.replicate(1, &epochs(&[(1, 0)]), 0, 1, &batch)
        .expect("replicate");
    log.commit(4);
    let bad = log.replicate(2, &epochs(&[(1, 0), (2, 2)]), 2, 1, &[]);
    assert!(matches!(bad, Err(LogError::TruncatesCommitted { .. })));
    assert_eq!(log.next_offset(), 4);
}

#[test]
fn a_copy_is_current_with_a_new_epoch_only_once_it_holds_the_leaders_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    log.replicate(1, &epochs(&[(1, 0)]), 0, 1, &[record("k", "0")])
        .expect("replicate");
    // First contact from a leader that took over at offset 3: the copy
    // adopts its history but still lacks records 1..3.
    let probe = log
        .replicate(2, &epochs(&[(1, 0), (2, 3)]), 3, 0, &[])
        .expect("probe");
    assert_eq!(probe.next_offset, 1);
    assert_eq!(log.election_position(), (1, 1));
}

#[test]
fn a_leader_labels_its_writes_with_its_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    assert!(matches!(
        log.append_at(3, 0, 1, &[record("k", "too early")]),
        Err(LogError::StaleEpoch { .. })
    ));
    log.begin_leading(3).expect("lead");
    log.append_at(3, 0, 1, &[record("k", "0")]).expect("append");
    log.begin_leading(5).expect("lead again");
    assert_eq!(log.epoch_history(), epochs(&[(3, 0), (5, 1)]));
    assert!(log.begin_leading(4).is_err(), "epochs never go back");
}

#[test]
fn after_a_restart_only_the_checkpointed_commit_point_is_visible() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
        log.append_uncommitted(&[record("k", "0"), record("k", "1")], 1)
            .expect("append");
        log.commit(1);
        assert!(log.persist_commit_point().expect("persist"));
        assert!(!log.persist_commit_point().expect("persist"), "unchanged");
        log.append_uncommitted(&[record("k", "never committed")], 2)
            .expect("append");
    }
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("reopen");
    assert_eq!(log.committed_offset(), 1);
    assert_eq!(read_all(&log).len(), 1, "uncommitted records stay hidden");
    assert_eq!(
        log.next_offset(),
        3,
        "but are kept, for the leader to decide"
    );
}

#[test]
fn truncation_drops_an_uncommitted_tail_across_segments_and_appending_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = ShardLog::open(dir.path(), small_segments()).expect("open");
        for i in 0..10 {
            log.append(&[record("k", &format!("{i:040}"))], i)
                .expect("append");
        }
        for i in 10..20 {
            log.append_uncommitted(&[record("k", &format!("tail-{i:035}"))], i)
                .expect("append");
        }
        assert!(matches!(
            log.truncate_to(5),
            Err(LogError::TruncatesCommitted { .. })
        ));
        log.truncate_to(12).expect("truncate");
        assert_eq!(log.next_offset(), 12);
        let appended = log
            .append(&[record("k", "after truncation")], 30)
            .expect("append");
        assert_eq!(appended.first_offset, 12);
        let records = log
            .read_uncommitted(0, 100, u64::MAX)
            .expect("read")
            .records;
        assert_eq!(records.len(), 13);
        assert_eq!(records[12].data, Bytes::from("after truncation"));
    }
    // And it all survives a reopen.
    let log = ShardLog::open(dir.path(), small_segments()).expect("reopen");
    let records = read_all(&log);
    assert_eq!(records.len(), 13);
    assert_eq!(records[11].data, Bytes::from(format!("tail-{:035}", 11)));
}

#[test]
fn a_delayed_request_never_cuts_what_a_later_one_added() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    let leader = epochs(&[(1, 0)]);
    let batch = [record("a", "0"), record("a", "1"), record("a", "2")];
    log.replicate(1, &leader, 0, 1, &batch).expect("replicate");
    // An earlier request for offsets 1..2, delivered late.
    let late = log
        .replicate(1, &leader, 1, 1, &[record("a", "1")])
        .expect("replicate");
    assert_eq!((late.accepted, late.next_offset), (true, 3));
    // A request overlapping the end appends only what is new.
    let overlap = log
        .replicate(1, &leader, 2, 1, &[record("a", "2"), record("a", "3")])
        .expect("replicate");
    assert_eq!(overlap.next_offset, 4);
    assert_eq!(data_of(&log), ["0", "1", "2", "3"]);
}

#[test]
fn a_log_created_for_a_later_segment_starts_at_its_first_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open_from(dir.path(), LogConfig::default(), 40).expect("open");
    assert_eq!((log.trim_horizon(), log.next_offset()), (40, 40));
    assert_eq!(log.committed_offset(), 40, "nothing below 40 to hide");
    let leader = epochs(&[(3, 40)]);
    let done = log
        .replicate(3, &leader, 40, 10, &[record("a", "40"), record("a", "41")])
        .expect("replicate");
    assert_eq!((done.accepted, done.next_offset), (true, 42));
    log.commit(42);
    let offsets: Vec<u64> = read_all(&log).iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        [40, 41],
        "a read from 0 starts at the segment's first offset"
    );
    drop(log);
    let reopened = ShardLog::open_from(dir.path(), LogConfig::default(), 0).expect("reopen");
    assert_eq!(
        (reopened.trim_horizon(), reopened.next_offset()),
        (40, 42),
        "an existing log keeps its offsets"
    );
}

#[test]
fn a_later_segment_continues_the_arrival_times_of_the_one_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open_from(dir.path(), LogConfig::default(), 10).expect("open");
    assert_eq!(log.last_arrival_ms(), None);
    log.raise_arrival_floor(5_000);
    let appended = log
        .append_uncommitted(&[record("a", "x")], 4_000)
        .expect("append");
    assert_eq!(
        appended.arrival_ms, 5_000,
        "a clock behind the previous segment's does not move time back"
    );
    assert_eq!(log.last_arrival_ms(), Some(5_000));
    log.truncate_to(10).expect("truncate");
    assert_eq!(
        log.next_position(4_000),
        (10, 5_000),
        "dropping an uncommitted tail keeps the floor"
    );
}

/// A leader whose records up to `horizon` expired: it led epoch 1 from 0
/// and epoch 3 from 10.
fn trimmed_leader(dir: &Path) -> ShardLog {
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

#[test]
fn a_copy_behind_the_leaders_horizon_restarts_there_and_catches_up() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let leader = trimmed_leader(leader_dir.path());
    let horizon = leader.trim_horizon();
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = ShardLog::open(dir.path(), small_segments()).expect("open");
    // The copy holds three expired records of epoch 1.
    copy.replicate(
        1,
        &epochs(&[(1, 0)]),
        0,
        0,
        &[record("k", "0"), record("k", "1"), record("k", "2")],
    )
    .expect("replicate");
    let history = leader.epoch_history();
    let restarted = copy.restart_at(3, &history, horizon).expect("restart");
    assert_eq!((restarted.accepted, restarted.next_offset), (true, horizon));
    assert_eq!(copy.trim_horizon(), horizon);
    assert_eq!(copy.epoch_history(), history);
    assert!(data_of(&copy).is_empty(), "the expired records are gone");

    // Ordinary replication continues from the horizon.
    let missing = leader
        .read_uncommitted(horizon, 1_000, u64::MAX)
        .expect("read")
        .records;
    for stored in &missing {
        let answer = copy
            .replicate(
                3,
                &history,
                stored.offset,
                stored.arrival_ms,
                &[NewRecord {
                    partition_key: stored.partition_key.clone(),
                    data: stored.data.clone(),
                }],
            )
            .expect("replicate");
        assert!(answer.accepted);
    }
    assert_eq!(data_of(&copy), data_of(&leader));
    assert_eq!(copy.election_position(), leader.election_position());

    // The restarted log survives a restart of its own.
    drop(copy);
    let copy = ShardLog::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(copy.trim_horizon(), horizon);
    assert_eq!(copy.next_offset(), 30);
    assert_eq!(copy.epoch_history(), history);
}

#[test]
fn a_copy_that_reaches_the_horizon_is_not_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    let history = epochs(&[(1, 0)]);
    copy.replicate(1, &history, 0, 0, &[record("k", "0"), record("k", "1")])
        .expect("replicate");
    let answer = copy.restart_at(1, &history, 2).expect("restart");
    assert_eq!((answer.accepted, answer.next_offset), (false, 2));
    assert_eq!(data_of(&copy), ["0", "1"]);
}

#[test]
fn a_restart_from_a_deposed_leader_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    copy.replicate(4, &epochs(&[(4, 0)]), 0, 0, &[record("k", "0")])
        .expect("replicate");
    assert!(matches!(
        copy.restart_at(3, &epochs(&[(3, 0)]), 50),
        Err(LogError::StaleEpoch { .. })
    ));
    assert!(matches!(
        copy.restart_at(5, &epochs(&[(4, 0)]), 50),
        Err(LogError::BadEpochHistory(_))
    ));
    assert_eq!(data_of(&copy), ["0"]);
    assert_eq!(copy.trim_horizon(), 0);
}

#[test]
fn a_leader_resending_a_different_record_where_this_copy_holds_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    let history = epochs(&[(1, 0)]);
    log.replicate(1, &history, 0, 1, &[record("a", "0"), record("a", "1")])
        .expect("replicate");
    // The same records again (a delayed duplicate) are fine ...
    let again = log
        .replicate(1, &history, 0, 1, &[record("a", "0"), record("a", "1")])
        .expect("re-send");
    assert_eq!((again.accepted, again.next_offset), (true, 2));
    // ... another record at a held offset under the same epoch is not.
    let other = log.replicate(1, &history, 1, 1, &[record("a", "other"), record("a", "2")]);
    assert!(
        matches!(other, Err(LogError::Diverged { offset: 1, .. })),
        "{other:?}"
    );
    assert_eq!(data_of(&log), ["0", "1"], "nothing was written");
}

#[test]
fn a_leader_at_the_same_epoch_with_another_history_is_refused() {
    // A leader of epoch 2 whose disk was replaced restarts with a history
    // that starts its epoch at 0; this copy adopted epoch 2 from 3 on.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
    let batch: Vec<NewRecord> = (0..3).map(|i| record("k", &format!("e1-{i}"))).collect();
    log.replicate(1, &epochs(&[(1, 0)]), 0, 1, &batch)
        .expect("replicate");
    log.replicate(2, &epochs(&[(1, 0), (2, 3)]), 3, 1, &[record("k", "e2-3")])
        .expect("replicate");
    let replaced = log.replicate(2, &epochs(&[(2, 0)]), 4, 1, &[record("k", "e2-4")]);
    assert!(
        matches!(replaced, Err(LogError::Diverged { offset: 0, .. })),
        "{replaced:?}"
    );
    assert_eq!(data_of(&log), ["e1-0", "e1-1", "e1-2", "e2-3"]);
}

/// A log of 20 committed records in small segments, closed.
fn committed_log(dir: &Path) {
    let log = ShardLog::open(dir, small_segments()).expect("open");
    for i in 0..20 {
        log.append(&[record("k", &format!("{i:040}"))], i)
            .expect("append");
    }
}

#[test]
fn a_committed_tail_lost_on_disk_fails_loudly() {
    let dir = tempfile::tempdir().expect("tempdir");
    committed_log(dir.path());
    let segment = last_segment(dir.path());
    let mut bytes = fs::read(&segment).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&segment, &bytes).expect("write");
    let opened = ShardLog::open(dir.path(), small_segments());
    assert!(
        matches!(
            opened,
            Err(LogError::LostCommitted {
                committed: 20,
                end: 19
            })
        ),
        "{:?}",
        opened.err()
    );
}

#[test]
fn a_damaged_copy_is_moved_aside_and_rebuilt_before_it_may_lead() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("log");
    committed_log(&dir);
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("e").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    paths.sort();
    // A flipped byte in the middle of a sealed segment.
    let mut bytes = fs::read(&paths[1]).expect("read");
    bytes[20] ^= 0x01;
    fs::write(&paths[1], &bytes).expect("write");

    let damaged_to = root.path().join("damaged").join("log-1");
    let opened = open_or_rebuild(&dir, &damaged_to, small_segments(), 0).expect("open");
    let Opened::Rebuilding { log, error, .. } = opened else {
        panic!("a damaged log was opened as intact");
    };
    assert!(matches!(error, LogError::Corrupt { .. }), "{error:?}");
    assert!(
        damaged_to.join("commit-point").exists(),
        "kept for inspection"
    );
    assert_eq!(log.next_offset(), 0);
    assert_eq!(log.rebuilding_until(), Some(20));
    assert!(matches!(
        log.begin_leading(2),
        Err(LogError::Rebuilding { .. })
    ));

    // The marker survives a restart; the leader (epoch 1, its log ending
    // at 25) fills the copy; the marker goes once it holds all 25.
    drop(log);
    let log = ShardLog::open(&dir, small_segments()).expect("reopen");
    assert_eq!(log.rebuilding_until(), Some(20));
    let history = epochs(&[(1, 0)]);
    let probe = log.replicate(1, &history, 25, 0, &[]).expect("probe");
    assert_eq!((probe.accepted, probe.next_offset), (false, 0));
    assert_eq!(log.rebuilding_until(), Some(25), "the leader's end counts");
    let batch: Vec<NewRecord> = (0..24).map(|i| record("k", &format!("{i}"))).collect();
    log.replicate(1, &history, 0, 1, &batch).expect("catch up");
    assert_eq!(log.rebuilding_until(), Some(25));
    log.replicate(1, &history, 24, 1, &[record("k", "24")])
        .expect("catch up");
    assert_eq!(log.rebuilding_until(), None);
    drop(log);
    let log = ShardLog::open(&dir, small_segments()).expect("reopen");
    assert_eq!(log.rebuilding_until(), None, "the marker is gone for good");
    log.begin_leading(2).expect("an ordinary copy again");
}

#[test]
fn an_intact_log_opens_as_itself() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("log");
    committed_log(&dir);
    let opened =
        open_or_rebuild(&dir, &root.path().join("damaged"), small_segments(), 0).expect("open");
    let Opened::Intact(log) = opened else {
        panic!("an intact log was rebuilt");
    };
    assert_eq!(log.next_offset(), 20);
    assert!(!root.path().join("damaged").exists());
}

#[test]
fn a_damaged_length_in_the_last_segment_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
        for i in 0..10 {
            log.append_uncommitted(&[record("k", &format!("record-{i}"))], i)
                .expect("append");
        }
    }
    // The length of the third record now runs past the end of the file;
    // seven intact records follow it.
    let segment = last_segment(dir.path());
    let mut bytes = fs::read(&segment).expect("read");
    let frame = bytes.len() / 10;
    bytes[2 * frame + 3] = 0x7f;
    fs::write(&segment, &bytes).expect("write");
    let opened = ShardLog::open(dir.path(), LogConfig::default());
    assert!(
        matches!(opened, Err(LogError::Corrupt { .. })),
        "{:?}",
        opened.map(|log| log.next_offset())
    );
}

#[test]
fn a_rebuilt_copy_keeps_its_epoch_fence_and_heeds_each_newer_leader() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("log");
    {
        let log = ShardLog::open(&dir, small_segments()).expect("open");
        let history = epochs(&[(3, 0)]);
        let batch: Vec<NewRecord> = (0..20).map(|i| record("k", &format!("{i:040}"))).collect();
        log.replicate(3, &history, 0, 1, &batch).expect("replicate");
        log.commit(20);
        log.persist_commit_point().expect("persist");
    }
    fs::write(dir.join("commit-point"), "not a number").expect("write");
    let opened =
        open_or_rebuild(&dir, &root.path().join("damaged/log"), small_segments(), 0).expect("open");
    let Opened::Rebuilding { log, .. } = opened else {
        panic!("an unreadable commit point was trusted");
    };
    assert!(
        matches!(
            log.replicate(2, &epochs(&[(2, 0)]), 0, 1, &[]),
            Err(LogError::StaleEpoch { .. })
        ),
        "a deposed leader is still fenced off"
    );
    // A leader of epoch 3 (ending at 5) speaks first, then one of epoch 4
    // whose log ends at 30: the copy must reach 30.
    log.replicate(3, &epochs(&[(3, 0)]), 5, 1, &[])
        .expect("probe");
    assert_eq!(log.rebuilding_until(), Some(5));
    log.replicate(4, &epochs(&[(3, 0), (4, 25)]), 30, 1, &[])
        .expect("probe");
    assert_eq!(log.rebuilding_until(), Some(30));
}

#[test]
fn a_swap_interrupted_after_the_damaged_log_moved_aside_is_finished() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("log");
    // The replacement was prepared and the damaged log moved aside; the
    // crash came before the replacement moved in, and the worker then
    // created an empty directory in its place.
    let replacement = root.path().join("log.rebuilt");
    fs::create_dir(&replacement).expect("mkdir");
    fs::write(replacement.join("rebuilding"), "42").expect("write");
    fs::create_dir(&dir).expect("mkdir");
    let opened =
        open_or_rebuild(&dir, &root.path().join("damaged/log"), small_segments(), 0).expect("open");
    let Opened::Intact(log) = opened else {
        panic!("nothing was damaged this time");
    };
    assert_eq!(log.rebuilding_until(), Some(42), "the empty copy is marked");
    assert!(!replacement.exists());
}

#[test]
fn a_rebuilt_copy_must_reach_the_leaders_whole_log_not_only_the_first_batch_it_sees() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("log");
    fs::create_dir(&dir).expect("mkdir");
    create_rebuilding(&dir.join("copy")).expect("create");
    let log = ShardLog::open(&dir.join("copy"), small_segments()).expect("open");
    assert_eq!(log.rebuilding_until(), Some(0));
    // The leader (log ending at 50) starts catching the copy up at 0.
    log.hear_leader(2, 50).expect("heard");
    log.replicate(2, &epochs(&[(2, 0)]), 0, 1, &[record("k", "0")])
        .expect("catch up");
    assert_eq!(log.rebuilding_until(), Some(50));
    // A deposed leader's word counts for nothing.
    log.hear_leader(1, 500).expect("heard");
    assert_eq!(log.rebuilding_until(), Some(50));
}
