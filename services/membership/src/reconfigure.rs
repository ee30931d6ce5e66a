//! Moving a shard's voting configuration on at its leader's word
//! (`ReportReplicas`): the only way voters change without a failover.
//!
//! The leader knows which copies hold its whole log up to its commit point
//! at its epoch; membership decides, under its publishing lock, from the
//! shard's row as it is then:
//! - a **joint** configuration whose every voter set has a majority among
//!   those copies becomes its next configuration: every batch committed so
//!   far is on a majority of the next voters, so elections may be decided
//!   by them alone. Voters of the old configuration only are let go (their
//!   copies become orphans the workers may remove);
//! - a joint configuration whose next set lost a member before it could be
//!   committed goes back to its committed set, if a majority of that holds
//!   the log (every batch committed so far is on such a majority);
//! - a **stable** configuration with room for more voters takes in the
//!   learners that hold the log — through a joint configuration, so that a
//!   leader still replicating under the old one commits nothing the next
//!   election could miss (`libs/types/src/voters.rs`).

use freshet_metastore::ShardRow;
use freshet_types::Voters;

use crate::placement::COPIES;

/// The shard's row after its leader reported that `holding` hold its log,
/// or `None` when nothing may change yet. `alive` says which workers
/// membership hears from.
pub fn after_report(
    row: &ShardRow,
    holding: &[String],
    alive: impl Fn(&str) -> bool,
) -> Option<ShardRow> {
    let holds = |id: &str| id == row.leader_worker_id || holding.iter().any(|h| h == id);
    match &row.voters {
        Voters::Joint { committed, next } => {
            if !row.voters.is_quorum(holds) {
                // A next voter died before the change was committed: back
                // to the committed configuration, which a majority holds
                // (every batch committed so far is on a majority of it).
                let abandoned = next.iter().any(|id| !alive(id));
                let back = Voters::Stable(committed.clone());
                return (abandoned && back.is_quorum(holds)).then(|| ShardRow {
                    voters: back,
                    ..row.clone()
                });
            }
            // Keep the next voters and the learners; let the old-only
            // voters go.
            let replica_worker_ids = row
                .replica_worker_ids
                .iter()
                .filter(|id| next.contains(id) || !row.voters.contains(id))
                .cloned()
                .collect();
            Some(ShardRow {
                voters: Voters::Stable(next.clone()),
                replica_worker_ids,
                ..row.clone()
            })
        }
        Voters::Stable(voters) => {
            let room = COPIES.saturating_sub(voters.len());
            let caught_up: Vec<String> = row
                .learners()
                .into_iter()
                .filter(|id| holds(id))
                .take(room)
                .collect();
            if caught_up.is_empty() {
                return None;
            }
            let next = voters.iter().cloned().chain(caught_up).collect();
            Some(ShardRow {
                voters: Voters::Joint {
                    committed: voters.clone(),
                    next,
                },
                ..row.clone()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_types::ShardState;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn row(leader: &str, replicas: &[&str], voters: Voters) -> ShardRow {
        ShardRow {
            stream_uid: 1,
            shard_id: "shardId-000000000000".to_owned(),
            starting_hash_key: "0".to_owned(),
            ending_hash_key: "1".to_owned(),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            sequence_base: 1,
            state: ShardState::Open,
            ending_offset: None,
            leader_worker_id: leader.to_owned(),
            replica_worker_ids: ids(replicas),
            voters,
            epoch: 2,
            close_generation: 0,
            segment_index: 0,
            segment_start_offset: 0,
            sealed_segments: Vec::new(),
        }
    }

    #[test]
    fn a_joint_configuration_is_left_once_a_majority_of_each_holds_the_log() {
        // a died; b leads; c lagged; d is a learner in a's zone.
        let joint = row(
            "b",
            &["c", "a", "d"],
            Voters::Joint {
                committed: ids(&["a", "b", "c"]),
                next: ids(&["b", "c"]),
            },
        );
        let all_alive = |_: &str| true;
        assert!(
            after_report(&joint, &ids(&["b"]), all_alive).is_none(),
            "c lags still"
        );
        assert!(
            after_report(&joint, &ids(&["b", "d"]), all_alive).is_none(),
            "a learner counts for nothing"
        );
        let left = after_report(&joint, &ids(&["b", "c"]), all_alive).expect("committed");
        assert_eq!(left.voters, Voters::Stable(ids(&["b", "c"])));
        assert_eq!(left.replica_worker_ids, ids(&["c", "d"]), "a is let go");
        // c dies before catching up; a came back and holds the log.
        let c_dead = |id: &str| id != "c";
        assert!(after_report(&joint, &ids(&["b"]), c_dead).is_none());
        let back = after_report(&joint, &ids(&["b", "a"]), c_dead).expect("back");
        assert_eq!(back.voters, Voters::Stable(ids(&["a", "b", "c"])));
        assert_eq!(back.replica_worker_ids, joint.replica_worker_ids);
    }

    #[test]
    fn caught_up_learners_become_voters_through_a_joint_configuration() {
        let stable = row("b", &["c", "d"], Voters::Stable(ids(&["b", "c"])));
        let alive = |_: &str| true;
        assert!(after_report(&stable, &ids(&["b", "c"]), alive).is_none());
        let growing = after_report(&stable, &ids(&["b", "c", "d"]), alive).expect("promoted");
        assert_eq!(
            growing.voters,
            Voters::Joint {
                committed: ids(&["b", "c"]),
                next: ids(&["b", "c", "d"]),
            }
        );
        assert_eq!(growing.replica_worker_ids, ids(&["c", "d"]));
        let grown = after_report(&growing, &ids(&["b", "c", "d"]), alive).expect("committed");
        assert_eq!(grown.voters, Voters::Stable(ids(&["b", "c", "d"])));
        // Three voters is enough: nothing more to do.
        assert!(after_report(&grown, &ids(&["b", "c", "d"]), alive).is_none());
    }
}
