use std::fs::{self, OpenOptions};
use std::io::Write;

use bytes::Bytes;

use super::*;
use crate::*;

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

/// A crash in the middle of a write can leave its first records whole on
/// disk. None of the write was acknowledged, and an append's key sits on
/// its last record: keeping the first records would let an append land in
/// part, its key lost, and be written again whole. A write lands whole or
/// not at all.
#[test]
fn a_write_torn_after_some_whole_records_is_dropped_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment;
    let whole_len;
    {
        let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
        log.append(&[record("a", "kept")], 1).expect("append");
        segment = last_segment(dir.path());
        whole_len = fs::metadata(&segment).expect("stat").len();
        let mut keyed = vec![
            record("b", "torn-1"),
            record("b", "torn-2"),
            record("b", "torn-3"),
        ];
        keyed[2].ends_append = Some(AppendMark {
            key: AppendKey {
                frontend: 1,
                call: 1,
            },
            records: 3,
        });
        log.append_uncommitted(&keyed, 2).expect("append");
    }
    // The crash: the last record's frame is cut short, the first two whole.
    let full = fs::metadata(&segment).expect("stat").len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open")
        .set_len(full - 3)
        .expect("tear");

    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("reopen");
    assert_eq!(log.next_offset(), 1, "nothing of the torn write is kept");
    assert_eq!(fs::metadata(&segment).expect("stat").len(), whole_len);
    let next = log.append(&[record("c", "next")], 3).expect("append");
    assert_eq!(next.first_offset, 1);
}

/// A replica dropping the tail its new leader never had may cut a write in
/// two: the records it keeps stay, across a restart too.
#[test]
fn records_kept_by_a_truncation_inside_a_write_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
        let batch: Vec<NewRecord> = (0..5).map(|i| record("k", &format!("r{i}"))).collect();
        log.append_uncommitted(&batch, 1).expect("append");
        log.truncate_to(3).expect("truncate");
    }
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("reopen");
    assert_eq!(log.next_offset(), 3);
    let data: Vec<Bytes> = log
        .read_uncommitted(0, 10, u64::MAX)
        .expect("read")
        .records
        .into_iter()
        .map(|r| r.data)
        .collect();
    assert_eq!(data, ["r0", "r1", "r2"].map(Bytes::from));
}

/// Committed records are never dropped as part of an unfinished write,
/// however the write's end was lost: the saved commit point is a floor.
#[test]
fn committed_records_of_an_unfinished_write_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = ShardLog::open(dir.path(), LogConfig::default()).expect("open");
        let batch: Vec<NewRecord> = (0..3).map(|i| record("k", &format!("r{i}"))).collect();
        log.append_uncommitted(&batch, 1).expect("append");
        log.commit(2);
        log.persist_commit_point().expect("persist");
    }
    let segment = last_segment(dir.path());
    let full = fs::metadata(&segment).expect("stat").len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open")
        .set_len(full - 2)
        .expect("tear");
    let log = ShardLog::open(dir.path(), LogConfig::default()).expect("reopen");
    assert_eq!(log.next_offset(), 2, "the committed two are kept");
    assert_eq!(log.committed_offset(), 2);
}
