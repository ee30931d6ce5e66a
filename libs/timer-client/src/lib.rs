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
use freshet_telemetry::TracedChannel;
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

#[derive(Debug, Clone, Copy)]
struct Sample {
    taken_at: Instant,
    server_micros: i64,
    error_micros: i64,
}

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
        let elapsed = sample.taken_at.elapsed();
        if elapsed > self.shared.config.max_unsynced {
            return None;
        }
        let elapsed_micros = i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX);
        let midpoint = sample.server_micros.saturating_add(elapsed_micros);
        let error =
            sample.error_micros + elapsed_micros * self.shared.config.drift_ppm / 1_000_000 + 1;
        Some(TimeInterval {
            earliest_micros: midpoint - error,
            latest_micros: midpoint + error,
        })
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
    pub async fn wait_synced(&self, timeout: Duration) -> anyhow::Result<TimeInterval> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.synced.notified();
            if let Some(now) = self.now() {
                return Ok(now);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!("timer service not reachable within {timeout:?}");
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
                let half_rtt =
                    i64::try_from((received_at - sent_at).as_micros() / 2).unwrap_or(i64::MAX);
                let sample = Sample {
                    taken_at: received_at,
                    // The reply was produced somewhere within the round trip;
                    // assume its middle and widen the error by half of it.
                    server_micros: response.now_micros.saturating_add(half_rtt),
                    error_micros: response.uncertainty_micros.max(0).saturating_add(half_rtt),
                };
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
