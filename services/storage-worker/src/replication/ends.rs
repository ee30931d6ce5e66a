//! Where each replica's log ends, as the leader last heard it at its
//! current epoch: what it counts towards a commit, a seal and a report.
//! Pure, so the deterministic simulator (`tests/sim`) runs this very code.
//!
//! Invariant: a replica counts only once it has answered the leader's
//! current epoch. Answering adopts the leader's epoch history and drops
//! what the leader never had, so from then on its records are the leader's
//! (Raft: a leader commits earlier terms' entries only through its own).
//! Every end is forgotten when the epoch changes.

use std::collections::BTreeMap;

use freshet_types::Voters;

use super::AckRule;

/// Where each placed replica's log ends, learned at one epoch.
#[derive(Debug, Default, Clone)]
pub struct ReplicaEnds {
    epoch: u64,
    ends: BTreeMap<String, u64>,
}

impl ReplicaEnds {
    /// Takes up the shard's entry as it is now: ends learned at another
    /// epoch are forgotten, and so are workers no longer placed (one
    /// placed again is asked afresh). Called as each round and catch-up
    /// begins. A replica unplaced and placed again at one epoch between
    /// two calls keeps its end: its copy is kept at least 5 s after it is
    /// unplaced (two orphan scans, `lib.rs`), longer than between rounds.
    pub fn follow(&mut self, epoch: u64, replicas: &[String]) {
        if self.epoch != epoch {
            self.ends.clear();
            self.epoch = epoch;
        }
        self.ends.retain(|id, _| replicas.contains(id));
    }

    /// Where `replica`'s log ends, if it answered this epoch.
    pub fn get(&self, replica: &str) -> Option<u64> {
        self.ends.get(replica).copied()
    }

    /// What `replica` answered at the epoch followed: where its log ends,
    /// or nothing (it did not answer: its end is no longer known).
    pub fn heard(&mut self, replica: &str, end: Option<u64>) {
        match end {
            Some(end) => {
                self.ends.insert(replica.to_owned(), end);
            }
            None => {
                self.ends.remove(replica);
            }
        }
    }

    /// Whether the leader and the replicas that answered `epoch` with an
    /// end for which `holds` is true meet `rule` over `voters`.
    pub fn quorum(
        &self,
        rule: AckRule,
        voters: &Voters,
        leader: &str,
        epoch: u64,
        holds: impl Fn(u64) -> bool,
    ) -> bool {
        self.epoch == epoch
            && rule.is_met(voters, |id| {
                id == leader || self.ends.get(id).is_some_and(|end| holds(*end))
            })
    }

    /// The copies holding the leader's log at `epoch` up to at least
    /// `needed_end`: the leader first, then each such replica of
    /// `replicas`, in order. Empty if the ends are of another epoch.
    pub fn holding(
        &self,
        leader: &str,
        epoch: u64,
        replicas: &[String],
        needed_end: u64,
    ) -> Vec<String> {
        if self.epoch != epoch {
            return Vec::new();
        }
        std::iter::once(leader.to_owned())
            .chain(
                replicas
                    .iter()
                    .filter(|id| self.get(id).is_some_and(|end| end >= needed_end))
                    .cloned(),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::AckCopies;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    const MAJORITY: AckRule = AckRule {
        copies: AckCopies::Majority,
        min_voters: 2,
    };

    #[test]
    fn an_end_heard_at_an_older_epoch_counts_for_nothing() {
        let voters = Voters::Stable(ids(&["l", "r1", "r2"]));
        let mut ends = ReplicaEnds::default();
        ends.follow(3, &ids(&["r1", "r2"]));
        ends.heard("r1", Some(10));
        assert!(ends.quorum(MAJORITY, &voters, "l", 3, |end| end >= 10));
        ends.follow(4, &ids(&["r1", "r2"]));
        assert_eq!(ends.get("r1"), None);
        assert!(!ends.quorum(MAJORITY, &voters, "l", 4, |end| end >= 10));
        assert!(!ends.quorum(MAJORITY, &voters, "l", 3, |end| end >= 10));
    }

    #[test]
    fn a_replica_no_longer_placed_is_forgotten() {
        let mut ends = ReplicaEnds::default();
        ends.follow(1, &ids(&["r1", "r2"]));
        ends.heard("r2", Some(5));
        ends.follow(1, &ids(&["r1"]));
        assert_eq!(ends.get("r2"), None);
        assert_eq!(ends.holding("l", 1, &ids(&["r1", "r2"]), 0), ids(&["l"]));
    }

    #[test]
    fn a_silent_replica_holds_nothing() {
        let mut ends = ReplicaEnds::default();
        ends.follow(2, &ids(&["r1", "r2"]));
        ends.heard("r1", Some(7));
        ends.heard("r2", Some(9));
        assert_eq!(
            ends.holding("l", 2, &ids(&["r1", "r2"]), 8),
            ids(&["l", "r2"])
        );
        ends.heard("r2", None);
        assert_eq!(ends.holding("l", 2, &ids(&["r1", "r2"]), 8), ids(&["l"]));
        assert!(ends.holding("l", 1, &ids(&["r1", "r2"]), 0).is_empty());
    }
}
