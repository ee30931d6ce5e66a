//! Who gets in, before anything is read: at most `--max-requests-per-source`
//! requests from one source at once (0: no cap), on top of the global
//! in-flight limit in `http_api.rs`; the same accounting caps connections
//! per source (`--max-connections-per-source`, `connections.rs`). A source that opens many slow requests
//! — bodies trickled in up to the body-read deadline — holds only its own
//! share. An IPv4 address is one source; an IPv6 one counts by its /64 (one
//! host is given a whole /64). Behind a proxy or NAT every client shares
//! the proxy's address, so the cap is per address, not per client.
//!
//! Memory: a source is tracked only while it has requests in flight, so
//! the map never holds more entries than there are requests in flight.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use freshet_errors::ErrorCode;

use crate::error::{KinesisError, KinesisResult};

/// A source: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Requests in flight, by source (only sources with some).
type InFlight = Arc<Mutex<HashMap<Source, usize>>>;

/// Per-source concurrency.
pub struct SourceLimits {
    per_source: usize,
    in_flight: InFlight,
}

/// A request's place; given back when dropped.
pub struct Entry {
    held: Option<(Source, InFlight)>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some((source, in_flight)) = self.held.take() {
            let mut in_flight = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = in_flight.get_mut(&source) {
                *count -= 1;
                if *count == 0 {
                    in_flight.remove(&source);
                }
            }
        }
    }
}

impl SourceLimits {
    pub fn new(per_source: usize) -> SourceLimits {
        SourceLimits {
            per_source,
            in_flight: Arc::default(),
        }
    }

    /// A place for one more request from `source`, or LimitExceeded (which
    /// the SDKs retry with backoff, as a throttle).
    pub fn enter(&self, source: Option<IpAddr>) -> KinesisResult<Entry> {
        let Some(source) = source.filter(|_| self.per_source > 0).map(Source::from) else {
            return Ok(Entry { held: None });
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let count = in_flight.entry(source).or_insert(0);
        if *count >= self.per_source {
            return Err(KinesisError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "Rate exceeded: {} requests from one address are in flight.",
                    self.per_source
                ),
            ));
        }
        *count += 1;
        Ok(Entry {
            held: Some((source, self.in_flight.clone())),
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.in_flight.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("an address"))
    }

    #[test]
    fn each_source_has_its_own_places() {
        let limits = SourceLimits::new(2);
        let first = limits.enter(ip("192.0.2.1")).expect("first");
        let _second = limits.enter(ip("::ffff:192.0.2.1")).expect("second");
        assert_eq!(
            limits.enter(ip("192.0.2.1")).err().map(|e| e.exception()),
            Some("LimitExceededException"),
            "an IPv4-mapped address is the same source"
        );
        assert!(
            limits.enter(ip("192.0.2.2")).is_ok(),
            "another source is unaffected"
        );
        drop(first);
        assert!(
            limits.enter(ip("192.0.2.1")).is_ok(),
            "a place given back is reused"
        );
        assert!(
            SourceLimits::new(0).enter(ip("192.0.2.1")).is_ok(),
            "0: no cap"
        );
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64() {
        let limits = SourceLimits::new(1);
        let _held = limits.enter(ip("2001:db8:1:2::1")).expect("first");
        assert!(limits.enter(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(limits.enter(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn sources_are_forgotten_when_idle() {
        let limits = SourceLimits::new(4);
        let entries: Vec<Entry> = (0..100)
            .map(|i| {
                limits
                    .enter(ip(&format!("198.51.100.{i}")))
                    .expect("entered")
            })
            .collect();
        assert_eq!(limits.tracked(), 100);
        drop(entries);
        assert_eq!(limits.tracked(), 0);
    }
}
