//! The client side of the timer service: "what time is it?" answered as an
//! interval that surely contains the timer service's clock.
//!
//! A background task polls the timer service. Each poll fixes the service's
//! clock to within its stated uncertainty plus half the round trip; between
//! polls the error grows by a drift bound. When no poll has succeeded for
//! `max_unsynced`, [`TimerClient::now`] answers `None`: callers must then
//! treat every validity time as unknown (the frontend re-reads its routes
//! from the cache instead of trusting them).

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use freshet_proto::v1::timer_client::TimerClient as TimerGrpcClient;
use freshet_proto::v1::NowRequest;
use freshet_server::TracedChannel;
use tokio::time::Instant;

/// An interval of timer-service time, in microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeInterval {
    pub earliest_micros: i64,
    pub latest_micros: i64,
}

impl TimeInterval {
    /// True only if `deadline_micros` has certainly not passed yet.
    pub fn is_surely_before(&self, deadline_micros: i64) -> bool {
        self.latest_micros < deadline_micros
    }

    /// True only if `deadline_micros` has certainly passed.
    pub fn is_surely_after(&self, deadline_micros: i64) -> bool {
        self.earliest_micros > deadline_micros
    }
}

/// Tunables of the client.
#[derive(Debug, Clone)]
pub struct TimerClientConfig {
    pub poll_interval: Duration,
    /// How long the last good poll stays usable.
    pub max_unsynced: Duration,
    /// Assumed worst-case drift of the local monotonic clock, parts per million.
    pub drift_ppm: i64,
}

impl Default for TimerClientConfig {
    fn default() -> Self {
        TimerClientConfig {
            poll_interval: Duration::from_millis(500),
            max_unsynced: Duration::from_secs(5),
            drift_ppm: 200,
        }
    }
}

/// One answer of the timer service, as this client fixed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    /// When, on this process's monotonic clock, the answer arrived.
    taken_at: Instant,
    /// The timer's time at `taken_at` (its answer plus half the round trip).
    server_micros: i64,
    /// How far the true time may lie from `server_micros` at `taken_at`.
    error_micros: i64,
}

impl Sample {
    /// Fixes an answer `now_micros ± uncertainty_micros` received at
    /// `received_at` to a request sent at `sent_at`: the answer was made
    /// somewhere within the round trip, so assume its middle and widen the
    /// error by half of it.
    fn from_answer(
        sent_at: Instant,
        received_at: Instant,
        now_micros: i64,
        uncertainty_micros: i64,
    ) -> Sample {
        let round_trip = received_at.saturating_duration_since(sent_at);
        let half_rtt = i64::try_from(round_trip.as_micros() / 2).unwrap_or(i64::MAX);
        Sample {
            taken_at: received_at,
            server_micros: now_micros.saturating_add(half_rtt),
            error_micros: uncertainty_micros.max(0).saturating_add(half_rtt),
        }
    }

    /// The timer's time at `at` (this process's clock), as an interval:
    /// the sample moved forward by the local time elapsed, its error grown
    /// by `drift_ppm` of that (and 1 µs for rounding); `None` once the
    /// sample is older than `max_age`.
    fn interval_at(&self, at: Instant, max_age: Duration, drift_ppm: i64) -> Option<TimeInterval> {
        let elapsed = at.saturating_duration_since(self.taken_at);
        if elapsed > max_age {
            return None;
        }
        let elapsed_micros = i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX);
        let midpoint = self.server_micros.saturating_add(elapsed_micros);
        let error = self
            .error_micros
            .saturating_add(elapsed_micros.saturating_mul(drift_ppm) / 1_000_000)
            .saturating_add(1);
        Some(TimeInterval {
            earliest_micros: midpoint.saturating_sub(error),
            latest_micros: midpoint.saturating_add(error),
        })
    }
}

/// The timer service could not be reached in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timer service not reachable within {0:?}")]
pub struct NotSynced(pub Duration);

struct Shared {
    config: TimerClientConfig,
    sample: RwLock<Option<Sample>>,
    synced: tokio::sync::Notify,
}

/// A cheap-to-clone handle; the poller stops when the last handle is dropped.
#[derive(Clone)]
pub struct TimerClient {
    shared: Arc<Shared>,
}

impl TimerClient {
    /// Starts polling the timer service over `channel`.
    pub fn spawn(channel: TracedChannel, config: TimerClientConfig) -> TimerClient {
        let shared = Arc::new(Shared {
            config,
            sample: RwLock::new(None),
            synced: tokio::sync::Notify::new(),
        });
        tokio::spawn(poll_forever(
            Arc::downgrade(&shared),
            TimerGrpcClient::new(channel),
        ));
        TimerClient { shared }
    }

    /// The timer service's current time, or `None` when it has not been
    /// reachable for longer than `max_unsynced`.
    pub fn now(&self) -> Option<TimeInterval> {
        let sample = (*self.shared.sample.read().unwrap_or_else(|p| p.into_inner()))?;
        let config = &self.shared.config;
        sample.interval_at(Instant::now(), config.max_unsynced, config.drift_ppm)
    }

    /// A validity deadline `ttl` from now: from the *earliest* the timer's
    /// clock may read, so the holder's view can only be shorter. `0` (already
    /// past) when the time is unknown.
    pub fn deadline_after(&self, ttl: Duration) -> i64 {
        let ttl_micros = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        self.now()
            .map(|now| now.earliest_micros.saturating_add(ttl_micros))
            .unwrap_or(0)
    }

    /// Waits until the first successful poll (or `timeout`).
    pub async fn wait_synced(&self, timeout: Duration) -> Result<TimeInterval, NotSynced> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.synced.notified();
            if let Some(now) = self.now() {
                return Ok(now);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(NotSynced(timeout));
            }
        }
    }
}

async fn poll_forever(shared: Weak<Shared>, mut client: TimerGrpcClient<TracedChannel>) {
    loop {
        let Some(poll_interval) = shared.upgrade().map(|s| s.config.poll_interval) else {
            return;
        };
        let sent_at = Instant::now();
        let mut request = tonic::Request::new(NowRequest {});
        request.set_timeout(poll_interval.max(Duration::from_millis(200)));
        let result = client.now(request).await;
        let received_at = Instant::now();
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match result {
            Ok(response) => {
                let response = response.into_inner();
                let sample = Sample::from_answer(
                    sent_at,
                    received_at,
                    response.now_micros,
                    response.uncertainty_micros,
                );
                *shared.sample.write().unwrap_or_else(|p| p.into_inner()) = Some(sample);
                shared.synced.notify_waiters();
            }
            Err(status) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "timer poll failed");
            }
        }
        drop(shared);
        tokio::time::sleep(poll_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(5);

    #[test]
    fn an_answer_is_placed_in_the_middle_of_its_round_trip() {
        let sent = Instant::now();
        let received = sent + Duration::from_millis(10);
        let sample = Sample::from_answer(sent, received, 1_000_000, 300);
        assert_eq!(sample.taken_at, received);
        assert_eq!(sample.server_micros, 1_005_000);
        assert_eq!(sample.error_micros, 5_300);
        // A negative uncertainty from a confused server counts as none.
        assert_eq!(
            Sample::from_answer(sent, received, 0, -7).error_micros,
            5_000
        );
    }

    #[test]
    fn the_interval_moves_with_local_time_and_widens_by_the_drift() {
        let start = Instant::now();
        let sample = Sample {
            taken_at: start,
            server_micros: 10_000_000,
            error_micros: 100,
        };
        // (elapsed, drift ppm) -> (earliest, latest)
        let table = [
            (Duration::ZERO, 200, (9_999_899, 10_000_101)),
            (Duration::from_secs(1), 200, (10_999_699, 11_000_301)),
            (Duration::from_secs(1), 0, (10_999_899, 11_000_101)),
            (
                Duration::from_secs(5),
                1_000_000,
                (10_000_000 - 101, 20_000_101),
            ),
        ];
        for (elapsed, drift_ppm, (earliest, latest)) in table {
            let interval = sample
                .interval_at(start + elapsed, MAX_AGE, drift_ppm)
                .expect("fresh");
            assert_eq!(
                (interval.earliest_micros, interval.latest_micros),
                (earliest, latest),
                "after {elapsed:?} at {drift_ppm} ppm"
            );
        }
    }

    #[test]
    fn a_sample_older_than_its_lifetime_tells_nothing() {
        let start = Instant::now();
        let sample = Sample {
            taken_at: start,
            server_micros: 0,
            error_micros: 0,
        };
        assert!(sample.interval_at(start + MAX_AGE, MAX_AGE, 200).is_some());
        assert!(sample
            .interval_at(start + MAX_AGE + Duration::from_micros(1), MAX_AGE, 200)
            .is_none());
    }

    #[test]
    fn deadlines_are_judged_only_when_sure() {
        let now = TimeInterval {
            earliest_micros: 100,
            latest_micros: 200,
        };
        assert!(now.is_surely_before(201));
        assert!(!now.is_surely_before(200));
        assert!(now.is_surely_after(99));
        assert!(!now.is_surely_after(100));
    }
}
