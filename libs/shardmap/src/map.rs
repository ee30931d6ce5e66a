//! The snapshot itself: entries keyed by shard, applied by version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use freshet_proto::v1::{ConsumerEntry, ShardMapEntry, ShardState};
use freshet_types::StreamArn;

/// `(stream_uid, shard_id)`.
pub type EntryId = (i64, String);

fn entry_id(entry: &ShardMapEntry) -> EntryId {
    let key = entry.key.as_ref();
    (
        key.map(|k| k.stream_uid).unwrap_or_default(),
        key.map(|k| k.shard_id.clone()).unwrap_or_default(),
    )
}

/// What applying one change-log entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The next change in sequence; applied.
    Applied,
    /// Already seen (its version is not newer than what is held): ignored.
    Duplicate,
    /// Newer than anything held but not the next in sequence: at least one
    /// change was missed. The entry itself was applied (it is newer), but
    /// the subscriber must resync to recover what it missed.
    Gap { expected: i64, received: i64 },
}

/// A versioned snapshot of the shard map.
#[derive(Debug, Default)]
pub struct ShardMap {
    /// Ordered by (stream incarnation, shard id), so one stream's entries
    /// are one range.
    live: BTreeMap<EntryId, ShardMapEntry>,
    /// (account, stream name) → incarnations with live entries: a lookup
    /// by name touches only that stream, however large the map.
    /// Incarnations by the stream's ARN (which names its account, region
    /// and name).
    by_name: HashMap<String, BTreeSet<i64>>,
    /// Versions of deleted entries, so a reordered older change cannot
    /// bring a deleted shard back.
    tombstones: HashMap<EntryId, i64>,
    /// Every change-log version up to this one has been applied.
    applied_version: i64,
    /// Enhanced fan-out consumers by ARN, as the change log says they are.
    consumers: HashMap<String, ConsumerEntry>,
    /// Versions of removed consumers, so a replayed older change cannot
    /// bring one back.
    removed_consumers: HashMap<String, i64>,
}

impl ShardMap {
    pub fn applied_version(&self) -> i64 {
        self.applied_version
    }

    /// Applies `entry` if it is newer than what is held for its shard (the
    /// same version only extends the held entry's validity). Returns
    /// whether it was applied. Does not touch `applied_version`:
    /// use it for entries that arrive outside the change stream (from the
    /// cache).
    pub fn upsert(&mut self, entry: ShardMapEntry) -> bool {
        let id = entry_id(&entry);
        if let Some(held) = self.live.get_mut(&id) {
            if held.version == entry.version {
                // The same entry again, revalidated: only its validity moves.
                held.valid_until_micros = held.valid_until_micros.max(entry.valid_until_micros);
                return false;
            }
        }
        let held = self
            .live
            .get(&id)
            .map(|e| e.version)
            .or_else(|| self.tombstones.get(&id).copied());
        if held.is_some_and(|held| held >= entry.version) {
            return false;
        }
        if entry.state() == ShardState::Deleted {
            if let Some(removed) = self.live.remove(&id) {
                self.unindex(&removed);
            }
            self.tombstones.insert(id, entry.version);
        } else {
            self.tombstones.remove(&id);
            self.by_name
                .entry(entry.stream_arn.clone())
                .or_default()
                .insert(id.0);
            self.live.insert(id, entry);
        }
        true
    }

    /// Applies the next entry of the change stream.
    pub fn apply_change(&mut self, entry: ShardMapEntry) -> ApplyOutcome {
        let version = entry.version;
        if version <= self.applied_version {
            self.upsert(entry);
            return ApplyOutcome::Duplicate;
        }
        let expected = self.applied_version + 1;
        self.upsert(entry);
        if version == expected {
            self.applied_version = version;
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Gap {
                expected,
                received: version,
            }
        }
    }

    /// Applies the next change of the change stream when it is a
    /// consumer's: versions are counted as for shards.
    pub fn apply_consumer(&mut self, entry: ConsumerEntry) -> ApplyOutcome {
        let version = entry.version;
        if version <= self.applied_version {
            return ApplyOutcome::Duplicate;
        }
        let expected = self.applied_version + 1;
        let held = self
            .consumers
            .get(&entry.consumer_arn)
            .map(|e| e.version)
            .or_else(|| self.removed_consumers.get(&entry.consumer_arn).copied());
        if held.is_none_or(|held| held < version) {
            if entry.removed {
                self.consumers.remove(&entry.consumer_arn);
                self.removed_consumers
                    .insert(entry.consumer_arn.clone(), version);
            } else {
                self.removed_consumers.remove(&entry.consumer_arn);
                self.consumers.insert(entry.consumer_arn.clone(), entry);
            }
        }
        if version == expected {
            self.applied_version = version;
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Gap {
                expected,
                received: version,
            }
        }
    }

    /// Replaces every consumer with a snapshot's (taken at the version the
    /// shards' snapshot was, now `applied_version`).
    pub fn replace_consumers(&mut self, consumers: Vec<ConsumerEntry>) {
        let version = self.applied_version;
        self.removed_consumers
            .retain(|_, removed_at| *removed_at > version);
        self.consumers = consumers
            .into_iter()
            .filter(|c| !c.removed)
            .map(|c| (c.consumer_arn.clone(), c))
            .collect();
    }

    /// The consumer whose ARN is `arn`, as the change log last said; `None`
    /// if it is not registered (or this map has not heard of it yet).
    pub fn consumer(&self, arn: &str) -> Option<&ConsumerEntry> {
        self.consumers.get(arn)
    }

    /// Whether the change log said the consumer `arn` was removed.
    pub fn consumer_removed(&self, arn: &str) -> bool {
        self.removed_consumers.contains_key(arn)
    }

    /// Forgets everything: the subscriber will notice the gap at the next
    /// change and resync from a snapshot.
    pub fn reset(&mut self) {
        *self = ShardMap::default();
    }

    /// Replaces everything with a snapshot taken at `version`. Entries held
    /// that are newer than the snapshot (learnt from the cache) are kept.
    pub fn replace_with_snapshot(&mut self, entries: Vec<ShardMapEntry>, version: i64) {
        let newer: Vec<ShardMapEntry> = self
            .live
            .values()
            .filter(|e| e.version > version)
            .cloned()
            .collect();
        self.live.clear();
        self.by_name.clear();
        self.tombstones
            .retain(|_, tombstone_version| *tombstone_version > version);
        for entry in entries.into_iter().chain(newer) {
            self.upsert(entry);
        }
        self.applied_version = version;
    }

    pub fn get(&self, stream_uid: i64, shard_id: &str) -> Option<&ShardMapEntry> {
        self.live.get(&(stream_uid, shard_id.to_owned()))
    }

    /// The entries of the newest incarnation of the stream `arn` names, by
    /// shard id.
    pub fn stream_entries(&self, arn: &StreamArn) -> Vec<ShardMapEntry> {
        let newest = self
            .by_name
            .get(&arn.to_string())
            .and_then(|uids| uids.last().copied());
        match newest {
            Some(uid) => self
                .live
                .range(stream_range(uid))
                .map(|(_, e)| e.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    /// Drops `removed`'s incarnation from the name index once it has no
    /// live entry left.
    fn unindex(&mut self, removed: &ShardMapEntry) {
        let uid = replaced_uid(removed);
        if self.live.range(stream_range(uid)).next().is_some() {
            return;
        }
        if let Some(uids) = self.by_name.get_mut(&removed.stream_arn) {
            uids.remove(&uid);
            if uids.is_empty() {
                self.by_name.remove(&removed.stream_arn);
            }
        }
    }

    /// Whether a tombstone says this shard's stream was deleted.
    pub fn is_deleted(&self, stream_uid: i64, shard_id: &str) -> bool {
        self.tombstones
            .contains_key(&(stream_uid, shard_id.to_owned()))
    }

    /// Every live entry (for tests and diagnostics).
    pub fn entries(&self) -> impl Iterator<Item = &ShardMapEntry> {
        self.live.values()
    }

    /// Forces the stream's entries to be revalidated on next use.
    pub fn expire_stream(&mut self, arn: &StreamArn) {
        let uids: Vec<i64> = self
            .by_name
            .get(&arn.to_string())
            .map(|uids| uids.iter().copied().collect())
            .unwrap_or_default();
        for uid in uids {
            for (_, entry) in self.live.range_mut(stream_range(uid)) {
                entry.valid_until_micros = 0;
            }
        }
    }
}

fn replaced_uid(entry: &ShardMapEntry) -> i64 {
    entry.key.as_ref().map(|k| k.stream_uid).unwrap_or_default()
}

/// Every entry id of one stream incarnation.
fn stream_range(uid: i64) -> std::ops::Range<EntryId> {
    (uid, String::new())..(uid.saturating_add(1), String::new())
}

/// A [`ShardMap`] shared between a subscriber task and its readers, with a
/// notification whenever it changes.
#[derive(Clone, Default)]
pub struct SharedShardMap {
    inner: Arc<RwLock<ShardMap>>,
    changed: Arc<tokio::sync::Notify>,
}

impl SharedShardMap {
    pub fn read<T>(&self, f: impl FnOnce(&ShardMap) -> T) -> T {
        f(&self.inner.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn write<T>(&self, f: impl FnOnce(&mut ShardMap) -> T) -> T {
        let result = f(&mut self.inner.write().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_waiters();
        result
    }

    /// Resolves at the next change (register before checking the condition).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

#[cfg(test)]
mod tests {
    use freshet_proto::v1::{ConsumerStatus, ShardKey};

    use super::*;

    fn consumer(version: i64, status: ConsumerStatus, removed: bool) -> ConsumerEntry {
        ConsumerEntry {
            version,
            stream_uid: 1,
            consumer_name: "reader".to_owned(),
            consumer_arn: "arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/reader:1"
                .to_owned(),
            status: status as i32,
            created_at_ms: 1_000,
            removed,
        }
    }

    #[test]
    fn consumer_changes_take_their_turn_in_the_change_log() {
        let mut map = ShardMap::default();
        map.replace_with_snapshot(Vec::new(), 3);
        let arn = consumer(0, ConsumerStatus::Creating, false).consumer_arn;
        assert_eq!(
            map.apply_consumer(consumer(4, ConsumerStatus::Creating, false)),
            ApplyOutcome::Applied
        );
        assert_eq!(map.applied_version(), 4);
        // A shard's change and a consumer's share one sequence.
        assert_eq!(map.apply_change(entry("a", 5, "w1")), ApplyOutcome::Applied);
        assert_eq!(
            map.apply_consumer(consumer(6, ConsumerStatus::Active, false)),
            ApplyOutcome::Applied
        );
        assert_eq!(
            map.consumer(&arn).map(|c| c.status()),
            Some(ConsumerStatus::Active)
        );
        // A replay of an older change does not undo a newer one.
        assert_eq!(
            map.apply_consumer(consumer(4, ConsumerStatus::Creating, false)),
            ApplyOutcome::Duplicate
        );
        assert_eq!(
            map.consumer(&arn).map(|c| c.status()),
            Some(ConsumerStatus::Active)
        );
        // A missed version is a gap, as for shards.
        assert_eq!(
            map.apply_consumer(consumer(9, ConsumerStatus::Deleting, true)),
            ApplyOutcome::Gap {
                expected: 7,
                received: 9
            }
        );
        assert!(map.consumer(&arn).is_none(), "removed");
        assert!(map.consumer_removed(&arn));
        // Replaying what came before the removal does not bring it back.
        assert_eq!(
            map.apply_consumer(consumer(7, ConsumerStatus::Active, false)),
            ApplyOutcome::Applied
        );
        assert!(map.consumer(&arn).is_none(), "still removed");
        // A snapshot replaces every consumer.
        map.replace_with_snapshot(Vec::new(), 9);
        map.replace_consumers(vec![consumer(0, ConsumerStatus::Active, false)]);
        assert_eq!(
            map.consumer(&arn).map(|c| c.status()),
            Some(ConsumerStatus::Active)
        );
    }

    fn entry(shard: &str, version: i64, leader: &str) -> ShardMapEntry {
        ShardMapEntry {
            key: Some(ShardKey {
                stream_uid: 1,
                shard_id: shard.to_owned(),
            }),
            version,
            account_id: "000000000000".to_owned(),
            stream_name: "s".to_owned(),
            stream_arn: arn("us-east-1", "s").to_string(),
            leader_worker_id: leader.to_owned(),
            state: ShardState::Open as i32,
            ..Default::default()
        }
    }

    fn arn(region: &str, name: &str) -> StreamArn {
        StreamArn::new(region, "000000000000", name)
    }

    fn leader_of(map: &ShardMap, shard: &str) -> Option<String> {
        map.get(1, shard).map(|e| e.leader_worker_id.clone())
    }

    #[test]
    fn changes_in_order_are_applied() {
        let mut map = ShardMap::default();
        assert_eq!(map.apply_change(entry("a", 1, "w1")), ApplyOutcome::Applied);
        assert_eq!(map.apply_change(entry("a", 2, "w2")), ApplyOutcome::Applied);
        assert_eq!(leader_of(&map, "a").as_deref(), Some("w2"));
        assert_eq!(map.applied_version(), 2);
    }

    #[test]
    fn a_duplicated_change_is_absorbed() {
        let mut map = ShardMap::default();
        map.apply_change(entry("a", 1, "w1"));
        map.apply_change(entry("a", 2, "w2"));
        assert_eq!(
            map.apply_change(entry("a", 1, "w1")),
            ApplyOutcome::Duplicate
        );
        assert_eq!(leader_of(&map, "a").as_deref(), Some("w2"));
        assert_eq!(map.applied_version(), 2);
    }

    #[test]
    fn a_reordered_change_never_overwrites_a_newer_one_and_the_gap_is_reported() {
        let mut map = ShardMap::default();
        map.apply_change(entry("a", 1, "w1"));
        // Version 3 overtakes version 2.
        assert_eq!(
            map.apply_change(entry("a", 3, "w3")),
            ApplyOutcome::Gap {
                expected: 2,
                received: 3
            }
        );
        assert_eq!(map.apply_change(entry("a", 2, "w2")), ApplyOutcome::Applied);
        assert_eq!(leader_of(&map, "a").as_deref(), Some("w3"));
    }

    #[test]
    fn a_revalidated_entry_keeps_its_data_and_gains_validity() {
        let mut map = ShardMap::default();
        map.apply_change(entry("a", 1, "w1"));
        let mut again = entry("a", 1, "ignored");
        again.valid_until_micros = 99;
        assert!(!map.upsert(again));
        let held = map.get(1, "a").expect("held");
        assert_eq!(
            (held.leader_worker_id.as_str(), held.valid_until_micros),
            ("w1", 99)
        );
    }

    #[test]
    fn a_deleted_shard_is_not_resurrected_by_an_older_change() {
        let mut map = ShardMap::default();
        map.apply_change(entry("a", 1, "w1"));
        let mut tombstone = entry("a", 3, "");
        tombstone.state = ShardState::Deleted as i32;
        map.apply_change(tombstone);
        map.apply_change(entry("a", 2, "w2"));
        assert_eq!(leader_of(&map, "a"), None);
    }

    #[test]
    fn a_snapshot_replaces_the_map_but_keeps_newer_entries() {
        let mut map = ShardMap::default();
        map.apply_change(entry("gone", 1, "w1"));
        map.upsert(entry("b", 9, "from-cache"));
        map.replace_with_snapshot(vec![entry("a", 5, "w5"), entry("b", 4, "w4")], 5);
        assert_eq!(leader_of(&map, "gone"), None);
        assert_eq!(leader_of(&map, "a").as_deref(), Some("w5"));
        assert_eq!(leader_of(&map, "b").as_deref(), Some("from-cache"));
        assert_eq!(map.applied_version(), 5);
    }

    #[test]
    fn a_stream_lookup_sees_only_that_stream_and_forgets_deleted_incarnations() {
        let mut map = ShardMap::default();
        let mut other = entry("shardId-000000000000", 1, "elsewhere");
        other.stream_name = "other".to_owned();
        other.stream_arn = arn("us-east-1", "other").to_string();
        other.key = Some(ShardKey {
            stream_uid: 9,
            shard_id: "shardId-000000000000".to_owned(),
        });
        map.upsert(other);
        map.upsert(entry("shardId-000000000001", 2, "w"));
        map.upsert(entry("shardId-000000000000", 3, "w"));
        let ids: Vec<String> = map
            .stream_entries(&arn("us-east-1", "s"))
            .iter()
            .map(|e| e.key.clone().unwrap_or_default().shard_id)
            .collect();
        assert_eq!(ids, ["shardId-000000000000", "shardId-000000000001"]);
        for (shard, version) in [("shardId-000000000000", 4), ("shardId-000000000001", 5)] {
            let mut tombstone = entry(shard, version, "");
            tombstone.state = ShardState::Deleted as i32;
            map.upsert(tombstone);
        }
        assert!(map.stream_entries(&arn("us-east-1", "s")).is_empty());
        assert_eq!(map.stream_entries(&arn("us-east-1", "other")).len(), 1);
    }

    #[test]
    fn the_same_name_in_another_region_is_another_stream() {
        let mut map = ShardMap::default();
        map.upsert(entry("shardId-000000000000", 1, "east"));
        let mut west = entry("shardId-000000000000", 2, "west");
        west.stream_arn = arn("us-west-2", "s").to_string();
        west.key = Some(ShardKey {
            stream_uid: 7,
            shard_id: "shardId-000000000000".to_owned(),
        });
        map.upsert(west);
        let leaders = |region| {
            map.stream_entries(&arn(region, "s"))
                .into_iter()
                .map(|e| e.leader_worker_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(leaders("us-east-1"), ["east"]);
        assert_eq!(leaders("us-west-2"), ["west"]);
        assert!(leaders("eu-west-1").is_empty());
    }

    #[test]
    fn stream_entries_come_from_the_newest_incarnation() {
        let mut map = ShardMap::default();
        map.upsert(entry("shardId-000000000000", 1, "old"));
        let mut newer = entry("shardId-000000000000", 2, "new");
        newer.key = Some(ShardKey {
            stream_uid: 2,
            shard_id: "shardId-000000000000".to_owned(),
        });
        map.upsert(newer);
        let entries = map.stream_entries(&arn("us-east-1", "s"));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].leader_worker_id, "new");
    }
}
