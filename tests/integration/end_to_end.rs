//! The daemon end to end, as real processes: the GX simulator (over a real
//! socket) → `victron-poller run` → PostgreSQL on each server flavour,
//! directly and through PgBouncer; what the operator reads meanwhile; the
//! connections an idle daemon holds; a log reader that stops reading.

use std::process::{Command, Stdio};
use std::time::Duration;

use victron_poller::config::ModbusClass;
use victron_poller::db::server::StorageMode;

use crate::helpers::database::{Flavour, Route, TestDb, assert_every_poll_stored_once, rows};
use crate::helpers::http::{http_get, try_http_get};
use crate::helpers::process::{
    Daemon, run_cli, sigterm, spawn_daemon, spawn_daemon_routed, store_status, texts, wait_exit,
    wait_for,
};
use crate::helpers::simulator::{BANK, SITE, simulator, site_device_tables, write_config};

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
            for t in SITE.map(|d| d.table) {
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
        sim.set_offline(BANK.unit_id, true);
        wait_for("the battery reported down", Duration::from_millis(2500), async || {
            db.scalar_i64("SELECT count(*) FROM victron.device_status WHERE device = 'bank' AND consecutive_failures > 0 AND last_error_class = 'unavailable'").await == 1
        })
        .await;
        let degraded = run_cli(&["status"], &[("DATABASE_URL", &url)]);
        assert_eq!(degraded.status.code(), Some(1), "{}", texts(&degraded).0);
        sim.set_offline(BANK.unit_id, false);
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
    assert_every_poll_stored_once(&db, &doc, &site_device_tables(), &context).await;
    assert_eq!(doc["spool_depth"], 0, "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_timescaledb() {
    end_to_end(Flavour::Timescale, Route::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_without_preloaded_timescaledb() {
    end_to_end(Flavour::NoPreload, Route::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_plain_postgres() {
    end_to_end(Flavour::Plain, Route::Direct).await;
}

// Through PgBouncer in transaction pooling mode: migrations at start, binary
// COPY, status rows and `status`, on every flavour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_pgbouncer_on_timescaledb() {
    end_to_end(Flavour::Timescale, Route::PgBouncer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_pgbouncer_without_preloaded_timescaledb() {
    end_to_end(Flavour::NoPreload, Route::PgBouncer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_pgbouncer_on_plain_postgres() {
    end_to_end(Flavour::Plain, Route::PgBouncer).await;
}

/// Whoever reads the daemon's output may stop reading (a full pipe, a stuck
/// log collector): logging must not block polling or shutdown.
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
    let metrics = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
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

/// The most sessions the daemons of `db` held in 3 s of sampling.
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
