//! Configuration: one TOML file, every key overridable by an environment
//! variable, validated into typed values.
//!
//! The file is the one `--config` or `VICTRON_POLLER_CONFIG` names, else the
//! installed `/etc/victron-poller/victron-poller.toml` when it exists (with
//! its environment file; see [`Layout`]).
//! Layers, lowest first: built-in defaults, the TOML file, `DATABASE_URL` (as
//! Railway provides it, for `database.url`), and `VICTRON_POLLER_<SECTION>__<KEY>`
//! variables (`VICTRON_POLLER_DATABASE__CONNECT_TIMEOUT_MS=2000`).
//! Lists of tables come from the environment as TOML, so a worker with no
//! file can be configured entirely by variables: `VICTRON_POLLER_GX` and
//! `VICTRON_POLLER_VEDIRECT` hold what `[[gx]]` and `[[vedirect]]` would.
//! The plain variables a platform sets are honoured too, below the prefixed
//! ones: `DATABASE_URL`, `LOG_FORMAT` (for `log.format`) and `PORT` (the
//! health endpoint listens on `0.0.0.0:$PORT`).
//! Every key, with its default, range, unit and meaning, is in one table
//! ([`KNOWN_KEYS`]): validation, the `Default` impls below and `check-config`
//! all read it.
//! Loading never stops at the first problem: unknown keys and bad values are
//! collected and reported together, each naming its key. Secrets (the database
//! password) never appear in a message or in `Debug` output.

mod keys;
mod load;
mod locate;
mod reader;
mod redact;
mod reference;
mod tls;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

pub use keys::{KNOWN_KEYS, KeyKind, KnownKey, Unit};
pub use locate::{
    ConfigSource, EnvFile, INSTALLED_CONFIG_FILE, INSTALLED_ENV_FILE, Layout, SERVICE_STATE_DIR,
    merge_missing, parse_env_file, read_env_file,
};
pub use reference::{REFERENCE_PATH, reference_markdown};
pub use tls::UnverifiedServer;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "VICTRON_POLLER";
/// Environment variable naming the configuration file (same as `--config`).
pub const CONFIG_PATH_ENV: &str = "VICTRON_POLLER_CONFIG";
/// The lists of tables the environment may hold as TOML: (variable, key).
pub const LIST_VARIABLES: [(&str, &str); 2] = [
    ("VICTRON_POLLER_GX", "gx"),
    ("VICTRON_POLLER_VEDIRECT", "vedirect"),
];

/// The validated configuration of one daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// The PostgreSQL/TimescaleDB database; `None` when none is configured.
    pub database: Option<DatabaseConfig>,
    /// Retention of readings in every store.
    pub retention: RetentionConfig,
    /// Batching before the local store.
    pub batch: BatchConfig,
    /// How the local store commits.
    pub store: StoreConfig,
    /// Whether the local clock needs checking.
    pub clock: ClockConfig,
    /// Rollups and daily energy.
    pub history: HistoryConfig,
    /// Log output.
    pub log: LogConfig,
    /// The site these readings belong to.
    pub site: SiteConfig,
    /// GX devices polled over Modbus-TCP, with the devices behind each.
    pub gx: Vec<GxConfig>,
    /// Devices read over VE.Direct (serial port or TCP bridge).
    pub vedirect: Vec<VeDirectConfig>,
    /// The health and metrics endpoint, and when a source counts as hung.
    pub health: HealthConfig,
    /// Sharing devices with another daemon.
    pub failover: FailoverConfig,
}

/// The HTTP health/metrics endpoint and the hang detection behind it and the
/// systemd watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Where `/healthz` and `/metrics` are served (`health.listen`); none by default.
    pub listen: Option<SocketAddr>,
    /// A source that completes no poll, successful or not, for this long is
    /// hung (`health.stall_timeout_ms`): health says down and the systemd
    /// watchdog is no longer fed.
    pub stall_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            listen: None,
            stall_timeout: Duration::from_millis(keys::HEALTH_STALL_TIMEOUT_MS.integer_default()),
        }
    }
}

/// Two daemons configured for the same devices (a gateway and a cloud
/// worker): a PostgreSQL advisory lock per device decides which one polls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverConfig {
    /// Take a lock per device before polling it (`failover.enabled`).
    pub enabled: bool,
    /// While the database cannot be reached, poll the devices no other daemon
    /// is known to hold (`failover.poll_when_database_unreachable`, default
    /// true: right for a gateway next to its devices, whose readings wait in
    /// its local store; a cloud worker sets false).
    pub poll_when_database_unreachable: bool,
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

/// One VE.Direct device: a battery monitor, MPPT or Phoenix inverter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeDirectConfig {
    /// The site the device belongs to (`vedirect[].site`, default
    /// `site.installation_id`, else `""`).
    pub site: String,
    /// The stable identity stored with every reading (`vedirect[].name`).
    pub name: String,
    /// Where its stream comes from (`path` or `address`).
    pub port: VeDirectPort,
    /// How often a reading is emitted (`poll_interval_ms`, default 5000);
    /// 0 emits every complete snapshot (about once a second).
    pub poll_interval: Duration,
    /// Reopen the port when no valid block arrives for this long
    /// (`silence_timeout_ms`, default 10000).
    pub silence_timeout: Duration,
    /// First reopen delay (`reconnect_min_ms`, default 500).
    pub reconnect_min: Duration,
    /// Longest reopen delay (`reconnect_max_ms`, default 30000).
    pub reconnect_max: Duration,
}

/// Where a VE.Direct stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VeDirectPort {
    /// A serial device, e.g. `/dev/serial/by-id/usb-VictronEnergy_…` (19200 8N1).
    Serial(String),
    /// A serial-to-network bridge (ser2net, ESP32 firmware): `host:port`.
    Tcp(String),
}

impl fmt::Display for VeDirectPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serial(path) => f.write_str(path),
            Self::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}

/// The site: what every reading is labelled with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteConfig {
    /// Stored in each reading's `installation_id` (`site.installation_id`).
    pub installation_id: Option<String>,
    /// The site's time zone (`site.timezone`): local days of history and
    /// energy.
    pub timezone: chrono_tz::Tz,
}

/// The rollups beyond raw retention (`[history]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryConfig {
    /// How long each resolution is kept (`history.keep_*_days`; `None`:
    /// forever), finest first.
    pub keep: [Option<Duration>; 3],
    /// The longest interval between two readings that energy bridges
    /// (`history.max_gap_s`).
    pub max_gap: Duration,
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

/// One GX device (Cerbo GX, Venus GX ...) reached over Modbus-TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GxConfig {
    /// The site the GX and its devices belong to (`gx[].site`, default
    /// `site.installation_id`, else `""`).
    pub site: String,
    /// IP address or host name (`gx[].host`).
    pub host: String,
    /// TCP port (`gx[].port`, default 502).
    pub port: u16,
    /// Time between the starts of two polls (`gx[].poll_interval_ms`, default 5000).
    pub poll_interval: Duration,
    /// Longest wait for one reply (`gx[].request_timeout_ms`, default 1000).
    pub request_timeout: Duration,
    /// First reconnect delay after a transport failure (`gx[].reconnect_min_ms`, default 500).
    pub reconnect_min: Duration,
    /// Longest reconnect delay (`gx[].reconnect_max_ms`, default 30000).
    pub reconnect_max: Duration,
    /// The devices read through this GX, polled in this order.
    pub devices: Vec<ModbusDeviceConfig>,
}

/// One device behind a GX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusDeviceConfig {
    /// The stable identity stored with every reading (`name`).
    pub name: String,
    /// Which GX service it is read through (`class`).
    pub class: ModbusClass,
    /// The Modbus unit id the GX lists for it (`unit_id`; 100 for the system).
    pub unit_id: u8,
}

/// The GX service a device is read through; it decides the registers and the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModbusClass {
    /// `com.victronenergy.system`: the GX's overview (unit id 100).
    System,
    /// `com.victronenergy.battery`: BMV, SmartShunt, Lynx, BMS.
    Battery,
    /// `com.victronenergy.solarcharger`: MPPT solar chargers.
    SolarCharger,
    /// `com.victronenergy.vebus`: Multi, Quattro, MultiPlus inverter/chargers.
    VeBus,
}

impl ModbusClass {
    /// Every class, in a fixed order.
    pub const ALL: [ModbusClass; 4] =
        [Self::System, Self::Battery, Self::SolarCharger, Self::VeBus];

    /// Parses the configuration name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "system" => Some(Self::System),
            "battery" => Some(Self::Battery),
            "solarcharger" => Some(Self::SolarCharger),
            "vebus" => Some(Self::VeBus),
            _ => None,
        }
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Battery => "battery",
            Self::SolarCharger => "solarcharger",
            Self::VeBus => "vebus",
        }
    }

    /// The D-Bus service type whose registers are read.
    pub fn service(self) -> &'static str {
        match self {
            Self::System => "com.victronenergy.system",
            Self::Battery => "com.victronenergy.battery",
            Self::SolarCharger => "com.victronenergy.solarcharger",
            Self::VeBus => "com.victronenergy.vebus",
        }
    }
}

/// Where and how to reach PostgreSQL.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// The connection URL with any password removed (see [`Self::password`]).
    url: Url,
    /// The password: from `database.password`, else from the URL.
    password: Option<Secret>,
    /// How long one connection attempt may take (`database.connect_timeout_ms`).
    pub connect_timeout: Duration,
    /// Longest wait for one batch to be written (`database.write_timeout_ms`):
    /// a link that went silent is given up after this and retried.
    pub write_timeout: Duration,
    /// Connections the daemon's writes share (`database.max_connections`,
    /// default 1).
    pub max_connections: u32,
    /// `url` goes through a pooler in transaction mode
    /// (`database.transaction_pooling`): no session outlives a transaction.
    pub transaction_pooling: bool,
    /// Where the device locks' session connects (`failover.database_url`),
    /// when not `url`: session locks need a session of their own.
    lock_session: Option<Box<DatabaseConfig>>,
}

/// How long readings are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Readings older than this are deleted (`retention.window_hours`, default 72).
    pub window: Duration,
    /// How often the retention job runs (`retention.run_every_minutes`, default 60).
    pub run_every: Duration,
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
pub struct BatchConfig {
    /// A batch closes at this many readings (`batch.max_readings`, default 200).
    pub max_readings: usize,
    /// …or when its first reading is this old (`batch.max_age_ms`, default 1000; 2000 without a database).
    pub max_age: Duration,
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
pub struct ClockConfig {
    /// `clock.trust_local`: the machine has a clock that is right from
    /// boot (a battery-backed RTC, GPS), so nothing is checked or held.
    pub trust_local: bool,
}

/// How the local store commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// `store.sync`.
    pub sync: StoreSync,
    /// `store.max_readings_in_memory`: how many readings may wait in memory
    /// while the store refuses writes.
    pub max_readings_in_memory: usize,
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
pub enum StoreSync {
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
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "full" => Some(Self::Full),
            "normal" => Some(Self::Normal),
            _ => None,
        }
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Normal => "normal",
        }
    }
}

/// Log output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Human-readable lines or JSON lines (`log.format`).
    pub format: LogFormat,
    /// A `tracing` filter directive (`log.level`), e.g. `info` or `victron_poller=debug`.
    pub level: String,
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
pub enum LogFormat {
    /// Plain text, one event per line, no colours unless on a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Parses the configuration name (`text`, `json`), exactly.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// A string that must not be shown: `Debug` prints `***`, and it has no
/// `Display`; [`Secret::expose`] is the one way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The dotted key, e.g. `database.max_connections`.
    pub key: String,
    /// What is wrong, without the value when the key is secret.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not valid TOML.
    #[error("cannot read config file {path}: {reason}")]
    File {
        /// The file's path as given.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// One or more keys are unknown or have bad values; all are listed.
    #[error("invalid configuration:{}", .0.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Invalid(Vec<ConfigProblem>),
}

impl Config {
    /// Each configured device's site (device names are unique within a
    /// configuration).
    pub fn device_sites(&self) -> HashMap<String, String> {
        let modbus = self
            .gx
            .iter()
            .flat_map(|g| g.devices.iter().map(|d| (d.name.clone(), g.site.clone())));
        let serial = self
            .vedirect
            .iter()
            .map(|v| (v.name.clone(), v.site.clone()));
        modbus.chain(serial).collect()
    }

    /// What `run` needs beyond a valid file: at least one device. One check,
    /// for `run` and `check-config` alike (a configuration check-config
    /// passes is one the daemon runs with).
    pub fn check_runnable(&self) -> Result<(), ConfigError> {
        if self.gx.is_empty() && self.vedirect.is_empty() {
            return Err(ConfigError::Invalid(vec![ConfigProblem {
                key: "gx".into(),
                message: "no device configured: add a [[gx]] or [[vedirect]] section".into(),
            }]));
        }
        Ok(())
    }
}

impl Config {
    /// The effective value of `known` as `check-config` shows it: a number
    /// with its unit (`5000 ms`), `true`/`false`, text, `not set`; the
    /// password only as `set (hidden)` or `not set`. `None` for the keys of
    /// `[[gx]]` and `[[vedirect]]` entries (shown per device), for the
    /// database's other keys when no database is configured, and for a key
    /// this does not know (a test checks there is none).
    pub fn shown_value(&self, known: &KnownKey) -> Option<String> {
        enum Shown {
            Number(u64),
            Millis(Duration),
            Flag(bool),
            Text(String),
        }
        let not_set = || Shown::Text("not set".into());
        let db = self.database.as_ref();
        let shown = match known.key {
            "database.url" => db.map_or_else(not_set, |db| Shown::Text(db.redacted_url())),
            "database.password" => match db.and_then(DatabaseConfig::password) {
                Some(_) => Shown::Text("set (hidden)".into()),
                None => not_set(),
            },
            "database.connect_timeout_ms" => Shown::Millis(db?.connect_timeout),
            "database.max_connections" => Shown::Number(u64::from(db?.max_connections)),
            "database.write_timeout_ms" => Shown::Millis(db?.write_timeout),
            "database.transaction_pooling" => Shown::Flag(db?.transaction_pooling),
            "failover.database_url" => match db?.lock_session.as_deref() {
                Some(direct) => Shown::Text(direct.redacted_url()),
                None => Shown::Text("database.url".into()),
            },
            "site.installation_id" => self
                .site
                .installation_id
                .clone()
                .map_or_else(not_set, Shown::Text),
            "retention.window_hours" => Shown::Number(self.retention.window.as_secs() / 3600),
            "retention.run_every_minutes" => Shown::Number(self.retention.run_every.as_secs() / 60),
            "batch.max_readings" => {
                Shown::Number(u64::try_from(self.batch.max_readings).unwrap_or(u64::MAX))
            }
            "batch.max_age_ms" => Shown::Millis(self.batch.max_age),
            "store.sync" => Shown::Text(self.store.sync.as_str().into()),
            "store.max_readings_in_memory" => {
                Shown::Number(u64::try_from(self.store.max_readings_in_memory).unwrap_or(u64::MAX))
            }
            "clock.trust_local" => Shown::Flag(self.clock.trust_local),
            "site.timezone" => Shown::Text(self.site.timezone.name().into()),
            "history.keep_5m_days" => Shown::Number(keep_days(self.history.keep[0])),
            "history.keep_1h_days" => Shown::Number(keep_days(self.history.keep[1])),
            "history.keep_1d_days" => Shown::Number(keep_days(self.history.keep[2])),
            "history.max_gap_s" => Shown::Number(self.history.max_gap.as_secs()),
            "log.format" => Shown::Text(self.log.format.as_str().into()),
            "log.level" => Shown::Text(self.log.level.clone()),
            "health.listen" => self
                .health
                .listen
                .map_or_else(not_set, |a| Shown::Text(a.to_string())),
            "health.stall_timeout_ms" => Shown::Millis(self.health.stall_timeout),
            "failover.enabled" => Shown::Flag(self.failover.enabled),
            "failover.poll_when_database_unreachable" => {
                Shown::Flag(self.failover.poll_when_database_unreachable)
            }
            _ => return None,
        };
        Some(match shown {
            Shown::Number(n) => known.with_unit(n),
            Shown::Millis(d) => known.with_unit(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Shown::Flag(b) => b.to_string(),
            Shown::Text(t) => t,
        })
    }
}

impl DatabaseConfig {
    /// The URL to show in logs and messages: no password, ever (the one
    /// rule of `config/redact.rs` for every place a URL is shown).
    pub fn redacted_url(&self) -> String {
        redact::redact_url(&self.url)
    }

    /// The connection URL without its password.
    pub fn url_without_password(&self) -> &Url {
        &self.url
    }

    /// The password, if one is configured.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The database the device locks' session connects to: the direct
    /// connection of `failover.database_url` when set, else this one.
    pub fn lock_session(&self) -> &DatabaseConfig {
        self.lock_session.as_deref().unwrap_or(self)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.redacted_url())
            .field("password", &self.password)
            .field("connect_timeout", &self.connect_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("max_connections", &self.max_connections)
            .field("transaction_pooling", &self.transaction_pooling)
            .field("lock_session", &self.lock_session)
            .finish()
    }
}

/// A retention in days as its key says it (0: forever).
fn keep_days(keep: Option<Duration>) -> u64 {
    keep.map_or(0, |d| d.as_secs() / 86_400)
}

/// The environment variable that sets `key`.
pub fn env_var_for(key: &str) -> String {
    format!("{ENV_PREFIX}_{}", key.replace('.', "__").to_uppercase())
}

#[cfg(test)]
mod tests;
