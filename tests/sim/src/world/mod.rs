//! One simulated shard: four storage workers in three zones, membership,
//! a frontend, and the network between them, driven by one seed.
//!
//! Real code: every copy is a real [`ShardLog`] in its own directory (the
//! log's epoch fence, truncation, recovery of a torn tail, append marks).
//! The storage worker's decisions are its own functions
//! ([`freshet_storage_worker::decisions`]): which appends a round writes
//! and when the others are answered ([`Awaiting`]), which replicas count
//! towards a commit ([`ReplicaEnds`], [`AckRule`]), what a lagging replica
//! is sent next ([`next_run`]) and what a replica does with a batch
//! ([`write_as_replica`]). Membership's failover and reconfiguration are
//! its own decisions too ([`decisions::elect`], [`decisions::after_report`],
//! [`decisions::spare_replica`]). What is modelled here is the plumbing
//! around them, after `services/storage-worker/src/{writer/,replication/}`
//! and `services/membership/src/failover.rs`: the tasks and timers that
//! call those functions, the messages between processes on a seeded
//! network, heartbeats and leases, broadcasts of the shard's entry, and the
//! frontend resolving unknown outcomes under append keys.
//!
//! Time is virtual (ms); every event happens at a time the seed chose, in
//! one thread, so a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use freshet_errors::ErrorCode;
use freshet_log::{AppendKey, AppendMark, EpochHistory, NewRecord, ShardLog};
use freshet_membership::decisions::{self, lease_granted, Election, HeartbeatRecord, Silences};
use freshet_metastore::{ShardRow, WorkerRow};
use freshet_storage_worker::decisions::{
    self as writer, copies_holding_log, next_run, sealed_end, write_as_replica, AppendAnswer,
    Awaiting, Leadership, PendingAppend, ReplicaEnds, ReplicaWrite, UnwrittenBatch,
};
use freshet_storage_worker::{AckCopies, AckRule};
use freshet_timer_client::TimeInterval;
use freshet_types::{ShardState, Voters};

use crate::checks::{Checker, Violation};
use crate::rng::Rng;

mod frontend;
mod leader;
mod membership;
mod worker;

/// How long a lease lasts on the holder's clock (ms).
const LEASE_MS: u64 = 2_000;
/// Membership fails a leader over after this much silence.
const HEARTBEAT_TIMEOUT_MS: u64 = 3_000;
const HEARTBEAT_EVERY_MS: u64 = 300;
const MEMBERSHIP_TICK_MS: u64 = 250;
/// The idle leader's catch-up round.
const CATCH_UP_EVERY_MS: u64 = 500;
/// A group-commit round gives up after this long.
const ROUND_DEADLINE_MS: u64 = 2_000;
/// The frontend's deadline for one call.
const CALL_DEADLINE_MS: u64 = 2_500;
/// How long the frontend routes a refused call again before giving up.
const REROUTE_MS: u64 = 5_000;
/// How often the control plane asks a closing shard's leader to seal it
/// again (`reshard.rs`, `seal`).
const SEAL_RETRY_MS: u64 = 300;
/// A stream's retention, in seeds with retention, on each worker's own
/// wall clock; and how often a worker trims (`lib.rs`, the retention task).
const RETENTION_MS: i64 = 4_000;
const TRIM_EVERY_MS: u64 = 1_000;
/// How long membership's timer client carries a reading forward.
const TIMER_MAX_UNSYNCED_MS: u64 = 5_000;
/// The worker's default acknowledgement rule: a majority of the voters,
/// and never fewer than two copies.
const ACK_RULE: AckRule = AckRule {
    copies: AckCopies::Majority,
    min_voters: 2,
};

const ZONES: [&str; 4] = ["a", "b", "c", "a"];
const MEMBERSHIP: usize = 100;
const FRONTEND: usize = 101;

/// The faults a run may suffer, scaled by one intensity.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    pub max_delay_ms: u64,
    pub crashes: bool,
    pub torn_writes: bool,
    pub partitions: bool,
    pub membership_outages: bool,
    pub clock_jumps: bool,
    /// The control plane closes and seals the shard (a split, a merge or a
    /// move), perhaps reopening it first.
    pub closes: bool,
    /// Workers' fsyncs fail now and then.
    pub fsync_errors: bool,
    /// Postgres is unreachable for a while (membership runs on).
    pub postgres_outages: bool,
    /// The timer service is unreachable for a while.
    pub timer_outages: bool,
    /// Records expire after a few seconds: logs roll every second and
    /// workers trim what expired, so lagging copies are restarted at the
    /// leader's trim horizon (`InstallSnapshot`).
    pub retention: bool,
}

impl Faults {
    pub fn from_seed(rng: &mut Rng) -> Faults {
        Faults {
            drop: [0.0, 0.01, 0.05][rng.range(0, 3) as usize],
            duplicate: [0.0, 0.01][rng.range(0, 2) as usize],
            max_delay_ms: [5, 30, 150][rng.range(0, 3) as usize],
            crashes: rng.chance(0.9),
            torn_writes: rng.chance(0.5),
            partitions: rng.chance(0.5),
            membership_outages: rng.chance(0.3),
            clock_jumps: rng.chance(0.3),
            closes: rng.chance(0.5),
            fsync_errors: rng.chance(0.3),
            postgres_outages: rng.chance(0.3),
            timer_outages: rng.chance(0.3),
            retention: rng.chance(0.3),
        }
    }
}

/// Holes of issue 13 put back, to show the simulator catches them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Holes {
    /// Elections sized by the copies that answer, the deposed leader's
    /// vote dropped at once.
    pub hole_1: bool,
    /// A seal completed whatever the close generation (two control planes
    /// reuse offsets).
    pub hole_3: bool,
    /// A leader whose fsync failed forgets the batch it already sent to its
    /// replicas, and fills its offsets with other records.
    pub forget_unwritten: bool,
}

/// What one run came to.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub acknowledged: usize,
    pub committed: usize,
    pub failovers: u64,
    pub crashes: u64,
    /// Shards sealed and closed; seals refused for a stale close
    /// generation; resolving appends answered "absent".
    pub seals: u64,
    pub seals_fenced: u64,
    pub absent: u64,
    /// Moves to a new segment, and calls given up as "perhaps written"
    /// because the shard moved while they were being resolved.
    pub moves: u64,
    pub unknown_after_move: u64,
    /// Copies restarted at their leader's trim horizon.
    pub snapshots: u64,
    pub unresolved: usize,
    pub events: u64,
    /// The shard and its copies at the end, for a replayed seed.
    pub end_state: String,
}

/// The shard's entry as a worker or the frontend last heard it.
#[derive(Debug, Clone)]
struct Entry {
    version: u64,
    row: ShardRow,
}

impl Entry {
    fn is_copy(&self, worker: &str) -> bool {
        self.row.leader_worker_id == worker
            || self.row.replica_worker_ids.iter().any(|r| r == worker)
    }
}

/// A call from the frontend, as the leader holds it.
#[derive(Debug, Clone)]
struct Job {
    call: u64,
    attempt: u64,
    records: Vec<NewRecord>,
    epoch: u64,
    resolving: bool,
}

/// The worker's own key logic (`writer/keys.rs`) sorts and answers these.
impl PendingAppend for Job {
    fn records(&self) -> &[NewRecord] {
        &self.records
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn resolving(&self) -> bool {
        self.resolving
    }

    /// The frontend ignores answers to calls it has finished with.
    fn caller_gone(&self) -> bool {
        false
    }
}

/// The frontend's reading of the writer's answer: only a refusal is known
/// to have written nothing (`WriteError::append_code`).
fn answer_of(answer: &writer::Answer) -> Answer {
    match answer {
        Ok(AppendAnswer::Landed { appended, .. }) => Answer::Landed(appended.first_offset),
        Ok(AppendAnswer::Absent) => Answer::Absent,
        Err(error) if error.append_code() == ErrorCode::NotWritten => Answer::NotWritten,
        Err(_) => Answer::Unknown,
    }
}

/// The leader's group commit in flight.
struct Round {
    epoch: u64,
    end: u64,
    jobs: Vec<(Job, u64)>,
    deadline: u64,
}

#[derive(Clone)]
enum Msg {
    Replicate {
        epoch: u64,
        history: EpochHistory,
        first_offset: u64,
        arrival_ms: i64,
        records: Vec<NewRecord>,
        committed: u64,
        /// Where the leader's log ends, the batch included.
        leader_end: u64,
    },
    /// The leader no longer holds what the replica misses: the replica
    /// restarts its log at `start`, the leader's trim horizon.
    InstallSnapshot {
        epoch: u64,
        history: EpochHistory,
        start: u64,
    },
    ReplicateReply {
        epoch: u64,
        ok: bool,
        next_offset: u64,
    },
    Heartbeat {
        sent_local: u64,
    },
    HeartbeatReply {
        sent_local: u64,
        version: u64,
    },
    Entry(Box<Entry>),
    Report {
        epoch: u64,
        voters: Voters,
        holding: Vec<String>,
    },
    /// The frontend asks for the shard's entry (the cache's lookup).
    Lookup,
    /// The control plane asks the leader to seal the closing shard
    /// (`SealShard`); `generation` is the close generation the control
    /// plane holds, which completing the seal must present.
    Seal {
        epoch: u64,
        generation: u64,
    },
    /// The leader's answer: its whole log, to `end`, is committed and held.
    Sealed {
        epoch: u64,
        generation: u64,
        end: u64,
    },
    Append(Job),
    AppendReply {
        call: u64,
        /// The attempt answered: the frontend hears only its latest one
        /// (an earlier attempt's RPC was given up on, and so is its answer).
        attempt: u64,
        answer: Answer,
    },
}

#[derive(Debug, Clone)]
enum Answer {
    Landed(u64),
    NotWritten,
    Unknown,
    /// A resolving append's key is not in the settled log of a closed
    /// shard: it never landed, and never will.
    Absent,
}

enum Event {
    Deliver {
        from: usize,
        to: usize,
        /// The receiver's incarnation when sent: a restarted process has
        /// new connections, and what was sent to the old one is gone.
        incarnation: u64,
        msg: Msg,
    },
    Heartbeat(usize),
    MembershipTick,
    CatchUp(usize),
    Trim(usize),
    Crash(usize),
    Restart(usize),
    Cut(usize, usize),
    Heal(usize, usize),
    MembershipDown,
    MembershipUp,
    PostgresDown,
    PostgresUp,
    TimerDown,
    TimerUp,
    ClockJump(usize),
    NewCall,
    CallTimeout {
        call: u64,
        attempt: u64,
    },
    RetryCall(u64),
    FailNextSync(usize),
    BeginClosing,
    Reopen,
    SealAttempt(u64),
    /// The control plane completes a seal (`complete_reshard`), perhaps
    /// late: it may have paused after the leader answered.
    CompleteSeal {
        epoch: u64,
        generation: u64,
        end: u64,
    },
    Read,
    Settle,
}

struct Worker {
    id: String,
    zone: &'static str,
    dir: PathBuf,
    up: bool,
    /// Set while up and holding a copy.
    log: Option<Arc<ShardLog>>,
    view: Option<Entry>,
    /// Until when (local clock) and from which entry version on.
    lease: Option<(u64, u64)>,
    /// Local clock rate, parts per million off.
    drift_ppm: i64,
    /// How far its wall clock (arrival times) is off: it jumps, forwards
    /// and back; leases run on the monotonic clock and do not.
    wall_offset_ms: i64,
    /// Tear the next local write and crash.
    tear_next_write: bool,
    /// Whether membership has heard it register since it (re)started.
    registered: bool,
    replica_ends: ReplicaEnds,
    queue: Vec<Job>,
    round: Option<Round>,
    awaiting: Awaiting<Job>,
    /// A seal asked for at this epoch (and close generation), answered
    /// once the log is settled.
    pending_seal: Option<(u64, u64)>,
    /// A batch sent to the replicas whose local write failed: written
    /// again before anything else (`writer/mod.rs`).
    unwritten: Option<UnwrittenBatch>,
    incarnation: u64,
}

/// The frontend's view of one call.
struct Call {
    records: Vec<Bytes>,
    /// The shard segment its last fresh attempt was sent to: resolving
    /// asks only there (`coalescer.rs`).
    segment: u32,
    resolving: bool,
    attempt: u64,
    first_sent: u64,
    done: bool,
}

pub struct World {
    rng: Rng,
    faults: Faults,
    now: u64,
    seq: u64,
    events: BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
    pending: BTreeMap<u64, Event>,
    workers: Vec<Worker>,
    row: ShardRow,
    version: u64,
    /// When Postgres last recorded a heartbeat from each worker.
    last_heard: Vec<u64>,
    /// When membership last heard from each worker on the timer's clock:
    /// membership's own `Silences` (in memory: a restart forgets it).
    silences: Silences,
    /// How every copy's log is configured (segments roll every second
    /// when records expire).
    log_config: freshet_log::LogConfig,
    /// Segments sealed by a move: (index, the worker that sealed it).
    sealed_segments: Vec<(u32, usize)>,
    membership_up: bool,
    postgres_up: bool,
    /// Since when the timer service has been unreachable, if it is.
    timer_down_since: Option<u64>,
    /// A failover committed whose broadcast is not out yet (a commit whose
    /// outcome membership did not learn): no leases until it is.
    unsettled_head: bool,
    cut: BTreeSet<(usize, usize)>,
    frontend_view: Option<Entry>,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    checker: Checker,
    outcome: Outcome,
    settling: bool,
    /// Whether membership may elect from fewer voters than the committed
    /// configuration needs: hole 1 of issue 13, put back to show the
    /// simulator catches it.
    holes: Holes,
    /// Print what happens (a replayed seed, `FRESHET_SIM_TRACE=1`).
    trace: bool,
    _root: tempfile::TempDir,
}

fn worker_row(id: &str, zone: &str) -> WorkerRow {
    WorkerRow {
        worker_id: id.to_owned(),
        availability_zone: zone.to_owned(),
        address: id.to_owned(),
        seconds_since_heartbeat: 0.0,
    }
}

impl World {
    pub fn new(seed: u64, holes: Holes) -> anyhow::Result<World> {
        let mut rng = Rng::new(seed);
        let faults = Faults::from_seed(&mut rng);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            tempfile::Builder::new()
                .prefix("freshet-sim")
                .tempdir_in("/dev/shm")?
        } else {
            tempfile::tempdir()?
        };
        let workers: Vec<Worker> = ZONES
            .iter()
            .enumerate()
            .map(|(i, zone)| Worker {
                id: format!("w{i}"),
                zone,
                dir: base.path().join(format!("w{i}")),
                up: true,
                log: None,
                view: None,
                lease: None,
                drift_ppm: rng.range(0, 2_001) as i64 - 1_000,
                wall_offset_ms: 0,
                tear_next_write: false,
                registered: true,
                replica_ends: ReplicaEnds::default(),
                queue: Vec::new(),
                round: None,
                awaiting: Awaiting::default(),
                pending_seal: None,
                unwritten: None,
                incarnation: 0,
            })
            .collect();
        let ids: Vec<String> = workers[..3].iter().map(|w| w.id.clone()).collect();
        let row = ShardRow {
            stream_uid: 1,
            shard_id: "shardId-000000000000".to_owned(),
            starting_hash_key: "0".to_owned(),
            ending_hash_key: u128::MAX.to_string(),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            sequence_base: 1,
            state: ShardState::Open,
            ending_offset: None,
            leader_worker_id: ids[0].clone(),
            replica_worker_ids: ids[1..].to_vec(),
            voters: Voters::Stable(ids.clone()),
            epoch: 1,
            close_generation: 0,
            segment_index: 0,
            segment_start_offset: 0,
            sealed_segments: Vec::new(),
        };
        let mut world = World {
            rng,
            faults,
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            pending: BTreeMap::new(),
            last_heard: vec![0; workers.len()],
            workers,
            row,
            version: 1,
            silences: Silences::default(),
            sealed_segments: Vec::new(),
            log_config: if faults.retention {
                freshet_log::LogConfig {
                    segment_max_age_ms: 1_000,
                    ..freshet_log::LogConfig::default()
                }
            } else {
                freshet_log::LogConfig::default()
            },
            membership_up: true,
            postgres_up: true,
            timer_down_since: None,
            unsettled_head: false,
            cut: BTreeSet::new(),
            frontend_view: None,
            calls: BTreeMap::new(),
            next_call: 0,
            checker: Checker::default(),
            outcome: Outcome::default(),
            settling: false,
            holes,
            trace: std::env::var_os("FRESHET_SIM_TRACE").is_some(),
            _root: base,
        };
        for w in 0..world.workers.len() {
            let offset = world.rng.range(0, HEARTBEAT_EVERY_MS);
            world.at(offset, Event::Heartbeat(w));
            world.at(offset + 1, Event::CatchUp(w));
            if world.faults.retention {
                world.at(offset + 2, Event::Trim(w));
            }
        }
        world.broadcast();
        world.at(MEMBERSHIP_TICK_MS, Event::MembershipTick);
        world.at(100, Event::NewCall);
        world.at(500, Event::Read);
        world.plan_faults();
        world.at(20_000, Event::Settle);
        Ok(world)
    }

    fn note(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>6} ms  {}", self.now, what());
        }
    }

    fn at(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.events
            .push(std::cmp::Reverse((self.now + delay, self.seq)));
        self.pending.insert(self.seq, event);
    }

    fn plan_faults(&mut self) {
        let faults = self.faults;
        if faults.crashes {
            for _ in 0..self.rng.range(1, 5) {
                let w = self.rng.range(0, self.workers.len() as u64) as usize;
                let when = self.rng.range(500, 18_000);
                self.at(when, Event::Crash(w));
            }
        }
        if faults.partitions {
            let nodes: Vec<usize> = (0..self.workers.len())
                .chain([MEMBERSHIP, FRONTEND])
                .collect();
            for _ in 0..self.rng.range(1, 4) {
                let a = *self.rng.pick(&nodes).unwrap_or(&0);
                let b = *self.rng.pick(&nodes).unwrap_or(&1);
                if a == b {
                    continue;
                }
                let when = self.rng.range(0, 16_000);
                self.at(when, Event::Cut(a, b));
                let heal = when + self.rng.range(200, 6_000);
                self.at(heal, Event::Heal(a, b));
            }
        }
        if faults.clock_jumps {
            for _ in 0..self.rng.range(1, 4) {
                let w = self.rng.range(0, self.workers.len() as u64) as usize;
                let when = self.rng.range(0, 18_000);
                self.at(when, Event::ClockJump(w));
            }
        }
        if faults.membership_outages {
            let when = self.rng.range(0, 15_000);
            self.at(when, Event::MembershipDown);
            let back = when + self.rng.range(200, 5_000);
            self.at(back, Event::MembershipUp);
        }
        if faults.postgres_outages {
            let when = self.rng.range(0, 15_000);
            self.at(when, Event::PostgresDown);
            let back = when + self.rng.range(200, 6_000);
            self.at(back, Event::PostgresUp);
        }
        if faults.timer_outages {
            let when = self.rng.range(0, 15_000);
            self.at(when, Event::TimerDown);
            let back = when + self.rng.range(200, 12_000);
            self.at(back, Event::TimerUp);
        }
        if faults.fsync_errors {
            for _ in 0..self.rng.range(1, 6) {
                let w = self.rng.range(0, self.workers.len() as u64) as usize;
                let when = self.rng.range(500, 18_000);
                self.at(when, Event::FailNextSync(w));
            }
        }
        if faults.closes {
            let when = self.rng.range(2_000, 15_000);
            self.at(when, Event::BeginClosing);
            if self.rng.chance(0.5) {
                // A move abandoned: reopened while being sealed, closed
                // again later.
                let reopen = when + self.rng.range(0, 1_500);
                self.at(reopen, Event::Reopen);
                let again = reopen + self.rng.range(500, 3_000);
                self.at(again, Event::BeginClosing);
            }
        }
    }

    fn local_now(&self, w: usize) -> u64 {
        let drift = self.workers[w].drift_ppm;
        (self.now as i64 + self.now as i64 * drift / 1_000_000).max(0) as u64
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        !self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.rng.chance(self.faults.drop) && !self.settling {
            return;
        }
        let delay = self.rng.range(1, self.faults.max_delay_ms + 1);
        let duplicate = self.rng.chance(self.faults.duplicate) && !self.settling;
        if duplicate {
            // A frontend's call is not duplicated: gRPC over one TCP
            // connection delivers it once or not at all (and its attempts
            // go one after another).
            let again = matches!(msg, Msg::Replicate { .. }).then(|| msg.clone());
            if let Some(again) = again {
                let later = self.rng.range(1, self.faults.max_delay_ms * 3 + 2);
                let incarnation = self.incarnation(to);
                self.at(
                    later,
                    Event::Deliver {
                        from,
                        to,
                        incarnation,
                        msg: again,
                    },
                );
            }
        }
        let incarnation = self.incarnation(to);
        self.at(
            delay,
            Event::Deliver {
                from,
                to,
                incarnation,
                msg,
            },
        );
    }

    fn incarnation(&self, node: usize) -> u64 {
        self.workers.get(node).map_or(0, |w| w.incarnation)
    }

    /// Runs until settled; the first violation ends the run.
    pub fn run(mut self) -> Result<Outcome, Violation> {
        while let Some(std::cmp::Reverse((time, seq))) = self.events.pop() {
            let Some(event) = self.pending.remove(&seq) else {
                continue;
            };
            self.now = time;
            self.outcome.events += 1;
            if self.outcome.events > 2_000_000 {
                return Err("the run did not settle within 2,000,000 events".to_owned());
            }
            if let Event::Settle = event {
                if !self.settling {
                    self.start_settling();
                    continue;
                }
                return self.finish();
            }
            self.handle(event)?;
        }
        Err("the event queue ran dry".to_owned())
    }

    fn start_settling(&mut self) {
        // Every fault heals: workers restart, links and membership return;
        // only calls already made go on, until they are resolved.
        self.settling = true;
        self.cut.clear();
        self.membership_up = true;
        self.postgres_up = true;
        self.timer_down_since = None;
        for w in 0..self.workers.len() {
            if !self.workers[w].up {
                self.restart(w);
            }
            self.workers[w].tear_next_write = false;
        }
        self.at(15_000, Event::Settle);
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Deliver {
                from,
                to,
                incarnation,
                msg,
            } => {
                if !self.linked(from, to) || self.incarnation(to) != incarnation {
                    return Ok(());
                }
                if to == MEMBERSHIP {
                    self.membership_receives(from, msg);
                } else if to == FRONTEND {
                    self.frontend_receives(msg)?;
                } else if self.workers[to].up {
                    self.worker_receives(to, from, msg)?;
                }
            }
            Event::Heartbeat(w) => {
                if self.workers[w].up {
                    let sent_local = self.local_now(w);
                    self.send(w, MEMBERSHIP, Msg::Heartbeat { sent_local });
                }
                self.at(HEARTBEAT_EVERY_MS, Event::Heartbeat(w));
            }
            Event::MembershipTick => {
                self.membership_tick();
                self.at(MEMBERSHIP_TICK_MS, Event::MembershipTick);
            }
            Event::CatchUp(w) => {
                if self.workers[w].up && self.workers[w].unwritten.is_some() {
                    // The idle writer's first duty: the batch it failed to
                    // write, written again.
                    self.write_unwritten_again(w)?;
                } else if self.workers[w].up {
                    self.catch_up(w)?;
                    self.try_seal(w)?;
                    self.expire_round(w);
                    self.persist(w);
                }
                self.at(CATCH_UP_EVERY_MS, Event::CatchUp(w));
            }
            Event::Trim(w) => {
                // The retention task: sealed files whose newest record is
                // older than the retention, by this worker's wall clock.
                if let Some(log) = self.workers[w].log.clone().filter(|_| self.workers[w].up) {
                    let cutoff = self.wall_ms(w) - RETENTION_MS;
                    if let Ok(removed) = log.trim_older_than(cutoff) {
                        if removed > 0 {
                            self.note(|| format!("w{w} trims to {}", log.trim_horizon()));
                        }
                    }
                }
                self.at(TRIM_EVERY_MS, Event::Trim(w));
            }
            Event::Crash(w) => {
                if self.settling || !self.workers[w].up {
                    return Ok(());
                }
                if self.faults.torn_writes && self.rng.chance(0.5) {
                    // It dies in the middle of its next write instead.
                    self.workers[w].tear_next_write = true;
                } else {
                    self.crash(w);
                }
            }
            Event::Restart(w) => {
                if !self.workers[w].up {
                    self.restart(w);
                }
            }
            Event::Cut(a, b) => {
                if !self.settling {
                    self.cut.insert((a.min(b), a.max(b)));
                }
            }
            Event::Heal(a, b) => {
                self.cut.remove(&(a.min(b), a.max(b)));
            }
            Event::MembershipDown => {
                if !self.settling {
                    self.membership_up = false;
                }
            }
            Event::MembershipUp => {
                // A new process: it has heard from nobody yet.
                self.membership_up = true;
                self.silences = Silences::default();
            }
            Event::PostgresDown => {
                if !self.settling {
                    self.postgres_up = false;
                }
            }
            Event::PostgresUp => self.postgres_up = true,
            Event::TimerDown => {
                if !self.settling && self.timer_down_since.is_none() {
                    self.timer_down_since = Some(self.now);
                }
            }
            Event::TimerUp => self.timer_down_since = None,
            Event::ClockJump(w) => {
                let jump = self.rng.range(0, 60_001) as i64 - 30_000;
                self.workers[w].wall_offset_ms += jump;
                self.note(|| format!("w{w}'s wall clock jumps {jump} ms"));
            }
            Event::NewCall => {
                if !self.settling {
                    self.new_call();
                    let next = self.rng.range(5, 120);
                    self.at(next, Event::NewCall);
                }
            }
            Event::CallTimeout { call, attempt } => self.call_timed_out(call, attempt),
            Event::RetryCall(call) => self.send_call(call),
            Event::FailNextSync(w) => {
                if let Some(log) = &self.workers[w].log {
                    self.note(|| format!("w{w}'s next fsync fails"));
                    log.fail_next_sync();
                }
            }
            Event::BeginClosing => self.begin_closing(),
            Event::Reopen => self.reopen(),
            Event::SealAttempt(generation) => self.seal_attempt(generation),
            Event::CompleteSeal {
                epoch,
                generation,
                end,
            } => self.complete_seal(epoch, generation, end)?,
            Event::Read => {
                self.read_from_leader()?;
                let next = self.rng.range(100, 700);
                self.at(next, Event::Read);
            }
            Event::Settle => {}
        }
        Ok(())
    }
}

impl World {
    // ----- the end -----

    fn finish(mut self) -> Result<Outcome, Violation> {
        self.outcome.acknowledged = self.checker.acknowledged_calls();
        self.outcome.committed = self.checker.committed_records();
        self.outcome.unresolved = self.calls.values().filter(|c| !c.done).count();
        self.outcome.end_state = self.describe();
        let Some(leader) = self.worker_index(&self.row.leader_worker_id) else {
            return Err("no leader at the end".to_owned());
        };
        let log = match self.workers[leader].log.clone() {
            Some(log) => log,
            None => {
                let dir = self.segment_dir(leader, self.row.segment_index);
                let start = self.row.segment_start_offset;
                Arc::new(
                    ShardLog::open_from(&dir, self.log_config.clone(), start)
                        .map_err(|e| format!("the final leader's copy does not open: {e}"))?,
                )
            }
        };
        // The final leader must have committed its whole log by now, when
        // it can: settle time is long; if it could not, the check below
        // still holds for what it did commit (committed records must be
        // there), and the unresolved count says so.
        let mut segments: Vec<(usize, Arc<ShardLog>)> = Vec::new();
        for &(index, sealer) in &self.sealed_segments {
            let dir = self.segment_dir(sealer, index);
            let copy = ShardLog::open(&dir, self.log_config.clone()).map_err(|e| {
                format!("worker {sealer}'s copy of sealed segment {index} does not open: {e}")
            })?;
            segments.push((sealer, Arc::new(copy)));
        }
        segments.push((leader, log.clone()));
        self.checker.settled(&segments)?;
        if let Some(end) = self
            .row
            .ending_offset
            .filter(|_| self.row.state == ShardState::Closed)
        {
            if log.committed_offset() != end {
                return Err(format!(
                    "the shard was closed at {end}, its final leader commits to {}",
                    log.committed_offset()
                ));
            }
        }
        for (w, worker) in self.workers.iter().enumerate() {
            if w == leader {
                continue;
            }
            if let Some(copy) = &worker.log {
                self.checker.copy_agrees(w, copy, &log)?;
            }
        }
        let _ = &mut self.rng;
        Ok(self.outcome)
    }
}

impl World {
    /// The shard and each worker as they are now.
    fn describe(&self) -> String {
        let mut text = format!(
            "faults {:?}\nrow v{} epoch {} leader {} replicas {:?} voters {:?}\n",
            self.faults,
            self.version,
            self.row.epoch,
            self.row.leader_worker_id,
            self.row.replica_worker_ids,
            self.row.voters
        );
        for (w, worker) in self.workers.iter().enumerate() {
            let log = worker
                .log
                .as_ref()
                .map(|l| (l.election_position(), l.committed_offset(), l.next_offset()));
            text.push_str(&format!(
                "{}: up {} view v{:?} lease {:?} (local now {}) log (position, committed, end) {:?} ends {:?} round {} queue {} awaiting {}\n",
                worker.id,
                worker.up,
                worker.view.as_ref().map(|v| v.version),
                worker.lease,
                self.local_now(w),
                log,
                worker.replica_ends,
                worker.round.is_some(),
                worker.queue.len(),
                worker.awaiting.len()
            ));
        }
        text
    }
}

fn last_segment(dir: &std::path::Path) -> Option<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments.pop()
}
