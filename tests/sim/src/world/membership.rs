//! Membership and the control plane acting through it: heartbeats and
//! leases (membership's own `Silences` and `lease_granted`), failover
//! (its own `elect`), placement repair and reconfiguration, and closing,
//! reopening, sealing and moving the shard.

use super::*;

impl World {
    pub(super) fn membership_receives(&mut self, from: usize, msg: Msg) {
        if !self.membership_up {
            return;
        }
        match msg {
            Msg::Heartbeat { sent_local } => {
                let id = self.workers[from].id.clone();
                if !self.workers[from].registered {
                    // A restarted worker registers first (here, with its
                    // first heartbeat), and registering needs Postgres: it
                    // gets nothing until it has.
                    if !self.postgres_up {
                        return;
                    }
                    self.register(from);
                }
                let in_postgres = if self.postgres_up {
                    self.last_heard[from] = self.now;
                    true
                } else if self.silences.was_heard(&id) {
                    false
                } else {
                    // Recorded nowhere, by a process that never heard it:
                    // an error answer (`handlers.rs`).
                    return;
                };
                // Membership's own record of the heartbeat and its lease
                // rule (`silences.rs`).
                let on_timer = self.silences.heard_from(&id, self.timer_now());
                let granted = lease_granted(HeartbeatRecord {
                    in_postgres,
                    on_timer,
                    // A failover here is decided in one step.
                    being_deposed: false,
                    head_uncertain: self.unsettled_head,
                });
                if granted {
                    let version = self.version;
                    self.send(
                        MEMBERSHIP,
                        from,
                        Msg::HeartbeatReply {
                            sent_local,
                            version,
                        },
                    );
                }
                // A worker that missed a broadcast hears the entry again.
                let stale = self.workers[from]
                    .view
                    .as_ref()
                    .is_none_or(|v| v.version < self.version);
                if stale {
                    self.send_entry(from);
                }
            }
            Msg::Lookup if !self.unsettled_head => {
                let entry = Entry {
                    version: self.version,
                    row: self.row.clone(),
                };
                self.send(MEMBERSHIP, FRONTEND, Msg::Entry(Box::new(entry)));
            }
            Msg::Sealed {
                epoch,
                generation,
                end,
            } => {
                // The control plane may pause before it completes the seal
                // (a rolling update, a GC pause): the shard may be
                // reopened and closed again meanwhile.
                let pause = if self.rng.chance(0.3) {
                    self.rng.range(0, 3_000)
                } else {
                    0
                };
                self.at(
                    pause,
                    Event::CompleteSeal {
                        epoch,
                        generation,
                        end,
                    },
                );
            }
            Msg::Report {
                epoch,
                voters,
                holding,
            } => {
                if epoch != self.row.epoch
                    || voters != self.row.voters
                    || self.row.leader_worker_id != self.workers[from].id
                    || !self.postgres_up
                {
                    return;
                }
                let now = self.now;
                let heard = self.last_heard.clone();
                let workers: Vec<String> = self.workers.iter().map(|w| w.id.clone()).collect();
                let alive = |id: &str| {
                    workers
                        .iter()
                        .position(|w| w == id)
                        .is_some_and(|i| now.saturating_sub(heard[i]) < HEARTBEAT_TIMEOUT_MS)
                };
                if let Some(row) = decisions::after_report(&self.row, &holding, alive) {
                    self.row = row;
                    self.version += 1;
                    self.broadcast();
                }
            }
            _ => {}
        }
    }

    // ----- the control plane (through membership) -----

    /// `close_shards`: CLOSING at a new close generation. From then on the
    /// leader refuses appends; the control plane asks it to seal.
    pub(super) fn begin_closing(&mut self) {
        if self.settling || self.row.state != ShardState::Open {
            return;
        }
        if !self.store_up() {
            self.at(SEAL_RETRY_MS, Event::BeginClosing);
            return;
        }
        self.row.state = ShardState::Closing;
        self.row.close_generation += 1;
        self.version += 1;
        let generation = self.row.close_generation;
        self.note(|| format!("the shard is closing (generation {generation})"));
        self.broadcast();
        self.at(50, Event::SealAttempt(generation));
    }

    /// `reopen_shards`: a move abandoned while its shard was being sealed.
    pub(super) fn reopen(&mut self) {
        if self.row.state != ShardState::Closing || !self.store_up() {
            return;
        }
        self.row.state = ShardState::Open;
        self.row.close_generation += 1;
        self.version += 1;
        self.note(|| {
            format!(
                "the shard is reopened (generation {})",
                self.row.close_generation
            )
        });
        self.broadcast();
    }

    /// `reshard.rs`, `seal`: asks the closing shard's current leader to
    /// seal it, again and again (a failover may be under way), while the
    /// close generation is the one this attempt began under.
    pub(super) fn seal_attempt(&mut self, generation: u64) {
        if self.row.state != ShardState::Closing || self.row.close_generation != generation {
            return;
        }
        if self.store_up() && !self.unsettled_head {
            let epoch = self.row.epoch;
            let leader = self.row.leader_worker_id.clone();
            if let Some(leader) = self.worker_index(&leader) {
                self.send(MEMBERSHIP, leader, Msg::Seal { epoch, generation });
            }
        }
        self.at(SEAL_RETRY_MS, Event::SealAttempt(generation));
    }

    /// The seal's completion: `complete_reshard` (CLOSED at the sealed end;
    /// a split or a merge) or `relocate_shard` (a move: the next segment
    /// opens at the sealed end on a new placement, at the next epoch) —
    /// only at the close generation the seal began under (hole 3's fence),
    /// and for a move only at the epoch it was sealed at.
    pub(super) fn complete_seal(
        &mut self,
        epoch: u64,
        generation: u64,
        end: u64,
    ) -> Result<(), Violation> {
        let fenced_off = self.row.close_generation != generation && !self.holes.hole_3;
        if !self.store_up() || self.row.state != ShardState::Closing || fenced_off {
            self.note(|| format!("a seal at {end} (generation {generation}) is refused"));
            if self.row.close_generation != generation {
                self.outcome.seals_fenced += 1;
            }
            return Ok(());
        }
        let segment = self.row.segment_index;
        if self.rng.chance(0.5) {
            return self.relocate(epoch, end);
        }
        self.outcome.seals += 1;
        self.row.state = ShardState::Closed;
        self.row.ending_offset = Some(end);
        self.version += 1;
        self.note(|| format!("the shard is closed at {end}"));
        self.checker
            .sealed(segment, self.row.segment_start_offset, end)?;
        self.broadcast();
        Ok(())
    }

    /// `relocate_shard`: the sealed segment stays where it is (read-only);
    /// the next one starts at `end` on the placement membership's own
    /// `place_next_segment` chooses around a live worker, every copy a
    /// voter.
    pub(super) fn relocate(&mut self, epoch: u64, end: u64) -> Result<(), Violation> {
        if self.row.epoch != epoch {
            self.note(|| format!("a move sealed at epoch {epoch} is refused"));
            return Ok(());
        }
        let live: Vec<WorkerRow> = (0..self.workers.len())
            .filter(|&i| self.alive(i))
            .map(|i| worker_row(&self.workers[i].id, self.workers[i].zone))
            .collect();
        let Some(target) = self.rng.pick(&live).cloned() else {
            return Ok(());
        };
        let Some(sealer) = self.worker_index(&self.row.leader_worker_id.clone()) else {
            return Ok(());
        };
        let placement = decisions::place_next_segment(&live, &target, &HashMap::new());
        let segment = self.row.segment_index;
        self.checker
            .sealed(segment, self.row.segment_start_offset, end)?;
        self.sealed_segments.push((segment, sealer));
        self.outcome.moves += 1;
        let voters = Voters::Stable(
            std::iter::once(placement.leader.clone())
                .chain(placement.replicas.iter().cloned())
                .collect(),
        );
        self.row.state = ShardState::Open;
        self.row.leader_worker_id = placement.leader;
        self.row.replica_worker_ids = placement.replicas;
        self.row.voters = voters;
        self.row.epoch += 1;
        self.row.close_generation += 1;
        self.row.segment_index += 1;
        self.row.segment_start_offset = end;
        self.version += 1;
        self.note(|| {
            format!(
                "the shard moves at {end}: segment {} led by {} at epoch {}, replicas {:?}",
                self.row.segment_index,
                self.row.leader_worker_id,
                self.row.epoch,
                self.row.replica_worker_ids
            )
        });
        self.broadcast();
        Ok(())
    }

    /// The timer service's clock, as membership's timer client reads it
    /// (`libs/timer-client`): the true time within ±2 ms; while the timer
    /// is unreachable, its last reading carried forward with a 200 ppm
    /// drift allowance — for 5 s, then nothing.
    pub(super) fn timer_now(&self) -> Option<TimeInterval> {
        let since_sync_ms = self
            .timer_down_since
            .map_or(0, |down| self.now.saturating_sub(down));
        if since_sync_ms > TIMER_MAX_UNSYNCED_MS {
            return None;
        }
        let micros = 1_700_000_000_000_000 + self.now as i64 * 1_000;
        let error = 2_000 + since_sync_ms as i64 * 1_000 * 200 / 1_000_000 + 1;
        Some(TimeInterval {
            earliest_micros: micros - error,
            latest_micros: micros + error,
        })
    }

    /// Whether membership can reach Postgres (every change-log commit and
    /// every control-plane step needs it).
    pub(super) fn store_up(&self) -> bool {
        self.membership_up && self.postgres_up
    }

    pub(super) fn alive(&self, w: usize) -> bool {
        self.now.saturating_sub(self.last_heard[w]) < HEARTBEAT_TIMEOUT_MS
    }

    pub(super) fn membership_tick(&mut self) {
        // Every step of the check reads or writes Postgres.
        if !self.membership_up || !self.postgres_up {
            return;
        }
        if self.unsettled_head {
            // Read back: the head is known again, and broadcast.
            self.unsettled_head = false;
            self.broadcast();
        }
        let Some(leader) = self.worker_index(&self.row.leader_worker_id) else {
            return;
        };
        // `check_once`: every worker Postgres calls silent is checked
        // against the timer (which starts counting one never heard); a
        // leader proven silent is failed over.
        let timer = self.timer_now();
        let timeout_micros = HEARTBEAT_TIMEOUT_MS as i64 * 1_000;
        let mut leader_silent = false;
        for w in 0..self.workers.len() {
            if self.alive(w) {
                continue;
            }
            let id = self.workers[w].id.clone();
            let silent = self.silences.surely_silent(&id, timer, timeout_micros);
            leader_silent |= silent && w == leader;
        }
        if !self.alive(leader) {
            if leader_silent {
                self.fail_over(leader);
            }
            return;
        }
        // Placement repair: a shard on fewer than three copies gets a spare
        // as a learner.
        let copies: Vec<usize> = std::iter::once(self.row.leader_worker_id.clone())
            .chain(self.row.replica_worker_ids.clone())
            .filter_map(|id| self.worker_index(&id))
            .collect();
        if copies.len() < decisions::COPIES {
            let placed: Vec<WorkerRow> = copies
                .iter()
                .map(|&i| worker_row(&self.workers[i].id, self.workers[i].zone))
                .collect();
            let live: Vec<WorkerRow> = (0..self.workers.len())
                .filter(|&i| self.alive(i))
                .map(|i| worker_row(&self.workers[i].id, self.workers[i].zone))
                .collect();
            let placed_refs: Vec<&WorkerRow> = placed.iter().collect();
            let live_refs: Vec<&WorkerRow> = live.iter().collect();
            if let Some(spare) = decisions::spare_replica(&placed_refs, &live_refs) {
                self.row.replica_worker_ids.push(spare.worker_id.clone());
                self.version += 1;
                self.broadcast();
            }
        }
    }

    /// `failover.rs`: ask every voter that answers how current its copy
    /// is, and let `elect` decide.
    pub(super) fn fail_over(&mut self, dead: usize) {
        let voters = self.row.voters.clone();
        let mut answers: Vec<((u64, u64), WorkerRow)> = Vec::new();
        let mut silent_live_voter = false;
        for id in voters.members() {
            let Some(i) = self.worker_index(id) else {
                continue;
            };
            if i == dead {
                continue;
            }
            let reachable = self.workers[i].up && self.linked(i, MEMBERSHIP);
            if !reachable {
                silent_live_voter |= self.alive(i);
                continue;
            }
            // The copy answers from its disk (opened if need be).
            let position = match &self.workers[i].log {
                Some(log) => log.election_position(),
                None => {
                    let dir = self.segment_dir(i, self.row.segment_index);
                    let start = self.row.segment_start_offset;
                    match ShardLog::open_from(&dir, self.log_config.clone(), start) {
                        Ok(log) => log.election_position(),
                        Err(_) => continue,
                    }
                }
            };
            answers.push((position, worker_row(id, self.workers[i].zone)));
        }
        // Membership waits for every live voter (`failover.rs`).
        if silent_live_voter {
            return;
        }
        let learners = self.row.learners();
        let live: Vec<WorkerRow> = (0..self.workers.len())
            .filter(|&i| self.alive(i) && i != dead)
            .map(|i| worker_row(&self.workers[i].id, self.workers[i].zone))
            .collect();
        let answer_refs: Vec<((u64, u64), &WorkerRow)> =
            answers.iter().map(|(p, w)| (*p, w)).collect();
        let live_refs: Vec<&WorkerRow> = live.iter().collect();
        let voters_for_election = if self.holes.hole_1 && !answers.is_empty() {
            // Hole 1: size the election by the answering copies alone.
            Voters::Stable(answers.iter().map(|(_, w)| w.worker_id.clone()).collect())
        } else {
            voters.clone()
        };
        match decisions::elect(
            &self.workers[dead].id,
            &voters_for_election,
            &learners,
            &answer_refs,
            &live_refs,
        ) {
            Election::Promote(promotion) => {
                self.outcome.failovers += 1;
                self.row.leader_worker_id = promotion.leader;
                self.row.replica_worker_ids = promotion.replicas;
                self.row.voters = if self.holes.hole_1 {
                    // ... and drop the deposed leader's vote at once.
                    Voters::Stable(
                        promotion
                            .voters
                            .members()
                            .into_iter()
                            .filter(|id| *id != self.workers[dead].id)
                            .map(str::to_owned)
                            .collect(),
                    )
                } else {
                    promotion.voters
                };
                if self.holes.hole_1 {
                    let dead_id = self.workers[dead].id.clone();
                    self.row.replica_worker_ids.retain(|id| *id != dead_id);
                }
                self.row.epoch += 1;
                self.version += 1;
                self.note(|| {
                    format!(
                        "failover: w{dead} -> {} at epoch {}, voters {:?}",
                        self.row.leader_worker_id, self.row.epoch, self.row.voters
                    )
                });
                // Sometimes the commit's answer is lost: the change is made
                // but membership broadcasts it (and grants leases) only
                // once it has read the head back.
                if self.rng.chance(0.2) && !self.settling {
                    self.unsettled_head = true;
                } else {
                    self.broadcast();
                }
            }
            Election::Wait { .. } => {}
        }
    }

    pub(super) fn send_entry(&mut self, w: usize) {
        let entry = Entry {
            version: self.version,
            row: self.row.clone(),
        };
        self.send(MEMBERSHIP, w, Msg::Entry(Box::new(entry)));
    }

    pub(super) fn broadcast(&mut self) {
        for w in 0..self.workers.len() {
            self.send_entry(w);
        }
        let entry = Entry {
            version: self.version,
            row: self.row.clone(),
        };
        self.send(MEMBERSHIP, FRONTEND, Msg::Entry(Box::new(entry)));
    }
}
