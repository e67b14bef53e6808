//! The forwarder from the local store to PostgreSQL, driven directly and
//! in the daemon: rows the database refuses for good are parked, replayed
//! rows are stored once, and batches skip the local store while the
//! database answers.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use victron_poller::forward::{ForwardCounters, Forwarder};
use victron_poller::reading::{Reading, ReadingTable, SourceKind, Value};
use victron_poller::store::{LocalStore, StoreReader};

use crate::helpers::database::{
    Flavour, Route, TestDb, assert_every_poll_stored_once, daemon_pool, rows,
};
use crate::helpers::process::{sigterm, spawn_daemon, store_status, wait_exit, wait_for};
use crate::helpers::simulator::{simulator, write_config};

/// A row the database refuses for good is parked; the rows around it arrive.
#[tokio::test]
async fn a_permanent_row_error_is_set_aside() {
    parking(Route::Direct).await;
}

/// The same through PgBouncer: the UNNEST fallback and its bisection.
#[tokio::test]
async fn a_permanent_row_error_is_set_aside_through_pgbouncer() {
    parking(Route::PgBouncer).await;
}

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

/// Forward-first: while the database answers and the store holds nothing
/// to forward, batches go straight to PostgreSQL — the local store takes no
/// row (no write and no delete per reading: an SD card's wear) — and every
/// reading still arrives exactly once.
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
        let store = StoreReader::open(&state).await.ok()?;
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
    let store = StoreReader::open(&state).await.unwrap();
    assert_eq!(store.depth().await.unwrap().readings, 0);
    store.close().await;

    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    let doc = store_status(&state).await;
    let devices = [("bank", "battery_readings"), ("gx", "system_readings")];
    assert_every_poll_stored_once(&db, &doc, &devices, "exactly once").await;
}

/// The forwarder on `store`, writing to `db` by `route` as the daemon does.
async fn forwarder(store: &LocalStore, db: &TestDb, route: Route) -> Forwarder {
    Forwarder::new(
        store.clone(),
        daemon_pool(db, route).await,
        std::sync::Arc::new(ForwardCounters::default()),
        std::sync::Arc::new(tokio::sync::Notify::new()),
        std::sync::Arc::default(),
    )
}

/// Readings are idempotent on (site, device, timestamp), as the forwarder
/// writes them on every flavour, by COPY (direct) and by UNNEST (through
/// PgBouncer): the same local store replayed, and a second forwarder (a
/// restarted daemon) sending the same readings again, add no row; another
/// site's device of the same name is another series.
#[tokio::test]
async fn replayed_readings_are_stored_once_on_every_flavour() {
    let reading = |site: &str, second: i64, soc: f64| Reading {
        site: site.into(),
        device: "house".into(),
        table: ReadingTable::Battery,
        source: SourceKind::VeDirect,
        measured_at: Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap(),
        unconfirmed: None,
        values: vec![("soc", Value::Float(soc))],
    };
    let site = |site: &str| -> Vec<Reading> {
        (0..50)
            .map(|second| reading(site, second, f64::from(second as i32)))
            .collect()
    };
    for flavour in Flavour::ALL {
        for route in [Route::Direct, Route::PgBouncer] {
            let context = format!("{flavour:?} {route:?}");
            let db = TestDb::create(flavour).await;
            db.migrate().await;
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::open(dir.path()).await.unwrap();
            let first = forwarder(&store, &db, route).await;

            store.append(&site("ranch-a")).await.unwrap();
            assert_eq!(first.drain().await.unwrap(), 50, "{context}");
            assert_eq!(rows(&db, "battery_readings").await, 50, "{context}");
            // The same rows again, as a store replays what it could not
            // confirm: each is sent, none is stored twice.
            store.append(&site("ranch-a")).await.unwrap();
            assert_eq!(first.drain().await.unwrap(), 50, "{context}");
            assert_eq!(rows(&db, "battery_readings").await, 50, "{context}");
            // A second forwarder (a restarted daemon), half of them again
            // among new ones, in one batch.
            let second = forwarder(&store, &db, route).await;
            let mut mixed = site("ranch-a")[25..].to_vec();
            mixed.extend((50..60).map(|s| reading("ranch-a", s, 99.0)));
            store.append(&mixed).await.unwrap();
            assert_eq!(second.drain().await.unwrap(), 35, "{context}");
            assert_eq!(rows(&db, "battery_readings").await, 60, "{context}");
            // The first value stays: a replay rewrites nothing.
            assert_eq!(
                db.scalar_f64(
                    "SELECT soc FROM victron.battery_readings
                     WHERE installation_id = 'ranch-a' AND \"timestamp\" = to_timestamp(1800000030)"
                )
                .await,
                30.0,
                "{context}"
            );
            // Another site's device of the same name is another series.
            store.append(&site("ranch-b")).await.unwrap();
            assert_eq!(second.drain().await.unwrap(), 50, "{context}");
            assert_eq!(rows(&db, "battery_readings").await, 110, "{context}");
            assert_eq!(
                db.scalar_i64(
                    "SELECT count(*) FROM (SELECT DISTINCT installation_id, device, \"timestamp\"
                     FROM victron.battery_readings) d"
                )
                .await,
                110,
                "{context}"
            );
            assert_eq!(store.depth().await.unwrap().readings, 0, "{context}");
            assert_eq!(store.parked().await.unwrap(), 0, "{context}");
            store.close().await;
        }
    }
}
