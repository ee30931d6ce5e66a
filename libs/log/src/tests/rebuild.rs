use std::fs;

use super::*;
use crate::*;

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
