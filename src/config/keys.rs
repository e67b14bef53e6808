//! The one table of configuration keys. Each key is written here once: its
//! dotted name, what it holds, its default (and for a number its range and
//! unit) and a one-line description. Everything else follows from this table:
//! validation takes each key's default and range from it, the `Default`
//! impls of the configuration take their values from it, loading rejects any
//! key not in it (suggesting the closest one), `check-config` prints the keys
//! in its order, and a test checks that the example file in `config/`
//! documents every key with its default.

/// One configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownKey {
    /// Dotted key, as written in TOML sections (`[database]` + `url`); a
    /// list of tables is written `gx[]`.
    pub key: &'static str,
    /// What the key holds, and its default.
    pub(crate) kind: KeyKind,
    /// What the key sets, in one line.
    pub(crate) doc: &'static str,
}

/// What a key holds, and what it is when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A whole number in `min..=max`, counted in `unit`; `default` when absent.
    Integer {
        /// The value when the key is absent.
        default: u64,
        /// The smallest value accepted.
        min: u64,
        /// The largest value accepted.
        max: u64,
        /// What the number counts.
        unit: Unit,
    },
    /// A whole number in `min..=max` with no default of its own.
    OptionalInteger {
        /// The smallest value accepted.
        min: u64,
        /// The largest value accepted.
        max: u64,
        /// What the number counts.
        unit: Unit,
        /// What an absent key means.
        absent: &'static str,
    },
    /// `true` or `false`; `default` when absent.
    Boolean {
        /// The value when the key is absent.
        default: bool,
    },
    /// Text; `default` when absent.
    Text {
        /// The value when the key is absent.
        default: &'static str,
    },
    /// Text with no default: absent means `absent` (none, or required).
    OptionalText {
        /// What an absent key means (`none`, `required` ...).
        absent: &'static str,
    },
}

/// What a number counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds (keys ending in `_ms`).
    Milliseconds,
    /// Hours.
    Hours,
    /// Minutes.
    Minutes,
    /// Seconds.
    Seconds,
    /// Days.
    Days,
    /// Readings (a batch's size).
    Readings,
    /// Database connections.
    Connections,
    /// A plain number: a TCP port, a Modbus unit id.
    Number,
}

impl Unit {
    /// `value` followed by this unit: `5000 ms`, `1 hour`, `72 hours`, `502`.
    pub(crate) fn format(self, value: u64) -> String {
        let (one, many) = match self {
            Self::Milliseconds => ("ms", "ms"),
            Self::Hours => ("hour", "hours"),
            Self::Minutes => ("minute", "minutes"),
            Self::Seconds => ("s", "s"),
            Self::Days => ("day", "days"),
            Self::Readings => ("reading", "readings"),
            Self::Connections => ("connection", "connections"),
            Self::Number => return value.to_string(),
        };
        format!("{value} {}", if value == 1 { one } else { many })
    }
}

impl KnownKey {
    /// The key's name inside its table: `max_readings` for `batch.max_readings`.
    pub(crate) fn name(&self) -> &'static str {
        let key: &'static str = self.key;
        key.rsplit_once('.').map_or(key, |(_, name)| name)
    }

    #[cfg(test)]
    /// The table the key is in: `batch`, `gx[].devices[]`.
    pub(crate) fn table(&self) -> &'static str {
        let key: &'static str = self.key;
        key.rsplit_once('.').map_or("", |(table, _)| table)
    }

    #[cfg(test)]
    /// Whether the key belongs to an entry of a list of tables (`gx[].port`).
    pub(crate) fn in_list(&self) -> bool {
        self.key.contains("[]")
    }

    /// The accepted range of a number key.
    ///
    /// # Panics
    ///
    /// When the key is not a number: a mistake in the program, not in a file.
    pub(crate) fn range(&self) -> (u64, u64) {
        match self.kind {
            KeyKind::Integer { min, max, .. } | KeyKind::OptionalInteger { min, max, .. } => {
                (min, max)
            }
            _ => panic!("{} is not a number key", self.key),
        }
    }

    /// The unit of a number key; `None` for any other.
    pub(crate) fn unit(&self) -> Option<Unit> {
        match self.kind {
            KeyKind::Integer { unit, .. } | KeyKind::OptionalInteger { unit, .. } => Some(unit),
            _ => None,
        }
    }

    /// The default of a number key that has one.
    ///
    /// # Panics
    ///
    /// When the key is not a number with a default.
    pub(crate) fn integer_default(&self) -> u64 {
        match self.kind {
            KeyKind::Integer { default, .. } => default,
            _ => panic!("{} is not a number key with a default", self.key),
        }
    }

    /// The default of a `true`/`false` key.
    ///
    /// # Panics
    ///
    /// When the key is not a `true`/`false` key.
    pub(crate) fn boolean_default(&self) -> bool {
        match self.kind {
            KeyKind::Boolean { default } => default,
            _ => panic!("{} is not a true/false key", self.key),
        }
    }

    /// The default of a text key that has one.
    ///
    /// # Panics
    ///
    /// When the key is not a text key with a default.
    pub(crate) fn text_default(&self) -> &'static str {
        match self.kind {
            KeyKind::Text { default } => default,
            _ => panic!("{} is not a text key with a default", self.key),
        }
    }

    /// A number of this key with its unit (`5000 ms`); the number alone for
    /// a key that is not a number.
    pub(crate) fn with_unit(&self, value: u64) -> String {
        self.unit()
            .map_or_else(|| value.to_string(), |unit| unit.format(value))
    }

    #[cfg(test)]
    /// The default as a user reads it: `5000 ms`, `true`, `text`, or what
    /// an absent key means (`required`, `none (taken from the URL)`).
    pub(crate) fn default_text(&self) -> String {
        match self.kind {
            KeyKind::Integer { default, unit, .. } => unit.format(default),
            KeyKind::Boolean { default } => default.to_string(),
            KeyKind::Text { default } => default.to_string(),
            KeyKind::OptionalInteger { absent, .. } | KeyKind::OptionalText { absent } => {
                absent.to_string()
            }
        }
    }
}

const fn integer(
    key: &'static str,
    default: u64,
    (min, max): (u64, u64),
    unit: Unit,
    doc: &'static str,
) -> KnownKey {
    KnownKey {
        key,
        kind: KeyKind::Integer {
            default,
            min,
            max,
            unit,
        },
        doc,
    }
}

const fn optional_integer(
    key: &'static str,
    absent: &'static str,
    (min, max): (u64, u64),
    unit: Unit,
    doc: &'static str,
) -> KnownKey {
    KnownKey {
        key,
        kind: KeyKind::OptionalInteger {
            min,
            max,
            unit,
            absent,
        },
        doc,
    }
}

const fn boolean(key: &'static str, default: bool, doc: &'static str) -> KnownKey {
    KnownKey {
        key,
        kind: KeyKind::Boolean { default },
        doc,
    }
}

const fn text(key: &'static str, default: &'static str, doc: &'static str) -> KnownKey {
    KnownKey {
        key,
        kind: KeyKind::Text { default },
        doc,
    }
}

const fn optional_text(key: &'static str, absent: &'static str, doc: &'static str) -> KnownKey {
    KnownKey {
        key,
        kind: KeyKind::OptionalText { absent },
        doc,
    }
}

/// Declares each key as a constant (for the code that reads it) and lists
/// them all, in this order, in [`KNOWN_KEYS`]: a key is written once.
macro_rules! table {
    ($($name:ident = $key:expr;)*) => {
        $(pub(super) const $name: KnownKey = $key;)*

        /// Every key the configuration accepts, in the order `check-config`
        /// shows them.
        pub const KNOWN_KEYS: &[KnownKey] = &[$($name),*];
    };
}

use Unit::{Connections, Days, Hours, Milliseconds, Minutes, Number, Readings, Seconds};

table! {
    DATABASE_URL = optional_text(
        "database.url",
        "none (DATABASE_URL is honoured)",
        "PostgreSQL/TimescaleDB connection URL; TLS options go in its query string",
    );
    DATABASE_PASSWORD = optional_text(
        "database.password",
        "none (taken from the URL)",
        "password of the URL's user; never shown",
    );
    DATABASE_CONNECT_TIMEOUT_MS = integer(
        "database.connect_timeout_ms",
        5000,
        (1, 600_000),
        Milliseconds,
        "how long one connection attempt may take",
    );
    DATABASE_MAX_CONNECTIONS = integer(
        "database.max_connections",
        1,
        (1, 1000),
        Connections,
        "connections the daemon's writes share (the failover lock session is one more)",
    );
    DATABASE_TRANSACTION_POOLING = boolean(
        "database.transaction_pooling",
        false,
        "database.url reaches PostgreSQL through a pooler in transaction mode (PgBouncer)",
    );
    DATABASE_WRITE_TIMEOUT_MS = integer(
        "database.write_timeout_ms",
        30_000,
        (100, 3_600_000),
        Milliseconds,
        "longest wait for one batch to be written before it is retried",
    );
    SITE_INSTALLATION_ID = optional_text(
        "site.installation_id",
        "none",
        "the site's name, stored in every reading (at most 100 characters)",
    );
    SITE_TIMEZONE = text(
        "site.timezone",
        "UTC",
        "the site's IANA time zone (\"Europe/Berlin\"): daily history and energy run from its local midnight",
    );
    HISTORY_KEEP_5M_DAYS = integer(
        "history.keep_5m_days",
        35,
        (0, 36_500),
        Days,
        "5-minute rollups older than this are deleted (0: kept forever)",
    );
    HISTORY_KEEP_1H_DAYS = integer(
        "history.keep_1h_days",
        800,
        (0, 36_500),
        Days,
        "hourly rollups older than this are deleted (0: kept forever)",
    );
    HISTORY_KEEP_1D_DAYS = integer(
        "history.keep_1d_days",
        0,
        (0, 36_500),
        Days,
        "daily rollups older than this are deleted (0: kept forever)",
    );
    HISTORY_MAX_GAP_S = integer(
        "history.max_gap_s",
        60,
        (1, 86_400),
        Seconds,
        "energy is integrated between two readings of a device at most this far apart",
    );
    RETENTION_WINDOW_HOURS = integer(
        "retention.window_hours",
        72,
        (26, 24 * 365 * 10),
        Hours,
        "readings older than this are deleted, in every store (at least a day and two hours: \
         a completed day is rolled up from its readings an hour after it ends)",
    );
    RETENTION_RUN_EVERY_MINUTES = integer(
        "retention.run_every_minutes",
        60,
        (1, 24 * 60),
        Minutes,
        "how often the retention job runs",
    );
    BATCH_MAX_READINGS = integer(
        "batch.max_readings",
        200,
        (1, 100_000),
        Readings,
        "a batch for the local store closes at this many readings",
    );
    BATCH_MAX_AGE_MS = integer(
        "batch.max_age_ms",
        1000,
        (1, 600_000),
        Milliseconds,
        "...or when its first reading is this old (without a database: 2000)",
    );
    STORE_SYNC = text(
        "store.sync",
        "full",
        "\"full\" (a committed batch survives a power cut) or \"normal\" (fewer disk writes)",
    );
    STORE_MAX_READINGS_IN_MEMORY = integer(
        "store.max_readings_in_memory",
        10_000,
        (100, 10_000_000),
        Readings,
        "while the local store refuses writes (a full disk), readings wait in memory up to this many \
         (about 2.5 KB each); beyond it the oldest are dropped and counted",
    );
    CLOCK_TRUST_LOCAL = boolean(
        "clock.trust_local",
        false,
        "this machine's clock is always right (a battery-backed RTC, GPS): no checks against references",
    );
    LOG_FORMAT = text("log.format", "text", "\"text\" or \"json\" lines");
    LOG_LEVEL = text(
        "log.level",
        "info",
        "a level or comma-separated target=level directives",
    );
    HEALTH_LISTEN = text("health.listen", "127.0.0.1:9480", "the page, API, /healthz and /metrics (\"off\": none)");
    HEALTH_PASSWORD = optional_text("health.password", "none", "HTTP basic auth of all but /healthz");
    HEALTH_STALL_TIMEOUT_MS = integer(
        "health.stall_timeout_ms",
        120_000,
        (1000, 86_400_000),
        Milliseconds,
        "a source that completes no poll for this long is hung",
    );
    FAILOVER_ENABLED = boolean(
        "failover.enabled",
        false,
        "take a database lock per device before polling it",
    );
    FAILOVER_POLL_WHEN_DATABASE_UNREACHABLE = boolean(
        "failover.poll_when_database_unreachable",
        true,
        "poll the devices no other daemon holds while the database is unreachable",
    );
    FAILOVER_DATABASE_URL = optional_text(
        "failover.database_url",
        "database.url",
        "a direct connection (not through a pooler) for the device locks' session",
    );
    GX_SITE = optional_text(
        "gx[].site",
        "site.installation_id",
        "the site this GX's devices belong to (a worker may poll several sites)",
    );
    GX_HOST = optional_text("gx[].host", "required", "IP address or host name of the GX");
    GX_PORT = integer(
        "gx[].port",
        502,
        (1, 65_535),
        Number,
        "TCP port of the GX's Modbus-TCP server",
    );
    GX_POLL_INTERVAL_MS = integer(
        "gx[].poll_interval_ms",
        5000,
        (100, 3_600_000),
        Milliseconds,
        "time between the starts of two polls",
    );
    GX_REQUEST_TIMEOUT_MS = integer(
        "gx[].request_timeout_ms",
        1000,
        (10, 60_000),
        Milliseconds,
        "longest wait for one reply",
    );
    GX_RECONNECT_MIN_MS = integer(
        "gx[].reconnect_min_ms",
        500,
        (10, 3_600_000),
        Milliseconds,
        "first reconnect delay after a lost connection",
    );
    GX_RECONNECT_MAX_MS = integer(
        "gx[].reconnect_max_ms",
        30_000,
        (10, 3_600_000),
        Milliseconds,
        "longest reconnect delay; not below reconnect_min_ms",
    );
    GX_DEVICE_NAME = optional_text(
        "gx[].devices[].name",
        "required",
        "the device's stable identity in the database",
    );
    GX_DEVICE_CLASS = optional_text(
        "gx[].devices[].class",
        "required",
        "system, battery, solarcharger or vebus",
    );
    GX_DEVICE_UNIT_ID = optional_integer(
        "gx[].devices[].unit_id",
        "100 for class system, else required",
        (0, 247),
        Number,
        "the Modbus unit id the GX lists for the device",
    );
    VEDIRECT_NAME = optional_text(
        "vedirect[].name",
        "required",
        "the device's stable identity in the database",
    );
    VEDIRECT_SITE = optional_text(
        "vedirect[].site",
        "site.installation_id",
        "the site this device belongs to",
    );
    VEDIRECT_PATH = optional_text(
        "vedirect[].path",
        "path or address required",
        "the serial device (19200 baud, 8N1)",
    );
    VEDIRECT_ADDRESS = optional_text(
        "vedirect[].address",
        "path or address required",
        "a serial-to-network bridge, host:port",
    );
    VEDIRECT_POLL_INTERVAL_MS = integer(
        "vedirect[].poll_interval_ms",
        5000,
        (0, 3_600_000),
        Milliseconds,
        "how often a reading is emitted; 0 emits every snapshot",
    );
    VEDIRECT_SILENCE_TIMEOUT_MS = integer(
        "vedirect[].silence_timeout_ms",
        10_000,
        (1000, 3_600_000),
        Milliseconds,
        "reopen the port when no valid block arrives for this long",
    );
    VEDIRECT_RECONNECT_MIN_MS = integer(
        "vedirect[].reconnect_min_ms",
        500,
        (10, 3_600_000),
        Milliseconds,
        "first reopen delay after a failure",
    );
    VEDIRECT_RECONNECT_MAX_MS = integer(
        "vedirect[].reconnect_max_ms",
        30_000,
        (10, 3_600_000),
        Milliseconds,
        "longest reopen delay; not below reconnect_min_ms",
    );
}

/// Whether `key` is in the table (every constant above is: the reader
/// checks it in debug builds).
pub(super) fn is_known(key: &KnownKey) -> bool {
    KNOWN_KEYS.contains(key)
}

/// The known key closest to a misspelt one, if any is close enough.
pub(super) fn closest(unknown: &str) -> Option<&'static str> {
    let unknown = without_indexes(unknown);
    KNOWN_KEYS
        .iter()
        .map(|k| (edit_distance(&unknown, k.key), k.key))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `gx[0].devices[12].name` → `gx[].devices[].name`.
pub(super) fn without_indexes(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// `batch.max_age_ms` when no database is configured: the local store is
/// the database, nothing downstream waits for a batch, and two seconds of
/// readings per commit halve an SD card's writes against one commit per
/// poll (what a kill -9 or a power cut can lose: the open batch).
pub(super) const STORE_ONLY_BATCH_MAX_AGE_MS: u64 = 2000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_suggests_a_near_miss_only() {
        assert_eq!(
            closest("database.max_conections"),
            Some("database.max_connections")
        );
        assert_eq!(closest("log.levle"), Some("log.level"));
        assert_eq!(closest("completely.different"), None);
        assert_eq!(
            closest("gx[3].devices[0].unitid"),
            Some("gx[].devices[].unit_id")
        );
    }

    #[test]
    fn the_table_is_consistent() {
        for (i, known) in KNOWN_KEYS.iter().enumerate() {
            assert!(
                KNOWN_KEYS[..i].iter().all(|k| k.key != known.key),
                "{} is listed twice",
                known.key
            );
            assert!(!known.doc.is_empty(), "{} has no doc", known.key);
            assert!(!known.table().is_empty(), "{} has no table", known.key);
            match known.kind {
                KeyKind::Integer {
                    default, min, max, ..
                } => assert!(
                    min <= default && default <= max,
                    "{}: default {default} outside {min} to {max}",
                    known.key
                ),
                KeyKind::OptionalInteger { min, max, .. } => assert!(min <= max, "{}", known.key),
                _ => {}
            }
            if known.key.ends_with("_ms") {
                assert_eq!(known.unit(), Some(Unit::Milliseconds), "{}", known.key);
            }
        }
        assert_eq!(BATCH_MAX_READINGS.name(), "max_readings");
        assert_eq!(GX_DEVICE_UNIT_ID.table(), "gx[].devices[]");
        assert_eq!(DATABASE_CONNECT_TIMEOUT_MS.default_text(), "5000 ms");
        assert_eq!(RETENTION_RUN_EVERY_MINUTES.with_unit(1), "1 minute");
        assert_eq!(GX_PORT.with_unit(502), "502");
    }
}
