//! Table-driven tests of configuration loading and validation.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keys;
use super::*;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/victron-poller.example.toml"
);

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f
}

fn problems(result: Result<Config, ConfigError>) -> Vec<ConfigProblem> {
    match result {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected invalid configuration, got {other:?}"),
    }
}

/// The keys a configuration file shows, by table key (`gx[].port`): the
/// value of the first line that sets or shows the key, and whether that line
/// is commented out (`# password = "..."`). Commented table headers
/// (`# [[gx]]`) open their table as uncommented ones do.
fn example_keys(text: &str) -> HashMap<String, (String, bool)> {
    let mut found: HashMap<String, (String, bool)> = HashMap::new();
    let mut table = String::new();
    for line in text.lines() {
        let line = line.trim();
        let commented = line.starts_with('#');
        let content = line.trim_start_matches(['#', ' ']);
        let header = content.starts_with('[')
            && content.ends_with(']')
            && content
                .trim_matches(|c: char| c == '[' || c == ']')
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
        if header {
            let name = content.trim_matches(|c: char| c == '[' || c == ']');
            table = if content.starts_with("[[") {
                name.split('.')
                    .map(|part| format!("{part}[]"))
                    .collect::<Vec<_>>()
                    .join(".")
            } else {
                name.to_string()
            };
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let is_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !is_key {
            continue;
        }
        found
            .entry(format!("{table}.{key}"))
            .or_insert_with(|| (value.trim().to_string(), commented));
    }
    found
}

/// The keys a TOML text sets (read by the TOML parser, not by lines), by
/// table key (`gx[].devices[].name`), with their values as TOML writes them.
fn keys_set(text: &str) -> Vec<(String, String)> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let key = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&key, value, out);
                }
            }
            serde_json::Value::Array(items) if items.iter().all(|i| i.is_object()) => {
                for item in items {
                    walk(&format!("{prefix}[]"), item, out);
                }
            }
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let parsed: serde_json::Value = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap();
    let mut out = Vec::new();
    walk("", &parsed, &mut out);
    out
}

/// A key's default as a TOML file writes it; `None` for a key without one.
fn default_as_written(known: &KnownKey) -> Option<String> {
    match known.kind {
        KeyKind::Integer { default, .. } => Some(default.to_string()),
        KeyKind::Boolean { default } => Some(default.to_string()),
        KeyKind::Text { default } => Some(format!("\"{default}\"")),
        KeyKind::OptionalInteger { .. } | KeyKind::OptionalText { .. } => None,
    }
}

const DEBIAN_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/debian/victron-poller.toml");

/// A copy of a shipped file changes nothing but what its user uncomments:
/// every key it sets (by the TOML parser) is in the table of keys and set to
/// the table's default — none without a default (a database URL, a site, a
/// device) — so it configures no database and no device, and the defaults
/// that depend on others stay free (`batch.max_age_ms` is 2000 without a
/// database, not the 1000 a copy would pin).
#[test]
fn the_shipped_files_set_nothing_but_defaults_and_name_no_device() {
    for path in [EXAMPLE, DEBIAN_CONFIG] {
        let text = std::fs::read_to_string(path).unwrap();
        for (key, value) in keys_set(&text) {
            let Some(known) = KNOWN_KEYS.iter().find(|k| k.key == key) else {
                panic!("{path} sets {key}, which is not in the table of keys");
            };
            assert_eq!(
                Some(&value),
                default_as_written(known).as_ref(),
                "{path} sets {key} to {value}, not to the table's default"
            );
        }
        let config = Config::load_with_env(Some(Path::new(path)), env(&[])).unwrap();
        assert!(config.database.is_none(), "{path}");
        assert!(config.gx.is_empty() && config.vedirect.is_empty(), "{path}");
        assert_eq!(config.site.installation_id, None, "{path}");
        assert_eq!(
            config.batch.max_age,
            Duration::from_millis(keys::STORE_ONLY_BATCH_MAX_AGE_MS),
            "{path}"
        );
        let refused = problems(config.check_runnable().map(|()| config.clone()));
        assert_eq!(refused.len(), 1, "{path}");
        assert!(
            refused[0].message.starts_with("no device configured"),
            "{path}: {}",
            refused[0]
        );
    }
}

/// The example documents every key of the table, in its section, showing
/// its default where it has one; it shows no other key.
#[test]
fn the_example_documents_every_key_with_its_default() {
    let example = example_keys(&std::fs::read_to_string(EXAMPLE).unwrap());
    for known in KNOWN_KEYS {
        let Some((written, _)) = example.get(known.key) else {
            panic!("the example does not document {}", known.key);
        };
        if let Some(default) = default_as_written(known) {
            assert_eq!(
                written, &default,
                "the example does not show {}'s default",
                known.key
            );
        }
    }
    for key in example.keys() {
        assert!(
            KNOWN_KEYS.iter().any(|k| k.key == key.as_str()),
            "the example shows {key}, which is not in the table of keys"
        );
    }
}

/// Uncommented, the example's device sections are a working configuration:
/// what a user fills in loads.
#[test]
fn the_examples_device_sections_load_once_uncommented() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let mut in_devices = false;
    let uncommented: String = text
        .lines()
        .map(|line| {
            if line.starts_with("# [[gx]]") {
                in_devices = true;
            }
            let example_line = line
                .strip_prefix("# ")
                .filter(|rest| rest.starts_with('[') || rest.contains(" = "))
                .filter(|rest| !rest.starts_with("address") && !rest.starts_with("site"));
            match example_line {
                Some(rest) if in_devices => format!("{rest}\n"),
                _ => format!("{line}\n"),
            }
        })
        .collect();
    let f = file(&uncommented);
    let config = Config::load_with_env(Some(f.path()), env(&[])).unwrap();
    assert_eq!(config.gx.len(), 1);
    assert_eq!(config.gx[0].devices.len(), 4);
    assert_eq!(config.vedirect.len(), 1);
    assert!(config.check_runnable().is_ok());
}

/// Loaded from nothing but what brings every table into being (a database,
/// one GX, one VE.Direct device), every key has the table's default, and the
/// `Default` impls agree.
#[test]
fn defaults_are_the_tables() {
    let config = Config::load_with_env(
        None,
        env(&[
            ("DATABASE_URL", "postgres://u@db/x"),
            (
                "VICTRON_POLLER_GX",
                r#"[{ host = "gx", devices = [{ name = "s", class = "system" }] }]"#,
            ),
            (
                "VICTRON_POLLER_VEDIRECT",
                r#"[{ name = "bmv", path = "/dev/ttyUSB0" }]"#,
            ),
        ]),
    )
    .unwrap();
    let db = config.database.as_ref().unwrap();
    let (gx, vedirect) = (&config.gx[0], &config.vedirect[0]);
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap();
    for known in KNOWN_KEYS {
        if matches!(
            known.kind,
            KeyKind::OptionalInteger { .. } | KeyKind::OptionalText { .. }
        ) {
            continue;
        }
        if !known.in_list() {
            assert_eq!(
                config.shown_value(known),
                Some(known.default_text()),
                "{}",
                known.key
            );
        }
        let KeyKind::Integer { default, .. } = known.kind else {
            continue;
        };
        let loaded = match known.key {
            "database.connect_timeout_ms" => ms(db.connect_timeout),
            "database.max_connections" => u64::from(db.max_connections),
            "database.write_timeout_ms" => ms(db.write_timeout),
            "retention.window_hours" => config.retention.window.as_secs() / 3600,
            "retention.run_every_minutes" => config.retention.run_every.as_secs() / 60,
            "batch.max_readings" => u64::try_from(config.batch.max_readings).unwrap(),
            "batch.max_age_ms" => ms(config.batch.max_age),
            "store.max_readings_in_memory" => {
                u64::try_from(config.store.max_readings_in_memory).unwrap()
            }
            "health.stall_timeout_ms" => ms(config.health.stall_timeout),
            "history.keep_5m_days" => config.history.keep[0].map_or(0, |d| d.as_secs() / 86_400),
            "history.keep_1h_days" => config.history.keep[1].map_or(0, |d| d.as_secs() / 86_400),
            "history.keep_1d_days" => config.history.keep[2].map_or(0, |d| d.as_secs() / 86_400),
            "history.max_gap_s" => config.history.max_gap.as_secs(),
            "gx[].port" => u64::from(gx.port),
            "gx[].poll_interval_ms" => ms(gx.poll_interval),
            "gx[].request_timeout_ms" => ms(gx.request_timeout),
            "gx[].reconnect_min_ms" => ms(gx.reconnect_min),
            "gx[].reconnect_max_ms" => ms(gx.reconnect_max),
            "vedirect[].poll_interval_ms" => ms(vedirect.poll_interval),
            "vedirect[].silence_timeout_ms" => ms(vedirect.silence_timeout),
            "vedirect[].reconnect_min_ms" => ms(vedirect.reconnect_min),
            "vedirect[].reconnect_max_ms" => ms(vedirect.reconnect_max),
            other => panic!("{other}: this test does not know where its value is kept"),
        };
        assert_eq!(loaded, default, "{}", known.key);
    }
    assert_eq!(config.retention, RetentionConfig::default());
    assert_eq!(config.batch, BatchConfig::default());
    assert_eq!(config.log, LogConfig::default());
    assert_eq!(config.health, HealthConfig::default());
    assert_eq!(config.failover, FailoverConfig::default());
    assert_eq!(config.history, HistoryConfig::default());
}

/// `check-config` shows every key outside the device lists, numbers with
/// their unit, and the password only as set or not.
#[test]
fn every_key_outside_the_device_lists_is_shown() {
    let config = Config::load_with_env(
        Some(Path::new(EXAMPLE)),
        env(&[
            (
                "DATABASE_URL",
                "postgres://victron@db.example.net:5432/ranch",
            ),
            ("VICTRON_POLLER_FAILOVER__ENABLED", "true"),
            ("VICTRON_POLLER_DATABASE__PASSWORD", "hunter2"),
        ]),
    )
    .unwrap();
    for known in KNOWN_KEYS.iter().filter(|k| !k.in_list()) {
        let shown = config
            .shown_value(known)
            .unwrap_or_else(|| panic!("{} is not shown", known.key));
        assert!(!shown.contains("hunter2"), "{}: {shown}", known.key);
    }
    for known in KNOWN_KEYS.iter().filter(|k| k.in_list()) {
        assert_eq!(config.shown_value(known), None, "{}", known.key);
    }
    let shown = |known: &KnownKey| config.shown_value(known);
    assert_eq!(
        shown(&keys::DATABASE_URL).as_deref(),
        Some("postgres://victron@db.example.net:5432/ranch")
    );
    assert_eq!(
        shown(&keys::DATABASE_PASSWORD).as_deref(),
        Some("set (hidden)")
    );
    assert_eq!(
        shown(&keys::DATABASE_CONNECT_TIMEOUT_MS).as_deref(),
        Some("5000 ms")
    );
    assert_eq!(
        shown(&keys::DATABASE_MAX_CONNECTIONS).as_deref(),
        Some("1 connection")
    );
    assert_eq!(
        shown(&keys::RETENTION_WINDOW_HOURS).as_deref(),
        Some("72 hours")
    );
    assert_eq!(
        shown(&keys::BATCH_MAX_READINGS).as_deref(),
        Some("200 readings")
    );
    assert_eq!(
        shown(&keys::HEALTH_LISTEN).as_deref(),
        Some("127.0.0.1:9480")
    );

    let bare = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(
        bare.shown_value(&keys::DATABASE_URL).as_deref(),
        Some("not set")
    );
    assert_eq!(
        bare.shown_value(&keys::DATABASE_PASSWORD).as_deref(),
        Some("not set")
    );
    assert_eq!(bare.shown_value(&keys::DATABASE_MAX_CONNECTIONS), None);
}

/// One check for every source: GX and VE.Direct refuse a longest reconnect
/// delay below the first alike (VE.Direct once raised it silently).
#[test]
fn reconnect_max_below_min_is_refused_for_every_source() {
    let f = file(
        r#"
[[gx]]
host = "gx"
reconnect_min_ms = 500
reconnect_max_ms = 100
devices = [{ name = "s", class = "system" }]
[[vedirect]]
name = "bmv"
path = "/dev/ttyUSB0"
reconnect_min_ms = 500
reconnect_max_ms = 100
"#,
    );
    let found = problems(Config::load_with_env(Some(f.path()), env(&[])));
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "gx[0].reconnect_max_ms: 100 is below reconnect_min_ms (500)",
            "vedirect[0].reconnect_max_ms: 100 is below reconnect_min_ms (500)",
        ]
    );

    let found = problems(Config::load_with_env(
        None,
        env(&[(
            "VICTRON_POLLER_VEDIRECT",
            r#"[{ name = "bmv", address = "10.0.0.3:8888", reconnect_max_ms = 400 }]"#,
        )]),
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "vedirect[0].reconnect_max_ms");
    assert_eq!(
        found[0].message,
        "400 is below reconnect_min_ms (500) (from environment variable VICTRON_POLLER_VEDIRECT)"
    );

    // Equal delays are fine: a constant delay.
    let f = file(
        "[[vedirect]]\nname = \"bmv\"\npath = \"/dev/ttyUSB0\"\nreconnect_min_ms = 800\nreconnect_max_ms = 800\n",
    );
    let config = Config::load_with_env(Some(f.path()), env(&[])).unwrap();
    assert_eq!(config.vedirect[0].reconnect_max, Duration::from_millis(800));
}

#[test]
fn defaults_apply_without_a_file() {
    let config = Config::load_with_env(None, env(&[])).unwrap();
    assert!(config.database.is_none());
    assert_eq!(config.retention.window, Duration::from_secs(72 * 3600));
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.level, "info");
    assert_eq!(config.retention.run_every, Duration::from_secs(3600));
    assert_eq!(config.batch.max_readings, 200);
    // Without a database a batch may be two seconds old (the store is the
    // database: fewer commits), with one a second (the default).
    assert_eq!(config.batch.max_age, Duration::from_millis(2000));
    assert_eq!(config.health.stall_timeout, Duration::from_secs(120));
    assert!(!config.failover.enabled);

    let config = Config::load_with_env(
        None,
        env(&[
            ("VICTRON_POLLER_BATCH__MAX_READINGS", "50"),
            ("VICTRON_POLLER_BATCH__MAX_AGE_MS", "750"),
            ("VICTRON_POLLER_RETENTION__RUN_EVERY_MINUTES", "5"),
        ]),
    )
    .unwrap();
    assert_eq!(config.batch.max_readings, 50);
    assert_eq!(config.batch.max_age, Duration::from_millis(750));
    assert_eq!(config.retention.run_every, Duration::from_secs(300));

    // The state directory's variable belongs to the command line, not to a key.
    assert!(Config::load_with_env(None, env(&[(STATE_DIR_ENV, "/var/lib/x")])).is_ok());
}

#[test]
fn environment_overrides_the_file() {
    let f = file("[database]\nurl = \"postgres://a@h/db\"\nmax_connections = 2\n");
    let config = Config::load_with_env(
        Some(f.path()),
        env(&[
            ("VICTRON_POLLER_DATABASE__MAX_CONNECTIONS", "9"),
            ("VICTRON_POLLER_LOG__FORMAT", "json"),
        ]),
    )
    .unwrap();
    assert_eq!(config.database.unwrap().max_connections, 9);
    assert_eq!(config.log.format, LogFormat::Json);
}

#[test]
fn database_url_env_is_honoured_below_the_prefixed_variable() {
    let railway = env(&[(
        "DATABASE_URL",
        "postgresql://u:p%40ss@railway.internal:5432/railway",
    )]);
    let db = Config::load_with_env(None, railway.clone())
        .unwrap()
        .database
        .unwrap();
    assert_eq!(
        db.redacted_url(),
        "postgresql://u@railway.internal:5432/railway"
    );
    assert_eq!(
        db.password().unwrap().expose(),
        "p@ss",
        "percent-encoding is decoded"
    );

    let mut both = railway;
    both.insert(
        "VICTRON_POLLER_DATABASE__URL".into(),
        "postgres://x@other/db".into(),
    );
    let db = Config::load_with_env(None, both).unwrap().database.unwrap();
    assert_eq!(db.redacted_url(), "postgres://x@other/db");

    let f = file("[database]\nurl = \"postgres://file@filehost/db\"\n");
    let db = Config::load_with_env(
        Some(f.path()),
        env(&[("DATABASE_URL", "postgres://e@envhost/db")]),
    )
    .unwrap()
    .database
    .unwrap();
    assert_eq!(
        db.redacted_url(),
        "postgres://e@envhost/db",
        "environment beats the file"
    );
}

#[test]
fn password_key_overrides_the_url_password_and_never_shows() {
    let config = Config::load_with_env(
        None,
        env(&[
            ("DATABASE_URL", "postgres://u:urlsecret@h/db"),
            ("VICTRON_POLLER_DATABASE__PASSWORD", "keysecret"),
        ]),
    )
    .unwrap();
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("urlsecret") && !debug.contains("keysecret"),
        "{debug}"
    );
    assert_eq!(
        config.database.unwrap().password().unwrap().expose(),
        "keysecret"
    );
}

#[test]
fn every_problem_is_reported_at_once_naming_its_key() {
    let f = file(
        "[database]\nurl = \"postgres://u:hunter2@h/db\"\nmax_connections = 0\nconnect_timeout_ms = \"soon\"\n\
         [retention]\nwindow_hour = 72\n[log]\nformat = \"xml\"\n[extra]\nthing = 1\n",
    );
    let found = problems(Config::load_with_env(
        Some(f.path()),
        env(&[("VICTRON_POLLER_LOG__LEVL", "debug")]),
    ));
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    for expected in [
        "database.max_connections",
        "database.connect_timeout_ms",
        "retention.window_hour",
        "log.format",
        "extra.thing",
        "log.levl",
    ] {
        assert!(
            keys.contains(&expected),
            "{expected} not reported in {found:?}"
        );
    }
    assert_eq!(found.len(), 6, "{found:?}");
    let text = ConfigError::Invalid(found.clone()).to_string();
    assert!(!text.contains("hunter2"));
    assert!(
        text.contains("did you mean `retention.window_hours`?"),
        "{text}"
    );
    assert!(
        text.contains("from environment variable VICTRON_POLLER_LOG__LEVL"),
        "{text}"
    );
    assert!(text.contains("out of range"), "{text}");
}

#[test]
fn bad_urls_are_rejected_without_echoing_them() {
    for (url, expected) in [
        ("mysql://u:hunter2@h/db", "scheme `mysql` is not supported"),
        ("not a url hunter2", "not a valid URL"),
        ("postgres://u:hunter2@/db", "empty host"),
    ] {
        let found = problems(Config::load_with_env(None, env(&[("DATABASE_URL", url)])));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "database.url");
        assert!(
            found[0].message.contains(expected),
            "{url}: {}",
            found[0].message
        );
        assert!(!found[0].message.contains("hunter2"));
    }
}

#[test]
fn a_missing_or_malformed_file_is_a_file_error() {
    let missing = PathBuf::from("/nonexistent/victron-poller.toml");
    assert!(matches!(
        Config::load_with_env(Some(&missing), env(&[])),
        Err(ConfigError::File { .. })
    ));
    let f = file("[database\nurl = \"postgres://u:hunter2@h/db\"\n");
    match Config::load_with_env(Some(f.path()), env(&[])) {
        Err(e @ ConfigError::File { .. }) => assert!(!e.to_string().contains("hunter2"), "{e}"),
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn env_var_names_follow_the_documented_pattern() {
    assert_eq!(
        env_var_for("database.connect_timeout_ms"),
        "VICTRON_POLLER_DATABASE__CONNECT_TIMEOUT_MS"
    );
}

#[test]
fn gx_devices_are_validated_with_their_full_keys() {
    let f = file(
        "[[gx]]\nhost = \"10.0.0.5\"\n\
         [[gx.devices]]\nname = \"bank\"\nclass = \"battery\"\nunit_id = 226\n\
         [[gx.devices]]\nname = \"bank\"\nclass = \"battery\"\nunit_id = 300\n\
         [[gx.devices]]\nname = \"has space\"\nclass = \"inverter\"\n\
         [[gx.devices]]\nname = \"sys\"\nclass = \"system\"\nunitid = 100\n\
         [[gx]]\nport = 70000\n",
    );
    let found = problems(Config::load_with_env(Some(f.path()), env(&[])));
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    for expected in [
        "gx[0].devices[1].unit_id: 300 is out of range (0 to 247)",
        "gx[0].devices[2].name: \"has space\" is not a device name",
        "gx[0].devices[2].class: \"inverter\" is not a device class",
        "gx[0].devices[3].unitid: unknown key; did you mean `gx[].devices[].unit_id`?",
        "gx[1].port: 70000 is out of range",
        "gx[1].devices: no device configured",
        "gx[1].host: not set",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(expected)),
            "{expected} not in {text:#?}"
        );
    }
}

#[test]
fn gx_defaults_and_duplicate_names() {
    let f = file(
        "[[gx]]\nhost = \"gx.local\"\n[[gx.devices]]\nname = \"sys\"\nclass = \"system\"\n\
         [[gx]]\nhost = \"gx2.local\"\n[[gx.devices]]\nname = \"sys\"\nclass = \"vebus\"\nunit_id = 227\n",
    );
    let found = problems(Config::load_with_env(Some(f.path()), env(&[])));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "gx[1].devices[0].name");

    let f =
        file("[[gx]]\nhost = \"gx.local\"\n[[gx.devices]]\nname = \"sys\"\nclass = \"system\"\n");
    let config = Config::load_with_env(Some(f.path()), env(&[])).unwrap();
    let gx = &config.gx[0];
    assert_eq!((gx.port, gx.devices[0].unit_id), (502, 100));
    assert_eq!(gx.poll_interval, Duration::from_secs(5));
    assert_eq!(gx.request_timeout, Duration::from_secs(1));
}

#[test]
fn device_lists_come_from_the_environment_as_toml() {
    let config = Config::load_with_env(
        None,
        env(&[
            ("DATABASE_URL", "postgres://u@db/x"),
            (
                "VICTRON_POLLER_GX",
                r#"[{ host = "10.8.0.2", poll_interval_ms = 2000, devices = [
                    { name = "gx-system", class = "system" },
                    { name = "bank", class = "battery", unit_id = 226 } ] }]"#,
            ),
            (
                "VICTRON_POLLER_VEDIRECT",
                r#"[{ name = "bmv", address = "10.8.0.3:8888" }]"#,
            ),
            ("LOG_FORMAT", "json"),
            ("PORT", "8080"),
        ]),
    )
    .unwrap();
    assert_eq!(config.gx.len(), 1);
    assert_eq!(config.gx[0].host, "10.8.0.2");
    assert_eq!(config.gx[0].poll_interval, Duration::from_millis(2000));
    assert_eq!(config.gx[0].devices[1].unit_id, 226);
    assert_eq!(
        config.vedirect[0].port,
        VeDirectPort::Tcp("10.8.0.3:8888".into())
    );
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.health.listen, Some("0.0.0.0:8080".parse().unwrap()));
    assert!(config.database.is_some());

    // The prefixed variables win over the plain ones.
    let config = Config::load_with_env(
        None,
        env(&[
            ("LOG_FORMAT", "json"),
            ("VICTRON_POLLER_LOG__FORMAT", "text"),
            ("PORT", "8080"),
            ("VICTRON_POLLER_HEALTH__LISTEN", "127.0.0.1:9480"),
        ]),
    )
    .unwrap();
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(
        config.health.listen,
        Some("127.0.0.1:9480".parse().unwrap())
    );
}

#[test]
fn bad_environment_lists_name_the_variable_and_the_key() {
    let found = problems(Config::load_with_env(
        None,
        env(&[("VICTRON_POLLER_GX", "[{ host = ")]),
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "gx");
    assert!(found[0].message.contains("VICTRON_POLLER_GX"), "{found:?}");

    let found = problems(Config::load_with_env(
        None,
        env(&[(
            "VICTRON_POLLER_GX",
            r#"[{ host = "gx", devices = [{ name = "b", class = "batery", unit_id = 1 }] }]"#,
        )]),
    ));
    assert_eq!(found[0].key, "gx[0].devices[0].class", "{found:?}");

    let found = problems(Config::load_with_env(None, env(&[("PORT", "http")])));
    assert_eq!(found[0].key, "health.listen", "{found:?}");
    assert!(found[0].message.contains("0.0.0.0:http"), "{found:?}");
}

#[test]
fn stall_timeout_must_exceed_every_wait_and_failover_needs_a_database() {
    let f = file(
        r#"
[health]
stall_timeout_ms = 20000
[failover]
enabled = "yes"
[[gx]]
host = "gx"
reconnect_max_ms = 30000
devices = [{ name = "s", class = "system" }]
"#,
    );
    let found = problems(Config::load_with_env(Some(f.path()), env(&[])));
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["health.stall_timeout_ms", "failover.enabled"],
        "{found:?}"
    );
    assert!(found[0].message.contains("30000 ms"), "{found:?}");
    assert!(found[1].message.contains("true or false"), "{found:?}");

    let found = problems(Config::load_with_env(
        None,
        env(&[("VICTRON_POLLER_FAILOVER__ENABLED", "true")]),
    ));
    assert_eq!(found[0].key, "failover.enabled");
    assert!(found[0].message.contains("database.url"), "{found:?}");
}

#[test]
fn a_toml_error_keeps_its_reason_and_line_but_no_secret() {
    let message = |text: &str| match Config::load_with_env(Some(file(text).path()), env(&[])) {
        Err(ConfigError::File { reason, .. }) => reason,
        other => panic!("expected a file error, got {other:?}"),
    };
    assert_eq!(
        message("[log]\nlevel = \"info\"\nlevel = \"debug\"\n"),
        "TOML parse error at line 3, column 1: duplicate key `level`, in `level = \"debug\"`"
    );
    let unterminated = message("[database]\nurl = \"postgres://ranch:hunter2@db.example.net/x\n");
    assert!(
        unterminated.starts_with("TOML parse error at line 2"),
        "{unterminated}"
    );
    assert!(unterminated.contains("in `url = ***`"), "{unterminated}");
    let bare = message("[database]\npassword = hunter2\n");
    assert!(bare.contains("in `password = ***`"), "{bare}");
    for text in [unterminated, bare] {
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[test]
fn several_problems_are_one_a_line() {
    let error = Config::load_with_env(
        Some(file("[batch]\nmax_readings = 0\n[log]\nlevel = \"verbose\"\n").path()),
        env(&[]),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid configuration:\n  batch.max_readings: 0 is out of range (1 to 100000)\n  \
         log.level: \"verbose\" is not a level (off, error, warn, info, debug, trace) or \
         target=level, comma-separated"
    );
}

#[test]
fn each_source_has_a_site_named_like_a_device() {
    let config = Config::load_with_env(
        Some(
            file(
                "[site]\ninstallation_id = \"ranch-a\"\n\
                 [[gx]]\nhost = \"10.0.0.2\"\n[[gx.devices]]\nname = \"a-gx\"\nclass = \"system\"\n\
                 [[gx]]\nhost = \"10.0.0.3\"\nsite = \"ranch-b\"\n[[gx.devices]]\nname = \"b-gx\"\nclass = \"system\"\n\
                 [[vedirect]]\nname = \"bmv\"\naddress = \"10.0.0.4:8888\"\n",
            )
            .path(),
        ),
        env(&[]),
    )
    .unwrap();
    let sites: Vec<&str> = config.gx.iter().map(|g| g.site.as_str()).collect();
    assert_eq!(sites, ["ranch-a", "ranch-b"]);
    assert_eq!(config.vedirect[0].site, "ranch-a", "the default site");
    assert_eq!(config.device_sites()["b-gx"], "ranch-b");
    // Without a site: the empty site.
    let bare = Config::load_with_env(
        None,
        env(&[(
            "VICTRON_POLLER_VEDIRECT",
            r#"[{ name = "bmv", address = "h:1" }]"#,
        )]),
    )
    .unwrap();
    assert_eq!(bare.vedirect[0].site, "");
    let found = problems(Config::load_with_env(
        Some(
            file(
                "[site]\ninstallation_id = \"my ranch\"\n\
                 [[vedirect]]\nname = \"bmv\"\naddress = \"h:1\"\nsite = \"b/c\"\n",
            )
            .path(),
        ),
        env(&[]),
    ));
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["site.installation_id", "vedirect[0].site"],
        "{found:?}"
    );
    assert!(found[0].message.contains("is not a site name"), "{found:?}");
}

/// Failover through a pooler in transaction mode needs a direct connection
/// for its session locks; with one, the lock session uses it (and the
/// database password), everything else the pooler.
#[test]
fn failover_through_a_pooler_needs_a_direct_lock_connection() {
    let pooled = [
        (
            "DATABASE_URL",
            "postgres://victron@pooler.example:6432/ranch",
        ),
        ("VICTRON_POLLER_DATABASE__PASSWORD", "s3cret"),
        ("VICTRON_POLLER_DATABASE__TRANSACTION_POOLING", "true"),
        ("VICTRON_POLLER_FAILOVER__ENABLED", "true"),
    ];
    let refused = problems(Config::load_with_env(None, env(&pooled)));
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].key, "failover.database_url");
    assert!(
        refused[0].message.contains("session locks"),
        "{}",
        refused[0].message
    );

    let mut direct = pooled.to_vec();
    direct.push((
        "VICTRON_POLLER_FAILOVER__DATABASE_URL",
        "postgres://victron@db.example:5432/ranch",
    ));
    let config = Config::load_with_env(None, env(&direct)).unwrap();
    let database = config.database.unwrap();
    assert_eq!(
        database.redacted_url(),
        "postgres://victron@pooler.example:6432/ranch"
    );
    let locks = database.lock_session();
    assert_eq!(
        locks.redacted_url(),
        "postgres://victron@db.example:5432/ranch"
    );
    assert_eq!(locks.password().map(Secret::expose), Some("s3cret"));
    assert!(!locks.transaction_pooling);

    // Without pooling the locks share database.url; a lock URL without any
    // database is refused.
    let plain = Config::load_with_env(
        None,
        env(&[("DATABASE_URL", "postgres://victron@db.example:5432/ranch")]),
    )
    .unwrap();
    let database = plain.database.unwrap();
    assert_eq!(
        database.lock_session().redacted_url(),
        database.redacted_url()
    );
    let orphan = problems(Config::load_with_env(
        None,
        env(&[(
            "VICTRON_POLLER_FAILOVER__DATABASE_URL",
            "postgres://victron@db.example:5432/ranch",
        )]),
    ));
    assert!(
        orphan
            .iter()
            .any(|p| p.key == "failover.database_url" && p.message.contains("database.url is not")),
        "{orphan:?}"
    );
}

/// `store.sync`: "full" by default, "normal" when asked, anything else
/// refused naming the key and the choices.
#[test]
fn store_sync_is_full_normal_or_refused() {
    let bare = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(bare.store.sync, StoreSync::Full);
    let normal = Config::load_with_env(None, env(&[("VICTRON_POLLER_STORE__SYNC", "normal")]));
    assert_eq!(normal.unwrap().store.sync, StoreSync::Normal);
    let f = file("[store]\nsync = \"fast\"\n");
    let refused = problems(Config::load_with_env(Some(f.path()), env(&[])));
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].key, "store.sync");
    assert!(
        refused[0]
            .message
            .contains("\"fast\" is not a sync mode (use \"full\" or \"normal\")"),
        "{}",
        refused[0].message
    );
}

/// `site.timezone`: an IANA name; anything else refused naming the key.
#[test]
fn site_timezone_is_an_iana_name_or_refused() {
    let bare = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(bare.site.timezone, chrono_tz::UTC);
    let berlin = Config::load_with_env(
        None,
        env(&[("VICTRON_POLLER_SITE__TIMEZONE", "Europe/Berlin")]),
    );
    assert_eq!(berlin.unwrap().site.timezone, chrono_tz::Europe::Berlin);
    let f = file("[site]\ntimezone = \"Mars/Olympus\"\n");
    let refused = problems(Config::load_with_env(Some(f.path()), env(&[])));
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].key, "site.timezone");
    assert!(
        refused[0]
            .message
            .contains("\"Mars/Olympus\" is not an IANA time zone name"),
        "{}",
        refused[0].message
    );
}
