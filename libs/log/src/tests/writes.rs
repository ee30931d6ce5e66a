use bytes::Bytes;

use super::*;
use crate::*;

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
    assert_eq!(log.offset_at_timestamp(0).expect("index"), 0);
    assert_eq!(log.offset_at_timestamp(55).expect("index"), 6);
    assert_eq!(log.offset_at_timestamp(60).expect("index"), 6);
    assert_eq!(log.offset_at_timestamp(10_000).expect("index"), 20);
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
fn retention_never_removes_records_above_the_commit_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    for i in 0..30 {
        log.append_uncommitted(&[record("k", &format!("{i:040}"))], i * 1_000)
            .expect("append");
    }
    log.commit(5);
    // Old enough to expire, but only the committed part may go: the rest
    // could still be committed and answered as landed.
    log.trim_older_than(i64::MAX).expect("trim");
    assert!(log.trim_horizon() <= 5, "horizon {}", log.trim_horizon());
    let held = log.read_uncommitted(5, 100, u64::MAX).expect("read");
    assert_eq!(held.records.first().map(|r| r.offset), Some(5));
    log.commit(30);
    assert!(log.trim_older_than(i64::MAX).expect("trim") > 0);
    assert!(log.trim_horizon() > 5);
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

/// The base offsets of the files in `dir` with extension `extension`.
fn files_with(dir: &std::path::Path, extension: &str) -> Vec<u64> {
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
        .collect();
    bases.sort_unstable();
    bases
}

#[test]
fn sealed_segments_keep_their_indexes_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    for i in 0..40 {
        log.append(&[record("k", &format!("{i:040}"))], i * 10)
            .expect("append");
    }
    let segments = files_with(dir.path(), "log");
    assert!(segments.len() >= 4, "{segments:?}");
    // Every segment but the one written to has its index file; the active
    // one's indexes are in memory.
    assert_eq!(
        files_with(dir.path(), "index"),
        segments[..segments.len() - 1]
    );
    {
        let view = log.view.read().expect("view");
        let (active, sealed) = view.segments.split_last().expect("segments");
        assert!(sealed.iter().all(|s| s.indexes_on_disk()));
        assert!(!active.indexes_on_disk());
    }

    // Reads by offset, by size and by time answer from the files.
    let all = read_all(&log);
    assert_eq!(all.len(), 40);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, r)| r.offset == i as u64 && r.data == format!("{i:040}").as_bytes()));
    let middle = log.read(7, 3, u64::MAX).expect("read");
    assert_eq!(
        middle.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [7, 8, 9]
    );
    assert_eq!(log.read(7, 100, 1).expect("read").records.len(), 1);
    for i in 0..40u64 {
        assert_eq!(
            log.offset_at_timestamp(i as i64 * 10 - 5).expect("index"),
            i
        );
        assert_eq!(log.offset_at_timestamp(i as i64 * 10).expect("index"), i);
    }
    assert_eq!(log.offset_at_timestamp(1_000).expect("index"), 40);

    // Reopened: the indexes are rebuilt from the segments, a stray index
    // file (a crash between removing a segment and its index) goes.
    drop(log);
    fs::write(dir.path().join("99999999999999999999.index"), b"stray").expect("write");
    let _ = fs::remove_file(dir.path().join(format!("{:020}.index", segments[1])));
    let log = ShardLog::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(read_all(&log), all);
    assert_eq!(
        files_with(dir.path(), "index"),
        segments[..segments.len() - 1]
    );

    // Trimming removes a segment's index with it.
    let removed = log.trim_older_than(100).expect("trim");
    assert!(removed > 0);
    let left = files_with(dir.path(), "log");
    assert_eq!(files_with(dir.path(), "index"), left[..left.len() - 1]);
}

#[test]
fn a_truncation_into_a_sealed_segment_brings_its_indexes_back_into_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    for i in 0..30 {
        log.append_uncommitted(&[record("k", &format!("{i:040}"))], i)
            .expect("append");
    }
    log.commit(2);
    let segments = files_with(dir.path(), "log");
    let holding_five = *segments.iter().rev().find(|b| **b <= 5).expect("segment");
    log.truncate_to(5).expect("truncate");
    assert_eq!(files_with(dir.path(), "log").last(), Some(&holding_five));
    assert!(!files_with(dir.path(), "index").contains(&holding_five));
    assert_eq!(data_of(&log).len(), 5);
    // It is written to again, and rolls and seals as any other.
    for i in 5..20 {
        log.append(&[record("k", &format!("{i:040}"))], 100 + i)
            .expect("append");
    }
    let segments = files_with(dir.path(), "log");
    assert_eq!(
        files_with(dir.path(), "index"),
        segments[..segments.len() - 1]
    );
    assert_eq!(data_of(&log).len(), 20);
    drop(log);
    let log = ShardLog::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(data_of(&log).len(), 20);
}

#[test]
fn a_sealed_segment_whose_index_file_cannot_be_written_keeps_its_indexes_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("open");
    for i in 0..20 {
        log.append(&[record("k", &format!("{i:040}"))], i)
            .expect("append");
    }
    let all = read_all(&log);
    drop(log);
    // A directory where the first segment's index file goes: it cannot be
    // written (as on a full disk), and the open goes on regardless.
    let first_index = dir.path().join(format!("{:020}.index", 0));
    fs::remove_file(&first_index).expect("remove");
    fs::create_dir(&first_index).expect("mkdir");
    let log = ShardLog::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(read_all(&log), all);
    assert_eq!(log.offset_at_timestamp(5).expect("index"), 5);
    let view = log.view.read().expect("view");
    assert!(!view.segments[0].indexes_on_disk());
    assert!(view.segments[1].indexes_on_disk());
}
