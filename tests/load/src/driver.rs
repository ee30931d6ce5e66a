//! The core of every load test, independent of what is being called: a
//! [`Scenario`] is one operation against a service, and [`run`] calls it in
//! closed loop (N callers, each sending its next call when the last one
//! answered) or open loop (calls due at a fixed rate, whether or not the
//! earlier ones answered), then hands back what it [`Recorded`].
//!
//! Open loop follows wrk2: at most `max_in_flight` calls are outstanding,
//! each call has an *intended* send time on the fixed schedule, and a call
//! that could only be sent late because every caller was still waiting
//! for the service is charged from its intended time — so a stall is not
//! hidden by the client having sent less meanwhile (coordinated omission).
//! A call whose caller was free in time is charged from its actual send
//! (what separates them from the timer's own millisecond of slack). The
//! time from the actual send is kept for every call too, as the service
//! time.
//!
//! Time is tokio's, so the tests below run on a paused clock.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Latencies are recorded in microseconds, up to an hour, to three
/// significant digits.
const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;
const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;

/// A send this much later than its intended time counts as late: the
/// driver could not keep the schedule (all `max_in_flight` callers busy, or
/// the client's own CPU saturated).
pub const LATE_AFTER: Duration = Duration::from_millis(2);

/// What one successful call did, besides taking time.
#[derive(Debug, Default, Clone)]
pub struct Done {
    /// Things carried (records, entries, subscribers reached).
    pub items: u64,
    /// Payload bytes carried.
    pub bytes: u64,
    /// Counted remarks about the answer (`source=redis`, `throttled
    /// records`), each with how many times it applies.
    pub notes: Vec<(Cow<'static, str>, u64)>,
    /// Further durations the call measured itself (how long until the first
    /// subscriber saw a change, say), each into a histogram of its own.
    pub samples: Vec<(&'static str, Duration)>,
}

impl Done {
    pub fn items(items: u64) -> Done {
        Done {
            items,
            ..Done::default()
        }
    }

    pub fn with_bytes(mut self, bytes: u64) -> Done {
        self.bytes = bytes;
        self
    }

    pub fn note(mut self, note: impl Into<Cow<'static, str>>, count: u64) -> Done {
        if count > 0 {
            self.notes.push((note.into(), count));
        }
        self
    }

    pub fn sample(mut self, name: &'static str, duration: Duration) -> Done {
        self.samples.push((name, duration));
        self
    }
}

/// A failed call: its kind (a gRPC code and Freshet error code, a Kinesis
/// exception name, or a transport failure) and one message as an example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: String,
    pub message: String,
}

impl Failure {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Done, Failure>> + Send + 'a>>;

/// One operation against a service. `seq` numbers the calls from 0 in the
/// order they are sent (warm-up included), so a scenario can spread them
/// over shards, streams or simulated workers.
pub trait Scenario: Send + Sync + 'static {
    fn call(&self, seq: u64) -> CallFuture<'_>;
}

/// A scenario from a closure returning a future.
pub struct FnScenario<F>(pub F);

impl<F, Fut> Scenario for FnScenario<F>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Done, Failure>> + Send + 'static,
{
    fn call(&self, seq: u64) -> CallFuture<'_> {
        Box::pin((self.0)(seq))
    }
}

/// How calls are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `concurrency` callers, each sending its next call as soon as the
    /// previous one answered.
    Closed { concurrency: usize },
    /// Calls due every `1 / rate` seconds, at most `max_in_flight` of them
    /// outstanding.
    Open { rate: f64, max_in_flight: usize },
}

/// What to run: the pacing, the bounds and the per-call timeout.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    /// Calls intended to start within this time from the start are made
    /// but not recorded.
    pub warmup: Duration,
    /// No call is intended to start later than this after the warm-up.
    pub duration: Duration,
    /// At most this many recorded (post-warm-up) calls.
    pub requests: Option<u64>,
    /// A call that has not answered by then counts as a `client timeout`.
    pub timeout: Duration,
}

/// Counters a progress display may read while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// False while warming up.
    pub measuring: AtomicBool,
}

/// Everything recorded over the measured part of a run.
pub struct Recorded {
    /// From the intended send time to the answer (the corrected latency).
    pub latency: Histogram<u64>,
    /// From the actual send to the answer.
    pub service_time: Histogram<u64>,
    pub samples: BTreeMap<&'static str, Histogram<u64>>,
    pub ok: u64,
    pub items: u64,
    pub bytes: u64,
    /// By kind: how many, and the first message seen.
    pub errors: BTreeMap<String, (u64, String)>,
    pub notes: BTreeMap<String, u64>,
    /// Calls sent more than [`LATE_AFTER`] after their intended time.
    pub late_sends: u64,
    pub max_send_lag: Duration,
    /// From the end of the warm-up to the last recorded answer.
    pub elapsed: Duration,
    /// Calls made during the warm-up (not recorded).
    pub warmup_calls: u64,
    /// Whether the run was cut short (Ctrl-C).
    pub interrupted: bool,
}

impl Recorded {
    fn new() -> Recorded {
        Recorded {
            latency: new_histogram(),
            service_time: new_histogram(),
            samples: BTreeMap::new(),
            ok: 0,
            items: 0,
            bytes: 0,
            errors: BTreeMap::new(),
            notes: BTreeMap::new(),
            late_sends: 0,
            max_send_lag: Duration::ZERO,
            elapsed: Duration::ZERO,
            warmup_calls: 0,
            interrupted: false,
        }
    }

    /// Recorded calls, successful or not.
    pub fn calls(&self) -> u64 {
        self.ok + self.error_count()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|(count, _)| count).sum()
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, HISTOGRAM_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What every caller task shares.
struct Shared {
    plan: Plan,
    scenario: Arc<dyn Scenario>,
    start: Instant,
    measure_start: Instant,
    end: Instant,
    /// Open loop: the next slot of the schedule.
    next_slot: AtomicU64,
    /// Recorded calls started so far (the `requests` bound).
    counted: AtomicU64,
    seq: AtomicU64,
    warmup_calls: AtomicU64,
    recorded: Mutex<Recorded>,
    last_answer: Mutex<Option<Instant>>,
    live: Arc<Live>,
    stop: CancellationToken,
}

/// Runs `scenario` as `plan` says and returns what was recorded. `stop`
/// ends it early (calls in flight still finish and count).
pub async fn run(
    plan: Plan,
    scenario: Arc<dyn Scenario>,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Recorded {
    let callers = match plan.mode {
        Mode::Closed { concurrency } => concurrency.max(1),
        Mode::Open { max_in_flight, .. } => max_in_flight.max(1),
    };
    let start = Instant::now();
    let measure_start = start + plan.warmup;
    let shared = Arc::new(Shared {
        end: measure_start + plan.duration,
        plan,
        scenario,
        start,
        measure_start,
        next_slot: AtomicU64::new(0),
        counted: AtomicU64::new(0),
        seq: AtomicU64::new(0),
        warmup_calls: AtomicU64::new(0),
        recorded: Mutex::new(Recorded::new()),
        last_answer: Mutex::new(None),
        live,
        stop,
    });
    shared
        .live
        .measuring
        .store(shared.plan.warmup.is_zero(), Ordering::Relaxed);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        tasks.spawn(caller(shared.clone()));
    }
    let flag = {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(shared.measure_start) => {}
                _ = shared.stop.cancelled() => {}
            }
            shared.live.measuring.store(true, Ordering::Relaxed);
        })
    };
    while tasks.join_next().await.is_some() {}
    flag.abort();
    let last_answer = *shared.last_answer.lock().unwrap_or_else(|p| p.into_inner());
    let mut recorded = std::mem::replace(
        &mut *shared.recorded.lock().unwrap_or_else(|p| p.into_inner()),
        Recorded::new(),
    );
    // Rates are over the measured window: a call that overran the end
    // (one slow timeout, say) counts, but does not stretch the window.
    recorded.elapsed = last_answer.map_or(Duration::ZERO, |last| {
        last.min(shared.end)
            .saturating_duration_since(shared.measure_start)
    });
    recorded.warmup_calls = shared.warmup_calls.load(Ordering::Relaxed);
    recorded.interrupted = shared.stop.is_cancelled();
    recorded
}

/// The error kind of a call unanswered within `--timeout`.
const TIMEOUT_KIND: &str = "client timeout";

/// When slot `slot` of an open-loop schedule at `rate` calls a second is
/// due, after the start.
fn slot_offset(slot: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(slot as f64 / rate)
}

/// One caller: takes the next call's intended time, waits for it (open
/// loop), makes the call and records it, until a bound is reached.
async fn caller(shared: Arc<Shared>) {
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let taken = Instant::now();
        // No call starts past the end, even one that was due before it
        // (a service slower than the open-loop rate leaves a backlog).
        if taken >= shared.end {
            return;
        }
        let intended = match shared.plan.mode {
            Mode::Closed { .. } => taken,
            Mode::Open { rate, .. } => {
                let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
                shared.start + slot_offset(slot, rate)
            }
        };
        if intended >= shared.end {
            return;
        }
        let measured = intended >= shared.measure_start;
        if measured {
            if let Some(limit) = shared.plan.requests {
                if shared.counted.fetch_add(1, Ordering::Relaxed) >= limit {
                    return;
                }
            }
        }
        if matches!(shared.plan.mode, Mode::Open { .. }) {
            tokio::select! {
                _ = tokio::time::sleep_until(intended) => {}
                _ = shared.stop.cancelled() => return,
            }
        }
        let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let result =
            match tokio::time::timeout(shared.plan.timeout, shared.scenario.call(seq)).await {
                Ok(result) => result,
                Err(_) => Err(Failure::new(
                    TIMEOUT_KIND,
                    format!("no answer within {:?}", shared.plan.timeout),
                )),
            };
        let answered = Instant::now();
        match &result {
            Ok(_) => shared.live.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => shared.live.errors.fetch_add(1, Ordering::Relaxed),
        };
        if !measured {
            shared.warmup_calls.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        {
            let mut last = shared.last_answer.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|at| at < answered) {
                *last = Some(answered);
            }
        }
        let lag = sent.saturating_duration_since(intended);
        // A call taken up after it was due waited for a caller to come
        // free — behind the service's earlier answers — and is charged from
        // when it was due. One taken up early was only waiting for its time,
        // and any lateness is the client's own timer (tokio's resolution is
        // a millisecond), not the service's doing: it is charged from the
        // send. Either way a late send counts in `late_sends`.
        let charged_from = if taken < intended { sent } else { intended };
        let mut recorded = shared.recorded.lock().unwrap_or_else(|p| p.into_inner());
        if lag > LATE_AFTER {
            recorded.late_sends += 1;
        }
        recorded.max_send_lag = recorded.max_send_lag.max(lag);
        match result {
            Ok(done) => {
                recorded.ok += 1;
                recorded.items += done.items;
                recorded.bytes += done.bytes;
                recorded
                    .latency
                    .saturating_record(micros(answered.saturating_duration_since(charged_from)));
                recorded
                    .service_time
                    .saturating_record(micros(answered.saturating_duration_since(sent)));
                for (note, count) in done.notes {
                    *recorded.notes.entry(note.into_owned()).or_insert(0) += count;
                }
                for (name, duration) in done.samples {
                    recorded
                        .samples
                        .entry(name)
                        .or_insert_with(new_histogram)
                        .saturating_record(micros(duration));
                }
            }
            Err(failure) => {
                // A call that timed out took at least this long: leaving it
                // out would hide exactly the slowest calls.
                if failure.kind == TIMEOUT_KIND {
                    recorded.latency.saturating_record(micros(
                        answered.saturating_duration_since(charged_from),
                    ));
                }
                let entry = recorded
                    .errors
                    .entry(failure.kind)
                    .or_insert((0, failure.message));
                entry.0 += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(mode: Mode, warmup_ms: u64, duration_ms: u64, requests: Option<u64>) -> Plan {
        Plan {
            mode,
            warmup: Duration::from_millis(warmup_ms),
            duration: Duration::from_millis(duration_ms),
            requests,
            timeout: Duration::from_secs(30),
        }
    }

    /// A call that takes `ms(seq)` milliseconds and remembers its `seq`.
    fn sleeper(
        ms: impl Fn(u64) -> u64 + Send + Sync + 'static,
    ) -> (Arc<dyn Scenario>, Arc<Mutex<Vec<u64>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let scenario = FnScenario(move |seq| {
            let wait = Duration::from_millis(ms(seq));
            log.lock().expect("log").push(seq);
            async move {
                tokio::time::sleep(wait).await;
                Ok(Done::items(1).with_bytes(10))
            }
        });
        (Arc::new(scenario), seen)
    }

    async fn go(plan: Plan, scenario: Arc<dyn Scenario>) -> Recorded {
        run(
            plan,
            scenario,
            Arc::new(Live::default()),
            CancellationToken::new(),
        )
        .await
    }

    fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
        histogram.value_at_quantile(quantile) as f64 / 1000.0
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_stops_at_the_request_count() {
        let (scenario, _) = sleeper(|_| 10);
        let closed = Mode::Closed { concurrency: 4 };
        let recorded = go(plan(closed, 0, 60_000, Some(50)), scenario).await;
        assert_eq!(recorded.ok, 50);
        assert_eq!(recorded.calls(), 50);
        assert_eq!(recorded.items, 50);
        assert_eq!(recorded.bytes, 500);
        // 4 callers, 10 ms each: 50 calls take 13 rounds.
        assert!(
            (Duration::from_millis(120)..=Duration::from_millis(140)).contains(&recorded.elapsed),
            "{:?}",
            recorded.elapsed
        );
        assert!((ms(&recorded.latency, 0.5) - 10.0).abs() < 0.5);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_stops_at_the_duration() {
        let (scenario, _) = sleeper(|_| 10);
        let closed = Mode::Closed { concurrency: 2 };
        let recorded = go(plan(closed, 0, 1_000, None), scenario).await;
        // Two callers, 100 calls a second each.
        assert!((198..=202).contains(&recorded.ok), "{} calls", recorded.ok);
        assert!(recorded.elapsed >= Duration::from_millis(1_000));
        assert!(recorded.elapsed <= Duration::from_millis(1_011));
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_calls_are_made_but_not_recorded() {
        let (scenario, seen) = sleeper(|_| 10);
        let closed = Mode::Closed { concurrency: 1 };
        let recorded = go(plan(closed, 500, 1_000, None), scenario).await;
        assert_eq!(recorded.warmup_calls, 50);
        assert!((99..=101).contains(&recorded.ok), "{}", recorded.ok);
        assert_eq!(
            seen.lock().expect("seen").len() as u64,
            recorded.warmup_calls + recorded.ok
        );
        // The warm-up's calls count towards neither the items nor the time.
        assert_eq!(recorded.items, recorded.ok);
        assert!(recorded.elapsed <= Duration::from_millis(1_011));
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_does_not_use_up_the_request_count() {
        let (scenario, _) = sleeper(|_| 10);
        let closed = Mode::Closed { concurrency: 1 };
        let recorded = go(plan(closed, 200, 60_000, Some(30)), scenario).await;
        assert_eq!(recorded.warmup_calls, 20);
        assert_eq!(recorded.ok, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overloaded_open_loop_starts_no_call_past_the_end() {
        // 1,000 calls a second due, one caller, 10 ms each: the backlog
        // grows all along, and the run still ends on time.
        let (scenario, seen) = sleeper(|_| 10);
        let open = Mode::Open {
            rate: 1_000.0,
            max_in_flight: 1,
        };
        let recorded = go(plan(open, 0, 1_000, None), scenario).await;
        assert!((99..=101).contains(&recorded.ok), "{} calls", recorded.ok);
        assert_eq!(seen.lock().expect("seen").len() as u64, recorded.ok);
        assert!(recorded.elapsed <= Duration::from_millis(1_000));
        // Each queued call is charged from when it was due.
        assert!(ms(&recorded.latency, 0.99) > 800.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_times_out_counts_in_the_latencies() {
        let (scenario, _) = sleeper(|seq| if seq == 3 { 60_000 } else { 1 });
        let closed = Mode::Closed { concurrency: 1 };
        let mut plan = plan(closed, 0, 60_000, Some(10));
        plan.timeout = Duration::from_millis(2_000);
        let recorded = go(plan, scenario).await;
        assert_eq!(recorded.errors.get(TIMEOUT_KIND).map(|e| e.0), Some(1));
        assert!((ms(&recorded.latency, 1.0) - 2_000.0).abs() < 5.0);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_sends_on_schedule_whatever_the_answers() {
        // 200 calls a second for one second, each taking 30 ms: six in
        // flight at a time, none late.
        let (scenario, _) = sleeper(|_| 30);
        let open = Mode::Open {
            rate: 200.0,
            max_in_flight: 16,
        };
        let recorded = go(plan(open, 0, 1_000, None), scenario).await;
        assert_eq!(recorded.ok, 200);
        assert_eq!(recorded.late_sends, 0);
        assert!((ms(&recorded.latency, 0.99) - 30.0).abs() < 0.5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_inflates_the_latency_of_the_sends_queued_behind_it() {
        // 100 calls a second through one caller; each takes 1 ms except the
        // eleventh, which stalls for 500 ms. The fifty calls due meanwhile
        // are sent late, and each is charged from when it was due.
        let (scenario, _) = sleeper(|seq| if seq == 10 { 500 } else { 1 });
        let open = Mode::Open {
            rate: 100.0,
            max_in_flight: 1,
        };
        let recorded = go(plan(open, 0, 1_000, None), scenario).await;
        assert_eq!(recorded.ok, 100, "every intended send is made");
        let inflated = recorded.latency.count_between(40_000, u64::MAX);
        assert!(
            (45..=52).contains(&inflated),
            "{inflated} calls charged 40 ms or more"
        );
        assert!(ms(&recorded.latency, 0.9) > 100.0);
        assert!((ms(&recorded.latency, 1.0) - 500.0).abs() < 2.0);
        // Measured from the actual send, only the stalled call is slow.
        assert_eq!(recorded.service_time.count_between(40_000, u64::MAX), 1);
        assert!(ms(&recorded.service_time, 0.9) < 2.0);
        assert!(recorded.late_sends >= 45);
        assert!(recorded.max_send_lag >= Duration::from_millis(480));
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_does_not_see_the_stall_the_same_way() {
        // The same stall in closed loop: the one slow call, and fewer calls
        // made meanwhile (what open loop corrects for).
        let (scenario, _) = sleeper(|seq| if seq == 10 { 500 } else { 1 });
        let closed = Mode::Closed { concurrency: 1 };
        let recorded = go(plan(closed, 0, 1_000, None), scenario).await;
        assert_eq!(recorded.latency.count_between(40_000, u64::MAX), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_warm_up_and_count_bounds() {
        let (scenario, _) = sleeper(|_| 1);
        let open = Mode::Open {
            rate: 100.0,
            max_in_flight: 4,
        };
        let recorded = go(plan(open, 300, 60_000, Some(40)), scenario).await;
        assert_eq!(recorded.warmup_calls, 30);
        assert_eq!(recorded.ok, 40);
        // The 40 recorded calls were due over 400 ms after the warm-up.
        assert!(recorded.elapsed >= Duration::from_millis(390));
        assert!(recorded.elapsed <= Duration::from_millis(402));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_counted_by_kind_and_kept_out_of_the_latencies() {
        let scenario = FnScenario(|seq: u64| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match seq % 4 {
                0 => Err(Failure::new("ResourceExhausted/LimitExceeded", "rate")),
                1 => Err(Failure::new("Unavailable", "down")),
                _ => Ok(Done::items(1).note("source=redis", 1)),
            }
        });
        let closed = Mode::Closed { concurrency: 1 };
        let recorded = go(plan(closed, 0, 60_000, Some(40)), Arc::new(scenario)).await;
        assert_eq!(recorded.ok, 20);
        assert_eq!(recorded.latency.len(), 20);
        assert_eq!(recorded.error_count(), 20);
        assert_eq!(
            recorded.errors["ResourceExhausted/LimitExceeded"],
            (10, "rate".to_owned())
        );
        assert_eq!(recorded.errors["Unavailable"].0, 10);
        assert_eq!(recorded.notes["source=redis"], 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_timeout_is_a_client_timeout() {
        let (scenario, _) = sleeper(|seq| if seq == 0 { 60_000 } else { 1 });
        let mut slow = plan(Mode::Closed { concurrency: 1 }, 0, 60_000, Some(3));
        slow.timeout = Duration::from_millis(100);
        let recorded = go(slow, scenario).await;
        assert_eq!(recorded.errors["client timeout"].0, 1);
        assert_eq!(recorded.ok, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn samples_go_to_histograms_of_their_own() {
        let scenario = FnScenario(|seq: u64| async move {
            Ok(Done::items(1).sample("first subscriber", Duration::from_millis(seq + 1)))
        });
        let closed = Mode::Closed { concurrency: 1 };
        let recorded = go(plan(closed, 0, 60_000, Some(10)), Arc::new(scenario)).await;
        let first = &recorded.samples["first subscriber"];
        assert_eq!(first.len(), 10);
        assert_eq!(first.max(), hdr_round(10_000));
    }

    fn hdr_round(value: u64) -> u64 {
        let mut h = new_histogram();
        h.saturating_record(value);
        h.max()
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_ends_the_run_early_and_says_so() {
        let (scenario, _) = sleeper(|_| 10);
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(105)).await;
            trigger.cancel();
        });
        let recorded = run(
            plan(Mode::Closed { concurrency: 1 }, 0, 60_000, None),
            scenario,
            Arc::new(Live::default()),
            stop,
        )
        .await;
        assert!(recorded.interrupted);
        assert_eq!(recorded.ok, 11);
    }
}
