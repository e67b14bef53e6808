//! The daemon-wide sections of the file, one type each, with their defaults
//! from the table of keys: `[retention]`, `[batch]`, `[store]`, `[clock]`,
//! `[history]`, `[log]`, `[site]`, `[health]` and `[failover]`.

use std::net::SocketAddr;
use std::time::Duration;

use super::keys;

/// How long readings are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetentionConfig {
    /// Readings older than this are deleted (`retention.window_hours`, default 72).
    pub(crate) window: Duration,
    /// How often the retention job runs (`retention.run_every_minutes`, default 60).
    pub(crate) run_every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(keys::RETENTION_WINDOW_HOURS.integer_default() * 3600),
            run_every: Duration::from_secs(
                keys::RETENTION_RUN_EVERY_MINUTES.integer_default() * 60,
            ),
        }
    }
}

/// How readings are grouped before they are committed to the local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchConfig {
    /// A batch closes at this many readings (`batch.max_readings`, default 200).
    pub(crate) max_readings: usize,
    /// …or when its first reading is this old (`batch.max_age_ms`, default 1000; 2000 without a database).
    pub(crate) max_age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_readings: usize::try_from(keys::BATCH_MAX_READINGS.integer_default())
                .unwrap_or(usize::MAX),
            max_age: Duration::from_millis(keys::BATCH_MAX_AGE_MS.integer_default()),
        }
    }
}

/// How far the local clock is trusted (see [`crate::clock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ClockConfig {
    /// `clock.trust_local`: the machine has a clock that is right from
    /// boot (a battery-backed RTC, GPS), so nothing is checked or held.
    pub(crate) trust_local: bool,
}

/// How the local store commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreConfig {
    /// `store.sync`.
    pub(crate) sync: StoreSync,
    /// `store.max_readings_in_memory`: how many readings may wait in memory
    /// while the store refuses writes.
    pub(crate) max_readings_in_memory: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            sync: StoreSync::default(),
            max_readings_in_memory: usize::try_from(
                keys::STORE_MAX_READINGS_IN_MEMORY.integer_default(),
            )
            .unwrap_or(usize::MAX),
        }
    }
}

/// When a commit to the local store reaches the disk (`store.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum StoreSync {
    /// Every commit is flushed to the disk (fsync) before it counts: a power
    /// cut loses at most the batch being collected.
    #[default]
    Full,
    /// Commits are flushed at checkpoints only, so the kernel writes several
    /// together: far fewer disk writes, and a crash or kill -9 still loses
    /// nothing, but a power cut may lose the commits of the last seconds
    /// (the store itself stays intact).
    Normal,
}

impl StoreSync {
    /// Parses the configuration name (`full`, `normal`), exactly.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "full" => Some(Self::Full),
            "normal" => Some(Self::Normal),
            _ => None,
        }
    }

    /// The configuration name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Normal => "normal",
        }
    }
}

/// Log output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogConfig {
    /// Human-readable lines or JSON lines (`log.format`).
    pub(crate) format: LogFormat,
    /// A `tracing` filter directive (`log.level`), e.g. `info` or `victron_poller=debug`.
    pub(crate) level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::parse(keys::LOG_FORMAT.text_default())
                .expect("the table's log.format default is a log format"),
            level: keys::LOG_LEVEL.text_default().into(),
        }
    }
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Plain text, one event per line, no colours unless on a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Parses the configuration name (`text`, `json`), exactly.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    /// The configuration name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// The site: what every reading is labelled with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SiteConfig {
    /// Stored in each reading's `installation_id` (`site.installation_id`).
    pub(crate) installation_id: Option<String>,
    /// The site's time zone (`site.timezone`): local days of history and
    /// energy.
    pub(crate) timezone: chrono_tz::Tz,
}

/// The rollups beyond raw retention (`[history]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HistoryConfig {
    /// How long each resolution is kept (`history.keep_*_days`; `None`:
    /// forever), finest first.
    pub(crate) keep: [Option<Duration>; 3],
    /// The longest interval between two readings that energy bridges
    /// (`history.max_gap_s`).
    pub(crate) max_gap: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        let days = |key: &keys::KnownKey| {
            Some(key.integer_default())
                .filter(|d| *d > 0)
                .map(|d| Duration::from_secs(d * 86_400))
        };
        Self {
            keep: [
                days(&keys::HISTORY_KEEP_5M_DAYS),
                days(&keys::HISTORY_KEEP_1H_DAYS),
                days(&keys::HISTORY_KEEP_1D_DAYS),
            ],
            max_gap: Duration::from_secs(keys::HISTORY_MAX_GAP_S.integer_default()),
        }
    }
}

/// The HTTP health/metrics endpoint and the hang detection behind it and the
/// systemd watchdog.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct HealthConfig {
    /// Where the page, the API, `/healthz` and `/metrics` are served
    /// (`health.listen`, default 127.0.0.1:9480; `off`: nowhere).
    pub(crate) listen: Option<SocketAddr>,
    /// The password of everything but `/healthz` (`health.password`).
    pub(crate) password: Option<String>,
    /// A source that completes no poll, successful or not, for this long is
    /// hung (`health.stall_timeout_ms`): health says down and the systemd
    /// watchdog is no longer fed.
    pub(crate) stall_timeout: Duration,
}

impl std::fmt::Debug for HealthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthConfig")
            .field("listen", &self.listen)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("stall_timeout", &self.stall_timeout)
            .finish()
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            listen: keys::HEALTH_LISTEN.text_default().parse().ok(),
            password: None,
            stall_timeout: Duration::from_millis(keys::HEALTH_STALL_TIMEOUT_MS.integer_default()),
        }
    }
}

/// Two daemons configured for the same devices (a gateway and a cloud
/// worker): a PostgreSQL advisory lock per device decides which one polls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailoverConfig {
    /// Take a lock per device before polling it (`failover.enabled`).
    pub(crate) enabled: bool,
    /// While the database cannot be reached, poll the devices no other daemon
    /// is known to hold (`failover.poll_when_database_unreachable`, default
    /// true: right for a gateway next to its devices, whose readings wait in
    /// its local store; a cloud worker sets false).
    pub(crate) poll_when_database_unreachable: bool,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            enabled: keys::FAILOVER_ENABLED.boolean_default(),
            poll_when_database_unreachable: keys::FAILOVER_POLL_WHEN_DATABASE_UNREACHABLE
                .boolean_default(),
        }
    }
}
