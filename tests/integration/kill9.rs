//! `kill -9` mid-run, then a restart: nothing that reached the local store
//! is lost, nothing is duplicated.

use std::time::Duration;

use victron_poller::store::LocalStore;

use crate::helpers::database::{Flavour, Route, TestDb, rows};
use crate::helpers::process::{
    sigterm, spawn_daemon, spawn_daemon_routed, try_store_status, wait_exit, wait_for,
};
use crate::helpers::simulator::{simulator, write_config};

/// `kill -9` mid-run, then a restart: nothing that reached the local store is
/// lost, nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_that_reached_the_store() {
    kill_9(Route::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_that_reached_the_store_through_pgbouncer() {
    kill_9(Route::PgBouncer).await;
}

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
