//! The addresses services reach each other at, as flags (and environment
//! variables) every service's configuration flattens in, so each is spelt
//! and defaulted once.

/// Membership's gRPC address.
#[derive(Debug, Clone, clap::Args)]
pub struct MembershipAddr {
    #[arg(
        id = "membership_addr",
        long = "membership-addr",
        value_name = "HOST:PORT",
        env = "FRESHET_MEMBERSHIP_ADDR",
        default_value = "127.0.0.1:7052"
    )]
    pub addr: String,
}

/// The timer service's gRPC address.
#[derive(Debug, Clone, clap::Args)]
pub struct TimerAddr {
    #[arg(
        id = "timer_addr",
        long = "timer-addr",
        value_name = "HOST:PORT",
        env = "FRESHET_TIMER_ADDR",
        default_value = "127.0.0.1:7051"
    )]
    pub addr: String,
}

/// The shard-map cache's gRPC address.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheAddr {
    #[arg(
        id = "cache_addr",
        long = "cache-addr",
        value_name = "HOST:PORT",
        env = "FRESHET_CACHE_ADDR",
        default_value = "127.0.0.1:7053"
    )]
    pub addr: String,
}

/// The control plane's gRPC address.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneAddr {
    #[arg(
        id = "control_plane_addr",
        long = "control-plane-addr",
        value_name = "HOST:PORT",
        env = "FRESHET_CONTROL_PLANE_ADDR",
        default_value = "127.0.0.1:7054"
    )]
    pub addr: String,
}

/// The Postgres that holds the metadata (the change log's home).
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseUrl {
    #[arg(
        id = "database_url",
        long = "database-url",
        value_name = "URL",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/freshet"
    )]
    pub url: String,
}

/// How requests are authenticated: the one switch between a LocalStack-like
/// development deployment and one that may face a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuthMode {
    /// Any access key works (a 12-digit key id names the account);
    /// signatures are parsed but not verified.
    #[default]
    Development,
    /// Every request's SigV4 signature is verified against a stored key.
    Sigv4,
}

/// The deployment's authentication mode (`--auth`, `FRESHET_AUTH`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthFlags {
    #[arg(
        long = "auth",
        env = "FRESHET_AUTH",
        value_enum,
        default_value = "development"
    )]
    pub mode: AuthMode,
}

/// How a service can be watched: its log format and its metrics port
/// (`--log-format`, `--metrics-listen`).
#[derive(Debug, Clone, clap::Args)]
pub struct ObservabilityFlags {
    /// How logs are written: `text` for people (colour only on a terminal)
    /// or `json`, one object per line with trace and span ids.
    #[arg(
        long = "log-format",
        env = "FRESHET_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: freshet_telemetry::LogFormat,
    /// Where to serve Prometheus metrics (`GET /metrics`), or `off`.
    /// Unset: the service's own port on 127.0.0.1 (frontend 9150, timer
    /// 9151, membership 9152, cache 9153, control plane 9154, storage
    /// worker 9160).
    #[arg(
        long = "metrics-listen",
        env = "FRESHET_METRICS_LISTEN",
        value_name = "HOST:PORT|off"
    )]
    pub metrics_listen: Option<String>,
}

impl ObservabilityFlags {
    /// Text logs and no metrics port (for services inside a test process).
    pub fn without_metrics() -> ObservabilityFlags {
        ObservabilityFlags {
            log_format: freshet_telemetry::LogFormat::Text,
            metrics_listen: Some("off".to_owned()),
        }
    }

    /// Text logs, metrics on `address` (`127.0.0.1:0` in tests).
    pub fn metrics_on(address: &str) -> ObservabilityFlags {
        ObservabilityFlags {
            log_format: freshet_telemetry::LogFormat::Text,
            metrics_listen: Some(address.to_owned()),
        }
    }

    /// Binds the metrics port. An address the operator chose must be
    /// bound, or the service does not start; the default one may be taken
    /// (a second worker on the same host), and then the service runs
    /// without metrics and says so.
    pub async fn bind_metrics(
        &self,
        default: &str,
    ) -> std::io::Result<freshet_metrics::MetricsEndpoint> {
        let address = self.metrics_address(default);
        match freshet_metrics::MetricsEndpoint::bind(address).await {
            Err(error) if self.metrics_listen.is_none() => {
                tracing::warn!(
                    %error,
                    "the default metrics port is taken: serving no metrics (set --metrics-listen)"
                );
                Ok(freshet_metrics::MetricsEndpoint::default())
            }
            bound => bound,
        }
    }

    /// The metrics address: the flag's, else `default`; `None` when off.
    pub fn metrics_address<'a>(&'a self, default: &'a str) -> Option<&'a str> {
        match self.metrics_listen.as_deref().map(str::trim) {
            Some("off" | "") => None,
            Some(address) => Some(address),
            None => Some(default),
        }
    }
}

/// How long one hour of a stream's retention period lasts. Always an hour
/// in a deployment; tests and demos shorten it to watch retention work
/// without waiting a day. Every service that decides what has expired —
/// the control plane (a retention increase's floor), the frontends
/// (reads) and the workers (trimming) — takes it from the same variable.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RetentionHour {
    #[arg(
        id = "retention_hour",
        long = "retention-hour",
        env = "FRESHET_RETENTION_HOUR",
        default_value = "1h",
        value_parser = humantime::parse_duration,
        hide = true
    )]
    pub hour: std::time::Duration,
}

impl RetentionHour {
    /// One retention hour, in milliseconds.
    pub fn millis(&self) -> i64 {
        i64::try_from(self.hour.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }
}

impl Default for RetentionHour {
    fn default() -> Self {
        RetentionHour {
            hour: std::time::Duration::from_secs(3600),
        }
    }
}
