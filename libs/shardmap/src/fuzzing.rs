//! The fuzz target of shard-map change application
//! (`fuzz/fuzz_targets/shardmap_changes.rs`), also replayed over the
//! checked-in corpus by `tests/fuzz_corpus.rs`. Any sequence of upserts,
//! change-log changes (duplicated, reordered, with gaps), snapshots and
//! resets leaves the map agreeing with a model that keeps, per shard, the
//! entry of the highest version seen: what a lookup answers, which shards
//! are known deleted, which incarnation a stream name routes to, and which
//! change-log version has been applied without a gap.

use std::collections::BTreeMap;

use freshet_proto::v1::{ShardKey, ShardMapEntry, ShardState};
use freshet_types::StreamArn;

use crate::{ApplyOutcome, ShardMap};

/// Per shard: (version, deleted) of the newest entry seen.
type Model = BTreeMap<(i64, &'static str), (i64, bool)>;

/// The shards every stream of the model has.
const SHARDS: [&str; 4] = [
    "shardId-000000000000",
    "shardId-000000000001",
    "shardId-000000000002",
    "shardId-000000000003",
];

/// A stream's incarnations alternate between two names.
fn arn_of(uid: i64) -> StreamArn {
    StreamArn::new(
        "us-east-1",
        "000000000000",
        if uid % 2 == 0 { "even" } else { "odd" },
    )
}

fn entry(uid: i64, shard: &str, version: i64, deleted: bool) -> ShardMapEntry {
    let arn = arn_of(uid);
    ShardMapEntry {
        key: Some(ShardKey {
            stream_uid: uid,
            shard_id: shard.to_owned(),
        }),
        version,
        account_id: arn.account_id.clone(),
        stream_name: arn.stream_name.clone(),
        stream_arn: arn.to_string(),
        state: if deleted {
            ShardState::Deleted
        } else {
            ShardState::Open
        } as i32,
        ..Default::default()
    }
}

/// Three bytes name an entry: stream (1..=4), shard (0..=3), deleted, version.
fn decode(bytes: &[u8]) -> (i64, &'static str, i64, bool) {
    let uid = i64::from(bytes[0] & 3) + 1;
    let shard = SHARDS[usize::from(bytes[1] & 3)];
    (uid, shard, i64::from(bytes[2]), bytes[1] & 4 != 0)
}

fn model_upsert(model: &mut Model, uid: i64, shard: &'static str, version: i64, deleted: bool) {
    let held = model.get(&(uid, shard)).map(|(v, _)| *v);
    if held.is_none_or(|held| held < version) {
        model.insert((uid, shard), (version, deleted));
    }
}

pub fn exercise(data: &[u8]) {
    let mut map = ShardMap::default();
    let mut model = Model::new();
    let mut applied = 0i64;
    let mut ops = data.chunks_exact(3);
    while let Some(op) = ops.next() {
        let (uid, shard, version, deleted) = decode(op);
        match op[0] >> 5 {
            // A snapshot at `version` of the next `n` entries.
            6 => {
                let count = usize::from(op[1] >> 3 & 7);
                let entries: Vec<_> = ops.by_ref().take(count).map(decode).collect();
                let mut next = Model::new();
                for (key, (v, dead)) in &model {
                    if *dead && *v > version {
                        next.insert(*key, (*v, true));
                    }
                }
                for (uid, shard, v, dead) in &entries {
                    model_upsert(&mut next, *uid, shard, *v, *dead);
                }
                for ((uid, shard), (v, dead)) in &model {
                    if !*dead && *v > version {
                        model_upsert(&mut next, *uid, shard, *v, false);
                    }
                }
                model = next;
                applied = version;
                map.replace_with_snapshot(
                    entries
                        .iter()
                        .map(|(uid, shard, v, dead)| entry(*uid, shard, *v, *dead))
                        .collect(),
                    version,
                );
            }
            7 if op[0] & 0x1f == 0x1f => {
                map.reset();
                model.clear();
                applied = 0;
            }
            kind if kind >= 4 => {
                let outcome = map.apply_change(entry(uid, shard, version, deleted));
                let expected = if version <= applied {
                    ApplyOutcome::Duplicate
                } else if version == applied + 1 {
                    applied = version;
                    ApplyOutcome::Applied
                } else {
                    ApplyOutcome::Gap {
                        expected: applied + 1,
                        received: version,
                    }
                };
                assert_eq!(outcome, expected);
                model_upsert(&mut model, uid, shard, version, deleted);
            }
            _ => {
                map.upsert(entry(uid, shard, version, deleted));
                model_upsert(&mut model, uid, shard, version, deleted);
            }
        }
        check(&map, &model, applied);
    }
}

fn check(map: &ShardMap, model: &Model, applied: i64) {
    assert_eq!(map.applied_version(), applied);
    for uid in 1..=4 {
        for shard in SHARDS {
            let held = model.get(&(uid, shard));
            let live = map.get(uid, shard).map(|e| e.version);
            assert_eq!(live, held.filter(|(_, dead)| !dead).map(|(v, _)| *v));
            assert_eq!(
                map.is_deleted(uid, shard),
                held.is_some_and(|(_, dead)| *dead)
            );
        }
    }
    for parity in [0, 1] {
        let arn = arn_of(parity);
        let newest = model
            .iter()
            .filter(|((uid, _), (_, dead))| !dead && uid % 2 == parity)
            .map(|((uid, _), _)| *uid)
            .max();
        let expected: Vec<(String, i64)> = model
            .iter()
            .filter(|((uid, _), (_, dead))| !dead && Some(*uid) == newest)
            .map(|((_, shard), (v, _))| ((*shard).to_owned(), *v))
            .collect();
        let routed: Vec<(String, i64)> = map
            .stream_entries(&arn)
            .iter()
            .map(|e| (e.key.clone().unwrap_or_default().shard_id, e.version))
            .collect();
        assert_eq!(routed, expected, "{arn}");
    }
}
