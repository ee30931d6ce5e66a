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
use freshet_types::voters::majority;
use freshet_types::Voters;

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

/// A failed-over shard's new copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    pub leader: String,
    /// Every copy but the leader's: the voters of either configuration
    /// (the deposed leader included, until the new configuration is
    /// committed) and the learners.
    pub replicas: Vec<String>,
    pub voters: Voters,
    /// The promoted copy's position.
    pub position: CopyPosition,
}

/// What failover decides for a shard whose leader died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Election {
    /// Promote the most current voter that answered; see [`elect`].
    Promote(Promotion),
    /// Too few voters of the committed configuration answered to be sure
    /// one of them holds every acknowledged batch: the shard waits.
    Wait { answering: usize, needed: usize },
}

/// Chooses the new leader, voters and learners of a shard whose leader
/// `dead_leader` died.
///
/// `answers` are the voters that said how current their copy is, in the
/// order of the shard's replica list (which breaks ties); `learners` the
/// shard's learners; `live` the live workers spares are taken from.
///
/// The election needs enough answers from the committed configuration
/// ([`Voters::election_has_heard_enough`]) and promotes the most current
/// answer. The answering voters (one per zone) become the next
/// configuration. It is committed at once when a majority of it already
/// holds the winner's whole log; otherwise it is joint with the committed
/// one — the dead leader keeps its vote until the new leader has committed
/// its log on a majority of both (`ReportReplicas`). Live learners stay
/// learners, and spares in zones the next configuration does not use join
/// as learners, up to [`COPIES`] copies.
pub fn elect(
    dead_leader: &str,
    voters: &Voters,
    learners: &[String],
    answers: &[(CopyPosition, &WorkerRow)],
    live: &[&WorkerRow],
) -> Election {
    let answered = |id: &str| answers.iter().any(|(_, w)| w.worker_id == id);
    if answers.is_empty() || !voters.election_has_heard_enough(answered) {
        return Election::Wait {
            answering: voters.committed().iter().filter(|id| answered(id)).count(),
            needed: voters.election_answers_needed(),
        };
    }
    // Most current first; a stable sort keeps the replica list's order on
    // a tie.
    let mut ranked = answers.to_vec();
    ranked.sort_by_key(|(position, _)| std::cmp::Reverse(*position));
    let (position, leader) = ranked[0];
    let next = next_of(&ranked);
    let mut zones: BTreeSet<&str> = ranked
        .iter()
        .filter(|(_, w)| next.contains(&w.worker_id))
        .map(|(_, w)| w.availability_zone.as_str())
        .collect();
    // Copies at the winner's position hold the same log as the winner (a
    // copy current with an epoch adopted that epoch's history below its
    // end). If a majority of the next configuration does, every batch ever
    // committed is on that majority already, and it is committed at once.
    let holds_winners_log = |id: &str| {
        ranked
            .iter()
            .any(|(p, w)| *p == position && w.worker_id == id)
    };
    let committed = voters.committed().to_vec();
    let committed_answering = committed.iter().filter(|id| answered(id)).count();
    let voters = if same_members(&next, &committed)
        || Voters::Stable(next.clone()).is_quorum(holds_winners_log)
    {
        Voters::Stable(next)
    } else if committed_answering >= majority(committed.len()) {
        Voters::Joint { committed, next }
    } else {
        // A joint configuration could never commit: too few of the
        // committed voters are left for a majority. The copies at the
        // winner's position hold every acknowledged batch, so they alone
        // are a committed configuration; the other answering voters follow
        // as learners.
        Voters::Stable(
            next.iter()
                .filter(|id| holds_winners_log(id))
                .cloned()
                .collect(),
        )
    };
    // Answering voters left out of the configuration follow as learners.
    let demoted: Vec<String> = next_of(&ranked)
        .into_iter()
        .filter(|id| !voters.contains(id))
        .collect();
    // Learners: the live ones the shard has, then spares.
    let is_live = |id: &str| live.iter().any(|w| w.worker_id == id);
    let zone_of = |id: &str| {
        live.iter()
            .find(|w| w.worker_id == id)
            .map(|w| w.availability_zone.as_str())
    };
    let mut new_learners: Vec<String> = demoted;
    for learner in learners {
        if voters.contains(learner) || !is_live(learner) {
            continue;
        }
        if let Some(zone) = zone_of(learner) {
            if zones.insert(zone) {
                new_learners.push(learner.clone());
            }
        }
    }
    let mut spares: Vec<&WorkerRow> = live
        .iter()
        .copied()
        .filter(|w| {
            w.worker_id != dead_leader
                && !voters.contains(&w.worker_id)
                && !new_learners.contains(&w.worker_id)
        })
        .collect();
    spares.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    for spare in spares {
        if voters.newest().len() + new_learners.len() >= COPIES {
            break;
        }
        if zones.insert(spare.availability_zone.as_str()) {
            new_learners.push(spare.worker_id.clone());
        }
    }
    let mut replicas: Vec<String> = voters
        .newest()
        .iter()
        .chain(voters.committed())
        .filter(|id| **id != leader.worker_id)
        .cloned()
        .collect();
    replicas.extend(new_learners);
    let mut seen = BTreeSet::new();
    replicas.retain(|id| seen.insert(id.clone()));
    Election::Promote(Promotion {
        leader: leader.worker_id.clone(),
        replicas,
        voters,
        position,
    })
}

/// The next configuration: the answering voters, most current first, one
/// per zone, at most [`COPIES`].
fn next_of(ranked: &[(CopyPosition, &WorkerRow)]) -> Vec<String> {
    let mut zones: BTreeSet<&str> = BTreeSet::new();
    let mut next: Vec<String> = Vec::new();
    for (_, worker) in ranked {
        if next.len() < COPIES && zones.insert(worker.availability_zone.as_str()) {
            next.push(worker.worker_id.clone());
        }
    }
    next
}

/// Whether two lists name the same workers.
fn same_members(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|id| b.contains(id))
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

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn promoted(election: Election) -> Promotion {
        match election {
            Election::Promote(promotion) => promotion,
            wait => panic!("{wait:?}"),
        }
    }

    #[test]
    fn failover_promotes_the_newest_epoch_then_the_longest_log() {
        let (b1, c1, c2) = (worker("b1", "b"), worker("c1", "c"), worker("c2", "c"));
        let voters = Voters::Stable(ids(&["a1", "b1", "c1"]));
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
            let promotion = promoted(elect("a1", &voters, &[], &answers, &live));
            assert_eq!(promotion.leader, leader, "{answers:?}");
            assert_eq!(promotion.position, position);
            let next = promotion.voters.newest();
            assert_eq!(next.len(), 2);
            assert!(next.contains(&"b1".to_owned()) && next.contains(&"c1".to_owned()));
            if answers[0].0 == answers[1].0 {
                // Both hold the same log: {b1, c1} is committed at once,
                // and the dead leader is let go.
                assert!(!promotion.voters.is_joint());
                assert!(!promotion.replicas.contains(&"a1".to_owned()));
            } else {
                // The dead leader keeps its vote until the new leader's
                // log is on both copies.
                assert_eq!(promotion.voters.committed(), &ids(&["a1", "b1", "c1"])[..]);
                assert!(promotion.voters.is_joint());
                assert!(
                    promotion.replicas.contains(&"a1".to_owned()),
                    "still sent to"
                );
            }
        }
    }

    #[test]
    fn failover_waits_while_too_few_of_the_committed_voters_answer() {
        let (b1, c1) = (worker("b1", "b"), worker("c1", "c"));
        let three = Voters::Stable(ids(&["a1", "b1", "c1"]));
        assert_eq!(
            elect("a1", &three, &[], &[((1, 1), &b1)], &[&b1]),
            Election::Wait {
                answering: 1,
                needed: 2
            }
        );
        assert_eq!(
            elect("a1", &Voters::Stable(ids(&["a1"])), &[], &[], &[&b1]),
            Election::Wait {
                answering: 0,
                needed: 1
            }
        );
        // Hole 1: a1 died, b1 led {a1, b1, c1} → {b1, c1} and died before
        // the change was committed. c1 alone must not be elected.
        let joint = Voters::Joint {
            committed: ids(&["a1", "b1", "c1"]),
            next: ids(&["b1", "c1"]),
        };
        assert_eq!(
            elect("b1", &joint, &[], &[((2, 5), &c1)], &[&c1]),
            Election::Wait {
                answering: 1,
                needed: 2
            }
        );
        // Once committed, the two-copy configuration elects c1 alone: it
        // holds every batch committed on both.
        let committed = Voters::Stable(ids(&["b1", "c1"]));
        let promotion = promoted(elect("b1", &committed, &[], &[((2, 5), &c1)], &[&c1]));
        assert_eq!(promotion.leader, "c1");
        assert_eq!(promotion.voters, Voters::Stable(ids(&["c1"])));
    }

    #[test]
    fn a_second_failover_while_joint_is_still_decided_by_the_committed_voters() {
        let (a1, c1) = (worker("a1", "a"), worker("c1", "c"));
        let joint = Voters::Joint {
            committed: ids(&["a1", "b1", "c1"]),
            next: ids(&["b1", "c1"]),
        };
        // a1 came back (with the batches b1 never passed on to c1).
        let promotion = promoted(elect(
            "b1",
            &joint,
            &[],
            &[((1, 9), &a1), ((1, 7), &c1)],
            &[&a1, &c1],
        ));
        assert_eq!(promotion.leader, "a1");
        assert_eq!(
            promotion.voters,
            Voters::Joint {
                committed: ids(&["a1", "b1", "c1"]),
                next: ids(&["a1", "c1"]),
            }
        );
        assert_eq!(promotion.replicas, ids(&["c1", "b1"]));
    }

    #[test]
    fn a_joint_configuration_that_could_never_commit_is_not_chosen() {
        let (c1, d1) = (worker("c1", "c"), worker("d1", "d"));
        // b1 led {b1, c1} while d1 was joining, and died: c1 alone is no
        // majority of {b1, c1}, so a joint configuration would wait for b1
        // forever. The copy at the winner's position is enough; the other
        // follows as a learner.
        let growing = Voters::Joint {
            committed: ids(&["b1", "c1"]),
            next: ids(&["b1", "c1", "d1"]),
        };
        let promotion = promoted(elect(
            "b1",
            &growing,
            &[],
            &[((3, 12), &c1), ((3, 10), &d1)],
            &[&c1, &d1],
        ));
        assert_eq!(promotion.leader, "c1");
        assert_eq!(promotion.voters, Voters::Stable(ids(&["c1"])));
        assert_eq!(promotion.replicas, ids(&["d1"]));
    }

    #[test]
    fn failover_adds_spares_as_learners_never_the_dead_leader() {
        let (a1, a2, b1, c1) = (
            worker("a1", "a"),
            worker("a2", "a"),
            worker("b1", "b"),
            worker("c1", "c"),
        );
        // b1 and c1 answered for a shard the dead a1 led: zone a gets a
        // copy back on a2 as a learner, never on a1 itself.
        let promotion = promoted(elect(
            "a1",
            &Voters::Stable(ids(&["a1", "b1", "c1"])),
            &[],
            &[((2, 9), &b1), ((2, 9), &c1)],
            &[&a1, &a2, &b1, &c1],
        ));
        assert_eq!(promotion.leader, "b1");
        assert_eq!(promotion.replicas, ids(&["c1", "a2"]));
        assert_eq!(promotion.voters, Voters::Stable(ids(&["b1", "c1"])));
        // A shard of two copies (b1 answering, the dead leader a1).
        let promotion = promoted(elect(
            "a1",
            &Voters::Stable(ids(&["a1", "b1"])),
            &[],
            &[((2, 9), &b1)],
            &[&a1, &a2, &b1],
        ));
        assert_eq!(promotion.leader, "b1");
        assert_eq!(promotion.replicas, ids(&["a2"]));
        assert_eq!(promotion.voters, Voters::Stable(ids(&["b1"])));
        // A live learner stays one; a dead one is let go.
        let promotion = promoted(elect(
            "a1",
            &Voters::Stable(ids(&["a1", "b1"])),
            &ids(&["c1", "c2"]),
            &[((2, 9), &b1)],
            &[&b1, &c1],
        ));
        assert_eq!(promotion.replicas, ids(&["c1"]));
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
