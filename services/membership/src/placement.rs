//! Where a new shard goes: a pure decision over the live workers.
//!
//! Each shard gets one worker per availability zone, up to three zones: the
//! leader in one zone and replicas in two others. Successive shards rotate
//! the leader's zone and the worker within each zone, so leadership spreads
//! evenly. With fewer than three zones a shard gets fewer copies (a
//! development setup with one worker still works).

use std::collections::{BTreeMap, HashMap};

use freshet_metastore::WorkerRow;

/// Copies per shard, in distinct zones.
pub const COPIES: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub leader: String,
    pub replicas: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no live storage worker is registered with membership")]
pub struct NoLiveWorkers;

/// Places `shard_count` shards on `workers` (all alive). `seed` varies the
/// rotation between streams.
pub fn place(
    workers: &[WorkerRow],
    shard_count: usize,
    seed: u64,
) -> Result<Vec<Placement>, NoLiveWorkers> {
    let mut zones: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for worker in workers {
        zones
            .entry(&worker.availability_zone)
            .or_default()
            .push(&worker.worker_id);
    }
    if zones.is_empty() {
        return Err(NoLiveWorkers);
    }
    for members in zones.values_mut() {
        members.sort_unstable();
    }
    let zones: Vec<Vec<&str>> = zones.into_values().collect();
    let zone_count = zones.len();
    let copies = COPIES.min(zone_count);
    let placements = (0..shard_count)
        .map(|shard| {
            let turn = seed as usize + shard;
            let chosen: Vec<String> = (0..copies)
                .map(|copy| {
                    let zone = &zones[(turn + copy) % zone_count];
                    zone[(turn / zone_count) % zone.len()].to_owned()
                })
                .collect();
            Placement {
                leader: chosen[0].clone(),
                replicas: chosen[1..].to_vec(),
            }
        })
        .collect();
    Ok(placements)
}

/// Workers for a shard's next segment (worker balancing): `leader`, and
/// one replica in each other zone, up to [`COPIES`] copies in all — in each
/// zone the worker holding the fewest copies of current segments
/// (`copies_held`), by id on a tie.
pub fn place_next_segment(
    workers: &[WorkerRow],
    leader: &WorkerRow,
    copies_held: &HashMap<String, usize>,
) -> Placement {
    let mut zones: BTreeMap<&str, Vec<&WorkerRow>> = BTreeMap::new();
    for worker in workers {
        if worker.availability_zone != leader.availability_zone {
            zones
                .entry(&worker.availability_zone)
                .or_default()
                .push(worker);
        }
    }
    let held = |w: &WorkerRow| copies_held.get(&w.worker_id).copied().unwrap_or(0);
    let mut candidates: Vec<&WorkerRow> = zones
        .into_values()
        .filter_map(|members| {
            members
                .into_iter()
                .min_by(|a, b| held(a).cmp(&held(b)).then(a.worker_id.cmp(&b.worker_id)))
        })
        .collect();
    // The least-used zones first, when there are more than enough.
    candidates.sort_by(|a, b| held(a).cmp(&held(b)).then(a.worker_id.cmp(&b.worker_id)));
    Placement {
        leader: leader.worker_id.clone(),
        replicas: candidates
            .into_iter()
            .take(COPIES - 1)
            .map(|w| w.worker_id.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn worker(id: &str, zone: &str) -> WorkerRow {
        WorkerRow {
            worker_id: id.to_owned(),
            availability_zone: zone.to_owned(),
            address: format!("{id}:1"),
            seconds_since_heartbeat: 0.0,
        }
    }

    #[test]
    fn copies_land_in_distinct_zones() {
        let workers = [
            worker("a1", "a"),
            worker("a2", "a"),
            worker("b1", "b"),
            worker("c1", "c"),
        ];
        let zone_of: HashMap<&str, &str> = workers
            .iter()
            .map(|w| (w.worker_id.as_str(), w.availability_zone.as_str()))
            .collect();
        for placement in place(&workers, 12, 7).expect("placed") {
            let zones: HashSet<&str> = std::iter::once(&placement.leader)
                .chain(&placement.replicas)
                .map(|w| zone_of[w.as_str()])
                .collect();
            assert_eq!(zones.len(), 3);
        }
    }

    #[test]
    fn leadership_rotates_across_zones() {
        let workers = [worker("a1", "a"), worker("b1", "b"), worker("c1", "c")];
        let leaders: HashSet<String> = place(&workers, 3, 0)
            .expect("placed")
            .into_iter()
            .map(|p| p.leader)
            .collect();
        assert_eq!(leaders.len(), 3);
    }

    #[test]
    fn a_single_worker_takes_everything() {
        let placements = place(&[worker("solo", "a")], 2, 0).expect("placed");
        assert!(placements
            .iter()
            .all(|p| p.leader == "solo" && p.replicas.is_empty()));
    }

    #[test]
    fn a_next_segment_takes_the_least_used_worker_of_each_other_zone() {
        let workers = [
            worker("a1", "a"),
            worker("a2", "a"),
            worker("b1", "b"),
            worker("b2", "b"),
            worker("c1", "c"),
            worker("c2", "c"),
        ];
        let held: HashMap<String, usize> = [("b1", 5), ("b2", 1), ("c1", 0), ("c2", 3)]
            .into_iter()
            .map(|(w, n)| (w.to_owned(), n))
            .collect();
        let placement = place_next_segment(&workers, &workers[1], &held);
        assert_eq!(placement.leader, "a2");
        assert_eq!(placement.replicas, vec!["c1".to_owned(), "b2".to_owned()]);
    }

    #[test]
    fn no_workers_is_an_error() {
        assert_eq!(place(&[], 1, 0), Err(NoLiveWorkers));
    }
}
