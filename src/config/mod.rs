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
//! ([`KNOWN_KEYS`]): validation, the `Default` impls of the sections and `check-config`
//! all read it.
//! Loading never stops at the first problem: unknown keys and bad values are
//! collected and reported together, each naming its key. Secrets (the database
//! password) never appear in a message or in `Debug` output.
//!
//! # Files
//!
//! - [`Config`], its problems and errors, and the environment's names: here.
//! - `keys.rs`: the table of keys ([`KNOWN_KEYS`]).
//! - `sections.rs`: the daemon-wide sections (`[batch]`, `[store]`,
//!   `[history]`, `[health]` ...), one type each.
//! - `devices.rs`: the `[[gx]]` and `[[vedirect]]` devices.
//! - `database.rs`: `[database]`, and the [`Secret`] its password is kept in.
//! - `locate.rs`: which file and environment file (the installed layout).
//! - `load.rs`: the layers, file to environment; `reader.rs`: raw values
//!   read by their key; `validate/`: raw values to the typed [`Config`].
//! - `redact.rs`: URLs without their secrets; `tls.rs`: TLS settings that
//!   do not verify the server.
//! - `shown.rs`: the effective values `check-config` shows;
//!   `reference.rs`: the generated configuration reference.

mod database;
mod devices;
mod keys;
mod load;
mod locate;
mod reader;
mod redact;
#[cfg(test)]
mod reference;
mod sections;
mod shown;
mod tls;
mod validate;

use std::collections::HashMap;
use std::fmt;

pub use database::{DatabaseConfig, Secret};
pub use devices::{GxConfig, ModbusClass, ModbusDeviceConfig, VeDirectConfig, VeDirectPort};
pub use keys::{KNOWN_KEYS, KeyKind, KnownKey, Unit};
pub use locate::{
    ConfigSource, EnvFile, INSTALLED_CONFIG_FILE, INSTALLED_ENV_FILE, Layout, SERVICE_STATE_DIR,
    merge_missing, parse_env_file, read_env_file,
};
pub(crate) use sections::{
    BatchConfig, ClockConfig, FailoverConfig, HealthConfig, HistoryConfig, LogConfig, LogFormat,
    RetentionConfig, SiteConfig, StoreConfig, StoreSync,
};

/// Prefix of the environment variables that override configuration keys.
pub(crate) const ENV_PREFIX: &str = "VICTRON_POLLER";
/// Environment variable naming the configuration file (same as `--config`).
pub(crate) const CONFIG_PATH_ENV: &str = "VICTRON_POLLER_CONFIG";
/// Environment variable naming the local store's directory (same as
/// `--state-dir`); no configuration key.
pub(crate) const STATE_DIR_ENV: &str = "VICTRON_POLLER_STATE_DIR";
/// The lists of tables the environment may hold as TOML: (variable, key).
pub(crate) const LIST_VARIABLES: [(&str, &str); 2] = [
    ("VICTRON_POLLER_GX", "gx"),
    ("VICTRON_POLLER_VEDIRECT", "vedirect"),
];

/// The validated configuration of one daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// The PostgreSQL/TimescaleDB database; `None` when none is configured.
    pub database: Option<DatabaseConfig>,
    /// Retention of readings in every store.
    pub(crate) retention: RetentionConfig,
    /// Batching before the local store.
    pub(crate) batch: BatchConfig,
    /// How the local store commits.
    pub(crate) store: StoreConfig,
    /// Whether the local clock needs checking.
    pub(crate) clock: ClockConfig,
    /// Rollups and daily energy.
    pub(crate) history: HistoryConfig,
    /// Log output.
    pub(crate) log: LogConfig,
    /// The site these readings belong to.
    pub(crate) site: SiteConfig,
    /// GX devices polled over Modbus-TCP, with the devices behind each.
    pub(crate) gx: Vec<GxConfig>,
    /// Devices read over VE.Direct (serial port or TCP bridge).
    pub(crate) vedirect: Vec<VeDirectConfig>,
    /// The health and metrics endpoint, and when a source counts as hung.
    pub(crate) health: HealthConfig,
    /// Sharing devices with another daemon.
    pub(crate) failover: FailoverConfig,
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The dotted key, e.g. `database.max_connections`.
    pub(crate) key: String,
    /// What is wrong, without the value when the key is secret.
    pub(crate) message: String,
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
    pub(crate) fn device_sites(&self) -> HashMap<String, String> {
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
    pub(crate) fn check_runnable(&self) -> Result<(), ConfigError> {
        if self.gx.is_empty() && self.vedirect.is_empty() {
            return Err(ConfigError::Invalid(vec![ConfigProblem {
                key: "gx".into(),
                message: "no device configured: add a [[gx]] or [[vedirect]] section".into(),
            }]));
        }
        Ok(())
    }
}

/// The environment variable that sets `key`.
pub fn env_var_for(key: &str) -> String {
    format!("{ENV_PREFIX}_{}", key.replace('.', "__").to_uppercase())
}

#[cfg(test)]
mod tests;
