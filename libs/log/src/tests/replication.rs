use bytes::Bytes;

use super::*;
use crate::*;

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
                    ends_append: stored.ends_append,
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
