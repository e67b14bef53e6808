//! Raw configuration values → the typed [`Config`]: each key read through
//! its entry in the table of keys ([`super::keys`], which holds its default
//! and range), and the cross-key checks (reconnect delays in order, unique
//! device names, the stall limit above every wait). Every problem is
//! collected.
//!
//! Here: the walk through the file's tables, the small sections and
//! `[health]` (whose stall limit depends on the devices). Beside it:
//! `database.rs` (`[database]`, the lock session's URL), `devices.rs`
//! (`[[gx]]`, `[[vedirect]]`), `log.rs` (`[log]`) and `names.rs` (the rule
//! for device and site names).

mod database;
mod devices;
mod log;
mod names;

use std::time::Duration;

use super::keys;
use super::reader::{Problems, Table};
use super::{
    BatchConfig, ClockConfig, Config, ConfigError, FailoverConfig, GxConfig, HealthConfig,
    HistoryConfig, RetentionConfig, SiteConfig, StoreConfig, StoreSync, VeDirectConfig,
};
use database::{database, lock_session};
use devices::{check_device_names, gx, vedirect};
use log::log;
use names::site_name;

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

fn health(
    t: &mut Table,
    gx: &[GxConfig],
    vedirect: &[VeDirectConfig],
    problems: &mut Problems,
) -> HealthConfig {
    let listen_key = t.key("listen");
    let listen = Some(
        t.string(&keys::HEALTH_LISTEN, problems)
            .unwrap_or_else(|| keys::HEALTH_LISTEN.text_default().to_string()),
    )
    .filter(|l| !l.trim().is_empty() && !l.trim().eq_ignore_ascii_case("off"))
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
    let password_key = t.key("password");
    let password = t.string(&keys::HEALTH_PASSWORD, problems);
    if password.as_deref().is_some_and(|p| p.is_empty()) {
        problems.push(
            &password_key,
            "is empty: remove the key for no password".to_string(),
        );
    }
    HealthConfig {
        listen,
        password: password.filter(|p| !p.is_empty()),
        stall_timeout: Duration::from_millis(stall_ms),
    }
}
