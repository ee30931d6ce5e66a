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
    self as writer, next_run, sealed_end, write_as_replica, AppendAnswer, Awaiting, Leadership,
    PendingAppend, ReplicaEnds, ReplicaWrite, UnwrittenBatch,
};
use freshet_storage_worker::{AckCopies, AckRule};
use freshet_timer_client::TimeInterval;
use freshet_types::{ShardState, Voters};

use crate::checks::{Checker, Violation};
use crate::rng::Rng;

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
            let again = match &msg {
                Msg::Replicate {
                    epoch,
                    history,
                    first_offset,
                    arrival_ms,
                    records,
                    committed,
                    leader_end,
                } => Some(Msg::Replicate {
                    epoch: *epoch,
                    history: history.clone(),
                    first_offset: *first_offset,
                    arrival_ms: *arrival_ms,
                    records: records.clone(),
                    committed: *committed,
                    leader_end: *leader_end,
                }),
                // A frontend's call is not duplicated: gRPC over one TCP
                // connection delivers it once or not at all (and its
                // attempts go one after another).
                _ => None,
            };
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

    // ----- workers -----

    fn crash(&mut self, w: usize) {
        self.outcome.crashes += 1;
        self.note(|| format!("w{w} crashes"));
        let worker = &mut self.workers[w];
        worker.up = false;
        worker.log = None;
        worker.view = None;
        worker.lease = None;
        worker.queue.clear();
        worker.round = None;
        worker.awaiting = Awaiting::default();
        worker.pending_seal = None;
        worker.unwritten = None;
        worker.replica_ends = ReplicaEnds::default();
        worker.tear_next_write = false;
        worker.registered = false;
        worker.incarnation += 1;
        // Now and then a worker stays down long enough that, where
        // records expire, its copy comes back behind the leader's trim
        // horizon.
        let back = if self.faults.retention && self.rng.chance(0.3) {
            self.rng.range(6_000, 12_000)
        } else {
            self.rng.range(300, 6_000)
        };
        self.at(back, Event::Restart(w));
    }

    fn restart(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        worker.up = true;
        worker.log = None;
        // The log is opened again when the worker learns it holds a copy;
        // a copy found on disk is recovered then (a torn tail cut). Its
        // next heartbeat registers it again.
        worker.registered = false;
    }

    /// Membership hears a worker register: a leader that restarted gets a
    /// new epoch (`republish_worker_shards`) — it has forgotten batches
    /// its replicas may hold.
    fn register(&mut self, w: usize) {
        self.workers[w].registered = true;
        if self.row.leader_worker_id == self.workers[w].id {
            self.row.epoch += 1;
            self.version += 1;
            self.note(|| format!("w{w} registers again: epoch {}", self.row.epoch));
            self.broadcast();
        }
    }

    /// Opens (or creates) the worker's copy, if its view says it holds one.
    /// Where worker `w` keeps its copy of segment `index`.
    fn segment_dir(&self, w: usize, index: u32) -> PathBuf {
        self.workers[w].dir.join(format!("segment-{index}"))
    }

    /// The directory of the segment `w`'s own entry names current.
    fn current_dir(&self, w: usize) -> Option<PathBuf> {
        let index = self.workers[w].view.as_ref()?.row.segment_index;
        Some(self.segment_dir(w, index))
    }

    /// Opens (or creates) `w`'s copy of the segment its entry names, as
    /// the registry does: a new copy of a later segment starts empty at
    /// the segment's first offset.
    fn open_log(&mut self, w: usize) -> Result<Option<Arc<ShardLog>>, Violation> {
        if let Some(log) = &self.workers[w].log {
            return Ok(Some(log.clone()));
        }
        let worker = &self.workers[w];
        let Some(view) = worker.view.as_ref().filter(|v| v.is_copy(&worker.id)) else {
            return Ok(None);
        };
        let (index, start) = (view.row.segment_index, view.row.segment_start_offset);
        let dir = self.segment_dir(w, index);
        let log = ShardLog::open_from(&dir, self.log_config.clone(), start)
            .map_err(|e| format!("worker {w} cannot open its copy: {e}"))?;
        let log = Arc::new(log);
        self.workers[w].log = Some(log.clone());
        Ok(Some(log))
    }

    /// The worker's wall clock (arrival times, the age of append keys).
    fn wall_ms(&self, w: usize) -> i64 {
        1_700_000_000_000 + self.local_now(w) as i64 + self.workers[w].wall_offset_ms
    }

    fn lease_ok(&self, w: usize) -> bool {
        let worker = &self.workers[w];
        match (&worker.lease, &worker.view) {
            (Some((until, version)), Some(view)) => {
                self.local_now(w) < *until && view.version >= *version
            }
            _ => false,
        }
    }

    fn leading_epoch(&self, w: usize) -> Option<u64> {
        let worker = &self.workers[w];
        worker
            .view
            .as_ref()
            .filter(|v| v.row.leader_worker_id == worker.id)
            .map(|v| v.row.epoch)
    }

    /// Whether the worker's entry says the shard is open for writes.
    fn is_open(&self, w: usize) -> bool {
        self.workers[w]
            .view
            .as_ref()
            .is_some_and(|v| v.row.state == ShardState::Open)
    }

    fn worker_index(&self, id: &str) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    fn worker_receives(&mut self, w: usize, from: usize, msg: Msg) -> Result<(), Violation> {
        match msg {
            Msg::Entry(entry) => {
                let newer = self.workers[w]
                    .view
                    .as_ref()
                    .is_none_or(|v| entry.version > v.version);
                if newer {
                    let holds = entry.is_copy(&self.workers[w].id);
                    let moved = self.workers[w]
                        .view
                        .as_ref()
                        .is_some_and(|v| v.row.segment_index != entry.row.segment_index);
                    if moved {
                        self.leave_segment(w);
                    }
                    if entry.row.state != ShardState::Closing {
                        // The real seal gives up after its rounds; a
                        // reopened shard is not sealed at the old close.
                        self.workers[w].pending_seal = None;
                    }
                    self.workers[w].view = Some(*entry);
                    if !holds {
                        // An orphan: no entry names it (after the
                        // configuration without it was committed). A
                        // sealed segment's copy stays, read-only.
                        self.workers[w].log = None;
                        if let Some(dir) = self.current_dir(w) {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                    }
                }
            }
            Msg::HeartbeatReply {
                sent_local,
                version,
            } => {
                self.workers[w].lease = Some((sent_local + LEASE_MS, version));
            }
            Msg::Replicate {
                epoch,
                history,
                first_offset,
                arrival_ms,
                records,
                committed,
                leader_end,
            } => self.replica_receives(
                w,
                from,
                &ReplicaWrite {
                    epoch,
                    leader_epochs: &history,
                    leader_end,
                    first_offset,
                    arrival_ms,
                    records: &records,
                    leader_committed: committed,
                },
            )?,
            Msg::ReplicateReply {
                epoch,
                ok,
                next_offset,
            } => self.leader_hears_replica(w, from, epoch, ok, next_offset)?,
            Msg::Append(job) => self.leader_receives(w, job)?,
            Msg::Seal { epoch, generation } => self.leader_asked_to_seal(w, epoch, generation)?,
            Msg::InstallSnapshot {
                epoch,
                history,
                start,
            } => self.replica_restarts(w, from, epoch, &history, start)?,
            _ => {}
        }
        Ok(())
    }

    /// The shard moved on to its next segment: the sealed one's writer
    /// stops (what it held is answered as the service's dropped writer
    /// answers) and its log closes.
    fn leave_segment(&mut self, w: usize) {
        self.fail_round(w, Answer::Unknown);
        let queued = std::mem::take(&mut self.workers[w].queue);
        for job in queued {
            self.reply(w, &job, Answer::NotWritten);
        }
        let waiting = std::mem::take(&mut self.workers[w].awaiting);
        if let Some(log) = self.workers[w].log.clone() {
            let leadership = Leadership {
                epoch: None,
                open: false,
                replicas_hold: &|_| false,
            };
            let mut waiting = waiting;
            for (job, answer) in waiting.answer(&log, &leadership) {
                self.reply(w, &job, answer_of(&answer));
            }
        }
        let worker = &mut self.workers[w];
        worker.log = None;
        worker.pending_seal = None;
        worker.unwritten = None;
        worker.replica_ends = ReplicaEnds::default();
    }

    /// Tears the write just made to `w`'s active segment at a random byte
    /// and crashes `w`: what a crash between write and fsync leaves.
    fn tear_and_crash(&mut self, w: usize, length_before: u64) {
        let dir = self.current_dir(w);
        if let Some(path) = dir.as_deref().and_then(last_segment) {
            if let Ok(meta) = std::fs::metadata(&path) {
                let after = meta.len();
                if after > length_before {
                    let keep = self.rng.range(length_before, after);
                    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) {
                        let _ = file.set_len(keep);
                    }
                }
            }
        }
        self.crash(w);
    }

    fn active_len(&self, w: usize) -> u64 {
        self.current_dir(w)
            .as_deref()
            .and_then(last_segment)
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// A replica told to restart at its leader's trim horizon: the log's
    /// own `restart_at` (`service.rs`, `install_snapshot`).
    fn replica_restarts(
        &mut self,
        w: usize,
        leader: usize,
        epoch: u64,
        history: &EpochHistory,
        start: u64,
    ) -> Result<(), Violation> {
        let id = self.workers[w].id.clone();
        let placed = self.workers[w]
            .view
            .as_ref()
            .is_some_and(|v| v.row.epoch == epoch && v.row.replica_worker_ids.contains(&id));
        if !placed {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        match log.restart_at(epoch, history, start) {
            Ok(restarted) => {
                self.note(|| format!("w{w} restarts at {start} (epoch {epoch}): {restarted:?}"));
                if restarted.accepted {
                    self.outcome.snapshots += 1;
                }
                self.send(
                    w,
                    leader,
                    Msg::ReplicateReply {
                        epoch,
                        ok: true,
                        next_offset: restarted.next_offset,
                    },
                );
                Ok(())
            }
            Err(freshet_log::LogError::StaleEpoch { .. } | freshet_log::LogError::Io { .. }) => {
                Ok(())
            }
            Err(error) => Err(format!(
                "worker {w} cannot restart its log at {start}: {error}"
            )),
        }
    }

    /// A replica hears its leader's `Replicate`: `service.rs`'s check of
    /// its own entry (modelled), then the worker's own `write_as_replica`.
    fn replica_receives(
        &mut self,
        w: usize,
        leader: usize,
        write: &ReplicaWrite<'_>,
    ) -> Result<(), Violation> {
        // As `authorize`: the worker's own entry must name it a replica at
        // exactly this epoch.
        let epoch = write.epoch;
        let id = self.workers[w].id.clone();
        let placed = self.workers[w]
            .view
            .as_ref()
            .is_some_and(|v| v.row.epoch == epoch && v.row.replica_worker_ids.contains(&id));
        if !placed {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        let before = self.active_len(w);
        let tear = self.workers[w].tear_next_write && !write.records.is_empty();
        let result = write_as_replica(&log, write);
        if tear {
            self.tear_and_crash(w, before);
            return Ok(());
        }
        match result {
            Ok(wrote) => {
                let first_offset = write.first_offset;
                let count = write.records.len();
                self.note(|| {
                    format!("w{w} replicates {first_offset}+{count} at epoch {epoch}: {wrote:?}")
                });
                self.send(
                    w,
                    leader,
                    Msg::ReplicateReply {
                        epoch,
                        ok: true,
                        next_offset: wrote.replicated.next_offset,
                    },
                );
            }
            // An error status: the leader hears no answer.
            Err(freshet_log::LogError::StaleEpoch { .. } | freshet_log::LogError::Io { .. }) => {}
            Err(error) => {
                if matches!(
                    error,
                    freshet_log::LogError::TruncatesCommitted { .. }
                        | freshet_log::LogError::Diverged { .. }
                ) {
                    return Err(format!(
                        "worker {w} refused its leader's batch at epoch {epoch}: {error}"
                    ));
                }
                return Err(format!("worker {w}'s log failed: {error}"));
            }
        }
        Ok(())
    }

    fn leader_receives(&mut self, w: usize, job: Job) -> Result<(), Violation> {
        // As `authorize`: only a resolving append may reach a shard that is
        // closing or closed (its writer answers from the log).
        let closed_to_it = !self.is_open(w) && !job.resolving;
        if self.leading_epoch(w) != Some(job.epoch) || !self.lease_ok(w) || closed_to_it {
            self.send(
                w,
                FRONTEND,
                Msg::AppendReply {
                    call: job.call,
                    attempt: job.attempt,
                    answer: Answer::NotWritten,
                },
            );
            return Ok(());
        }
        self.workers[w].queue.push(job);
        self.start_round(w)
    }

    /// The writer's round (`writer.rs`, `write_round`): held keys wait for
    /// their commit, the rest are written as one batch and replicated.
    fn start_round(&mut self, w: usize) -> Result<(), Violation> {
        if self.workers[w].round.is_some() || self.workers[w].queue.is_empty() {
            return Ok(());
        }
        let Some(epoch) = self.leading_epoch(w) else {
            let jobs = std::mem::take(&mut self.workers[w].queue);
            for job in jobs {
                self.reply(w, &job, Answer::NotWritten);
            }
            return Ok(());
        };
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        let jobs = std::mem::take(&mut self.workers[w].queue);
        let (current, stale): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|job| job.epoch == epoch);
        for job in stale {
            self.reply(w, &job, Answer::NotWritten);
        }
        if current.is_empty() {
            return Ok(());
        }
        if !self.write_unwritten_again(w)? {
            // Nothing of these was written (`write_round`): refused.
            for job in current {
                self.reply(w, &job, Answer::NotWritten);
            }
            return Ok(());
        }
        // The worker's own sorting: held keys wait for their commit, a key
        // twice in one round is written once.
        let now_ms = self.wall_ms(w);
        let open = self.is_open(w);
        let sorted = self.workers[w]
            .awaiting
            .sort_round(&log, open, now_ms, current);
        for (job, answer) in sorted.answered {
            self.reply(w, &job, answer_of(&answer));
        }
        let to_write = sorted.to_write;
        if to_write.is_empty() {
            self.answer_awaiting(w, &log);
            return Ok(());
        }
        if let Err(error) = log.begin_leading(epoch) {
            for job in to_write {
                self.reply(w, &job, Answer::NotWritten);
            }
            if matches!(error, freshet_log::LogError::StaleEpoch { .. }) {
                return Ok(());
            }
            return Err(format!("worker {w} cannot lead: {error}"));
        }
        let records: Vec<NewRecord> = to_write.iter().flat_map(|j| j.records.clone()).collect();
        let (first_offset, arrival_ms) = log.next_position(self.wall_ms(w));
        let before = self.active_len(w);
        let tear = self.workers[w].tear_next_write;
        let written = log.append_at(epoch, first_offset, arrival_ms, &records);
        if tear {
            self.note(|| format!("w{w} tears its write at {first_offset} (epoch {epoch})"));
            // Dies mid-write: the batch may be on replicas but never was
            // answered here; the frontend learns nothing.
            self.send_replicate(w, &log, epoch, first_offset, arrival_ms, records);
            self.tear_and_crash(w, before);
            return Ok(());
        }
        if let Err(error) = written {
            if !matches!(error, freshet_log::LogError::Io { .. }) {
                return Err(format!("worker {w}'s write failed: {error}"));
            }
            // The fsync failed after the batch went to the replicas too
            // (the service sends it alongside its own write): the leader
            // must fill those offsets with exactly these records.
            self.note(|| format!("w{w}'s write at {first_offset} fails: {error}"));
            self.send_replicate(w, &log, epoch, first_offset, arrival_ms, records.clone());
            if !self.holes.forget_unwritten {
                self.workers[w].unwritten = Some(UnwrittenBatch {
                    epoch,
                    first_offset,
                    arrival_ms,
                    records: Arc::new(records),
                });
            }
            // A disk error: the outcome is unknown to the callers.
            for job in to_write {
                self.reply(w, &job, Answer::Unknown);
            }
            return Ok(());
        }
        self.note(|| {
            format!(
                "w{w} writes calls {:?} at {first_offset} (epoch {epoch})",
                to_write.iter().map(|j| j.call).collect::<Vec<_>>()
            )
        });
        let mut jobs = Vec::new();
        let mut offset = first_offset;
        for job in to_write {
            let count = job.records.len() as u64;
            jobs.push((job, offset));
            offset += count;
        }
        let end = offset;
        self.workers[w].round = Some(Round {
            epoch,
            end,
            jobs,
            deadline: self.now + ROUND_DEADLINE_MS,
        });
        self.send_replicate(w, &log, epoch, first_offset, arrival_ms, records);
        self.try_commit(w)
    }

    fn send_replicate(
        &mut self,
        w: usize,
        log: &ShardLog,
        epoch: u64,
        first_offset: u64,
        arrival_ms: i64,
        records: Vec<NewRecord>,
    ) {
        let Some(view) = self.workers[w].view.clone() else {
            return;
        };
        // As `Replicator::replicate`: the ends are of the entry's epoch and
        // placement as the batch goes out.
        self.workers[w]
            .replica_ends
            .follow(view.row.epoch, &view.row.replica_worker_ids);
        let history = log.epoch_history();
        let committed = log.committed_offset();
        let leader_end = first_offset + records.len() as u64;
        for replica in &view.row.replica_worker_ids {
            if let Some(r) = self.worker_index(replica) {
                self.send(
                    w,
                    r,
                    Msg::Replicate {
                        epoch,
                        history: history.clone(),
                        first_offset,
                        arrival_ms,
                        records: records.clone(),
                        committed,
                        leader_end,
                    },
                );
            }
        }
    }

    fn leader_hears_replica(
        &mut self,
        w: usize,
        from: usize,
        epoch: u64,
        ok: bool,
        next_offset: u64,
    ) -> Result<(), Violation> {
        if !ok || self.leading_epoch(w) != Some(epoch) {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        let replica = self.workers[from].id.clone();
        self.workers[w]
            .replica_ends
            .heard(&replica, Some(next_offset));
        if next_offset < log.next_offset() {
            self.send_missing(w, from, &log, epoch, next_offset);
        }
        self.try_commit(w)?;
        self.try_seal(w)
    }

    /// Sends replica `r` the next run of records it misses from `from`,
    /// as the worker's own `next_run` reads it (`catch_up.rs`).
    fn send_missing(&mut self, w: usize, r: usize, log: &ShardLog, epoch: u64, from: u64) {
        // `catch_up_step`: below the leader's trim horizon, the replica is
        // restarted there.
        let horizon = log.trim_horizon();
        if from < horizon {
            self.send(
                w,
                r,
                Msg::InstallSnapshot {
                    epoch,
                    history: log.epoch_history(),
                    start: horizon,
                },
            );
            return;
        }
        let until = log.next_offset();
        let Ok(run) = next_run(log, from, until) else {
            return;
        };
        self.send(
            w,
            r,
            Msg::Replicate {
                epoch,
                history: log.epoch_history(),
                first_offset: run.first_offset,
                arrival_ms: run.arrival_ms,
                records: run.records,
                committed: log.committed_offset(),
                leader_end: until,
            },
        );
    }

    /// Whether the replicas that answered this epoch at `end` or beyond,
    /// with the leader, may acknowledge (`AckRule`).
    fn quorum_holds(&self, w: usize, end: u64) -> bool {
        self.replicas_hold(w, |held| held >= end)
    }

    /// `Replicator::enough_replicas_hold`: whether a quorum holds the log
    /// exactly to `end`, at this epoch.
    fn enough_replicas_hold(&self, w: usize, end: u64) -> bool {
        self.replicas_hold(w, |held| held == end)
    }

    fn replicas_hold(&self, w: usize, holds: impl Fn(u64) -> bool) -> bool {
        let worker = &self.workers[w];
        let Some(view) = &worker.view else {
            return false;
        };
        worker.replica_ends.quorum(
            ACK_RULE,
            &view.row.voters,
            &worker.id,
            view.row.epoch,
            holds,
        )
    }

    fn try_commit(&mut self, w: usize) -> Result<(), Violation> {
        let Some(round) = &self.workers[w].round else {
            return Ok(());
        };
        let (epoch, end) = (round.epoch, round.end);
        if self.leading_epoch(w) != Some(epoch) {
            self.fail_round(w, Answer::Unknown);
            return Ok(());
        }
        if !self.quorum_holds(w, end) || !self.lease_ok(w) {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        self.commit(w, &log, epoch, end)?;
        if let Some(round) = self.workers[w].round.take() {
            for (job, first) in round.jobs {
                self.reply(w, &job, Answer::Landed(first));
            }
        }
        self.answer_awaiting(w, &log);
        self.start_round(w)
    }

    fn commit(&mut self, w: usize, log: &ShardLog, epoch: u64, end: u64) -> Result<(), Violation> {
        let before = log.committed_offset();
        log.commit(end);
        let after = log.committed_offset();
        self.note(|| format!("w{w} commits {before}..{after} (epoch {epoch})"));
        if after > before {
            let segment = self.workers[w]
                .view
                .as_ref()
                .map_or(0, |v| v.row.segment_index);
            self.checker
                .committed(w, segment, epoch, log, before, after)?;
        }
        Ok(())
    }

    fn fail_round(&mut self, w: usize, answer: Answer) {
        if let Some(round) = self.workers[w].round.take() {
            for (job, _) in round.jobs {
                self.reply(w, &job, answer.clone());
            }
        }
        // As the writer after every round: a job that waited for this
        // round's write of its key now finds it held (or learns nothing).
        if let Some(log) = self.workers[w].log.clone() {
            self.answer_awaiting(w, &log);
        }
    }

    fn expire_round(&mut self, w: usize) {
        if self.workers[w]
            .round
            .as_ref()
            .is_some_and(|r| r.deadline <= self.now)
        {
            self.fail_round(w, Answer::Unknown);
        }
    }

    /// Writes the batch whose fsync failed again (the worker's own
    /// `UnwrittenBatch::write_again_now`); whether nothing is left unwritten.
    fn write_unwritten_again(&mut self, w: usize) -> Result<bool, Violation> {
        let Some(batch) = self.workers[w].unwritten.clone() else {
            return Ok(true);
        };
        let Some(log) = self.open_log(w)? else {
            return Ok(false);
        };
        match batch.write_again_now(&log, self.leading_epoch(w)) {
            Ok(()) => {
                self.note(|| {
                    format!(
                        "w{w} writes its unwritten batch at {} again",
                        batch.first_offset
                    )
                });
                self.workers[w].unwritten = None;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// The control plane asks this worker to seal the closing shard:
    /// `authorize` (leading at that epoch, its lease held, its entry
    /// closing), then the writer's seal — catch-up rounds until the log is
    /// settled (`writer/mod.rs`, `seal`).
    fn leader_asked_to_seal(
        &mut self,
        w: usize,
        epoch: u64,
        generation: u64,
    ) -> Result<(), Violation> {
        let closing = self.workers[w]
            .view
            .as_ref()
            .is_some_and(|v| v.row.state == ShardState::Closing);
        if self.leading_epoch(w) != Some(epoch) || !self.lease_ok(w) || !closing {
            return Ok(());
        }
        self.workers[w].pending_seal = Some((epoch, generation));
        self.catch_up(w)?;
        self.try_seal(w)
    }

    /// Answers a pending seal once the worker's own `sealed_end` says the
    /// log is settled. Behind a round in flight, as the seal waits in the
    /// writer's queue behind the appends before it.
    fn try_seal(&mut self, w: usize) -> Result<(), Violation> {
        let Some((epoch, generation)) = self.workers[w].pending_seal else {
            return Ok(());
        };
        if self.leading_epoch(w) != Some(epoch) {
            self.workers[w].pending_seal = None;
            return Ok(());
        }
        if self.workers[w].round.is_some() || !self.write_unwritten_again(w)? {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        let sealed = sealed_end(&log, epoch, &|end| self.enough_replicas_hold(w, end));
        if let Some(sealed) = sealed {
            self.workers[w].pending_seal = None;
            self.note(|| format!("w{w} seals at {} (epoch {epoch})", sealed.ending_offset));
            self.send(
                w,
                MEMBERSHIP,
                Msg::Sealed {
                    epoch,
                    generation,
                    end: sealed.ending_offset,
                },
            );
        }
        Ok(())
    }

    /// The worker's own `Awaiting::answer` (`writer/keys.rs`): held keys
    /// answered once committed, the rest once their outcome is known.
    fn answer_awaiting(&mut self, w: usize, log: &ShardLog) {
        let mut awaiting = std::mem::take(&mut self.workers[w].awaiting);
        let answered = {
            let replicas_hold = |end| self.enough_replicas_hold(w, end);
            let leadership = Leadership {
                epoch: self.leading_epoch(w),
                open: self.is_open(w),
                replicas_hold: &replicas_hold,
            };
            awaiting.answer(log, &leadership)
        };
        self.workers[w].awaiting = awaiting;
        for (job, answer) in answered {
            self.reply(w, &job, answer_of(&answer));
        }
    }

    /// The idle leader's round (`catch_up.rs`): probes replicas not known
    /// to be at its end, commits what a quorum at this epoch holds,
    /// reports its replicas to membership.
    fn catch_up(&mut self, w: usize) -> Result<(), Violation> {
        let Some(epoch) = self.leading_epoch(w) else {
            return Ok(());
        };
        if !self.lease_ok(w) {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        if log.begin_leading(epoch).is_err() {
            return Ok(());
        }
        let target = log.next_offset();
        let view = self.workers[w].view.clone().map(|v| v.row);
        let Some(row) = view else {
            return Ok(());
        };
        self.workers[w]
            .replica_ends
            .follow(epoch, &row.replica_worker_ids);
        for replica in &row.replica_worker_ids {
            let known = self.workers[w].replica_ends.get(replica);
            if known == Some(target) {
                continue;
            }
            if let Some(r) = self.worker_index(replica) {
                match known {
                    Some(end) if end < target => self.send_missing(w, r, &log, epoch, end),
                    _ => self.send(
                        w,
                        r,
                        Msg::Replicate {
                            epoch,
                            history: log.epoch_history(),
                            first_offset: target,
                            arrival_ms: 0,
                            records: Vec::new(),
                            committed: log.committed_offset(),
                            leader_end: target,
                        },
                    ),
                }
            }
        }
        if log.committed_offset() < target && self.enough_replicas_hold(w, target) {
            self.commit(w, &log, epoch, target)?;
        }
        self.answer_awaiting(w, &log);
        self.report(w, &log, &row);
        Ok(())
    }

    /// `reports.rs`: which copies hold the leader's committed log at this
    /// epoch, for membership to move the voters on.
    fn report(&mut self, w: usize, log: &ShardLog, row: &ShardRow) {
        let has_learners = !row.learners().is_empty();
        if !row.voters.is_joint() && !has_learners {
            return;
        }
        let Some(epoch_start) = log
            .epoch_history()
            .entries()
            .last()
            .filter(|e| e.epoch == row.epoch)
            .map(|e| e.start_offset)
        else {
            return;
        };
        let needed = log.committed_offset().max(epoch_start);
        let holding = self.workers[w].replica_ends.holding(
            &self.workers[w].id,
            row.epoch,
            &row.replica_worker_ids,
            needed,
        );
        if holding.is_empty() {
            return;
        }
        self.send(
            w,
            MEMBERSHIP,
            Msg::Report {
                epoch: row.epoch,
                voters: row.voters.clone(),
                holding,
            },
        );
    }

    fn persist(&mut self, w: usize) {
        if let Some(log) = &self.workers[w].log {
            let _ = log.persist_commit_point();
        }
    }

    fn reply(&mut self, w: usize, job: &Job, answer: Answer) {
        let (call, attempt) = (job.call, job.attempt);
        self.send(
            w,
            FRONTEND,
            Msg::AppendReply {
                call,
                attempt,
                answer,
            },
        );
    }

    // ----- membership -----

    fn membership_receives(&mut self, from: usize, msg: Msg) {
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
    fn begin_closing(&mut self) {
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
    fn reopen(&mut self) {
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
    fn seal_attempt(&mut self, generation: u64) {
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
    fn complete_seal(&mut self, epoch: u64, generation: u64, end: u64) -> Result<(), Violation> {
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
    fn relocate(&mut self, epoch: u64, end: u64) -> Result<(), Violation> {
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
    fn timer_now(&self) -> Option<TimeInterval> {
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
    fn store_up(&self) -> bool {
        self.membership_up && self.postgres_up
    }

    fn alive(&self, w: usize) -> bool {
        self.now.saturating_sub(self.last_heard[w]) < HEARTBEAT_TIMEOUT_MS
    }

    fn membership_tick(&mut self) {
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
    fn fail_over(&mut self, dead: usize) {
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

    fn send_entry(&mut self, w: usize) {
        let entry = Entry {
            version: self.version,
            row: self.row.clone(),
        };
        self.send(MEMBERSHIP, w, Msg::Entry(Box::new(entry)));
    }

    fn broadcast(&mut self) {
        for w in 0..self.workers.len() {
            self.send_entry(w);
        }
        let entry = Entry {
            version: self.version,
            row: self.row.clone(),
        };
        self.send(MEMBERSHIP, FRONTEND, Msg::Entry(Box::new(entry)));
    }

    // ----- the frontend -----

    fn new_call(&mut self) {
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

    fn send_call(&mut self, call: u64) {
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

    fn call_timed_out(&mut self, call: u64, attempt: u64) {
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

    fn frontend_receives(&mut self, msg: Msg) -> Result<(), Violation> {
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
    fn read_from_leader(&mut self) -> Result<(), Violation> {
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
