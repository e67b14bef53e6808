//! The database away while the daemon polls: the server stopped, or the
//! link to it cut. Every reading produced reaches PostgreSQL exactly once,
//! and forwarding resumes within 2 s of the database's return.

use std::time::{Duration, Instant};

use victron_poller::store::LocalStore;

use crate::helpers::database::{
    DropDatabaseOnExit, Flavour, OutageServer, Route, TcpProxy, TestDb, rows, server_address,
    url_via,
};
use crate::helpers::process::{
    sigterm, spawn_daemon_routed, store_status, successful_polls, wait_exit, wait_for,
};
use crate::helpers::simulator::{simulator, site_device_tables, write_config};

/// How long the database is away. The daemon's retry delays grow from
/// 100 ms to their 1 s cap (`db::link::RETRY_MAX`) within the first 1.5 s of
/// an outage, and a batch sent straight to PostgreSQL is given up after 2 s
/// (`forward::DIRECT_WRITE_LIMIT`) and kept in the local store: 5 s is past
/// both, with several retries at the cap and several 1 s batches waiting in
/// the store. A longer outage repeats the same steady state (one retry a
/// second, one more batch a second), it proves nothing more.
const OUTAGE: Duration = Duration::from_secs(5);

/// Stop PostgreSQL for [`OUTAGE`] while polling fast, with one daemon
/// connected directly and one through PgBouncer (each its own database on
/// the same server): every reading produced reaches PostgreSQL exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_loses_nothing() {
    database_outage_loses_nothing(OUTAGE).await;
}

async fn database_outage_loses_nothing(length: Duration) {
    let server = OutageServer::from_env();
    let server_url = server.url.clone();
    let pooler_url = server.pooler_url.clone();
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
    // What the outage alone gives each device: a poll every 100 ms.
    let outage_polls = (length.as_millis() / 100) as i64;
    let mut before = Vec::new();
    for (_, _, url) in &daemons {
        before.push(count(url).await);
    }

    server.outage(length).await;

    // Polling went on meanwhile; the backlog drains once the server is back.
    for ((_, state, url), before) in daemons.iter().zip(before) {
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
                doc.is_some_and(|(d, _)| d["spool_depth"] == 0)
                    && count(url).await > before + outage_polls
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
        for (device, table) in site_device_tables() {
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
                polled > outage_polls,
                "{route:?} {device}: {polled} polls over a {length:?} outage and more at 100 ms"
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

/// The link to the database cut for [`OUTAGE`] (a TCP proxy), for one
/// daemon connected directly and one through PgBouncer at the same time:
/// forwarding resumes within 2 s of the link's return, and every reading
/// arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_resumes_within_two_seconds_of_the_database_coming_back() {
    forwarding_resumes_after(OUTAGE).await;
}

async fn forwarding_resumes_after(length: Duration) {
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
    tokio::time::sleep(length).await;
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

    // What the outage alone gives each device: a poll every 200 ms.
    let outage_polls = (length.as_millis() / 200) as i64;
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
                polled > outage_polls,
                "{route:?} {device}: {polled} polls over a {length:?} outage and more at 200 ms"
            );
        }
    }
}
