//! The fuzz target of the log's recovery (`fuzz/fuzz_targets/log_recovery.rs`),
//! also replayed over the checked-in corpus by `tests/fuzz_corpus.rs`.
//! Whatever bytes a crash or a failing disk leaves in the last segment and
//! in the epoch file, opening the log either refuses or recovers a log
//! whose records read back densely, that reopens the same, and that takes
//! the next append; and the epoch file's text decodes only to an ordered
//! history, which encodes back to itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::{EpochHistory, LogConfig, NewRecord, ShardLog};

/// A directory of its own per input (in memory where `/dev/shm` exists).
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shm = std::path::Path::new("/dev/shm");
    let root = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    root.join(format!(
        "freshet-log-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// `data`: one byte `n`, then `n` bytes of epoch file, then the segment.
pub fn exercise(data: &[u8]) {
    let (epoch_len, rest) = match data.split_first() {
        Some((n, rest)) => (usize::from(*n).min(rest.len()), rest),
        None => (0, data),
    };
    let (epochs, segment) = rest.split_at(epoch_len);
    if let Ok(text) = std::str::from_utf8(epochs) {
        if let Ok(history) = EpochHistory::decode(text) {
            let again =
                EpochHistory::decode(&history.encode()).expect("an encoded history decodes");
            assert_eq!(again, history);
        }
    }
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    std::fs::write(dir.join("epochs"), epochs).expect("write the epoch file");
    std::fs::write(dir.join("00000000000000000000.log"), segment).expect("write the segment");
    recover(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

fn recover(dir: &std::path::Path) {
    let Ok(log) = ShardLog::open(dir, LogConfig::default()) else {
        return;
    };
    let next = log.next_offset();
    assert!(log.committed_offset() <= next);
    let mut offset = 0;
    while offset < next {
        let batch = log
            .read_uncommitted(offset, 1000, 1 << 20)
            .expect("what recovery kept reads back");
        for record in &batch.records {
            assert_eq!(record.offset, offset, "offsets are dense");
            offset += 1;
        }
        if batch.records.is_empty() {
            break;
        }
    }
    assert_eq!(offset, next, "every recovered record reads back");
    drop(log);
    let again = ShardLog::open(dir, LogConfig::default()).expect("a recovered log reopens");
    assert_eq!(again.next_offset(), next, "recovery is idempotent");
    let appended = again
        .append(
            &[NewRecord {
                partition_key: "k".to_owned(),
                data: Bytes::from_static(b"after recovery"),
                ends_append: None,
            }],
            0,
        )
        .expect("a recovered log takes the next append");
    assert_eq!(appended.first_offset, next);
}
