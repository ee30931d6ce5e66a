//! The frontend: calls with append keys, routed by the entry it last
//! heard, resolved under their keys when their outcome is unknown, and a
//! reader checking what leaders serve.

use super::*;

impl World {
    pub(super) fn new_call(&mut self) {
        let call = self.next_call;
        self.next_call += 1;
        let count = self.rng.range(1, 4);
        let records = (0..count)
            .map(|i| Bytes::from(format!("c{call}-r{i}")))
            .collect();
        self.calls.insert(
            call,
            Call {
                records,
                segment: 0,
                resolving: false,
                attempt: 0,
                first_sent: self.now,
                done: false,
            },
        );
        self.send_call(call);
    }

    pub(super) fn send_call(&mut self, call: u64) {
        let Some(view) = self.frontend_view.clone() else {
            self.send(FRONTEND, MEMBERSHIP, Msg::Lookup);
            self.at(100, Event::RetryCall(call));
            return;
        };
        let Some(state) = self.calls.get_mut(&call) else {
            return;
        };
        if state.done {
            return;
        }
        let segment = view.row.segment_index;
        if !state.resolving {
            state.segment = segment;
        } else if state.segment != segment {
            // `coalescer.rs`: "the append's outcome is not known: shard
            // moved to a new segment meanwhile" — reported as perhaps
            // written, and not resolved further.
            state.done = true;
            self.outcome.unknown_after_move += 1;
            return;
        }
        state.attempt += 1;
        let attempt = state.attempt;
        let count = state.records.len() as u32;
        let mut records: Vec<NewRecord> = state
            .records
            .iter()
            .map(|data| NewRecord::new("k", data.clone()))
            .collect();
        if let Some(last) = records.last_mut() {
            last.ends_append = Some(AppendMark {
                key: AppendKey { frontend: 7, call },
                records: count,
            });
        }
        let job = Job {
            call,
            attempt,
            records,
            epoch: view.row.epoch,
            resolving: state.resolving,
        };
        if let Some(leader) = self.worker_index(&view.row.leader_worker_id) {
            self.send(FRONTEND, leader, Msg::Append(job));
        }
        self.at(CALL_DEADLINE_MS, Event::CallTimeout { call, attempt });
    }

    pub(super) fn call_timed_out(&mut self, call: u64, attempt: u64) {
        let Some(state) = self.calls.get_mut(&call) else {
            return;
        };
        if state.done || state.attempt != attempt {
            return;
        }
        // No answer: the outcome is unknown — resolve it from now on.
        state.resolving = true;
        self.send(FRONTEND, MEMBERSHIP, Msg::Lookup);
        self.send_call(call);
    }

    pub(super) fn frontend_receives(&mut self, msg: Msg) -> Result<(), Violation> {
        match msg {
            Msg::Entry(entry)
                if self
                    .frontend_view
                    .as_ref()
                    .is_none_or(|v| entry.version > v.version) =>
            {
                self.frontend_view = Some(*entry);
            }
            Msg::AppendReply {
                call,
                attempt,
                answer,
            } => {
                let now = self.now;
                if !matches!(answer, Answer::Landed(_)) {
                    self.send(FRONTEND, MEMBERSHIP, Msg::Lookup);
                }
                let Some(state) = self.calls.get_mut(&call) else {
                    return Ok(());
                };
                if state.done || state.attempt != attempt {
                    return Ok(());
                }
                match answer {
                    Answer::Landed(first) => {
                        if self.trace {
                            println!("{:>6} ms  frontend: call {call} landed at {first}", now);
                        }
                        state.done = true;
                        let records = state.records.clone();
                        self.checker.acknowledged(call, first, records)?;
                    }
                    Answer::NotWritten => {
                        if !state.resolving && now.saturating_sub(state.first_sent) > REROUTE_MS {
                            // Reported as failed: it must never be written.
                            state.done = true;
                            self.checker.refused(call);
                        } else {
                            state.attempt += 1;
                            self.at(50, Event::RetryCall(call));
                        }
                    }
                    Answer::Unknown => {
                        state.resolving = true;
                        state.attempt += 1;
                        self.at(50, Event::RetryCall(call));
                    }
                    Answer::Absent => {
                        self.outcome.absent += 1;
                        if self.trace {
                            println!(
                                "{:>6} ms  frontend: call {call} absent (attempt {})",
                                now, state.attempt
                            );
                        }
                        // Settled: it never landed. The coalescer routes
                        // the records again as a new write, which a closed
                        // shard refuses — reported as failed.
                        state.resolving = false;
                        state.attempt += 1;
                        self.at(50, Event::RetryCall(call));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A reader asks the leader (as the frontend sees it) for committed
    /// records: each must be committed, as committed.
    pub(super) fn read_from_leader(&mut self) -> Result<(), Violation> {
        let Some(view) = &self.frontend_view else {
            return Ok(());
        };
        let Some(w) = self.worker_index(&view.row.leader_worker_id) else {
            return Ok(());
        };
        if !self.workers[w].up || !self.lease_ok(w) || self.leading_epoch(w) != Some(view.row.epoch)
        {
            return Ok(());
        }
        let Some(log) = self.workers[w].log.clone() else {
            return Ok(());
        };
        let from = self
            .rng
            .range(log.trim_horizon(), log.committed_offset() + 1);
        if let Ok(batch) = log.read(from, 20, u64::MAX) {
            self.checker.served(w, &batch.records)?;
        }
        Ok(())
    }
}
