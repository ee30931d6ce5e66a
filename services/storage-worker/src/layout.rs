//! Where a shard segment's log lives on this worker's disk
//! (`shards/<stream uid>/<shard id>/<segment>/`), which segments are stored,
//! and the upgrade of a data directory from before shards had segments.

use std::path::{Path, PathBuf};

/// One segment of one shard's log: what this worker stores and opens.
/// A shard that moved between workers (worker balancing) has several
/// segments, each kept where it was written (see `ShardMapEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentKey {
    pub stream_uid: i64,
    pub shard_id: String,
    pub segment: u32,
}

impl SegmentKey {
    pub fn new(stream_uid: i64, shard_id: &str, segment: u32) -> SegmentKey {
        SegmentKey {
            stream_uid,
            shard_id: shard_id.to_owned(),
            segment,
        }
    }

    /// The shard's current segment as `entry` describes it.
    pub fn current(entry: &freshet_proto::v1::ShardMapEntry) -> Option<SegmentKey> {
        entry
            .key
            .as_ref()
            .map(|k| SegmentKey::new(k.stream_uid, &k.shard_id, entry.segment_index))
    }
}

/// The earliest arrival time the shard's current segment may stamp: where
/// the segment before it ended.
pub fn arrival_floor(entry: &freshet_proto::v1::ShardMapEntry) -> i64 {
    entry
        .sealed_segments
        .last()
        .map_or(i64::MIN, |previous| previous.last_arrival_ms)
}

/// Where segment `segment` of `entry`'s shard starts, if the entry knows it.
pub fn segment_start(entry: &freshet_proto::v1::ShardMapEntry, segment: u32) -> Option<u64> {
    if segment == entry.segment_index {
        return Some(entry.segment_start_offset);
    }
    entry
        .sealed_segments
        .iter()
        .find(|s| s.index == segment)
        .map(|s| s.start_offset)
}

/// The directory of one segment's log under `data_dir`.
pub fn segment_dir(data_dir: &Path, key: &SegmentKey) -> PathBuf {
    data_dir
        .join("shards")
        .join(key.stream_uid.to_string())
        .join(&key.shard_id)
        .join(key.segment.to_string())
}

/// Every `<stream uid>/<shard id>/<segment>` directory under `root`.
pub fn stored_segments(root: &std::path::Path) -> Vec<SegmentKey> {
    let named = |dir: &std::path::Path| -> Vec<(String, PathBuf)> {
        entries_of(dir, |t| t.is_dir())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|path| Some((path.file_name()?.to_str()?.to_owned(), path)))
            .collect()
    };
    let mut found = Vec::new();
    for (uid, stream_dir) in named(root) {
        let Ok(stream_uid) = uid.parse::<i64>() else {
            continue;
        };
        for (shard_id, shard_dir) in named(&stream_dir) {
            for (segment, _) in named(&shard_dir) {
                if let Ok(segment) = segment.parse::<u32>() {
                    found.push(SegmentKey::new(stream_uid, &shard_id, segment));
                }
            }
        }
    }
    found
}

/// Upgrades a data directory written before shards had segments: a log
/// stored directly in `shards/<stream uid>/<shard id>/` is that shard's
/// segment 0, and moves to `<shard id>/0/`. One file at a time, each move
/// made durable, so a crash midway is finished by the next start.
pub fn move_unsegmented_logs(data_dir: &std::path::Path) -> std::io::Result<()> {
    let root = data_dir.join("shards");
    if !root.is_dir() {
        return Ok(());
    }
    for stream_dir in entries_of(&root, |t| t.is_dir())? {
        for shard_dir in entries_of(&stream_dir, |t| t.is_dir())? {
            let files = entries_of(&shard_dir, |t| t.is_file())?;
            if files.is_empty() {
                continue;
            }
            let segment_dir = shard_dir.join("0");
            // A move cut short leaves each file in one place or the other;
            // a name in both means two logs, and which one is the shard's
            // is not for this code to guess.
            if let Some(clash) = files
                .iter()
                .filter_map(|f| f.file_name())
                .find(|name| segment_dir.join(name).exists())
            {
                return Err(std::io::Error::other(format!(
                    "{} holds {} both directly and in 0/: move one of the two logs away",
                    shard_dir.display(),
                    clash.to_string_lossy()
                )));
            }
            std::fs::create_dir_all(&segment_dir)?;
            for file in files {
                if let Some(name) = file.file_name() {
                    std::fs::rename(&file, segment_dir.join(name))?;
                }
            }
            std::fs::File::open(&segment_dir)?.sync_all()?;
            std::fs::File::open(&shard_dir)?.sync_all()?;
            tracing::info!(dir = %shard_dir.display(), "moved a shard's log into its segment 0");
        }
    }
    Ok(())
}

/// The entries of `dir` whose file type passes `keep`.
fn entries_of(
    dir: &std::path::Path,
    keep: impl Fn(std::fs::FileType) -> bool,
) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|e| e.file_type().is_ok_and(&keep))
        .map(|e| e.path())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_log::{LogConfig, NewRecord, ShardLog};

    #[test]
    fn a_log_from_before_segments_becomes_segment_zero() {
        let data = tempfile::tempdir().expect("tempdir");
        let shard = data.path().join("shards/7/shardId-000000000000");
        let log = ShardLog::open(&shard, LogConfig::default()).expect("open");
        log.append(
            &[NewRecord::new("k", bytes::Bytes::from_static(b"kept"))],
            1,
        )
        .expect("append");
        drop(log);
        std::fs::write(data.path().join("shards/stray"), b"").expect("stray file");
        move_unsegmented_logs(data.path()).expect("upgrade");
        move_unsegmented_logs(data.path()).expect("a second run changes nothing");
        let moved = ShardLog::open(&shard.join("0"), LogConfig::default()).expect("reopen");
        let records = moved.read(0, 10, u64::MAX).expect("read").records;
        assert_eq!(records.len(), 1);
        assert_eq!(&records[0].data[..], b"kept");

        // A log in both places is refused, not merged or overwritten.
        std::fs::copy(
            shard.join("0/00000000000000000000.log"),
            shard.join("00000000000000000000.log"),
        )
        .expect("copy");
        assert!(move_unsegmented_logs(data.path()).is_err());
    }
}
