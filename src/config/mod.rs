//! Configuration: one TOML file, every key overridable by an environment
//! variable, validated into typed values.
//!
//! Layers, lowest first: built-in defaults, the TOML file, `DATABASE_URL` (as
//! Railway provides it, for `database.url`), and `VICTRON_POLLER_<SECTION>__<KEY>`
//! variables (`VICTRON_POLLER_DATABASE__CONNECT_TIMEOUT_MS=2000`).
//! Loading never stops at the first problem: unknown keys and bad values are
//! collected and reported together, each naming its key. Secrets (the database
//! password) never appear in a message or in `Debug` output.

mod keys;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use config::{Environment, File, FileFormat, Value, ValueKind};
use url::Url;

pub use keys::KNOWN_KEYS;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "VICTRON_POLLER";
/// Environment variable naming the configuration file (same as `--config`).
pub const CONFIG_PATH_ENV: &str = "VICTRON_POLLER_CONFIG";

/// The validated configuration of one daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// The PostgreSQL/TimescaleDB database; `None` when none is configured.
    pub database: Option<DatabaseConfig>,
    /// Retention of readings in every store.
    pub retention: RetentionConfig,
    /// Log output.
    pub log: LogConfig,
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
    /// Upper bound of the connection pool (`database.max_connections`).
    pub max_connections: u32,
}

/// How long readings are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Readings older than this are deleted (`retention.window_hours`, default 72).
    pub window: Duration,
}

/// Log output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Human-readable lines or JSON lines (`log.format`).
    pub format: LogFormat,
    /// A `tracing` filter directive (`log.level`), e.g. `info` or `victron_poller=debug`.
    pub level: String,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Plain text, one event per line, no colours unless on a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A string that must not be shown: `Debug` and `Display` print `***`.
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
    #[error("invalid configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ConfigProblem>),
}

impl Config {
    /// Loads the configuration from an optional file and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars().collect())
    }

    /// Loads the configuration from an optional file and the given environment.
    pub fn load_with_env(
        path: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.display().to_string(),
                    reason: "no such file".into(),
                });
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        let prefixed: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| {
                k.starts_with(&format!("{ENV_PREFIX}_")) && k.as_str() != CONFIG_PATH_ENV
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let prefixed_names: Vec<String> = prefixed.keys().cloned().collect();
        let url_from_prefixed = prefixed.contains_key(&format!("{ENV_PREFIX}_DATABASE__URL"));
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .source(Some(prefixed)),
        );
        if let (false, Some(url)) = (url_from_prefixed, env.get("DATABASE_URL")) {
            if !url.is_empty() {
                builder = builder
                    .set_override("database.url", url.clone())
                    .expect("a string override is always accepted");
            }
        }
        let raw = builder.build().map_err(|e| ConfigError::File {
            path: path.map(|p| p.display().to_string()).unwrap_or_default(),
            reason: redact_file_error(&e.to_string()),
        })?;
        validate(&raw, &prefixed_names)
    }

    /// Whether a PostgreSQL database is configured.
    pub fn has_database(&self) -> bool {
        self.database.is_some()
    }
}

/// The `config` crate quotes offending TOML text in parse errors, which might
/// hold a password; keep only the position and the reason.
fn redact_file_error(message: &str) -> String {
    message.lines().next().unwrap_or(message).to_string()
}

impl DatabaseConfig {
    /// The URL to show in logs and messages: no password, ever.
    pub fn redacted_url(&self) -> String {
        self.url.to_string()
    }

    /// The connection URL without its password.
    pub fn url_without_password(&self) -> &Url {
        &self.url
    }

    /// The password, if one is configured.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.redacted_url())
            .field("password", &self.password)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Collects every problem while turning raw values into a [`Config`].
struct Validator<'a> {
    raw: &'a config::Config,
    problems: Vec<ConfigProblem>,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// A raw value, `None` when the key is not set anywhere.
    fn value(&self, key: &str) -> Option<Value> {
        self.raw.get::<Value>(key).ok()
    }

    fn string(&mut self, key: &str, secret: bool) -> Option<String> {
        let value = self.value(key)?;
        match value.kind {
            ValueKind::String(s) => Some(s),
            ValueKind::Table(_) | ValueKind::Array(_) | ValueKind::Nil => {
                self.problem(key, "expected a string");
                None
            }
            other if secret => {
                let _ = other;
                self.problem(key, "expected a string");
                None
            }
            other => Some(other.to_string()),
        }
    }

    /// A whole number within `range`, with its unit for messages.
    fn integer(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let Some(value) = self.value(key) else {
            return default;
        };
        let parsed = match &value.kind {
            ValueKind::I64(n) => u64::try_from(*n).ok(),
            ValueKind::I128(n) => u64::try_from(*n).ok(),
            ValueKind::U64(n) => Some(*n),
            ValueKind::U128(n) => u64::try_from(*n).ok(),
            ValueKind::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(n) if (min..=max).contains(&n) => n,
            Some(n) => {
                self.problem(key, format!("{n} is out of range (allowed {min} to {max})"));
                default
            }
            None => {
                self.problem(
                    key,
                    format!("expected a whole number, found {}", describe(&value.kind)),
                );
                default
            }
        }
    }
}

fn describe(kind: &ValueKind) -> String {
    match kind {
        ValueKind::String(s) => format!("\"{s}\""),
        ValueKind::Table(_) => "a table".into(),
        ValueKind::Array(_) => "a list".into(),
        ValueKind::Nil => "nothing".into(),
        other => other.to_string(),
    }
}

fn validate(raw: &config::Config, env_vars: &[String]) -> Result<Config, ConfigError> {
    let mut v = Validator {
        raw,
        problems: Vec::new(),
    };

    for key in unknown_keys(raw) {
        let hint = keys::closest(&key)
            .map(|known| format!("; did you mean `{known}`?"))
            .unwrap_or_default();
        let var = env_var_for(&key);
        let origin = if env_vars.contains(&var) {
            format!(" (from environment variable {var})")
        } else {
            String::new()
        };
        v.problem(&key, format!("unknown key{origin}{hint}"));
    }

    let database = database(&mut v);
    let window_hours = v.integer("retention.window_hours", 72, 1, 24 * 365 * 10);
    let log = log(&mut v);

    if v.problems.is_empty() {
        Ok(Config {
            database,
            retention: RetentionConfig {
                window: Duration::from_secs(window_hours * 3600),
            },
            log,
        })
    } else {
        Err(ConfigError::Invalid(v.problems))
    }
}

fn database(v: &mut Validator<'_>) -> Option<DatabaseConfig> {
    let connect_timeout_ms = v.integer("database.connect_timeout_ms", 5000, 1, 600_000);
    let max_connections = v.integer("database.max_connections", 4, 1, 1000);
    let password = v
        .string("database.password", true)
        .filter(|p| !p.is_empty());
    let url = v
        .string("database.url", true)
        .filter(|u| !u.trim().is_empty());
    let Some(url) = url else {
        if password.is_some() {
            v.problem("database.password", "is set but database.url is not");
        }
        return None;
    };
    let mut url = match Url::parse(url.trim()) {
        Ok(url) => url,
        // The parser's message never quotes the input, so no secret leaks.
        Err(e) => {
            v.problem("database.url", format!("not a valid URL ({e})"));
            return None;
        }
    };
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        v.problem(
            "database.url",
            format!(
                "scheme `{}` is not supported (use postgres://)",
                url.scheme()
            ),
        );
        return None;
    }
    if url.host_str().is_none_or(str::is_empty) {
        v.problem("database.url", "has no host");
        return None;
    }
    let url_password = url.password().map(|p| {
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned()
    });
    let _ = url.set_password(None);
    Some(DatabaseConfig {
        url,
        password: password.or(url_password).map(Secret),
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        max_connections: u32::try_from(max_connections).unwrap_or(u32::MAX),
    })
}

fn log(v: &mut Validator<'_>) -> LogConfig {
    let format = match v.string("log.format", false).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            v.problem(
                "log.format",
                format!("\"{other}\" is not a log format (use \"text\" or \"json\")"),
            );
            LogFormat::Text
        }
    };
    let level = v
        .string("log.level", false)
        .unwrap_or_else(|| "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        v.problem(
            "log.level",
            format!("\"{level}\" is not a log filter ({e})"),
        );
    }
    LogConfig { format, level }
}

/// Every leaf key that is set but not known.
fn unknown_keys(raw: &config::Config) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(table) = raw.clone().try_deserialize::<config::Map<String, Value>>() {
        walk("", &table, &mut found);
    }
    found.retain(|key| !KNOWN_KEYS.iter().any(|k| k.key == key));
    found.sort();
    found
}

fn walk(prefix: &str, table: &config::Map<String, Value>, found: &mut Vec<String>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match &value.kind {
            ValueKind::Table(inner) if !KNOWN_KEYS.iter().any(|k| k.key == key) => {
                walk(&key, inner, found);
            }
            _ => found.push(key),
        }
    }
}

/// The environment variable that sets `key`.
pub fn env_var_for(key: &str) -> String {
    format!("{ENV_PREFIX}_{}", key.replace('.', "__").to_uppercase())
}

#[cfg(test)]
mod tests;
