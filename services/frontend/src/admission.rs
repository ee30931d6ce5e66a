//! Who gets in, before anything is read: at most `--max-requests-per-source`
//! requests from one address at once (0: no cap), on top of the global
//! in-flight limit in `http_api.rs`. A source that opens many slow requests
//! — bodies trickled in up to the body-read deadline — holds only its own
//! share. Behind a proxy or NAT every client shares the proxy's address,
//! so the cap is per address, not per client; set it with that in mind.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use freshet_errors::ErrorCode;
use moka::sync::Cache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{KinesisError, KinesisResult};

/// Addresses tracked at once; an idle one is forgotten after a minute.
const SOURCES: u64 = 100_000;
const SOURCE_IDLE: Duration = Duration::from_secs(60);

/// Per-source concurrency.
pub struct SourceLimits {
    per_source: usize,
    in_flight: Cache<IpAddr, Arc<Semaphore>>,
}

/// A request's place; given back when dropped.
pub struct Entry {
    _permit: Option<OwnedSemaphorePermit>,
}

impl SourceLimits {
    pub fn new(per_source: usize) -> SourceLimits {
        SourceLimits {
            per_source,
            in_flight: Cache::builder()
                .max_capacity(SOURCES)
                .time_to_idle(SOURCE_IDLE)
                .build(),
        }
    }

    /// A place for one more request from `source`, or LimitExceeded (which
    /// the SDKs retry with backoff, as a throttle).
    pub fn enter(&self, source: Option<IpAddr>) -> KinesisResult<Entry> {
        let Some(source) = source.filter(|_| self.per_source > 0) else {
            return Ok(Entry { _permit: None });
        };
        let semaphore = self
            .in_flight
            .get_with(source, || Arc::new(Semaphore::new(self.per_source)));
        match semaphore.try_acquire_owned() {
            Ok(permit) => Ok(Entry {
                _permit: Some(permit),
            }),
            Err(_) => Err(KinesisError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "Rate exceeded: {} requests from one address are in flight.",
                    self.per_source
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_its_own_places() {
        let limits = SourceLimits::new(2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = limits.enter(Some(a)).expect("first");
        let _second = limits.enter(Some(a)).expect("second");
        assert_eq!(
            limits.enter(Some(a)).err().map(|e| e.exception()),
            Some("LimitExceededException")
        );
        assert!(
            limits.enter(Some(b)).is_ok(),
            "another source is unaffected"
        );
        drop(first);
        assert!(
            limits.enter(Some(a)).is_ok(),
            "a place given back is reused"
        );
        assert!(SourceLimits::new(0).enter(Some(a)).is_ok(), "0: no cap");
    }
}
