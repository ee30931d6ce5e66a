//! Which copies of a shard vote — Raft's *configuration* — and the two
//! quorum rules built on it: when a write is committed, and when an
//! election has heard from enough copies to be sure of every committed
//! write.
//!
//! A shard's copies are its leader, its voting replicas and its
//! *learners*: copies that receive every batch but count for nothing until
//! they have caught up and are promoted. The voters change only through a
//! *joint* configuration (Raft's joint consensus, §6 of the Raft paper):
//! from `committed` to `next`, a write needs a majority of each, so every
//! write is on a majority of `committed` until membership, at the leader's
//! word, makes `next` the committed configuration.
//!
//! The rules, and why they are enough (the rest of the argument is at the
//! top of `services/membership/src/failover.rs`):
//! - **commit**: a majority of every voter set ([`Voters::is_quorum`]);
//! - **election**: answers from more of `committed` than any majority of it
//!   leaves out ([`Voters::election_has_heard_enough`]), so at least one
//!   answer comes from every majority a write was committed on — whether
//!   the leader committed it under `committed` alone, still unaware of a
//!   change, or under the joint configuration. Nothing is ever committed
//!   under `next` alone while the configuration is joint.
//!
//! Everything here is pure; the worker ids are the storage workers'.

/// A shard's voting configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Voters {
    /// One configuration, committed: a write needs a majority of it.
    Stable(Vec<String>),
    /// Changing from `committed` to `next`: a write needs a majority of
    /// each; an election is decided by `committed`.
    Joint {
        committed: Vec<String>,
        next: Vec<String>,
    },
}

/// More than half of `n`.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl Voters {
    /// The configuration stored as two lists (`next` empty when stable).
    pub fn from_lists(committed: &[String], next: &[String]) -> Voters {
        if next.is_empty() {
            Voters::Stable(committed.to_vec())
        } else {
            Voters::Joint {
                committed: committed.to_vec(),
                next: next.to_vec(),
            }
        }
    }

    /// The two lists it is stored as (`next` empty when stable).
    pub fn to_lists(&self) -> (Vec<String>, Vec<String>) {
        match self {
            Voters::Stable(voters) => (voters.clone(), Vec::new()),
            Voters::Joint { committed, next } => (committed.clone(), next.clone()),
        }
    }

    /// The last committed configuration: what elections are decided by.
    pub fn committed(&self) -> &[String] {
        match self {
            Voters::Stable(voters) => voters,
            Voters::Joint { committed, .. } => committed,
        }
    }

    /// The configuration being moved to, while joint.
    pub fn next(&self) -> Option<&[String]> {
        match self {
            Voters::Stable(_) => None,
            Voters::Joint { next, .. } => Some(next),
        }
    }

    /// The configuration the shard is heading for (the committed one when
    /// stable).
    pub fn newest(&self) -> &[String] {
        self.next().unwrap_or(self.committed())
    }

    /// Whether the configuration is changing.
    pub fn is_joint(&self) -> bool {
        matches!(self, Voters::Joint { .. })
    }

    /// Every voter of either configuration, each once, `committed` first.
    pub fn members(&self) -> Vec<&str> {
        let mut members: Vec<&str> = Vec::new();
        for id in self.committed().iter().chain(self.next().unwrap_or(&[])) {
            if !members.contains(&id.as_str()) {
                members.push(id);
            }
        }
        members
    }

    /// Whether `worker_id` votes in either configuration.
    pub fn contains(&self, worker_id: &str) -> bool {
        self.members().contains(&worker_id)
    }

    fn sets(&self) -> impl Iterator<Item = &[String]> {
        std::iter::once(self.committed()).chain(self.next())
    }

    /// Whether the copies for which `holds` is true make a commit quorum:
    /// a majority of every voter set. An empty set has no majority.
    pub fn is_quorum(&self, holds: impl Fn(&str) -> bool) -> bool {
        self.sets().all(|set| {
            !set.is_empty() && set.iter().filter(|id| holds(id)).count() >= majority(set.len())
        })
    }

    /// Whether every voter of the newest configuration, and a majority of
    /// every set, hold it (the stricter "all copies" acknowledgement).
    pub fn all_of_newest_hold(&self, holds: impl Fn(&str) -> bool) -> bool {
        self.newest().iter().all(|id| holds(id)) && self.is_quorum(holds)
    }

    /// How many voters of `committed` must answer before a leader may be
    /// elected: one more than any majority of it leaves out.
    pub fn election_answers_needed(&self) -> usize {
        let size = self.committed().len();
        (size + 1).saturating_sub(majority(size))
    }

    /// Whether the voters for which `answered` is true include a copy of
    /// every write that may have been committed (see the module's rules).
    pub fn election_has_heard_enough(&self, answered: impl Fn(&str) -> bool) -> bool {
        let heard = self.committed().iter().filter(|id| answered(id)).count();
        !self.committed().is_empty() && heard >= self.election_answers_needed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn holding<'a>(list: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
        move |id| list.contains(&id)
    }

    #[test]
    fn a_stable_configuration_commits_on_a_majority() {
        let voters = Voters::Stable(ids(&["a", "b", "c"]));
        // (holders, quorum?)
        let table: [(&[&str], bool); 5] = [
            (&["a", "b"], true),
            (&["b", "c"], true),
            (&["a"], false),
            (&["a", "d"], false),
            (&["a", "b", "c"], true),
        ];
        for (holders, quorum) in table {
            assert_eq!(voters.is_quorum(holding(holders)), quorum, "{holders:?}");
        }
    }

    #[test]
    fn a_joint_configuration_commits_on_a_majority_of_each() {
        // a died; b leads; the configuration moves from {a, b, c} to {b, c}.
        let voters = Voters::Joint {
            committed: ids(&["a", "b", "c"]),
            next: ids(&["b", "c"]),
        };
        let table: [(&[&str], bool); 4] = [
            (&["b", "c"], true),
            // A majority of the old set, not of the new one.
            (&["a", "b"], false),
            (&["b"], false),
            (&["a", "b", "c"], true),
        ];
        for (holders, quorum) in table {
            assert_eq!(voters.is_quorum(holding(holders)), quorum, "{holders:?}");
        }
    }

    #[test]
    fn an_election_is_decided_by_the_committed_configuration() {
        let joint = Voters::Joint {
            committed: ids(&["a", "b", "c"]),
            next: ids(&["b", "c"]),
        };
        // Hole 1 of issue 13: a and b are down, c lags. c alone is a
        // majority of the new set, but not enough of the committed one.
        assert!(!joint.election_has_heard_enough(holding(&["c"])));
        assert!(joint.election_has_heard_enough(holding(&["a", "c"])));
        // A learner promoted in `next` does not count towards the election.
        let growing = Voters::Joint {
            committed: ids(&["b", "c"]),
            next: ids(&["b", "c", "d"]),
        };
        assert!(!growing.election_has_heard_enough(holding(&["d"])));
        assert!(growing.election_has_heard_enough(holding(&["c"])));
        // (committed voters, answers needed)
        let table: [(&[&str], usize); 4] = [
            (&["a"], 1),
            (&["a", "b"], 1),
            (&["a", "b", "c"], 2),
            (&["a", "b", "c", "d", "e"], 3),
        ];
        for (committed, needed) in table {
            let voters = Voters::Stable(ids(committed));
            assert_eq!(voters.election_answers_needed(), needed, "{committed:?}");
        }
        assert!(!Voters::Stable(Vec::new()).election_has_heard_enough(|_| true));
    }

    #[test]
    fn every_commit_quorum_meets_every_sufficient_election() {
        // Exhaustively over subsets of five workers: whatever was committed
        // under the committed set alone or under the joint configuration
        // has a copy among the answers of any election that heard enough.
        let all = ["a", "b", "c", "d", "e"];
        let subsets = |mask: u32| -> Vec<String> {
            all.iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, id)| (*id).to_owned())
                .collect()
        };
        for committed_mask in 1..32u32 {
            for next_mask in 0..32u32 {
                let committed = subsets(committed_mask);
                let voters = Voters::from_lists(&committed, &subsets(next_mask));
                let stale = Voters::Stable(committed.clone());
                for commit_mask in 0..32u32 {
                    let holders = subsets(commit_mask);
                    let held = |id: &str| holders.iter().any(|h| h == id);
                    if !voters.is_quorum(held) && !stale.is_quorum(held) {
                        continue;
                    }
                    for answer_mask in 0..32u32 {
                        let answers = subsets(answer_mask);
                        let answered = |id: &str| answers.iter().any(|a| a == id);
                        if voters.election_has_heard_enough(answered) {
                            assert!(
                                holders.iter().any(|h| answers.contains(h)),
                                "{voters:?}: committed on {holders:?}, elected from {answers:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn lists_round_trip_and_members_are_listed_once() {
        let joint = Voters::from_lists(&ids(&["a", "b", "c"]), &ids(&["b", "c", "d"]));
        assert!(joint.is_joint());
        assert_eq!(joint.members(), vec!["a", "b", "c", "d"]);
        assert_eq!(
            Voters::from_lists(&joint.to_lists().0, &joint.to_lists().1),
            joint
        );
        let stable = Voters::from_lists(&ids(&["a"]), &[]);
        assert_eq!(stable, Voters::Stable(ids(&["a"])));
        assert_eq!(stable.newest(), &ids(&["a"])[..]);
        assert!(joint.all_of_newest_hold(holding(&["b", "c", "d"])));
        assert!(!joint.all_of_newest_hold(holding(&["b", "c"])));
    }
}
