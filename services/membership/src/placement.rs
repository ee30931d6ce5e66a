//! Where shards go: pure decisions over the live workers — a new shard's
//! copies, a moved shard's next segment, a failed-over shard's new leader
//! and replicas, and a spare for a shard kept on too few workers.
//!
//! Each shard gets one worker per availability zone, up to three zones: the
//! leader in one zone and replicas in two others. Successive shards rotate
//! the leader's zone and the worker within each zone, so leadership spreads
//! evenly. With fewer than three zones a shard gets fewer copies (a
//! development setup with one worker still works).

use std::collections::{BTreeMap, BTreeSet, HashMap};

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

/// How current a copy of a shard is: `(last epoch, next offset)`,
/// compared in that order (Raft's election rule; see `failover.rs`).
pub type CopyPosition = (u64, u64);

/// What failover decides for a shard whose leader died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Election {
    /// Promote the most current copy; keep the other answering replicas and
    /// add spares in zones the shard does not use, up to [`COPIES`].
    Promote {
        placement: Placement,
        /// The promoted copy's position.
        position: CopyPosition,
    },
    /// Too few replicas answered to be sure one of them holds every
    /// acknowledged batch: the shard waits.
    Wait { answering: usize, needed: usize },
}

/// Answers needed from the replicas before one may be promoted: enough that
/// they include at least one copy of every batch acknowledged on a majority
/// of the shard's `copies` (the dead leader's included) — a majority-based
/// election, as in Raft.
pub fn replicas_needed_to_elect(copies: usize) -> usize {
    let acknowledging = copies / 2 + 1;
    copies - acknowledging + 1
}

/// Chooses the new leader and replicas of a shard of `copies` copies whose
/// leader `dead_leader` died. `answers` are the live replicas that said how
/// current their copy is, in the order of the shard's replica list (which
/// breaks ties); `live` are the live workers spares are taken from.
pub fn elect(
    dead_leader: &str,
    copies: usize,
    answers: &[(CopyPosition, &WorkerRow)],
    live: &[&WorkerRow],
) -> Election {
    let needed = replicas_needed_to_elect(copies);
    if answers.len() < needed || answers.is_empty() {
        return Election::Wait {
            answering: answers.len(),
            needed,
        };
    }
    // Most current first; a stable sort keeps the replica list's order on
    // a tie.
    let mut ranked = answers.to_vec();
    ranked.sort_by_key(|(position, _)| std::cmp::Reverse(*position));
    let (position, leader) = ranked[0];
    let mut replicas: Vec<String> = ranked[1..]
        .iter()
        .map(|(_, w)| w.worker_id.clone())
        .collect();
    let mut zones: BTreeSet<&str> = ranked
        .iter()
        .map(|(_, w)| w.availability_zone.as_str())
        .collect();
    let mut spares: Vec<&WorkerRow> = live
        .iter()
        .copied()
        .filter(|w| {
            w.worker_id != leader.worker_id
                && w.worker_id != dead_leader
                && !replicas.contains(&w.worker_id)
        })
        .collect();
    spares.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    for spare in spares {
        if replicas.len() + 1 >= COPIES {
            break;
        }
        if zones.insert(spare.availability_zone.as_str()) {
            replicas.push(spare.worker_id.clone());
        }
    }
    Election::Promote {
        placement: Placement {
            leader: leader.worker_id.clone(),
            replicas,
        },
        position,
    }
}

/// A live worker to add as a replica of a shard `placed` on fewer than
/// [`COPIES`] workers: the first by id in a zone the shard does not use.
pub fn spare_replica<'a>(placed: &[&WorkerRow], live: &[&'a WorkerRow]) -> Option<&'a WorkerRow> {
    let zones: BTreeSet<&str> = placed
        .iter()
        .map(|w| w.availability_zone.as_str())
        .collect();
    live.iter()
        .copied()
        .filter(|w| !placed.iter().any(|p| p.worker_id == w.worker_id))
        .filter(|w| !zones.contains(w.availability_zone.as_str()))
        .min_by(|a, b| a.worker_id.cmp(&b.worker_id))
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
    fn an_election_hears_from_a_copy_of_every_majority() {
        // (copies, replica answers needed)
        let table = [(1, 1), (2, 1), (3, 2), (5, 3)];
        for (copies, needed) in table {
            assert_eq!(replicas_needed_to_elect(copies), needed, "{copies} copies");
        }
    }

    #[test]
    fn failover_promotes_the_newest_epoch_then_the_longest_log() {
        let (b1, c1, c2) = (worker("b1", "b"), worker("c1", "c"), worker("c2", "c"));
        // (answers, expected leader, expected position)
        type Answers<'a> = Vec<(CopyPosition, &'a WorkerRow)>;
        let table: [(Answers<'_>, &str, CopyPosition); 4] = [
            (vec![((3, 10), &b1), ((3, 12), &c1)], "c1", (3, 12)),
            (vec![((4, 5), &b1), ((3, 12), &c1)], "b1", (4, 5)),
            // A tie goes to the first in the replica list.
            (vec![((3, 12), &c1), ((3, 12), &b1)], "c1", (3, 12)),
            (vec![((3, 12), &b1), ((3, 12), &c1)], "b1", (3, 12)),
        ];
        let live = [&b1, &c1, &c2];
        for (answers, leader, position) in table {
            match elect("a1", 3, &answers, &live) {
                Election::Promote {
                    placement,
                    position: promoted,
                } => {
                    assert_eq!(placement.leader, leader, "{answers:?}");
                    assert_eq!(promoted, position);
                    assert_eq!(placement.replicas.len(), 1, "the other answering replica");
                }
                wait => panic!("{wait:?}"),
            }
        }
    }

    #[test]
    fn failover_waits_while_too_few_replicas_answer() {
        let b1 = worker("b1", "b");
        assert_eq!(
            elect("a1", 3, &[((1, 1), &b1)], &[&b1]),
            Election::Wait {
                answering: 1,
                needed: 2
            }
        );
        assert_eq!(
            elect("a1", 1, &[], &[&b1]),
            Election::Wait {
                answering: 0,
                needed: 1
            }
        );
    }

    #[test]
    fn failover_fills_unused_zones_never_with_the_dead_leader() {
        let (a1, a2, b1, c1) = (
            worker("a1", "a"),
            worker("a2", "a"),
            worker("b1", "b"),
            worker("c1", "c"),
        );
        // b1 and c1 answered for a shard the dead a1 led: zone a gets a
        // copy back on a2, never on a1 itself.
        let Election::Promote { placement, .. } = elect(
            "a1",
            3,
            &[((2, 9), &b1), ((2, 9), &c1)],
            &[&a1, &a2, &b1, &c1],
        ) else {
            panic!("promoted")
        };
        assert_eq!(placement.leader, "b1");
        assert_eq!(placement.replicas, vec!["c1".to_owned(), "a2".to_owned()]);
        // A shard of two copies (b1 answering, the dead leader a1).
        let Election::Promote { placement, .. } =
            elect("a1", 2, &[((2, 9), &b1)], &[&a1, &a2, &b1])
        else {
            panic!("promoted")
        };
        assert_eq!(placement.leader, "b1");
        assert_eq!(placement.replicas, vec!["a2".to_owned()]);
    }

    #[test]
    fn a_spare_replica_comes_from_an_unused_zone() {
        let (a1, b1, b2, c2, c1) = (
            worker("a1", "a"),
            worker("b1", "b"),
            worker("b2", "b"),
            worker("c2", "c"),
            worker("c1", "c"),
        );
        let live = [&a1, &b1, &b2, &c2, &c1];
        let spare = |placed: &[&WorkerRow], live: &[&WorkerRow]| {
            spare_replica(placed, live).map(|w| w.worker_id.clone())
        };
        assert_eq!(spare(&[&a1, &b1], &live).as_deref(), Some("c1"));
        assert_eq!(spare(&[&a1, &b1, &c1], &live), None);
        assert_eq!(spare(&[&a1], &[&a1]), None);
    }

    #[test]
    fn no_workers_is_an_error() {
        assert_eq!(place(&[], 1, 0), Err(NoLiveWorkers));
    }
}
