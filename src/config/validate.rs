//! Raw configuration values → the typed [`Config`]: each key read through
//! its entry in the table of keys ([`super::keys`], which holds its default
//! and range), and the cross-key checks (reconnect delays in order, unique
//! device names, the stall limit above every wait). Every problem is
//! collected.

use std::collections::HashSet;
use std::time::Duration;

use url::Url;

use super::keys::{self, KnownKey};
use super::reader::{Problems, Table};
use super::redact;
use super::{
    BatchConfig, ClockConfig, Config, ConfigError, DatabaseConfig, FailoverConfig, GxConfig,
    HealthConfig, HistoryConfig, LogConfig, LogFormat, ModbusClass, ModbusDeviceConfig,
    RetentionConfig, Secret, SiteConfig, StoreConfig, StoreSync, VeDirectConfig, VeDirectPort,
};

/// `origins`: the keys environment variables set, and the variable of each.
pub(super) fn validate(
    raw: config::Config,
    origins: Vec<(String, String)>,
) -> Result<Config, ConfigError> {
    let mut problems = Problems::new(origins);
    let entries = raw
        .try_deserialize::<config::Map<String, config::Value>>()
        .unwrap_or_default();
    let mut root = Table::new("", entries);

    let mut t = root.table("database", &mut problems);
    let mut database = database(&mut t, &mut problems);
    t.finish(&mut problems);

    let mut t = root.table("site", &mut problems);
    let site_key = t.key("installation_id");
    let site = SiteConfig {
        installation_id: t
            .string(&keys::SITE_INSTALLATION_ID, &mut problems)
            .filter(|s| !s.is_empty())
            .and_then(|s| site_name(s, &site_key, &mut problems)),
        timezone: match t.string(&keys::SITE_TIMEZONE, &mut problems) {
            None => chrono_tz::UTC,
            Some(name) => name.parse().unwrap_or_else(|_| {
                problems.push(
                    &t.key("timezone"),
                    format!("\"{name}\" is not an IANA time zone name (such as \"Europe/Berlin\" or \"UTC\")"),
                );
                chrono_tz::UTC
            }),
        },
    };
    t.finish(&mut problems);
    let default_site = site.installation_id.clone().unwrap_or_default();

    let mut t = root.table("retention", &mut problems);
    let window_hours = t.integer(&keys::RETENTION_WINDOW_HOURS, &mut problems);
    let run_every_minutes = t.integer(&keys::RETENTION_RUN_EVERY_MINUTES, &mut problems);
    t.finish(&mut problems);

    let mut t = root.table("batch", &mut problems);
    let batch = BatchConfig {
        max_readings: usize::try_from(t.integer(&keys::BATCH_MAX_READINGS, &mut problems))
            .unwrap_or(usize::MAX),
        max_age: Duration::from_millis(
            t.integer_opt(&keys::BATCH_MAX_AGE_MS, &mut problems)
                .unwrap_or(if database.is_some() {
                    keys::BATCH_MAX_AGE_MS.integer_default()
                } else {
                    keys::STORE_ONLY_BATCH_MAX_AGE_MS
                }),
        ),
    };
    t.finish(&mut problems);

    let mut t = root.table("store", &mut problems);
    let store = StoreConfig {
        sync: match t.string(&keys::STORE_SYNC, &mut problems) {
            None => StoreSync::default(),
            Some(written) => StoreSync::parse(&written).unwrap_or_else(|| {
                let message =
                    format!("\"{written}\" is not a sync mode (use \"full\" or \"normal\")");
                problems.push(&t.key("sync"), message);
                StoreSync::default()
            }),
        },
        max_readings_in_memory: usize::try_from(
            t.integer(&keys::STORE_MAX_READINGS_IN_MEMORY, &mut problems),
        )
        .unwrap_or(usize::MAX),
    };
    t.finish(&mut problems);

    let mut t = root.table("history", &mut problems);
    let mut keep_days = |key: &keys::KnownKey| {
        Some(t.integer(key, &mut problems))
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(d * 86_400))
    };
    let keep = [
        keep_days(&keys::HISTORY_KEEP_5M_DAYS),
        keep_days(&keys::HISTORY_KEEP_1H_DAYS),
        keep_days(&keys::HISTORY_KEEP_1D_DAYS),
    ];
    let history = HistoryConfig {
        keep,
        max_gap: Duration::from_secs(t.integer(&keys::HISTORY_MAX_GAP_S, &mut problems)),
    };
    t.finish(&mut problems);

    let mut t = root.table("clock", &mut problems);
    let clock = ClockConfig {
        trust_local: t.boolean(&keys::CLOCK_TRUST_LOCAL, &mut problems),
    };
    t.finish(&mut problems);

    let mut t = root.table("log", &mut problems);
    let log = log(&mut t, &mut problems);
    t.finish(&mut problems);

    let gx: Vec<GxConfig> = root
        .tables("gx", &mut problems)
        .into_iter()
        .filter_map(|table| gx(table, &default_site, &mut problems))
        .collect();
    let vedirect: Vec<VeDirectConfig> = root
        .tables("vedirect", &mut problems)
        .into_iter()
        .filter_map(|table| vedirect(table, &default_site, &mut problems))
        .collect();
    check_device_names(&gx, &vedirect, &mut problems);

    let mut t = root.table("health", &mut problems);
    let health = health(&mut t, &gx, &vedirect, &mut problems);
    t.finish(&mut problems);

    let mut t = root.table("failover", &mut problems);
    let failover = FailoverConfig {
        enabled: t.boolean(&keys::FAILOVER_ENABLED, &mut problems),
        poll_when_database_unreachable: t.boolean(
            &keys::FAILOVER_POLL_WHEN_DATABASE_UNREACHABLE,
            &mut problems,
        ),
    };
    if failover.enabled && database.is_none() {
        problems.push(
            &t.key("enabled"),
            "needs a database (database.url): the devices' locks live there",
        );
    }
    lock_session(&mut t, database.as_mut(), failover.enabled, &mut problems);
    t.finish(&mut problems);

    root.finish(&mut problems);

    if problems.list.is_empty() {
        Ok(Config {
            database,
            retention: RetentionConfig {
                window: Duration::from_secs(window_hours * 3600),
                run_every: Duration::from_secs(run_every_minutes * 60),
            },
            batch,
            store,
            clock,
            history,
            log,
            site,
            gx,
            vedirect,
            health,
            failover,
        })
    } else {
        Err(ConfigError::Invalid(problems.list))
    }
}

fn database(t: &mut Table, problems: &mut Problems) -> Option<DatabaseConfig> {
    let connect_timeout_ms = t.integer(&keys::DATABASE_CONNECT_TIMEOUT_MS, problems);
    let write_timeout_ms = t.integer(&keys::DATABASE_WRITE_TIMEOUT_MS, problems);
    let max_connections = t.integer(&keys::DATABASE_MAX_CONNECTIONS, problems);
    let password = t
        .string(&keys::DATABASE_PASSWORD, problems)
        .filter(|p| !p.is_empty());
    let transaction_pooling = t.boolean(&keys::DATABASE_TRANSACTION_POOLING, problems);
    let url_key = t.key("url");
    let Some(url) = t
        .string(&keys::DATABASE_URL, problems)
        .filter(|u| !u.trim().is_empty())
    else {
        if password.is_some() {
            problems.push(&t.key("password"), "is set but database.url is not");
        }
        return None;
    };
    let (url, url_password) = postgres_url(&url, &url_key, problems)?;
    Some(DatabaseConfig {
        url,
        password: password.or(url_password).map(Secret),
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        write_timeout: Duration::from_millis(write_timeout_ms),
        max_connections: u32::try_from(max_connections).unwrap_or(u32::MAX),
        transaction_pooling,
        lock_session: None,
    })
}

/// `failover.database_url`: the device locks' own connection. Session locks
/// cannot live behind a pooler in transaction mode, so failover through one
/// needs it.
fn lock_session(
    t: &mut Table,
    database: Option<&mut DatabaseConfig>,
    failover_enabled: bool,
    problems: &mut Problems,
) {
    let key = t.key("database_url");
    let raw = t
        .string(&keys::FAILOVER_DATABASE_URL, problems)
        .filter(|u| !u.trim().is_empty());
    let Some(database) = database else {
        if raw.is_some() {
            problems.push(&key, "is set but database.url is not");
        }
        return;
    };
    let Some(raw) = raw else {
        if failover_enabled && database.transaction_pooling {
            problems.push(
                &key,
                "is required with failover.enabled when database.transaction_pooling is on: \
                 the device locks are session locks, which a pooler in transaction mode hands to \
                 other clients; set it to a direct connection to PostgreSQL, not through the pooler",
            );
        }
        return;
    };
    let Some((url, url_password)) = postgres_url(&raw, &key, problems) else {
        return;
    };
    database.lock_session = Some(Box::new(DatabaseConfig {
        url,
        // The same user's password, unless this URL carries its own.
        password: url_password
            .map(Secret)
            .or_else(|| database.password.clone()),
        connect_timeout: database.connect_timeout,
        write_timeout: database.write_timeout,
        max_connections: 1,
        transaction_pooling: false,
        lock_session: None,
    }));
}

/// A `postgres://` URL with a host and valid TLS settings, and the password
/// it held (removed from the URL): in its user part, or in its `password`
/// parameter, which wins as it does for libpq and the driver. Any other
/// parameter that holds a secret ([`redact::is_secret_parameter`]) is a
/// problem, named without its value: the driver would ignore it and log it,
/// value and all (`sslpassword`: it reads no encrypted client key).
fn postgres_url(
    url: &str,
    url_key: &str,
    problems: &mut Problems,
) -> Option<(Url, Option<String>)> {
    let mut url = match Url::parse(url.trim()) {
        Ok(url) => url,
        // The parser's message never quotes the input, so no secret leaks.
        Err(e) => {
            problems.push(url_key, format!("not a valid URL ({e})"));
            return None;
        }
    };
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        let scheme = url.scheme();
        problems.push(
            url_key,
            format!("scheme `{scheme}` is not supported (use postgres://)"),
        );
        return None;
    }
    if url.host_str().is_none_or(str::is_empty) {
        problems.push(url_key, "has no host");
        return None;
    }
    tls_settings(&url, url_key, problems);
    let mut url_password = url.password().map(|p| {
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned()
    });
    let _ = url.set_password(None);
    let mut kept = Vec::new();
    for (raw, (name, value)) in url
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .zip(url.query_pairs())
    {
        if name == "password" {
            url_password = Some(value.into_owned());
        } else if name == "sslpassword" {
            problems.push(
                url_key,
                "sslpassword is not supported (value not shown): the driver reads only an \
                 unencrypted client key (sslkey); decrypt it (openssl pkey -in KEY -out KEY.plain) \
                 and keep it readable by the service alone",
            );
        } else if redact::is_secret_parameter(&name) {
            problems.push(
                url_key,
                format!(
                    "parameter `{name}` is unknown (value not shown): the password goes in the \
                     URL's user part, its `password` parameter, or database.password"
                ),
            );
        } else {
            kept.push(raw.to_string());
        }
    }
    if url.query().is_some() {
        url.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
    }
    Some((url, url_password))
}

/// The URL's TLS settings: a known `sslmode`, and a readable `sslrootcert`
/// when one is named (checked now rather than at the first connection).
fn tls_settings(url: &Url, key: &str, problems: &mut Problems) {
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "sslmode" => {
                const MODES: [&str; 6] = [
                    "disable",
                    "allow",
                    "prefer",
                    "require",
                    "verify-ca",
                    "verify-full",
                ];
                if !MODES.contains(&value.as_ref()) {
                    problems.push(
                        key,
                        format!("sslmode \"{value}\" is not one of {}", MODES.join(", ")),
                    );
                }
            }
            "sslrootcert" | "sslcert" | "sslkey" => {
                if let Err(e) = std::fs::File::open(value.as_ref()) {
                    problems.push(key, format!("{name} {value}: cannot be read ({e})"));
                }
            }
            _ => {}
        }
    }
}

fn health(
    t: &mut Table,
    gx: &[GxConfig],
    vedirect: &[VeDirectConfig],
    problems: &mut Problems,
) -> HealthConfig {
    let listen_key = t.key("listen");
    let listen = t
        .string(&keys::HEALTH_LISTEN, problems)
        .filter(|l| !l.trim().is_empty())
        .and_then(|text| match text.trim().parse() {
            Ok(address) => Some(address),
            Err(_) => {
                let message = format!(
                    "\"{text}\" is not an address and port such as 127.0.0.1:9480 or 0.0.0.0:8080"
                );
                problems.push(&listen_key, message);
                None
            }
        });
    let stall_key = t.key("stall_timeout_ms");
    let stall_ms = t.integer(&keys::HEALTH_STALL_TIMEOUT_MS, problems);
    // A source legitimately waits this long between two polls: the stall
    // limit must be longer, or a healthy daemon would be called hung.
    let longest_wait = gx
        .iter()
        .map(|g| g.poll_interval.max(g.reconnect_max))
        .chain(
            vedirect
                .iter()
                .map(|v| v.poll_interval.max(v.reconnect_max).max(v.silence_timeout)),
        )
        .max()
        .unwrap_or_default();
    if u128::from(stall_ms) <= longest_wait.as_millis() {
        problems.push(
            &stall_key,
            format!(
                "{stall_ms} is not above the longest wait of a source between two polls ({} ms: a poll interval, reconnect_max_ms or silence_timeout_ms)",
                longest_wait.as_millis()
            ),
        );
    }
    HealthConfig {
        listen,
        stall_timeout: Duration::from_millis(stall_ms),
    }
}

/// The levels a log filter may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A log filter is comma-separated directives, each a level (`info`) or
/// `target=level` (`victron_poller=debug`); returns it without the spaces
/// around its directives. `tracing` itself would take a misspelt level as a
/// target name and log nothing at all.
fn log_filter(filter: &str) -> Result<String, String> {
    let is_level = |word: &str| {
        LOG_LEVELS
            .iter()
            .any(|l| l.eq_ignore_ascii_case(word.trim()))
    };
    let valid = "a level (off, error, warn, info, debug, trace) or target=level, comma-separated";
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(format!("is empty: use {valid}"));
    }
    for directive in &directives {
        let ok = match directive.split_once('=') {
            Some((target, level)) => {
                !target.trim().is_empty()
                    && !target.contains(char::is_whitespace)
                    && is_level(level)
            }
            None => is_level(directive),
        };
        if !ok {
            return Err(format!("\"{directive}\" is not {valid}"));
        }
    }
    let filter = directives
        .iter()
        .map(|d| d.replace(' ', ""))
        .collect::<Vec<_>>()
        .join(",");
    tracing_subscriber::EnvFilter::try_new(&filter)
        .map(|_| filter.clone())
        .map_err(|e| format!("\"{filter}\" is not a log filter ({e})"))
}

fn log(t: &mut Table, problems: &mut Problems) -> LogConfig {
    let defaults = LogConfig::default();
    let format = match t.string(&keys::LOG_FORMAT, problems) {
        None => defaults.format,
        Some(written) => LogFormat::parse(&written).unwrap_or_else(|| {
            let message = format!("\"{written}\" is not a log format (use \"text\" or \"json\")");
            problems.push(&t.key("format"), message);
            defaults.format
        }),
    };
    let written = t
        .string(&keys::LOG_LEVEL, problems)
        .unwrap_or(defaults.level);
    let level = match log_filter(&written) {
        Ok(filter) => filter,
        Err(message) => {
            problems.push(&t.key("level"), message);
            written
        }
    };
    LogConfig { format, level }
}

fn gx(mut t: Table, default_site: &str, problems: &mut Problems) -> Option<GxConfig> {
    let site = source_site(&mut t, &keys::GX_SITE, default_site, problems);
    let host_key = t.key("host");
    let host = t
        .string(&keys::GX_HOST, problems)
        .map(|h| h.trim().to_string());
    let port = t.integer(&keys::GX_PORT, problems);
    let poll_interval_ms = t.integer(&keys::GX_POLL_INTERVAL_MS, problems);
    let request_timeout_ms = t.integer(&keys::GX_REQUEST_TIMEOUT_MS, problems);
    let (reconnect_min, reconnect_max) = reconnect_delays(
        &mut t,
        &keys::GX_RECONNECT_MIN_MS,
        &keys::GX_RECONNECT_MAX_MS,
        problems,
    );
    let devices_key = t.key("devices");
    let before = problems.list.len();
    let devices: Vec<ModbusDeviceConfig> = t
        .tables("devices", problems)
        .into_iter()
        .filter_map(|d| modbus_device(d, problems))
        .collect();
    if devices.is_empty() && problems.list.len() == before {
        problems.push(&devices_key, "no device configured for this GX");
    }
    t.finish(problems);
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        problems.push(&host_key, "not set (the GX's IP address or host name)");
        return None;
    };
    Some(GxConfig {
        site: site?,
        host,
        port: u16::try_from(port).unwrap_or(u16::MAX),
        poll_interval: Duration::from_millis(poll_interval_ms),
        request_timeout: Duration::from_millis(request_timeout_ms),
        reconnect_min,
        reconnect_max,
        devices,
    })
}

fn modbus_device(mut t: Table, problems: &mut Problems) -> Option<ModbusDeviceConfig> {
    let name_key = t.key("name");
    let class_key = t.key("class");
    let unit_key = t.key("unit_id");
    let name = t.string(&keys::GX_DEVICE_NAME, problems);
    let class_name = t.string(&keys::GX_DEVICE_CLASS, problems);
    let before = problems.list.len();
    let unit_id = t.integer_opt(&keys::GX_DEVICE_UNIT_ID, problems);
    let unit_invalid = problems.list.len() > before;
    t.finish(problems);

    let name = device_name(name, &name_key, problems);
    let class = match class_name.as_deref() {
        Some(text) => {
            let class = ModbusClass::parse(text);
            if class.is_none() {
                let message = format!(
                    "\"{text}\" is not a device class (use system, battery, solarcharger or vebus)"
                );
                problems.push(&class_key, message);
            }
            class
        }
        None => {
            problems.push(
                &class_key,
                "not set (system, battery, solarcharger or vebus)",
            );
            None
        }
    };
    let unit_id = match (unit_id, class) {
        (Some(u), _) => Some(u),
        (None, _) if unit_invalid => None,
        // The system service always answers on unit id 100.
        (None, Some(ModbusClass::System)) => Some(100),
        (None, _) => {
            problems.push(
                &unit_key,
                "not set (the GX lists it under Settings, Services, Modbus TCP, Available services)",
            );
            None
        }
    };
    Some(ModbusDeviceConfig {
        name: name?,
        class: class?,
        unit_id: u8::try_from(unit_id?).ok()?,
    })
}

/// A device's `name`: set, and made of the characters a stable identity may have.
fn device_name(name: Option<String>, key: &str, problems: &mut Problems) -> Option<String> {
    match name {
        Some(n) if valid_device_name(&n) => Some(n),
        Some(n) => {
            let message =
                format!("\"{n}\" is not a device name (1 to 64 letters, digits, '-', '_' or '.')");
            problems.push(key, message);
            None
        }
        None => {
            problems.push(
                key,
                "not set (the device's stable name, e.g. \"house-bank\")",
            );
            None
        }
    }
}

/// A site's name (`site.installation_id`, `gx[].site`, `vedirect[].site`):
/// the characters of a device name, at most 100 of them (a VRM installation
/// id fits).
fn site_name(name: String, key: &str, problems: &mut Problems) -> Option<String> {
    let valid = (1..=100).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Some(name)
    } else {
        let message =
            format!("\"{name}\" is not a site name (1 to 100 letters, digits, '-', '_' or '.')");
        problems.push(key, message);
        None
    }
}

/// A source's site: its own `site`, else the configured default. `None`
/// when its own is not a valid site name.
fn source_site(
    t: &mut Table,
    known: &keys::KnownKey,
    default_site: &str,
    problems: &mut Problems,
) -> Option<String> {
    let key = t.key("site");
    match t.string(known, problems).filter(|s| !s.is_empty()) {
        Some(own) => site_name(own, &key, problems),
        None => Some(default_site.to_string()),
    }
}

fn valid_device_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn vedirect(mut t: Table, default_site: &str, problems: &mut Problems) -> Option<VeDirectConfig> {
    let site = source_site(&mut t, &keys::VEDIRECT_SITE, default_site, problems);
    let name_key = t.key("name");
    let name = t.string(&keys::VEDIRECT_NAME, problems);
    let path = t
        .string(&keys::VEDIRECT_PATH, problems)
        .filter(|p| !p.trim().is_empty());
    let address = t
        .string(&keys::VEDIRECT_ADDRESS, problems)
        .filter(|a| !a.trim().is_empty());
    let poll_interval_ms = t.integer(&keys::VEDIRECT_POLL_INTERVAL_MS, problems);
    let silence_timeout_ms = t.integer(&keys::VEDIRECT_SILENCE_TIMEOUT_MS, problems);
    let (reconnect_min, reconnect_max) = reconnect_delays(
        &mut t,
        &keys::VEDIRECT_RECONNECT_MIN_MS,
        &keys::VEDIRECT_RECONNECT_MAX_MS,
        problems,
    );
    let port_key = t.key("path");
    t.finish(problems);
    let port = match (path, address) {
        (Some(path), None) => Some(VeDirectPort::Serial(path)),
        (None, Some(address))
            if address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
        {
            Some(VeDirectPort::Tcp(address))
        }
        (None, Some(address)) => {
            problems.push(
                &port_key.replace(".path", ".address"),
                format!("\"{address}\" is not host:port"),
            );
            None
        }
        (Some(_), Some(_)) => {
            problems.push(
                &port_key,
                "set either path (serial) or address (TCP bridge), not both",
            );
            None
        }
        (None, None) => {
            problems.push(
                &port_key,
                "not set (a serial device such as /dev/serial/by-id/…, or address = \"host:port\")",
            );
            None
        }
    };
    let name = device_name(name, &name_key, problems);
    Some(VeDirectConfig {
        site: site?,
        name: name?,
        port: port?,
        poll_interval: Duration::from_millis(poll_interval_ms),
        silence_timeout: Duration::from_millis(silence_timeout_ms),
        reconnect_min,
        reconnect_max,
    })
}

/// A source's reconnect delays (GX and VE.Direct alike): the first and the
/// longest, each in its range, and the longest not below the first.
fn reconnect_delays(
    t: &mut Table,
    min_key: &KnownKey,
    max_key: &KnownKey,
    problems: &mut Problems,
) -> (Duration, Duration) {
    let min_ms = t.integer(min_key, problems);
    let max_ms = t.integer(max_key, problems);
    if max_ms < min_ms {
        problems.push(
            &t.key(max_key.name()),
            format!("{max_ms} is below {} ({min_ms})", min_key.name()),
        );
    }
    (Duration::from_millis(min_ms), Duration::from_millis(max_ms))
}

fn check_device_names(gx: &[GxConfig], vedirect: &[VeDirectConfig], problems: &mut Problems) {
    let mut seen = HashSet::new();
    let modbus = gx.iter().enumerate().flat_map(|(g, gx)| {
        gx.devices
            .iter()
            .enumerate()
            .map(move |(d, device)| (format!("gx[{g}].devices[{d}].name"), device.name.as_str()))
    });
    let serial = vedirect
        .iter()
        .enumerate()
        .map(|(v, device)| (format!("vedirect[{v}].name"), device.name.as_str()));
    for (key, name) in modbus.chain(serial) {
        if !seen.insert(name) {
            let message = format!("\"{name}\" is used by another device (names identify devices)");
            problems.push(&key, message);
        }
    }
}
