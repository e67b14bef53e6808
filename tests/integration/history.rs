//! Rollups and daily energy on the three server flavours: raw rows of a
//! synthetic day inserted with SQL, `victron-poller history rebuild` run as
//! a process, the results checked against arithmetic (PV 1 kW for 12 hours
//! is 12 kWh) and the calendar (a DST day has 23 or 25 hours).

#[cfg(feature = "servers")]
use crate::helpers::database::{Flavour, TestDb};
use crate::helpers::process::{run_cli, texts};

/// Inserts a synthetic day of site `ranch` in `tz`: PV 1 kW from 06:00 to
/// 18:00 local (solar charger `mppt`), 500 W of loads all day, the battery
/// (`bank`) taking the difference; a reading every 10 s, none during the
/// `hole_minutes` from local noon.
#[cfg(feature = "servers")]
async fn insert_synthetic_day(db: &TestDb, day: &str, tz: &str, hole_minutes: i64) {
    let series = format!(
        "WITH t AS (SELECT ts FROM generate_series(('{day}'::date)::timestamp AT TIME ZONE '{tz}',
                                                ('{day}'::date + 1)::timestamp AT TIME ZONE '{tz}' - interval '10 seconds',
                                                interval '10 seconds') ts
                    WHERE NOT ((ts AT TIME ZONE '{tz}')::time >= '12:00'
                               AND (ts AT TIME ZONE '{tz}')::time < time '12:00' + make_interval(mins => {hole_minutes}))),
              p AS (SELECT ts, CASE WHEN (ts AT TIME ZONE '{tz}')::time >= '06:00'
                                     AND (ts AT TIME ZONE '{tz}')::time < '18:00' THEN 1000.0 ELSE 0.0 END AS pv FROM t)"
    );
    db.execute(&format!(
        "{series} INSERT INTO victron.solar_readings (installation_id, device, \"timestamp\", pv_power)
         SELECT 'ranch', 'mppt', ts, pv FROM p"
    ))
    .await;
    db.execute(&format!(
        "{series} INSERT INTO victron.battery_readings (installation_id, device, \"timestamp\", power, soc)
         SELECT 'ranch', 'bank', ts, pv - 500.0, CASE WHEN pv > 0 THEN 90.0 ELSE 60.0 END FROM p"
    ))
    .await;
}

/// Runs `history rebuild` for `day` in `tz`; asserts it succeeded.
#[cfg(feature = "servers")]
fn rebuild(db: &TestDb, day: &str, tz: &str) {
    let out = run_cli(
        &[
            "history", "rebuild", "--site", "ranch", "--from", day, "--to", day,
        ],
        &[
            ("DATABASE_URL", &db.url),
            ("VICTRON_POLLER_SITE__TIMEZONE", tz),
        ],
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("rebuilt"), "{stdout}");
}

#[cfg(feature = "servers")]
async fn energy(db: &TestDb, column: &str, day: &str) -> f64 {
    db.scalar_f64(&format!(
        "SELECT {column}::float8 FROM victron.energy_daily WHERE installation_id = 'ranch' AND day = '{day}'"
    ))
    .await
}

fn within(value: f64, want: f64, share: f64) -> bool {
    (value - want).abs() <= want * share
}

#[cfg(feature = "servers")]
async fn a_synthetic_day_rebuilds_to_its_energies(flavour: Flavour) {
    let db = TestDb::create(flavour).await;
    db.migrate().await;
    let day = "2026-06-01";
    insert_synthetic_day(&db, day, "UTC", 0).await;
    rebuild(&db, day, "UTC");
    for (column, want) in [
        ("solar_kwh", 12.0),
        ("consumption_kwh", 12.0),
        ("battery_charge_kwh", 6.0),
        ("battery_discharge_kwh", 6.0),
    ] {
        let got = energy(&db, column, day).await;
        assert!(within(got, want, 0.005), "{flavour:?} {column}: {got}");
    }
    // The day's last reading closes no interval: 10 s of 24 h uncovered.
    let coverage = energy(&db, "coverage_pct", day).await;
    assert!(coverage > 99.9 && coverage <= 100.0, "{coverage}");
    assert_eq!(energy(&db, "min_soc", day).await, 60.0);
    assert_eq!(energy(&db, "max_soc", day).await, 90.0);
    // Rollups: 288 five-minute buckets of the charger's PV power, 24 hours,
    // one day whose mean is half a kilowatt and whose max is 1 kW.
    for (table, buckets) in [("history_5m", 288), ("history_1h", 24), ("history_1d", 1)] {
        let n = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM victron.{table} WHERE device = 'mppt' AND metric = 'pv_power'"
            ))
            .await;
        assert_eq!(n, buckets, "{flavour:?} {table}");
    }
    let (mean, max) = (
        db.scalar_f64(
            "SELECT mean FROM victron.history_1d WHERE device = 'mppt' AND metric = 'pv_power'",
        )
        .await,
        db.scalar_f64(
            "SELECT max FROM victron.history_1d WHERE device = 'mppt' AND metric = 'pv_power'",
        )
        .await,
    );
    assert!(within(mean, 500.0, 0.001) && max == 1000.0, "{mean} {max}");

    // Again: the same rows, replaced, not added.
    let before = db
        .scalar_i64("SELECT count(*) FROM victron.history_5m")
        .await;
    rebuild(&db, day, "UTC");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM victron.history_5m")
            .await,
        before
    );
    assert!(within(energy(&db, "solar_kwh", day).await, 12.0, 0.005));

    // `energy` shows the day.
    let out = run_cli(
        &["energy", "--days", "400", "--site", "ranch", "--json"],
        &[("DATABASE_URL", &db.url)],
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let days: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(days[0]["day"], day, "{stdout}");
    assert!(
        within(days[0]["solar_kwh"].as_f64().unwrap(), 12.0, 0.005),
        "{stdout}"
    );
    let table = run_cli(&["energy", "--days", "400"], &[("DATABASE_URL", &db.url)]);
    let (text, _) = texts(&table);
    assert!(
        text.contains("2026-06-01") && text.contains("12.00"),
        "{text}"
    );
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synthetic_day_rebuilds_to_its_energies_on_timescaledb() {
    a_synthetic_day_rebuilds_to_its_energies(Flavour::Timescale).await;
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synthetic_day_rebuilds_to_its_energies_on_postgres_17() {
    a_synthetic_day_rebuilds_to_its_energies(Flavour::NoPreload).await;
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synthetic_day_rebuilds_to_its_energies_on_postgres_15() {
    a_synthetic_day_rebuilds_to_its_energies(Flavour::Plain).await;
}

/// A 30-minute hole is not bridged: 97.9 % coverage, half an hour of PV
/// less.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_is_not_bridged() {
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let day = "2026-06-02";
    insert_synthetic_day(&db, day, "UTC", 30).await;
    rebuild(&db, day, "UTC");
    let coverage = energy(&db, "coverage_pct", day).await;
    assert!((coverage - 97.9).abs() < 0.05, "{coverage}");
    let solar = energy(&db, "solar_kwh", day).await;
    assert!(within(solar, 11.5, 0.005), "{solar}");
}

/// Local days of a DST change: 23 hourly buckets in Berlin in spring, 25 in
/// Denver in autumn, and the day's energy is the day's.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dst_days_have_their_hours() {
    for (tz, day, hours) in [
        ("Europe/Berlin", "2026-03-29", 23),
        ("America/Denver", "2026-11-01", 25),
    ] {
        let db = TestDb::create(Flavour::NoPreload).await;
        db.migrate().await;
        insert_synthetic_day(&db, day, tz, 0).await;
        rebuild(&db, day, tz);
        let n = db
            .scalar_i64(
                "SELECT count(*) FROM victron.history_1h WHERE device = 'mppt' AND metric = 'pv_power'",
            )
            .await;
        assert_eq!(n, hours, "{tz}");
        let start = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM victron.history_1d WHERE device = 'mppt'
                 AND bucket = ('{day}'::date)::timestamp AT TIME ZONE '{tz}'"
            ))
            .await;
        assert!(start > 0, "{tz}: the day's bucket starts at local midnight");
        let solar = energy(&db, "solar_kwh", day).await;
        assert!(within(solar, 12.0, 0.005), "{tz}: {solar}");
    }
}

/// Without a database, `energy` integrates the local store's readings: a
/// synthetic day written to a real store, read by the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energy_answers_from_the_local_store() {
    use chrono::{Duration, TimeZone, Utc};
    use victron_poller::reading::{Reading, ReadingTable, SourceKind, Value};
    use victron_poller::store::{LocalStore, StoreReader};

    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).await.unwrap();
    let start = Utc.with_ymd_and_hms(2026, 6, 3, 0, 0, 0).unwrap();
    let reading = |device: &str, table, at, values: Vec<(&'static str, f64)>| Reading {
        site: "ranch".into(),
        device: device.into(),
        table,
        source: SourceKind::VeDirect,
        measured_at: at,
        unconfirmed: None,
        values: values
            .into_iter()
            .map(|(c, v)| (c, Value::Float(v)))
            .collect(),
    };
    let mut batch = Vec::new();
    for step in 0..8640 {
        let at = start + Duration::seconds(10 * step);
        let hour = step / 360;
        let pv = if (6..18).contains(&hour) { 1000.0 } else { 0.0 };
        batch.push(reading(
            "mppt",
            ReadingTable::Solar,
            at,
            vec![("pv_power", pv)],
        ));
        batch.push(reading(
            "bank",
            ReadingTable::Battery,
            at,
            vec![("power", pv - 500.0), ("soc", 80.0)],
        ));
        if batch.len() >= 2000 {
            store.append(&batch).await.unwrap();
            batch.clear();
        }
    }
    store.append(&batch).await.unwrap();
    store.close().await;

    let state = dir.path().to_str().unwrap();
    let out = run_cli(
        &["energy", "--days", "400", "--json", "--state-dir", state],
        &[],
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let days: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let day = days
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["day"] == "2026-06-03")
        .expect(&stdout);
    for (column, want) in [
        ("solar_kwh", 12.0),
        ("consumption_kwh", 12.0),
        ("battery_charge_kwh", 6.0),
    ] {
        let got = day[column].as_f64().unwrap();
        assert!(within(got, want, 0.005), "{column}: {got}");
    }

    // `history rebuild` without a database writes the store's own rollups.
    let out = run_cli(
        &[
            "history",
            "rebuild",
            "--from",
            "2026-06-03",
            "--to",
            "2026-06-03",
            "--state-dir",
            state,
        ],
        &[],
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("1 whole day"), "{stdout}");
    let store = StoreReader::open(dir.path()).await.unwrap();
    let kept = victron_poller::history::sqlite::StoredRollups(store.clone())
        .energy_days()
        .await
        .unwrap();
    let hours = victron_poller::history::sqlite::StoredRollups(store.clone())
        .rollups(
            victron_poller::history::Resolution::Hour,
            start,
            start + Duration::days(1),
        )
        .await
        .unwrap();
    store.close().await;
    let day = kept
        .iter()
        .find(|d| d.energy.day.to_string() == "2026-06-03")
        .unwrap_or_else(|| panic!("{kept:?}"));
    let solar = day.energy.solar_kwh.unwrap();
    assert!(within(solar, 12.0, 0.005), "{solar}");
    let pv_hours: Vec<_> = hours
        .iter()
        .filter(|r| r.device == "mppt" && r.metric == "pv_power")
        .collect();
    assert_eq!(pv_hours.len(), 24);
    // 06:00–07:00 local: PV at 1 kW all hour, 360 readings.
    let seventh = pv_hours[6];
    assert_eq!((seventh.samples, seventh.mean), (360, 1000.0));
}

/// The daemon rolls up completed days by itself, before raw retention can
/// take their rows: a day two days back, inserted raw, has its energy once
/// the daemon has run its first retention round.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rolls_up_completed_days() {
    use std::time::Duration;

    use crate::helpers::process::{log_of, sigterm, spawn_daemon_with, wait_exit, wait_for};
    use crate::helpers::simulator::{simulator, write_site_config};

    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let day = (chrono::Utc::now().date_naive() - chrono::Duration::days(2)).to_string();
    insert_synthetic_day(&db, &day, "UTC", 0).await;
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_site_config(dir.path(), "ranch", sim.addr().port(), 500);
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon_with(&config, &state, &[("DATABASE_URL", &db.url)]);
    let query = format!(
        "SELECT count(*) FROM victron.energy_daily WHERE installation_id = 'ranch' AND day = '{day}'"
    );
    wait_for(
        "the completed day rolled up",
        Duration::from_secs(60),
        async || db.scalar_i64(&query).await == 1,
    )
    .await;
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    let solar = energy(&db, "solar_kwh", &day).await;
    assert!(within(solar, 12.0, 0.005), "{solar}\n{}", log_of(&state));
    assert!(
        log_of(&state).contains("Rolled up completed days"),
        "{}",
        log_of(&state)
    );
    let hours = db
        .scalar_i64(
            "SELECT count(*) FROM victron.history_1h WHERE device = 'mppt' AND metric = 'pv_power'",
        )
        .await;
    assert_eq!(hours, 24);
}

/// A day already rolled up is rolled up again when raw rows of it arrive
/// later (a backlog forwarded after an outage), and only then.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_backlog_rolls_its_day_up_again() {
    use victron_poller::history::rebuild::roll_completed_days;

    let db = TestDb::create(Flavour::NoPreload).await;
    db.migrate().await;
    let day = (chrono::Utc::now().date_naive() - chrono::Duration::days(2)).to_string();
    insert_synthetic_day(&db, &day, "UTC", 0).await;
    // Rows that arrived an hour ago (a roll-up allows 10 minutes for a
    // writer's transaction still open when it reads).
    let arrived_long_ago = async || {
        for table in ["solar_readings", "battery_readings"] {
            db.execute(&format!(
                "UPDATE victron.{table} SET created_at = now() - interval '1 hour'"
            ))
            .await;
        }
    };
    arrived_long_ago().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let window = std::time::Duration::from_secs(72 * 3600);
    let roll = async || {
        roll_completed_days(&pool, chrono_tz::UTC, 60.0, "ranch", window, None)
            .await
            .unwrap()
    };
    assert_eq!(roll().await.len(), 1);
    assert!(roll().await.is_empty(), "a current day is not rolled again");
    // A second charger's day arrives late: 1 kW for 12 hours more.
    db.execute(&format!(
        "INSERT INTO victron.solar_readings (installation_id, device, \"timestamp\", pv_power)
         SELECT 'ranch', 'mppt-2', ts, 1000.0 FROM generate_series(('{day}'::date)::timestamptz + interval '6 hours',
             ('{day}'::date)::timestamptz + interval '18 hours' - interval '10 seconds', interval '10 seconds') ts"
    ))
    .await;
    assert_eq!(roll().await.len(), 1, "the late rows roll the day up again");
    let solar = energy(&db, "solar_kwh", &day).await;
    assert!(within(solar, 24.0, 0.005), "{solar}");
    arrived_long_ago().await;
    assert!(roll().await.is_empty());
    pool.close().await;
}

/// A rebuild never replaces a day its raw rows no longer cover: the raw
/// rows of a rolled-up day deleted (as raw retention does), a rebuild over
/// it keeps the day's rollups and energy.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_keeps_days_without_raw_rows() {
    let db = TestDb::create(Flavour::NoPreload).await;
    db.migrate().await;
    let day = "2026-06-04";
    insert_synthetic_day(&db, day, "UTC", 0).await;
    rebuild(&db, day, "UTC");
    let rollups = db
        .scalar_i64("SELECT count(*) FROM victron.history_5m")
        .await;
    for table in ["solar_readings", "battery_readings"] {
        db.execute(&format!("DELETE FROM victron.{table}")).await;
    }
    let out = run_cli(
        &[
            "history",
            "rebuild",
            "--site",
            "ranch",
            "--from",
            "2026-06-03",
            "--to",
            "2026-06-05",
        ],
        &[("DATABASE_URL", &db.url)],
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM victron.history_5m")
            .await,
        rollups
    );
    assert!(within(energy(&db, "solar_kwh", day).await, 12.0, 0.005));
}

/// Raw rows expire at 72 hours and their rollups stay; rollups expire by
/// their own retention (5-minute buckets at 35 days, hourly ones not yet),
/// on hypertables and plain tables alike.
#[cfg(feature = "servers")]
async fn rollups_outlive_raw_rows_and_expire_by_their_own_retention(flavour: Flavour) {
    use std::time::Duration;

    let db = TestDb::create(flavour).await;
    let report = db.migrate().await;
    let today = chrono::Utc::now().date_naive();
    let old = (today - chrono::Duration::days(40)).to_string();
    let recent = (today - chrono::Duration::days(4)).to_string();
    for day in [&old, &recent] {
        insert_synthetic_day(&db, day, "UTC", 0).await;
        rebuild(&db, day, "UTC");
    }
    let count = async |table: &str, day: &str| {
        db.scalar_i64(&format!(
            "SELECT count(*) FROM victron.{table} WHERE device = 'mppt'
             AND bucket >= '{day}'::timestamptz AND bucket < '{day}'::timestamptz + interval '1 day'"
        ))
        .await
    };
    // The day's 288 five-minute buckets and 24 hours of PV power.
    assert_eq!(count("history_5m", &recent).await, 288);
    assert_eq!(count("history_1h", &old).await, 24);

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    victron_poller::db::retention::run(&pool, report.storage_mode, Duration::from_secs(72 * 3600))
        .await
        .unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM victron.solar_readings")
            .await,
        0,
        "{flavour:?}: raw rows older than 72 h expire"
    );
    assert_eq!(count("history_5m", &recent).await, 288, "{flavour:?}");
    assert_eq!(count("history_5m", &old).await, 288, "{flavour:?}");

    let days = |d: u64| Some(Duration::from_secs(d * 86_400));
    let removed = victron_poller::history::postgres::expire(
        &pool,
        report.storage_mode,
        [days(35), days(800), None],
    )
    .await
    .unwrap();
    pool.close().await;
    // Two devices' columns of the old day's 288 buckets went.
    assert!(removed >= 2 * 288, "{flavour:?}: {removed}");
    assert_eq!(count("history_5m", &old).await, 0, "{flavour:?}");
    assert_eq!(count("history_5m", &recent).await, 288, "{flavour:?}");
    assert_eq!(count("history_1h", &old).await, 24, "{flavour:?}");
    assert_eq!(count("history_1d", &old).await, 1, "{flavour:?}");
    let solar = energy(&db, "solar_kwh", &old).await;
    assert!(within(solar, 12.0, 0.005), "{flavour:?}: {solar}");
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_outlive_raw_rows_on_timescaledb() {
    rollups_outlive_raw_rows_and_expire_by_their_own_retention(Flavour::Timescale).await;
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_outlive_raw_rows_on_postgres_15() {
    rollups_outlive_raw_rows_and_expire_by_their_own_retention(Flavour::Plain).await;
}
