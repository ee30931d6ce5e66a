//! Membership's settings, and the check that keeps failover safe.

use std::time::Duration;

use freshet_server::{DatabaseUrl, TimerAddr};

/// Allowance for clock drift and message delay between a lease's end on the
/// worker and membership's view of it.
pub(crate) const LEASE_MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "freshet-membership", about = "Freshet membership service")]
pub struct Config {
    #[arg(
        long,
        env = "FRESHET_MEMBERSHIP_LISTEN",
        default_value = "127.0.0.1:7052"
    )]
    pub listen: String,
    #[command(flatten)]
    pub database: DatabaseUrl,
    #[command(flatten)]
    pub timer: TimerAddr,
    /// A worker with no heartbeat for this long is considered dead.
    #[arg(long, env = "FRESHET_HEARTBEAT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,
    /// How long a handed-out shard-map entry stays valid.
    #[arg(long, env = "FRESHET_ROUTE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub route_ttl: Duration,
    /// How long one heartbeat lets a worker act as a leader. Must be shorter
    /// than the heartbeat timeout: see the safety argument in `failover.rs`.
    #[arg(long, env = "FRESHET_LEASE_DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How often dead leaders are looked for.
    #[arg(long, env = "FRESHET_FAILOVER_CHECK_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub failover_check_interval: Duration,
    #[command(flatten)]
    pub internal: freshet_server::InternalTokenFlag,
    #[command(flatten)]
    pub observability: freshet_server::ObservabilityFlags,
    #[command(flatten)]
    pub auth: freshet_server::AuthFlags,
}

impl Config {
    /// Checks the settings that safety depends on.
    pub fn validate(&self) -> Result<(), UnsafeLease> {
        if self.lease_duration + LEASE_MARGIN < self.heartbeat_timeout {
            return Ok(());
        }
        Err(UnsafeLease {
            lease_duration: self.lease_duration,
            heartbeat_timeout: self.heartbeat_timeout,
        })
    }
}

/// A lease that could outlive the heartbeat timeout: a deposed leader could
/// still acknowledge writes after failover.
#[derive(Debug, thiserror::Error)]
#[error(
    "--lease-duration ({lease_duration:?}) plus a {margin:?} margin must be shorter than --heartbeat-timeout ({heartbeat_timeout:?})",
    margin = LEASE_MARGIN
)]
pub struct UnsafeLease {
    pub lease_duration: Duration,
    pub heartbeat_timeout: Duration,
}
