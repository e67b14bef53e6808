//! Running unattended, as real processes: systemd's notify socket and
//! watchdog, the /healthz and /metrics endpoint through device and database
//! outages, and two daemons sharing one GX through the device locks.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use victron_poller::simulator::gx::SimHandle;
#[cfg(feature = "servers")]
use victron_poller::store::StoreReader;

#[cfg(feature = "servers")]
use crate::helpers::database::{Flavour, Route, TcpProxy, TestDb, rows, server_address, url_via};
#[cfg(feature = "servers")]
use crate::helpers::http::parse_metrics;
use crate::helpers::http::{health_address, http_get};
#[cfg(feature = "servers")]
use crate::helpers::process::{Daemon, store_status, successful_polls, try_store_status};
use crate::helpers::process::{log_of, sigterm, spawn_daemon_with, wait_exit, wait_for};
#[cfg(feature = "servers")]
use crate::helpers::simulator::{SITE, site_device_names};
use crate::helpers::simulator::{simulator, site_devices_toml};

/// A notify-socket message and when it arrived (since the daemon started).
type Notification = (Duration, String);

fn config(dir: &Path, sim: &SimHandle, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[site]\ninstallation_id = \"ops\"\n{extra}\n\
             [[gx]]\nhost = \"127.0.0.1\"\nport = {}\npoll_interval_ms = 200\n\
             reconnect_min_ms = 50\nreconnect_max_ms = 500\n{}",
            sim.addr().port(),
            site_devices_toml()
        ),
    )
    .unwrap();
    path
}

async fn healthz(addr: SocketAddr) -> (u16, serde_json::Value) {
    let (code, body) = tokio::task::spawn_blocking(move || http_get(addr, "/healthz"))
        .await
        .unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (code, json)
}

#[cfg(feature = "servers")]
async fn wait_health(addr: SocketAddr, code: u16, limit: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for(&format!("/healthz {code}"), limit, async || {
        let (got, body) = healthz(addr).await;
        last = body;
        got == code
    })
    .await;
    last
}

#[cfg(feature = "servers")]
fn sample(samples: &[(String, serde_json::Value, f64)], name: &str, device: Option<&str>) -> f64 {
    samples
        .iter()
        .find(|(n, labels, _)| n == name && device.is_none_or(|d| labels["device"] == d))
        .unwrap_or_else(|| panic!("no sample {name} {device:?}"))
        .2
}

/// Each device's `standby` in a daemon's status document.
#[cfg(feature = "servers")]
fn standby_of(doc: &serde_json::Value) -> Option<Vec<bool>> {
    doc["devices"]
        .as_array()?
        .iter()
        .map(|d| d["standby"].as_bool())
        .collect()
}

/// Whether the daemon's last status document has all four devices on
/// standby (`true`) or all four polled here (`false`).
#[cfg(feature = "servers")]
async fn every_device_on_standby(state: &Path, standby: bool) -> bool {
    try_store_status(state)
        .await
        .and_then(|doc| standby_of(&doc))
        .is_some_and(|devices| devices == [standby; 4])
}

/// Whether a session on `db` last asked for a device lock. A daemon holding
/// every lock asks for none: this is a second daemon's lock keeper, which
/// asked and was refused. (A starting daemon counts every device as standby
/// before it has asked at all, so its status document alone does not tell.)
#[cfg(feature = "servers")]
async fn a_lock_was_asked_for(db: &TestDb) -> bool {
    db.scalar_i64(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND query LIKE '%pg_try_advisory_lock(%'
           AND query NOT LIKE '%pg_stat_activity%'",
    )
    .await
        > 0
}

/// How many WATCHDOG=1 pings came from READY=1 on; `None` before READY=1.
fn pings_after_ready(messages: &[(Duration, String)]) -> Option<usize> {
    let ready = messages
        .iter()
        .position(|(_, m)| m.lines().any(|l| l == "READY=1"))?;
    Some(
        messages[ready..]
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .count(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_gets_ready_and_a_watchdog_that_stops_when_a_poll_hangs() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    // A long request timeout: a GX that accepts requests and never answers
    // holds the poll, the hang the watchdog is for.
    let config = config(
        dir.path(),
        &sim,
        "[health]\nstall_timeout_ms = 2000\nlisten = \"127.0.0.1:0\"",
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "poll_interval_ms = 200",
        "poll_interval_ms = 200\nrequest_timeout_ms = 60000",
    );
    std::fs::write(&config, text).unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon_with(
        &config,
        &state,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let start = Instant::now();
    let mut messages: Vec<Notification> = Vec::new();
    // Receives until `until` (from the start), or sooner once `done` holds
    // for what has been received.
    let receive_until = async |messages: &mut Vec<Notification>,
                               until: Duration,
                               done: &dyn Fn(&[Notification]) -> bool| {
        let mut buf = vec![0u8; 4096];
        while start.elapsed() < until && !done(messages.as_slice()) {
            let left = until.saturating_sub(start.elapsed());
            if let Ok(Ok(n)) = tokio::time::timeout(left, socket.recv(&mut buf)).await {
                messages.push((
                    start.elapsed(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
    };
    let all_answering = |messages: &[(Duration, String)]| {
        messages
            .iter()
            .any(|(_, m)| m.contains("STATUS=healthy; 4 of 4 device(s) answering"))
    };
    let ready_and_fed = |messages: &[(Duration, String)]| {
        pings_after_ready(messages).is_some_and(|pings| pings >= 5) && all_answering(messages)
    };
    // (A busy machine may take seconds to start a debug build: the
    // deadline is for a daemon that never gets there.)
    receive_until(&mut messages, Duration::from_secs(30), &ready_and_fed).await;
    let pings = pings_after_ready(&messages).unwrap_or_else(|| panic!("no READY=1: {messages:?}"));
    assert!(pings >= 5, "fed every 200 ms: {messages:?}");
    assert!(all_answering(&messages), "{messages:?}");

    // Every reply now takes 8 s: the poll hangs in its first request, and
    // its reply comes 8 s after that request, not sooner.
    let hang_at = start.elapsed();
    sim.set_delay(Duration::from_secs(8));
    // Stall limit 2 s, checked every 200 ms: the daemon says it stops
    // feeding the watchdog, and feeds it no more while the poll hangs.
    wait_for("the hang noticed", Duration::from_secs(6), async || {
        log_of(&state).contains("A source is hung")
    })
    .await;
    // What it sent before it decided is read now (the decision precedes
    // the log line); any ping from here on is one too many.
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = socket.try_recv(&mut buf) {
        messages.push((
            start.elapsed(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        ));
    }
    let noticed = start.elapsed();
    // /healthz says the same (while the hang lasts: at once).
    let (code, body) = healthz(health_address(&state).await).await;
    assert_eq!(code, 503, "{body}");
    assert!(body["reasons"].to_string().contains("(hung)"), "{body}");
    let fed = |from: Duration, to: Duration, messages: &[(Duration, String)]| {
        messages
            .iter()
            .filter(|(t, m)| *t >= from && *t < to && m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    };
    // Until 7 s into the hang (its reply comes at 8 s at the earliest).
    receive_until(
        &mut messages,
        hang_at + Duration::from_secs(7),
        &|_: &[(Duration, String)]| false,
    )
    .await;
    assert!(
        noticed + Duration::from_secs(1) < hang_at + Duration::from_secs(7),
        "the hang was noticed only {:?} into it",
        noticed - hang_at
    );
    assert_eq!(
        fed(noticed, Duration::MAX, &messages),
        0,
        "the watchdog is starved while the poll hangs: {messages:?}"
    );
    // The device answers promptly again: polls complete, feeding resumes.
    sim.clear_faults();
    let cleared = start.elapsed();
    let recovered = |messages: &[(Duration, String)]| {
        fed(cleared, Duration::MAX, messages) > 0
            && log_of(&state).contains("Every source makes progress again")
    };
    receive_until(&mut messages, cleared + Duration::from_secs(30), &recovered).await;
    assert!(
        fed(cleared, Duration::MAX, &messages) > 0,
        "fed again after recovery: {messages:?}"
    );
    assert!(log_of(&state).contains("Every source makes progress again"));

    sigterm(&daemon);
    let stopping = |messages: &[(Duration, String)]| {
        messages
            .iter()
            .any(|(_, m)| m.lines().any(|l| l == "STOPPING=1"))
    };
    receive_until(
        &mut messages,
        start.elapsed() + Duration::from_secs(10),
        &stopping,
    )
    .await;
    assert!(stopping(&messages), "{messages:?}");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_follow_device_and_database_outages() {
    let sim = simulator().await;
    let db = TestDb::create(Flavour::Timescale).await;
    let proxy = TcpProxy::start(server_address(&db.url)).await;
    let url = url_via(&db.url, proxy.addr());
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim, "[health]\nlisten = \"127.0.0.1:0\"");
    let state = dir.path().join("state");
    let spawned = Instant::now();
    let mut daemon = spawn_daemon_with(&config, &state, &[("DATABASE_URL", &url)]);
    let addr = health_address(&state).await;
    let metrics = async || {
        let page = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
            .await
            .unwrap();
        assert_eq!(page.0, 200);
        parse_metrics(&page.1)
    };
    let readings_in_db = async || {
        let mut sum = 0;
        for table in SITE.map(|d| d.table) {
            sum += rows(&db, table).await;
        }
        sum
    };

    let body = wait_health(addr, 200, Duration::from_secs(20)).await;
    assert_eq!(body["health"], "healthy", "{body}");
    // Forward-first with the database answering: the local store empties
    // and stays empty; the database's retention job has run (at start).
    wait_for(
        "readings forwarded, the store empty, a retention run",
        Duration::from_secs(20),
        async || {
            // Migrated (the daemon answers before it has migrated).
            db.scalar_i64("SELECT (to_regclass('victron.polling_status') IS NOT NULL)::int::bigint")
                .await
                == 1
                && readings_in_db().await > 0
                && local_depth(&state).await == Some(0)
                && db
                    .scalar_i64(
                        "SELECT count(*) FROM victron.polling_status WHERE last_retention_run IS NOT NULL",
                    )
                    .await
                    == 1
        },
    )
    .await;
    let mut in_db = std::collections::BTreeMap::new();
    for device in SITE {
        let n = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM victron.{} WHERE device = '{}'",
                device.table, device.name
            ))
            .await;
        in_db.insert(device.name, n);
    }
    let forwarded_before = readings_in_db().await;
    let samples = metrics().await;
    let forwarded_after = readings_in_db().await;
    let since_spawn = spawned.elapsed().as_secs_f64();
    for device in site_device_names() {
        // Every row in PostgreSQL is a successful poll, and a poll every
        // 200 ms at most since the daemon started.
        let polls = sample(&samples, "victron_poller_polls_total", Some(device));
        assert!(
            in_db[device] as f64 <= polls && polls <= since_spawn / 0.2 + 2.0,
            "{device}: {polls} polls, {} rows, {since_spawn:.1} s",
            in_db[device]
        );
        // The simulator answers every poll.
        assert_eq!(
            sample(&samples, "victron_poller_poll_failures_total", Some(device)),
            0.0
        );
        assert_eq!(
            sample(
                &samples,
                "victron_poller_consecutive_failures",
                Some(device)
            ),
            0.0
        );
        assert_eq!(
            sample(&samples, "victron_poller_device_up", Some(device)),
            1.0
        );
        let age = sample(
            &samples,
            "victron_poller_last_success_age_seconds",
            Some(device),
        );
        assert!(
            (0.0..2.0).contains(&age),
            "{device}: {age} s, polled every 0.2 s"
        );
    }
    assert_eq!(sample(&samples, "victron_poller_health", None), 0.0);
    assert_eq!(sample(&samples, "victron_poller_database_up", None), 1.0);
    assert_eq!(sample(&samples, "victron_poller_store_readings", None), 0.0);
    assert_eq!(
        sample(&samples, "victron_poller_store_oldest_age_seconds", None),
        0.0
    );
    // What PostgreSQL held just before and just after the page was made.
    let forwarded = sample(&samples, "victron_poller_rows_forwarded_total", None);
    assert!(
        forwarded_before as f64 <= forwarded && forwarded <= forwarded_after as f64,
        "{forwarded} rows forwarded; {forwarded_before} then {forwarded_after} in PostgreSQL"
    );
    assert_eq!(
        sample(&samples, "victron_poller_forward_errors_total", None),
        0.0
    );
    // Two retention runs, both due at start and then hourly: the local
    // store's and the database's (recorded in PostgreSQL, waited for above).
    assert_eq!(
        sample(&samples, "victron_poller_retention_runs_total", None),
        2.0
    );
    assert_eq!(
        tokio::task::spawn_blocking(move || http_get(addr, "/nope"))
            .await
            .unwrap()
            .0,
        404
    );

    // Every device offline (exception 0x0A): down within a cycle or two.
    for device in SITE {
        sim.set_offline(device.unit_id, true);
    }
    let body = wait_health(addr, 503, Duration::from_secs(5)).await;
    assert_eq!(body["health"], "down", "{body}");
    assert!(body.to_string().contains("no device answers"), "{body}");
    sim.clear_faults();
    wait_health(addr, 200, Duration::from_secs(5)).await;

    // The database unreachable: degraded at first, down once it has been
    // unreachable for 10 s (`database_down_after`: three 200 ms poll
    // intervals, at least 10 s), and not before.
    proxy.cut();
    let cut = Instant::now();
    let mut degraded_at = None;
    let down_at = loop {
        let (code, body) = healthz(addr).await;
        let elapsed = cut.elapsed();
        let unreachable = body["reasons"]
            .to_string()
            .contains("the database has been unreachable");
        if code == 503 {
            assert!(unreachable, "{body}");
            break elapsed;
        }
        if unreachable && degraded_at.is_none() {
            assert_eq!(body["health"], "degraded", "{body}");
            degraded_at = Some(elapsed);
        }
        assert!(
            elapsed < Duration::from_secs(25),
            "not down 25 s after the cut: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let degraded_at = degraded_at.expect("degraded before down");
    eprintln!("cut → degraded {degraded_at:?}, → down {down_at:?}");
    assert!(
        down_at >= Duration::from_secs(10),
        "down {down_at:?} after the cut, before the database was unreachable for 10 s"
    );
    assert!(
        down_at - degraded_at >= Duration::from_secs(9),
        "degraded {degraded_at:?}, down {down_at:?} after the cut"
    );
    let samples = metrics().await;
    let since_cut = cut.elapsed().as_secs_f64();
    assert_eq!(sample(&samples, "victron_poller_database_up", None), 0.0);
    assert_eq!(sample(&samples, "victron_poller_health", None), 2.0);
    // What waits was polled since the cut, or in the batch open at the cut
    // (it closes after 1 s): the store was empty before. Four devices, a
    // poll every 200 ms.
    let waiting = sample(&samples, "victron_poller_store_readings", None);
    assert!(
        (1.0..=4.0 * ((since_cut + 1.0) / 0.2 + 2.0)).contains(&waiting),
        "{waiting} readings waiting {since_cut:.1} s after the cut"
    );
    let oldest = sample(&samples, "victron_poller_store_oldest_age_seconds", None);
    assert!(
        (since_cut - 5.0..=since_cut + 1.5).contains(&oldest),
        "the oldest waiting reading is {oldest} s old, {since_cut:.1} s after the cut"
    );
    assert!(sample(&samples, "victron_poller_forward_errors_total", None) > 0.0);
    proxy.restore();
    let body = wait_health(addr, 200, Duration::from_secs(60)).await;
    assert_eq!(body["health"], "healthy", "{body}");

    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
}

/// Readings waiting in the local store at `state`, read while the daemon
/// runs (`None` while it cannot be opened).
#[cfg(feature = "servers")]
async fn local_depth(state: &Path) -> Option<i64> {
    let store = StoreReader::open(state).await.ok()?;
    let depth = store.depth().await.ok().map(|b| b.readings);
    store.close().await;
    depth
}

/// Two daemons configured for the same GX and the same database: one polls,
/// the other stands by; killing the first hands the devices over within a
/// few poll intervals, and no reading is ever written twice.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_fail_over_without_duplicate_rows() {
    fail_over(Route::Direct).await;
}

/// The same with both daemons writing through PgBouncer (transaction
/// pooling) and holding their locks on a direct connection
/// (`failover.database_url`).
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_fail_over_through_pgbouncer_with_direct_locks() {
    fail_over(Route::PgBouncer).await;
}

#[cfg(feature = "servers")]
async fn fail_over(route: Route) {
    let sim = simulator().await;
    let db = TestDb::create(Flavour::Timescale).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim, "[failover]\nenabled = true");
    let state_a = dir.path().join("a");
    let state_b = dir.path().join("b");
    let mut env = route.daemon_env(&route.url(&db));
    if route == Route::PgBouncer {
        env.push(("VICTRON_POLLER_FAILOVER__DATABASE_URL", db.url.clone()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut first = spawn_daemon_with(&config, &state_a, &env);
    // Zero until the first daemon has created the tables.
    let battery_rows = async || -> i64 {
        let mut conn = db.connect().await;
        sqlx::query_scalar("SELECT count(*) FROM victron.battery_readings")
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0)
    };
    wait_for(
        "the first daemon's rows",
        Duration::from_secs(20),
        async || battery_rows().await > 5,
    )
    .await;
    let mut second = spawn_daemon_with(&config, &state_b, &env);
    wait_for(
        "the second daemon standing by",
        Duration::from_secs(10),
        async || every_device_on_standby(&state_b, true).await && a_lock_was_asked_for(&db).await,
    )
    .await;
    // Meanwhile the device rows stay the active daemon's: the standby writes
    // none (an empty status of its own would overwrite them). The active
    // daemon rewrites them at least every 5 s (its polls' times lag by up to
    // that, and a poll interval more).
    for _ in 0..20 {
        let unanswered = db
            .scalar_i64(
                "SELECT count(*) FROM victron.device_status
                 WHERE last_success IS NULL OR last_success < now() - interval '6 seconds'",
            )
            .await;
        assert_eq!(unanswered, 0, "device_status rows went stale or empty");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b_status = store_status(&state_b).await;
    for device in site_device_names() {
        assert_eq!(
            successful_polls(&b_status, device),
            0,
            "{device}: the standby polls nothing"
        );
    }

    // The active daemon dies without a goodbye; its session ends with it.
    let killed_at = chrono::Utc::now();
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    wait_for("the takeover", Duration::from_secs(15), async || {
        db.scalar_i64(&format!(
            "SELECT count(*) FROM victron.battery_readings WHERE \"timestamp\" > '{}'",
            killed_at.to_rfc3339()
        ))
        .await
            > 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigterm(&second);
    assert_eq!(wait_exit(&mut second, Duration::from_secs(20)), 0);

    // One series per device: consecutive readings are a poll interval apart
    // (two pollers would interleave at arbitrary offsets), and the handover
    // left a gap of a few poll intervals at most.
    let mut conn = db.connect().await;
    for (device, table) in [
        ("gx", "system_readings"),
        ("bank", "battery_readings"),
        ("mppt", "solar_readings"),
        ("multi", "inverter_readings"),
    ] {
        let (closest, widest, after_kill): (f64, f64, i64) = sqlx::query_as(&format!(
            "SELECT min(gap)::float8, max(gap)::float8,
                    (SELECT count(*) FROM victron.{table} WHERE device = $1 AND \"timestamp\" > $2)
             FROM (SELECT extract(epoch FROM \"timestamp\" - lag(\"timestamp\") OVER (ORDER BY \"timestamp\")) AS gap
                   FROM victron.{table} WHERE device = $1) g"
        ))
        .bind(device)
        .bind(killed_at)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(
            closest > 0.15,
            "{device}: two readings {closest} s apart: two pollers"
        );
        assert!(widest < 3.0, "{device}: the handover took {widest} s");
        assert!(after_kill > 5, "{device}: the second daemon took over");
    }
    assert!(
        log_of(&state_b).contains("Device lock taken"),
        "{}",
        log_of(&state_b)
    );
}

/// The ranch case: the active daemon's link to the database goes silent (no
/// error, no answer). The server ends its lock session after its idle
/// timeout, the standby takes the devices over; the partitioned daemon keeps
/// polling into its local store meanwhile, and when the link is back it
/// stands by and forwards what it kept.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_partitioned_daemon_hands_over_and_keeps_its_readings() {
    let sim = simulator().await;
    let db = TestDb::create(Flavour::Timescale).await;
    let proxy = TcpProxy::start(server_address(&db.url)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &sim,
        "[failover]\nenabled = true\n\
         [database]\nconnect_timeout_ms = 1000\nwrite_timeout_ms = 2000",
    );
    let (state_a, state_b) = (dir.path().join("a"), dir.path().join("b"));
    let url_a = url_via(&db.url, proxy.addr());
    let mut gateway = spawn_daemon_with(&config, &state_a, &[("DATABASE_URL", &url_a)]);
    wait_for(
        "the gateway's first poll",
        Duration::from_secs(20),
        async || {
            log_of(&state_a).contains("Database ready")
                && try_store_status(&state_a)
                    .await
                    .is_some_and(|doc| successful_polls(&doc, "bank") > 5)
        },
    )
    .await;
    let mut worker = spawn_daemon_with(&config, &state_b, &[("DATABASE_URL", &db.url)]);
    wait_for(
        "the worker standing by",
        Duration::from_secs(10),
        async || every_device_on_standby(&state_b, true).await && a_lock_was_asked_for(&db).await,
    )
    .await;

    proxy.freeze();
    let frozen_at = Instant::now();
    // idle_session_timeout: 3 rounds of 200 ms, at least 10 s.
    wait_for("the takeover", Duration::from_secs(30), async || {
        every_device_on_standby(&state_b, false).await
    })
    .await;
    let takeover = frozen_at.elapsed();
    eprintln!("takeover {takeover:?} after the link went silent");
    assert!(
        takeover < Duration::from_secs(20),
        "took over after {takeover:?}"
    );
    // The gateway went on polling into its local store. (Its status
    // document there is saved every 5 s while the verdict stays the same.)
    let polls = successful_polls(&store_status(&state_a).await, "bank");
    let mut later = serde_json::Value::Null;
    wait_for(
        "the partitioned gateway polling on",
        Duration::from_secs(12),
        async || {
            later = store_status(&state_a).await;
            successful_polls(&later, "bank") > polls
        },
    )
    .await;
    assert!(
        successful_polls(&later, "bank") > polls,
        "the partitioned gateway keeps polling"
    );
    assert!(later["spool_depth"].as_i64().unwrap() > 0, "{later}");

    proxy.restore();
    wait_for(
        "the gateway standing by, its readings forwarded",
        Duration::from_secs(90),
        async || {
            try_store_status(&state_a).await.is_some_and(|doc| {
                standby_of(&doc).is_some_and(|devices| devices == [true; 4])
                    && doc["spool_depth"] == 0
            })
        },
    )
    .await;
    // From now on one daemon polls: readings are a poll interval apart.
    // (The window the check below looks at: 1.5 s of readings, all of them
    // from after the handover.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closest: f64 = db
        .scalar_f64(
            "SELECT min(gap)::float8 FROM (SELECT extract(epoch FROM \"timestamp\" - lag(\"timestamp\") OVER (ORDER BY \"timestamp\")) AS gap
             FROM victron.battery_readings WHERE device = 'bank' AND \"timestamp\" > now() - interval '1.5 seconds') g",
        )
        .await;
    assert!(
        closest > 0.15,
        "two pollers after the handover: {closest} s"
    );
    sigterm(&gateway);
    sigterm(&worker);
    assert_eq!(wait_exit(&mut gateway, Duration::from_secs(20)), 0);
    assert_eq!(wait_exit(&mut worker, Duration::from_secs(20)), 0);
}

/// A cloud worker: no file, every setting from the environment as Railway
/// gives it (DATABASE_URL, PORT, LOG_FORMAT) plus the device list.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_from_environment_variables_alone() {
    let sim = simulator().await;
    let db = TestDb::create(Flavour::NoPreload).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let devices = format!(
        "[{{ host = \"127.0.0.1\", port = {}, poll_interval_ms = 200, devices = [\
         {{ name = \"gx\", class = \"system\" }}, {{ name = \"bank\", class = \"battery\", unit_id = 226 }}] }}]",
        sim.addr().port()
    );
    let stdout = dir.path().join("stdout");
    let mut worker = Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_victron-poller"))
            .arg("run")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db.url)
            .env("PORT", port.to_string())
            .env("LOG_FORMAT", "json")
            .env("VICTRON_POLLER_GX", devices)
            .env("VICTRON_POLLER_SITE__INSTALLATION_ID", "cloud")
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // PORT means every interface; loopback is one of them.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("the health endpoint", Duration::from_secs(20), async || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    wait_health(addr, 200, Duration::from_secs(20)).await;
    wait_for("rows from the environment's devices", Duration::from_secs(20), async || {
        let mut conn = db.connect().await;
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM victron.battery_readings WHERE device = 'bank' AND installation_id = 'cloud'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0)
            > 3
    })
    .await;
    assert!(
        dir.path().join("victron-poller-state").is_dir(),
        "the default state directory, under the working directory"
    );
    sigterm(&worker);
    assert_eq!(wait_exit(&mut worker, Duration::from_secs(20)), 0);
    let text = std::fs::read_to_string(&stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "Database ready."),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );
}
