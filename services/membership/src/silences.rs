//! Who membership heard from, and when, on the timer's clock; whether a
//! heartbeat earns a lease. Pure over the timer's reading, so the
//! deterministic simulator (`tests/sim`) runs this very code under timer
//! and Postgres outages.
//!
//! Invariants (the safety argument is in `failover.rs`):
//! - a leader is failed over only when the timer proves it silent past the
//!   heartbeat timeout ([`Silences::surely_silent`]);
//! - a heartbeat heard while the timer is away is remembered as such, and
//!   its silence is counted from the timer's return, never across the
//!   outage ([`Heard::DuringTimerOutage`]);
//! - a lease is granted only for a heartbeat recorded where failover looks
//!   — in Postgres or on the timer — and never while this worker is being
//!   deposed or the change-log head is uncertain ([`lease_granted`]).

use std::collections::HashMap;

use freshet_timer_client::TimeInterval;

/// When membership last heard from a worker, by the timer's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// At this timer time (its latest bound, in microseconds).
    At(i64),
    /// While the timer was unreachable: its silence is counted from the
    /// timer's return, never across the outage.
    DuringTimerOutage,
}

/// When each worker was last heard from, since this process started.
#[derive(Debug, Default)]
pub struct Silences {
    last_heard: HashMap<String, Heard>,
}

impl Silences {
    /// Records that `worker` was heard from just now (`timer`: the timer's
    /// reading, `None` while it is unreachable). Whether that time is known
    /// on the timer's clock.
    pub fn heard_from(&mut self, worker: &str, timer: Option<TimeInterval>) -> bool {
        let heard = match timer {
            Some(now) => Heard::At(now.latest_micros),
            None => Heard::DuringTimerOutage,
        };
        let entry = self.last_heard.entry(worker.to_owned()).or_insert(heard);
        // Concurrent heartbeats may land out of order: keep the latest
        // time, and an outage mark until the timer's return converts it.
        *entry = match (*entry, heard) {
            (Heard::At(before), Heard::At(now)) => Heard::At(before.max(now)),
            (Heard::DuringTimerOutage, _) | (_, Heard::DuringTimerOutage) => {
                Heard::DuringTimerOutage
            }
        };
        heard != Heard::DuringTimerOutage
    }

    /// Whether this process has heard from `worker` since it started.
    pub fn was_heard(&self, worker: &str) -> bool {
        self.last_heard.contains_key(worker)
    }

    /// Whether the timer proves `worker` silent for longer than
    /// `timeout_micros`. A worker never heard since this process started,
    /// or heard while the timer was away (and so perhaps given a lease
    /// then), starts being counted now.
    pub fn surely_silent(
        &mut self,
        worker: &str,
        timer: Option<TimeInterval>,
        timeout_micros: i64,
    ) -> bool {
        let Some(now) = timer else {
            return false;
        };
        let heard = self
            .last_heard
            .entry(worker.to_owned())
            .or_insert(Heard::At(now.latest_micros));
        if *heard == Heard::DuringTimerOutage {
            *heard = Heard::At(now.latest_micros);
        }
        match *heard {
            Heard::At(at) => now.earliest_micros > at.saturating_add(timeout_micros),
            Heard::DuringTimerOutage => false,
        }
    }
}

/// What membership knows as it answers a heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatRecord {
    /// The heartbeat is recorded in Postgres.
    pub in_postgres: bool,
    /// It is recorded against the timer's clock ([`Silences::heard_from`]).
    pub on_timer: bool,
    /// A failover of this worker's shards is under way.
    pub being_deposed: bool,
    /// A change-log commit's outcome is unknown: so is the head a lease
    /// must carry.
    pub head_uncertain: bool,
}

/// Whether the heartbeat earns a lease. A heartbeat recorded in neither
/// Postgres nor against the timer could be followed by a failover that
/// never saw it, while its lease still ran; one from a worker being
/// deposed is heard (the failover stands down) but leads to no lease until
/// it has decided; and while the head is uncertain, no lease can carry it.
pub fn lease_granted(record: HeartbeatRecord) -> bool {
    (record.in_postgres || record.on_timer) && !record.being_deposed && !record.head_uncertain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> Option<TimeInterval> {
        Some(TimeInterval {
            earliest_micros: micros - 10,
            latest_micros: micros + 10,
        })
    }

    #[test]
    fn silence_is_proven_only_by_the_timer() {
        let mut silences = Silences::default();
        assert!(silences.heard_from("w", at(1_000)));
        assert!(!silences.surely_silent("w", at(3_000), 3_000));
        assert!(silences.surely_silent("w", at(5_000_000), 3_000));
        assert!(
            !silences.surely_silent("w", None, 3_000),
            "no timer, no proof"
        );
    }

    #[test]
    fn a_heartbeat_during_a_timer_outage_restarts_the_count_at_its_return() {
        let mut silences = Silences::default();
        assert!(silences.heard_from("w", at(1_000)));
        // Heard (and perhaps leased) while the timer was away.
        assert!(!silences.heard_from("w", None));
        // The timer is back long after the first heartbeat: the silence
        // counts from now, not from 1 ms.
        assert!(!silences.surely_silent("w", at(10_000_000), 3_000_000));
        assert!(!silences.surely_silent("w", at(12_000_000), 3_000_000));
        assert!(silences.surely_silent("w", at(13_100_000), 3_000_000));
    }

    #[test]
    fn a_worker_never_heard_since_the_start_is_counted_from_now() {
        let mut silences = Silences::default();
        assert!(!silences.was_heard("w"));
        assert!(!silences.surely_silent("w", at(50_000_000), 3_000_000));
        assert!(silences.surely_silent("w", at(53_100_000), 3_000_000));
    }

    #[test]
    fn a_lease_needs_a_record_and_a_known_head() {
        let recorded = HeartbeatRecord {
            in_postgres: true,
            on_timer: false,
            being_deposed: false,
            head_uncertain: false,
        };
        assert!(lease_granted(recorded));
        assert!(lease_granted(HeartbeatRecord {
            in_postgres: false,
            on_timer: true,
            ..recorded
        }));
        assert!(!lease_granted(HeartbeatRecord {
            in_postgres: false,
            ..recorded
        }));
        assert!(!lease_granted(HeartbeatRecord {
            being_deposed: true,
            ..recorded
        }));
        assert!(!lease_granted(HeartbeatRecord {
            head_uncertain: true,
            ..recorded
        }));
    }
}
