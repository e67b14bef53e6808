//! The daemon end to end, as real processes: the GX simulator (over a real
//! socket) → `victron-poller run` → local store → PostgreSQL on each server
//! flavour; embedded mode; SIGTERM; a database outage; `kill -9`; the
//! forwarder's parking of refused rows; retention on each flavour.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[cfg(feature = "servers")]
use chrono::{TimeZone, Utc};
use tokio::net::TcpListener;
use victron_poller::config::ModbusClass;
#[cfg(feature = "servers")]
use victron_poller::db::server::StorageMode;
#[cfg(feature = "servers")]
use victron_poller::reading::{Reading, ReadingTable, SourceKind, Value};
use victron_poller::simulator::gx::{self, GxSimOptions, SimHandle};
use victron_poller::store::LocalStore;

#[cfg(feature = "servers")]
use crate::helpers::{
    DropDatabaseOnExit, Flavour, Route, TcpProxy, TestDb, server_address, try_http_get, url_via,
};
use crate::helpers::{run_cli, texts};

pub async fn simulator() -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    gx::start(
        listener,
        GxSimOptions {
            animate: false,
            ..GxSimOptions::default()
        },
    )
    .unwrap()
}

pub fn write_config(dir: &Path, port: u16, poll_ms: u64) -> std::path::PathBuf {
    write_site_config(dir, "test-site", port, poll_ms)
}

/// The usual four devices of one GX, for `site`, in `dir`/config.toml.
pub fn write_site_config(dir: &Path, site: &str, port: u16, poll_ms: u64) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[site]\ninstallation_id = \"{site}\"\n[log]\nlevel = \"info\"\n\
             [[gx]]\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval_ms = {poll_ms}\n\
             request_timeout_ms = 500\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n\
             [[gx.devices]]\nname = \"gx\"\nclass = \"system\"\n\
             [[gx.devices]]\nname = \"bank\"\nclass = \"battery\"\nunit_id = 226\n\
             [[gx.devices]]\nname = \"mppt\"\nclass = \"solarcharger\"\nunit_id = 224\n\
             [[gx.devices]]\nname = \"multi\"\nclass = \"vebus\"\nunit_id = 227\n"
        ),
    )
    .unwrap();
    path
}

/// A daemon process, killed if a failing test leaves it running.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_daemon(config: &Path, state: &Path, database_url: Option<&str>) -> Daemon {
    let env: Vec<(&str, &str)> = database_url
        .map(|u| ("DATABASE_URL", u))
        .into_iter()
        .collect();
    spawn_daemon_with(config, state, &env)
}

/// Starts `run` with a clean environment plus `env`; its log goes to
/// `state` + `.log`. Like systemd, it names the process in `WATCHDOG_PID`
/// (which matters only when `env` sets `WATCHDOG_USEC`).
pub fn spawn_daemon_with(config: &Path, state: &Path, env: &[(&str, &str)]) -> Daemon {
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            "WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_victron-poller"),
            "--config",
            config.to_str().unwrap(),
            "run",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        // A file, not a pipe nobody reads: a full pipe would block the daemon.
        .stderr(std::fs::File::create(state.with_extension("log")).expect("daemon log file"));
    Daemon(command.spawn().expect("start the daemon"))
}

/// Every successful poll the status document `doc` counts for each
/// `(device, table)` is one row in PostgreSQL: none lost, none twice.
#[cfg(feature = "servers")]
async fn assert_every_poll_stored_once(
    db: &TestDb,
    doc: &serde_json::Value,
    devices: &[(&str, &str)],
    context: &str,
) {
    for (device, table) in devices {
        let in_db = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM victron.{table} WHERE device = '{device}'"
            ))
            .await;
        assert_eq!(in_db, successful_polls(doc, device), "{context} {device}");
    }
}

/// What a daemon started by [`spawn_daemon_with`] has logged so far.
pub fn log_of(state: &Path) -> String {
    std::fs::read_to_string(state.with_extension("log")).unwrap_or_default()
}

/// Starts `run` reaching the database at `url` (a URL by `route`).
#[cfg(feature = "servers")]
fn spawn_daemon_routed(config: &Path, state: &Path, route: Route, url: &str) -> Daemon {
    let env = route.daemon_env(url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_daemon_with(config, state, &env)
}

pub fn sigterm(daemon: &Daemon) {
    Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
}

pub fn wait_exit(daemon: &mut Daemon, limit: Duration) -> i32 {
    let child = &mut daemon.0;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < limit,
            "the daemon did not stop within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(feature = "servers")]
async fn rows(db: &TestDb, table: &str) -> i64 {
    db.scalar_i64(&format!("SELECT count(*) FROM victron.{table}"))
        .await
}

/// Readings that reached PostgreSQL for each device, and how many successful
/// polls the daemon reported for it (its final status document).
pub async fn store_status(state: &Path) -> serde_json::Value {
    let store = LocalStore::open(state).await.unwrap();
    let (doc, _) = store
        .load_status("daemon")
        .await
        .unwrap()
        .expect("status document");
    store.close().await;
    doc
}

/// The daemon's last status document, read (read-only) while it may be
/// running; `None` until it has saved one.
pub async fn try_store_status(state: &Path) -> Option<serde_json::Value> {
    let store = LocalStore::open_read_only(state).await.ok()?;
    let doc = store.load_status("daemon").await.ok().flatten();
    store.close().await;
    doc.map(|(doc, _)| doc)
}

pub fn successful_polls(doc: &serde_json::Value, device: &str) -> i64 {
    let d = doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device)
        .unwrap();
    d["polls"].as_i64().unwrap() - d["failures"].as_i64().unwrap()
}

#[cfg(feature = "servers")]
async fn end_to_end(flavour: Flavour, route: Route) {
    let sim = simulator().await;
    let db = TestDb::create(flavour).await;
    let url = route.url(&db);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 200);
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon_routed(&config, &state, route, &url);

    wait_for(
        "rows in all four tables",
        Duration::from_secs(30),
        async || {
            let mut all = true;
            for t in [
                "battery_readings",
                "solar_readings",
                "inverter_readings",
                "system_readings",
            ] {
                all &= db
                    .scalar_i64(&format!(
                        "SELECT (to_regclass('victron.{t}') IS NOT NULL)::int::bigint"
                    ))
                    .await
                    == 1
                    && rows(&db, t).await >= 3;
            }
            all
        },
    )
    .await;

    // The simulator's values arrived, labelled and stamped.
    let soc: f64 = sqlx::query_scalar(
        "SELECT soc FROM victron.battery_readings WHERE device = 'bank' ORDER BY \"timestamp\" DESC LIMIT 1",
    )
    .fetch_one(&mut db.connect().await)
    .await
    .unwrap();
    assert_eq!(Some(soc), sim.served(ModbusClass::Battery, "/Soc"));
    let pv: f64 = sqlx::query_scalar("SELECT pv_power FROM victron.solar_readings LIMIT 1")
        .fetch_one(&mut db.connect().await)
        .await
        .unwrap();
    assert_eq!(
        Some(pv),
        sim.served(ModbusClass::SolarCharger, "/Yield/Power")
    );
    assert_eq!(
        db.strings(
            "SELECT DISTINCT installation_id || '/' || source FROM victron.inverter_readings"
        )
        .await,
        vec!["test-site/modbus".to_string()]
    );
    let skew: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(created_at - \"timestamp\"))::float8 FROM victron.system_readings",
    )
    .fetch_one(&mut db.connect().await)
    .await
    .unwrap();
    assert!(
        (0.0..10.0).contains(&skew),
        "timestamp is the measurement time, before the insert: {skew}"
    );

    // The status row and view answer the operator.
    wait_for("a healthy status row", Duration::from_secs(10), async || {
        db.scalar_i64("SELECT count(*) FROM victron.polling_status_view WHERE is_healthy AND NOT is_stale AND devices_configured = 4").await == 1
    })
    .await;
    let expected_mode = match flavour {
        Flavour::Timescale => StorageMode::TimescaleDbApache,
        _ => StorageMode::Postgres,
    };
    assert_eq!(
        db.strings("SELECT storage_mode FROM victron.polling_status WHERE id = 1")
            .await,
        vec![expected_mode.as_str().to_string()]
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM victron.device_status WHERE firmware = 'v3.42'")
            .await,
        4
    );
    let status = run_cli(&["status"], &[("DATABASE_URL", &url)]);
    let (stdout, stderr) = texts(&status);
    assert_eq!(status.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("health       healthy"), "{stdout}");
    // A poller that has run for seconds collected about all it could in
    // those seconds, not a sliver of a full day's count.
    let json = run_cli(&["status", "--json"], &[("DATABASE_URL", &url)]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let collection = doc["poller"]["collection_health_pct"].as_f64().unwrap();
    assert!(
        (50.0..=120.0).contains(&collection),
        "collection {collection}% after seconds of polling"
    );

    if flavour == Flavour::Timescale {
        // While only their times and counts move, the rows are rewritten
        // every 5 s (25 polls of 200 ms), not every poll: over 3 s (15
        // polls) the site's row changes at most once.
        assert_eq!(
            db.scalar_i64("SELECT status_every_ms::bigint FROM victron.site_status")
                .await,
            5000
        );
        let mut versions = std::collections::BTreeSet::new();
        for _ in 0..30 {
            versions.extend(
                db.strings("SELECT updated_at::text FROM victron.site_status")
                    .await,
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            versions.len() <= 2,
            "rewritten {} times in 3 s",
            versions.len()
        );
        // A device going offline shows within a cycle or two (a change is
        // written at once, not at the end of the period), and recovers.
        sim.set_offline(226, true);
        wait_for("the battery reported down", Duration::from_millis(2500), async || {
            db.scalar_i64("SELECT count(*) FROM victron.device_status WHERE device = 'bank' AND consecutive_failures > 0 AND last_error_class = 'unavailable'").await == 1
        })
        .await;
        let degraded = run_cli(&["status"], &[("DATABASE_URL", &url)]);
        assert_eq!(degraded.status.code(), Some(1), "{}", texts(&degraded).0);
        sim.set_offline(226, false);
        wait_for("the battery back", Duration::from_millis(2500), async || {
            db.scalar_i64("SELECT count(*) FROM victron.device_status WHERE device = 'bank' AND consecutive_failures = 0").await == 1
        })
        .await;
    }

    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    // Stopped cleanly: `status` says so at once, not "healthy" until stale.
    let stopped = run_cli(&["status"], &[("DATABASE_URL", &url)]);
    let (stdout, stderr) = texts(&stopped);
    assert_eq!(stopped.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("because    the daemon stopped"), "{stdout}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM victron.polling_status_view WHERE NOT is_running AND NOT is_healthy AND poller_stopped_at IS NOT NULL").await,
        1
    );
    // Every successful poll is one row in PostgreSQL, and the store drained.
    let doc = store_status(&state).await;
    for device in doc["devices"].as_array().unwrap() {
        assert!(
            device["backoff_ms"].is_u64(),
            "durations are milliseconds: {device}"
        );
    }
    let context = format!("{flavour:?} {route:?}");
    let all = [
        ("gx", "system_readings"),
        ("bank", "battery_readings"),
        ("mppt", "solar_readings"),
        ("multi", "inverter_readings"),
    ];
    assert_every_poll_stored_once(&db, &doc, &all, &context).await;
    assert_eq!(doc["spool_depth"], 0, "{doc}");
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_timescaledb() {
    end_to_end(Flavour::Timescale, Route::Direct).await;
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_without_preloaded_timescaledb() {
    end_to_end(Flavour::NoPreload, Route::Direct).await;
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_plain_postgres() {
    end_to_end(Flavour::Plain, Route::Direct).await;
}

// Through PgBouncer in transaction pooling mode: migrations at start, binary
// COPY, status rows and `status`, on every flavour.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_pgbouncer_on_timescaledb() {
    end_to_end(Flavour::Timescale, Route::PgBouncer).await;
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_pgbouncer_without_preloaded_timescaledb() {
    end_to_end(Flavour::NoPreload, Route::PgBouncer).await;
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_pgbouncer_on_plain_postgres() {
    end_to_end(Flavour::Plain, Route::PgBouncer).await;
}

/// One daemon per state directory: a second one started on it refuses,
/// naming the directory, and the first goes on polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_directory_refuses() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    let mut first = spawn_daemon(&config, &state, None);
    wait_for(
        "the first daemon's readings",
        Duration::from_secs(20),
        async || {
            try_store_status(&state)
                .await
                .is_some_and(|doc| doc["rows_stored"].as_i64().unwrap_or(0) > 0)
        },
    )
    .await;
    let second = run_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    );
    let (stdout, stderr) = texts(&second);
    assert_ne!(second.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("another victron-poller daemon runs on the state directory")
            && stderr.contains(state.to_str().unwrap()),
        "{stderr}"
    );
    let before = store_status(&state).await["rows_stored"].as_i64().unwrap();
    wait_for(
        "the first daemon still storing",
        Duration::from_secs(20),
        async || {
            try_store_status(&state)
                .await
                .is_some_and(|doc| doc["rows_stored"].as_i64().unwrap_or(0) > before)
        },
    )
    .await;
    sigterm(&first);
    assert_eq!(wait_exit(&mut first, Duration::from_secs(20)), 0);
}

/// No database: the local store is the database, and `status` reads it.
/// SIGTERM mid-batch: every reading the sources produced is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_and_sigterm_during_a_batch() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon(&config, &state, None);
    // 100 ms polls, 2 s batches (no database): SIGTERM once 40 readings are stored and
    // a batch is open (the daemon's last status document counts more
    // readings polled than its store held).
    wait_for(
        "40 readings stored and a batch open",
        Duration::from_secs(20),
        async || {
            try_store_status(&state).await.is_some_and(|doc| {
                let stored = doc["spool_depth"].as_i64().unwrap_or(0);
                let polled: i64 = ["gx", "bank", "mppt", "multi"]
                    .iter()
                    .map(|d| successful_polls(&doc, d))
                    .sum();
                stored >= 40 && polled > stored
            })
        },
    )
    .await;
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(10)), 0);

    let doc = store_status(&state).await;
    let store = LocalStore::open(&state).await.unwrap();
    let stored = store.depth().await.unwrap().readings;
    let produced: i64 = ["gx", "bank", "mppt", "multi"]
        .iter()
        .map(|d| successful_polls(&doc, d))
        .sum();
    assert!(produced >= 40, "{produced} readings before the SIGTERM");
    assert_eq!(stored, produced, "every reading produced is in the store");
    let latest = store.latest("bank").await.unwrap().unwrap();
    assert_eq!(
        latest.reading.float("soc"),
        sim.served(ModbusClass::Battery, "/Soc")
    );
    store.close().await;

    // Stopped cleanly: down at once, and says why.
    let output = run_cli(&["status", "--state-dir", state.to_str().unwrap()], &[]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("health       down"), "{stdout}");
    assert!(stdout.contains("because    the daemon stopped"), "{stdout}");
    for device in ["gx", "bank", "mppt", "multi"] {
        assert!(stdout.contains(device), "{stdout}");
    }
    let json = run_cli(
        &["status", "--json", "--state-dir", state.to_str().unwrap()],
        &[],
    );
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["readings_stored"].as_i64(), Some(stored));
}

/// A row the database refuses for good is parked; the rows around it arrive.
#[cfg(feature = "servers")]
#[tokio::test]
async fn a_permanent_row_error_is_set_aside() {
    parking(Route::Direct).await;
}

/// The same through PgBouncer: the UNNEST fallback and its bisection.
#[cfg(feature = "servers")]
#[tokio::test]
async fn a_permanent_row_error_is_set_aside_through_pgbouncer() {
    parking(Route::PgBouncer).await;
}

/// The library's pool for `db` by `route`, as the daemon opens it.
#[cfg(feature = "servers")]
async fn daemon_pool(db: &TestDb, route: Route) -> sqlx::PgPool {
    let env = route.daemon_env(&route.url(db));
    let env = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let config = victron_poller::config::Config::load_with_env(None, env).unwrap();
    victron_poller::db::connect(config.database.as_ref().unwrap())
        .await
        .unwrap()
}

#[cfg(feature = "servers")]
async fn parking(route: Route) {
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).await.unwrap();
    let reading = |second: i64, product_id: i64| Reading {
        site: "ranch".into(),
        device: "bank".into(),
        table: ReadingTable::Battery,
        source: SourceKind::VeDirect,
        measured_at: Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap(),
        unconfirmed: None,
        values: vec![
            ("soc", Value::Float(50.0)),
            ("product_id", Value::Int(product_id)),
        ],
    };
    // product_id is an integer column: 2^40 cannot be stored.
    store
        .append(&[reading(0, 0xA389), reading(1, 1 << 40), reading(2, 0xA389)])
        .await
        .unwrap();
    let pool = daemon_pool(&db, route).await;
    let counters = std::sync::Arc::new(victron_poller::forward::ForwardCounters::default());
    let forwarder = victron_poller::forward::Forwarder::new(
        store.clone(),
        pool,
        std::sync::Arc::clone(&counters),
        std::sync::Arc::new(tokio::sync::Notify::new()),
        std::sync::Arc::default(),
    );
    assert_eq!(forwarder.drain().await.unwrap(), 3);
    assert_eq!(rows(&db, "battery_readings").await, 2);
    assert_eq!(store.parked().await.unwrap(), 1);
    assert_eq!(store.depth().await.unwrap().readings, 0);
    assert_eq!(
        counters
            .rows_parked
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Replaying forwarded rows inserts nothing twice.
    store
        .append(&[reading(0, 0xA389), reading(2, 0xA389)])
        .await
        .unwrap();
    assert_eq!(forwarder.drain().await.unwrap(), 2);
    assert_eq!(rows(&db, "battery_readings").await, 2);

    // Two bad rows among a hundred: each is found and parked, the 98 others arrive.
    let batch: Vec<Reading> = (10..110)
        .map(|second| {
            let bad = second == 27 || second == 90;
            reading(second, if bad { 1 << 40 } else { 0xA389 })
        })
        .collect();
    store.append(&batch).await.unwrap();
    assert_eq!(forwarder.drain().await.unwrap(), 100);
    assert_eq!(rows(&db, "battery_readings").await, 2 + 98);
    assert_eq!(store.parked().await.unwrap(), 1 + 2);
    assert_eq!(store.depth().await.unwrap().readings, 0);
}

/// Rows older than the window are gone after the job runs; on TimescaleDB
/// whole chunks are dropped.
#[cfg(feature = "servers")]
#[tokio::test]
async fn retention_on_every_flavour() {
    retention(Route::Direct).await;
}

#[cfg(feature = "servers")]
#[tokio::test]
async fn retention_on_every_flavour_through_pgbouncer() {
    retention(Route::PgBouncer).await;
}

#[cfg(feature = "servers")]
async fn retention(route: Route) {
    for flavour in Flavour::ALL {
        let db = TestDb::create(flavour).await;
        let report = db.migrate().await;
        for table in [
            "battery_readings",
            "solar_readings",
            "inverter_readings",
            "system_readings",
        ] {
            db.execute(&format!(
                "INSERT INTO victron.{table} (\"timestamp\", device)
                 SELECT now() - g * interval '1 hour', 'dev' FROM generate_series(0, 99) g"
            ))
            .await;
        }
        let chunks_before = if flavour == Flavour::Timescale {
            db.scalar_i64("SELECT count(*) FROM show_chunks('victron.battery_readings')")
                .await
        } else {
            0
        };
        let pool = daemon_pool(&db, route).await;
        let outcome = victron_poller::db::retention::run(
            &pool,
            report.storage_mode,
            Duration::from_secs(72 * 3600),
        )
        .await
        .unwrap();
        for table in [
            "battery_readings",
            "solar_readings",
            "inverter_readings",
            "system_readings",
        ] {
            let old = db
                .scalar_i64(&format!("SELECT count(*) FROM victron.{table} WHERE \"timestamp\" < now() - interval '73 hours'"))
                .await;
            assert_eq!(old, 0, "{flavour:?} {table}");
            let kept = rows(&db, table).await;
            assert!(
                (72..=74).contains(&kept),
                "{flavour:?} {table}: {kept} rows left of 100"
            );
        }
        match flavour {
            Flavour::Timescale => {
                let after = db
                    .scalar_i64("SELECT count(*) FROM show_chunks('victron.battery_readings')")
                    .await;
                assert!(outcome.chunks >= 4 * 26, "{outcome:?}");
                assert_eq!(chunks_before - after, (outcome.chunks / 4) as i64);
            }
            _ => assert!(outcome.rows >= 4 * 26, "{outcome:?}"),
        }
        victron_poller::db::status_rows::record_retention(
            &pool,
            &Ok(outcome),
            Duration::from_secs(72 * 3600),
        )
        .await
        .unwrap();
        assert_eq!(
            db.scalar_i64("SELECT count(*) FROM victron.polling_status_view WHERE last_retention_run IS NOT NULL").await,
            1
        );
    }
}

/// Stop PostgreSQL for 30 s while polling fast, with one daemon connected
/// directly and one through PgBouncer (each its own database on the same
/// server): every reading produced reaches PostgreSQL exactly once.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_loses_nothing() {
    let server = std::env::var("TEST_OUTAGE_SERVER")
        .expect("TEST_OUTAGE_SERVER: run the suite with scripts/test");
    let mut parts = server.splitn(3, ':');
    let (user, pg_ctl, data) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );
    let pg_ctl_run = |action: &str| {
        let status = Command::new("runuser")
            .args([
                "-u",
                &user,
                "--",
                &pg_ctl,
                "-D",
                &data,
                "-m",
                "fast",
                "-w",
                "-l",
                &format!("{data}/server.log"),
                action,
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {action}");
    };
    let server_url = std::env::var("TEST_DATABASE_URL_OUTAGE").expect("TEST_DATABASE_URL_OUTAGE");
    let pooler_url = std::env::var("TEST_PGBOUNCER_URL_OUTAGE").expect("TEST_PGBOUNCER_URL_OUTAGE");
    let base = |url: &str| url.rsplit_once('/').unwrap().0.to_string();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&server_url)
        .await
        .unwrap();
    let routes = [
        (Route::Direct, "outage_direct", base(&server_url)),
        (Route::PgBouncer, "outage_pooled", base(&pooler_url)),
    ];
    let mut drops = Vec::new();
    for (_, name, _) in &routes {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        // Dropped when the test ends (after the daemons below are gone).
        drops.push(DropDatabaseOnExit {
            server_url: server_url.clone(),
            name: (*name).into(),
        });
    }
    drop(admin);

    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let mut daemons = Vec::new();
    for (route, name, via) in &routes {
        let state = dir.path().join(name);
        let daemon = spawn_daemon_routed(&config, &state, *route, &format!("{via}/{name}"));
        // The test's own checks go straight to the server.
        daemons.push((daemon, state, format!("{}/{name}", base(&server_url))));
    }
    let count = async |url: &str| -> i64 {
        match <sqlx::PgConnection as sqlx::Connection>::connect(url).await {
            Ok(mut c) => sqlx::query_scalar("SELECT count(*) FROM victron.battery_readings")
                .fetch_one(&mut c)
                .await
                .unwrap_or(0),
            Err(_) => 0,
        }
    };
    for (_, _, url) in &daemons {
        wait_for("first rows", Duration::from_secs(20), async || {
            count(url).await > 5
        })
        .await;
    }

    pg_ctl_run("stop");
    tokio::time::sleep(Duration::from_secs(30)).await;
    pg_ctl_run("start");

    // Polling went on meanwhile; the backlog drains once the server is back.
    for (_, state, url) in &daemons {
        wait_for(
            "the backlog forwarded",
            Duration::from_secs(90),
            async || {
                let doc = LocalStore::open(state)
                    .await
                    .unwrap()
                    .load_status("daemon")
                    .await
                    .unwrap();
                doc.is_some_and(|(d, _)| d["spool_depth"] == 0) && count(url).await > 300
            },
        )
        .await;
    }
    for ((mut daemon, state, url), (route, _, _)) in daemons.into_iter().zip(routes) {
        sigterm(&daemon);
        assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
        let doc = store_status(&state).await;
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        for (device, table) in [
            ("gx", "system_readings"),
            ("bank", "battery_readings"),
            ("mppt", "solar_readings"),
            ("multi", "inverter_readings"),
        ] {
            let in_db: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM victron.{table} WHERE device = $1"
            ))
            .bind(device)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            let polled = successful_polls(&doc, device);
            assert_eq!(
                in_db, polled,
                "{route:?} {device}: every reading exactly once"
            );
            assert!(
                polled > 300,
                "{route:?} {device}: {polled} polls over 30+ s at 100 ms"
            );
            // No gap: consecutive readings are one poll apart (ticks may skip, rarely).
            let widest: f64 = sqlx::query_scalar(&format!(
                "SELECT coalesce(max(gap), 0)::float8 FROM (SELECT extract(epoch FROM \"timestamp\" - lag(\"timestamp\") OVER (ORDER BY \"timestamp\")) AS gap FROM victron.{table} WHERE device = $1) g"
            ))
            .bind(device)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert!(
                widest < 1.0,
                "{route:?} {device}: a {widest} s gap in the readings"
            );
        }
    }
}

/// The link to the database cut for 30 s (a TCP proxy), for one daemon
/// connected directly and one through PgBouncer at the same time:
/// forwarding resumes within 2 s of the link's return, and every reading
/// arrives exactly once.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_resumes_within_two_seconds_of_the_database_coming_back() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 200);
    let mut runs = Vec::new();
    for route in [Route::Direct, Route::PgBouncer] {
        let db = TestDb::create(Flavour::Timescale).await;
        db.migrate().await;
        let route_url = route.url(&db);
        let proxy = TcpProxy::start(server_address(&route_url)).await;
        let state = dir.path().join(format!("{route:?}"));
        let daemon =
            spawn_daemon_routed(&config, &state, route, &url_via(&route_url, proxy.addr()));
        runs.push((route, db, proxy, state, daemon));
    }
    for (_, db, ..) in &runs {
        wait_for("first rows", Duration::from_secs(30), async || {
            rows(db, "battery_readings").await > 5
        })
        .await;
    }

    for (_, _, proxy, ..) in &runs {
        proxy.cut();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut before = Vec::new();
    for (_, db, ..) in &runs {
        before.push(rows(db, "battery_readings").await);
    }
    for (_, _, proxy, ..) in &runs {
        proxy.restore();
    }
    let restored = Instant::now();
    let mut resumed_after: Vec<Option<Duration>> = vec![None; runs.len()];
    while resumed_after.iter().any(Option::is_none) {
        assert!(
            restored.elapsed() < Duration::from_secs(30),
            "no forwarded batch within 30 s: {resumed_after:?}"
        );
        for (i, (_, db, ..)) in runs.iter().enumerate() {
            if resumed_after[i].is_none() && rows(db, "battery_readings").await > before[i] {
                resumed_after[i] = Some(restored.elapsed());
            }
        }
    }
    for ((route, ..), resumed) in runs.iter().zip(&resumed_after) {
        let resumed = resumed.unwrap();
        eprintln!("{route:?}: restore → first forwarded batch: {resumed:?}");
        assert!(
            resumed <= Duration::from_secs(2),
            "{route:?}: forwarding resumed {resumed:?} after the database came back"
        );
    }

    for (route, db, _proxy, state, mut daemon) in runs {
        sigterm(&daemon);
        assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
        let doc = store_status(&state).await;
        assert_eq!(
            doc["spool_depth"], 0,
            "{route:?}: the backlog was forwarded"
        );
        for (device, table) in [("bank", "battery_readings"), ("gx", "system_readings")] {
            let in_db = db
                .scalar_i64(&format!(
                    "SELECT count(*) FROM victron.{table} WHERE device = '{device}'"
                ))
                .await;
            let distinct = db
                .scalar_i64(&format!(
                    "SELECT count(DISTINCT \"timestamp\") FROM victron.{table} WHERE device = '{device}'"
                ))
                .await;
            let polled = successful_polls(&doc, device);
            assert_eq!(
                in_db, polled,
                "{route:?} {device}: every reading exactly once"
            );
            assert_eq!(distinct, in_db, "{route:?} {device}: no duplicate");
            assert!(
                polled > 150,
                "{route:?} {device}: {polled} polls over 30+ s at 200 ms"
            );
        }
    }
}

/// Forward-first: while the database answers and the store holds nothing
/// to forward, batches go straight to PostgreSQL — the local store takes no
/// row (no write and no delete per reading: an SD card's wear) — and every
/// reading still arrives exactly once.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_skip_the_local_store_while_the_database_answers() {
    let sim = simulator().await;
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 200);
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon(&config, &state, Some(&db.url));
    wait_for("first rows", Duration::from_secs(30), async || {
        rows(&db, "battery_readings").await > 10
    })
    .await;
    // The status document as saved now, and one saved after 40 more polls.
    let saved = async || {
        let store = LocalStore::open_read_only(&state).await.ok()?;
        let doc = store.load_status("daemon").await.ok().flatten();
        store.close().await;
        doc
    };
    let (before, saved_before) = saved().await.expect("a status document");
    let rows_then = rows(&db, "battery_readings").await;
    wait_for(
        "40 more readings and a newer status document",
        Duration::from_secs(30),
        async || {
            rows(&db, "battery_readings").await > rows_then + 40
                && saved().await.is_some_and(|(_, at)| at > saved_before)
        },
    )
    .await;
    let (after, _) = saved().await.unwrap();
    assert_eq!(
        after["rows_stored"], before["rows_stored"],
        "readings went through the local store while the database answered"
    );
    let store = LocalStore::open_read_only(&state).await.unwrap();
    assert_eq!(store.depth().await.unwrap().readings, 0);
    store.close().await;

    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    let doc = store_status(&state).await;
    let devices = [("bank", "battery_readings"), ("gx", "system_readings")];
    assert_every_poll_stored_once(&db, &doc, &devices, "exactly once").await;
}

/// `kill -9` mid-run, then a restart: nothing that reached the local store is
/// lost, nothing is duplicated.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_that_reached_the_store() {
    kill_9(Route::Direct).await;
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_that_reached_the_store_through_pgbouncer() {
    kill_9(Route::PgBouncer).await;
}

#[cfg(feature = "servers")]
async fn kill_9(route: Route) {
    let sim = simulator().await;
    let db = TestDb::create(Flavour::Timescale).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    // First run without the database reachable: everything stays in the store.
    let mut first = spawn_daemon(
        &config,
        &state,
        Some("postgres://postgres@127.0.0.1:1/nowhere"),
    );
    wait_for(
        "20 readings in the local store",
        Duration::from_secs(20),
        async || {
            try_store_status(&state)
                .await
                .is_some_and(|doc| doc["spool_depth"].as_i64().unwrap_or(0) >= 20)
        },
    )
    .await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let store = LocalStore::open(&state).await.unwrap();
    let before = store.oldest(100_000).await.unwrap();
    store.close().await;
    assert!(
        before.len() >= 20,
        "{} readings stored before the kill",
        before.len()
    );

    let mut second = spawn_daemon_routed(&config, &state, route, &route.url(&db));
    wait_for(
        "the stored readings forwarded",
        Duration::from_secs(30),
        async || {
            db.scalar_i64(
                "SELECT (to_regclass('victron.battery_readings') IS NOT NULL)::int::bigint",
            )
            .await
                == 1
                && rows(&db, "battery_readings").await as usize
                    > before.iter().filter(|r| r.reading.device == "bank").count()
        },
    )
    .await;
    sigterm(&second);
    assert_eq!(wait_exit(&mut second, Duration::from_secs(20)), 0);
    let mut conn = db.connect().await;
    for stored in &before {
        let found: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM victron.{} WHERE device = $1 AND \"timestamp\" = $2",
            stored.reading.table.name()
        ))
        .bind(&stored.reading.device)
        .bind(stored.reading.measured_at)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            found, 1,
            "{} at {}",
            stored.reading.device, stored.reading.measured_at
        );
    }
}

/// Whoever reads the daemon's output may stop reading (a full pipe, a stuck
/// log collector): logging must not block polling or shutdown.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_the_logs_blocks_nothing() {
    let sim = simulator().await;
    let db = TestDb::create(Flavour::Timescale).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    // Every statement logged, a batch per reading (forty a second, a line of
    // about 3 KB each): the pipe is full within a second, the daemon's queue
    // of 1024 lines within half a minute. The health endpoint on a port picked
    // here: the log that would name it is not read.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("level = \"info\"", "level = \"debug,sqlx=debug\"");
    let text =
        format!("[health]\nlisten = \"127.0.0.1:{port}\"\n[batch]\nmax_readings = 1\n{text}");
    std::fs::write(&config, text).unwrap();
    let state = dir.path().join("state");
    // Killed if the test fails before its SIGTERM.
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_victron-poller"))
            .args(["--config", config.to_str().unwrap(), "run", "--state-dir"])
            .arg(&state)
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()) // never read
            .spawn()
            .unwrap(),
    );
    // Lines are dropped once the pipe and the daemon's queue are full.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(
        "log lines dropped (the unread pipe full)",
        Duration::from_secs(60),
        async || {
            let page = tokio::task::spawn_blocking(move || try_http_get(addr, "/metrics"))
                .await
                .unwrap();
            page.ok()
                .and_then(|(_, body)| {
                    body.lines()
                        .find_map(|l| l.strip_prefix("victron_poller_log_lines_dropped_total "))
                        .and_then(|v| v.parse::<f64>().ok())
                })
                .is_some_and(|dropped| dropped > 0.0)
        },
    )
    .await;
    // The 2 s the check below looks at, all of them after the pipe filled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Polling went on: readings reached PostgreSQL well after the pipe filled.
    let recent = db
        .scalar_i64(
            "SELECT count(*) FROM victron.battery_readings WHERE \"timestamp\" > now() - interval '2 seconds'",
        )
        .await;
    assert!(
        recent > 5,
        "polling stalled: {recent} readings in the last 2 s"
    );
    // What could not be written is counted.
    let metrics = tokio::task::spawn_blocking(move || crate::helpers::http_get(addr, "/metrics"))
        .await
        .unwrap()
        .1;
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("victron_poller_log_lines_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(dropped > 0.0, "{metrics}");
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
}

/// Two daemons of two sites with the same device names, one simulator, one
/// database, failover on at both: neither stands by for the other's devices
/// (the locks are per site), each site's series is complete (a row per
/// successful poll), each device name has one status row per site, each site
/// a site_status row; the singleton is their sum and names a stopped site.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_with_the_same_device_names_are_two_series() {
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let sim = simulator().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let sites = ["ranch-a", "ranch-b"];
    let mut daemons = Vec::new();
    for (dir, site) in dirs.iter().zip(sites) {
        let config = write_site_config(dir.path(), site, sim.addr().port(), 200);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.insert_str(0, "[failover]\nenabled = true\n");
        std::fs::write(&config, text).unwrap();
        let state = dir.path().join("state");
        daemons.push(spawn_daemon(&config, &state, Some(&db.url)));
    }
    wait_for("both sites' rows", Duration::from_secs(30), async || {
        let mut enough = true;
        for site in sites {
            enough &= db
                .scalar_i64(&format!(
                    "SELECT count(*) FROM victron.battery_readings WHERE installation_id = '{site}'"
                ))
                .await
                >= 10;
        }
        enough
    })
    .await;
    // A row per site, and the singleton as their sum.
    wait_for(
        "both sites healthy in the singleton",
        Duration::from_secs(20),
        async || {
            db.scalar_i64(
                "SELECT count(*) FROM victron.polling_status_view
             WHERE is_healthy AND sites = 2 AND sites_unhealthy = 0 AND devices_configured = 8",
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(
        db.strings(
            "SELECT installation_id FROM victron.site_status_view WHERE is_healthy ORDER BY 1"
        )
        .await,
        vec!["ranch-a".to_string(), "ranch-b".to_string()]
    );
    let status = run_cli(&["status"], &[("DATABASE_URL", &db.url)]);
    let (stdout, stderr) = texts(&status);
    assert_eq!(status.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("site         ranch-b"), "{stdout}");
    // One site's daemon stops: the singleton says so, naming the site.
    sigterm(&daemons[1]);
    assert_eq!(wait_exit(&mut daemons[1], Duration::from_secs(20)), 0);
    assert_eq!(
        db.strings("SELECT last_error FROM victron.polling_status WHERE NOT is_healthy")
            .await,
        vec!["ranch-b: the daemon stopped".to_string()]
    );
    let status = run_cli(&["status"], &[("DATABASE_URL", &db.url)]);
    let (stdout, stderr) = texts(&status);
    assert_eq!(status.status.code(), Some(1), "degraded: {stdout}{stderr}");
    assert!(
        stdout.contains("1 of 2 site(s) not healthy: ranch-b: the daemon stopped"),
        "{stdout}"
    );
    let narrowed = run_cli(
        &["status", "--site", "ranch-a"],
        &[("DATABASE_URL", &db.url)],
    );
    let (stdout, stderr) = texts(&narrowed);
    assert_eq!(narrowed.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("ranch-b"), "{stdout}");
    sigterm(&daemons[0]);
    assert_eq!(wait_exit(&mut daemons[0], Duration::from_secs(20)), 0);
    for (dir, site) in dirs.iter().zip(sites) {
        let doc = store_status(&dir.path().join("state")).await;
        for (device, table) in [
            ("gx", "system_readings"),
            ("bank", "battery_readings"),
            ("mppt", "solar_readings"),
            ("multi", "inverter_readings"),
        ] {
            let in_db = db
                .scalar_i64(&format!(
                    "SELECT count(*) FROM victron.{table} WHERE installation_id = '{site}' AND device = '{device}'"
                ))
                .await;
            assert_eq!(in_db, successful_polls(&doc, device), "{site} {device}");
        }
    }
    for device in ["gx", "bank", "mppt", "multi"] {
        assert_eq!(
            db.strings(&format!(
                "SELECT installation_id FROM victron.device_status WHERE device = '{device}' ORDER BY 1"
            ))
            .await,
            vec!["ranch-a".to_string(), "ranch-b".to_string()],
            "{device}"
        );
    }
}

/// One daemon polling two sites (two GX sections with their own `site`).
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_polls_two_sites() {
    let db = TestDb::create(Flavour::Plain).await;
    db.migrate().await;
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let port = sim.addr().port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\ninstallation_id = \"home\"\n\
             [[gx]]\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval_ms = 200\n\
             [[gx.devices]]\nname = \"home-bank\"\nclass = \"battery\"\nunit_id = 226\n\
             [[gx]]\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval_ms = 200\nsite = \"cabin\"\n\
             [[gx.devices]]\nname = \"cabin-bank\"\nclass = \"battery\"\nunit_id = 226\n"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon(&config, &state, Some(&db.url));
    wait_for("rows of both sites", Duration::from_secs(30), async || {
        db.scalar_i64(
            "SELECT count(DISTINCT installation_id || '/' || device) FROM victron.battery_readings
             WHERE \"timestamp\" > now() - interval '1 hour'",
        )
        .await
            == 2
    })
    .await;
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    assert_eq!(
        db.strings("SELECT DISTINCT installation_id || '/' || device FROM victron.battery_readings ORDER BY 1")
            .await,
        vec!["cabin/cabin-bank".to_string(), "home/home-bank".to_string()]
    );
    assert_eq!(
        db.strings("SELECT installation_id || '/' || device FROM victron.device_status ORDER BY 1")
            .await,
        vec!["cabin/cabin-bank".to_string(), "home/home-bank".to_string()]
    );
}

/// The most sessions the daemons of `db` held in 3 s of sampling.
#[cfg(feature = "servers")]
async fn most_sessions(db: &TestDb) -> i64 {
    let mut most = 0;
    for _ in 0..30 {
        let n = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'victron-poller' AND datname = '{}'",
                db.name
            ))
            .await;
        most = most.max(n);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    most
}

/// An idle daemon holds one connection, two with failover (its lock
/// session): what lets many sites share one server.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_holds_one_connection_two_with_failover() {
    for (failover, budget) in [(false, 1), (true, 2)] {
        let db = TestDb::create(Flavour::Timescale).await;
        db.migrate().await;
        let sim = simulator().await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), sim.addr().port(), 200);
        if failover {
            let mut text = std::fs::read_to_string(&config).unwrap();
            text.insert_str(0, "[failover]\nenabled = true\n");
            std::fs::write(&config, text).unwrap();
        }
        let state = dir.path().join("state");
        let mut daemon = spawn_daemon(&config, &state, Some(&db.url));
        wait_for("rows and a retention run", Duration::from_secs(30), async || {
            rows(&db, "battery_readings").await > 10
                && db
                    .scalar_i64(
                        "SELECT count(*) FROM victron.polling_status WHERE last_retention_run IS NOT NULL",
                    )
                    .await
                    == 1
        })
        .await;
        let most = most_sessions(&db).await;
        assert!(
            (1..=budget).contains(&most),
            "failover {failover}: {most} sessions (budget {budget})"
        );
        sigterm(&daemon);
        assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    }
}
