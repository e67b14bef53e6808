//! Figures an operator reads, on the real TimescaleDB test server: the
//! averages of `victron.battery_stats_24h` rounded to what the devices
//! resolve, `collection_health_pct` just after a start (at most 100), and
//! `energy` showing today's row before the daemon has written it.

use chrono::{DateTime, Utc};

use crate::helpers::database::{Flavour, TestDb};
use crate::helpers::process::{run_cli, texts};

/// 87.3, 87.4 and 87.5 average to 87.39999999999999 in double precision;
/// the view says 87.4, and rounds the other averages to what the devices
/// resolve (0.01 V, 0.1 A, 1 W, 0.1 °C), keeping their type.
#[tokio::test]
async fn battery_stats_24h_rounds_its_averages() {
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    db.execute(
        "INSERT INTO victron.battery_readings
             (installation_id, device, \"timestamp\", soc, voltage, current, power, temperature)
         VALUES ('ranch', 'bank', now() - interval '3 minutes', 87.3, 12.1,  1.11, 100.4, 20.04),
                ('ranch', 'bank', now() - interval '2 minutes', 87.4, 12.2,  1.22, 100.4, 20.05),
                ('ranch', 'bank', now() - interval '1 minute',  87.5, 12.25, 1.33, 100.5, 20.06)",
    )
    .await;
    let raw = db
        .scalar_f64("SELECT avg(soc) FROM victron.battery_readings")
        .await;
    assert_ne!(raw, 87.4, "the readings must show the float noise: {raw}");
    let stats: (f64, f64, f64, f64, f64, i64) = sqlx::query_as(
        "SELECT avg_soc, avg_voltage, avg_current, avg_power, avg_temperature, reading_count
         FROM victron.battery_stats_24h",
    )
    .fetch_one(&mut db.connect().await)
    .await
    .unwrap();
    // (12.1 + 12.2 + 12.25) / 3 = 12.1833…; (1.11 + 1.22 + 1.33) / 3 = 1.22;
    // (100.4 + 100.4 + 100.5) / 3 = 100.433…; the temperatures average 20.05.
    assert_eq!(stats, (87.4, 12.18, 1.2, 100.0, 20.1, 3));
    let types = db
        .strings(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'victron.battery_stats_24h'::regclass AND attname LIKE 'avg_%'",
        )
        .await;
    assert_eq!(types, vec!["double precision"; 5]);
}

/// The status row of a poller of `devices` devices every `interval_ms`,
/// started `started_s_ago` seconds ago.
async fn poller_started(db: &TestDb, devices: i32, interval_ms: i32, started_s_ago: f64) {
    db.execute(&format!(
        "UPDATE victron.polling_status SET devices_configured = {devices},
             poll_interval_ms = {interval_ms},
             poller_started_at = now() - make_interval(secs => {started_s_ago})
         WHERE id = 1"
    ))
    .await;
}

/// One reading of each of `devices` battery monitors, `s_ago` seconds ago.
async fn poll(db: &TestDb, devices: i32, s_ago: f64) {
    db.execute(&format!(
        "INSERT INTO victron.battery_readings (installation_id, device, \"timestamp\", soc)
         SELECT 'ranch', 'bank-' || d, now() - make_interval(secs => {s_ago}), 80
         FROM generate_series(1, {devices}) d"
    ))
    .await;
}

async fn collection(db: &TestDb) -> f64 {
    db.scalar_f64("SELECT collection_health_pct::float8 FROM victron.polling_status_view")
        .await
}

/// 7.5 s after a start at a 5-s interval a poller of four devices has made
/// two polls (at the start and 5 s later): eight readings are 100 %, not
/// the 133.3 % of "1.5 polls"; four are 50 %; a reading more than it could
/// have taken (a device configured before a restart) still says 100.
#[tokio::test]
async fn collection_health_counts_the_poll_at_the_start_and_stays_at_most_100() {
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    poller_started(&db, 4, 5000, 7.5).await;
    poll(&db, 4, 7.5).await;
    assert_eq!(collection(&db).await, 50.0, "one poll of the two made");
    poll(&db, 4, 2.5).await;
    assert_eq!(collection(&db).await, 100.0);
    assert_eq!(
        db.scalar_i64("SELECT expected_readings_24h FROM victron.polling_status_view")
            .await,
        8
    );
    db.execute(
        "INSERT INTO victron.battery_readings (installation_id, device, \"timestamp\", soc)
         VALUES ('ranch', 'old-bank', now() - interval '3 seconds', 80)",
    )
    .await;
    assert_eq!(collection(&db).await, 100.0, "never above 100");
    // A full day's window: what the interval gives in 24 h.
    poller_started(&db, 4, 5000, 2.0 * 86_400.0).await;
    assert_eq!(
        db.scalar_i64("SELECT expected_readings_24h FROM victron.polling_status_view")
            .await,
        4 * 86_400 / 5
    );
}

/// A time zone in which the local day began at least 20 minutes ago, so
/// that the last 10 minutes all fall on today.
fn zone_with_a_started_day(now: DateTime<Utc>) -> chrono_tz::Tz {
    use chrono::Timelike as _;
    if now.num_seconds_from_midnight() >= 20 * 60 {
        chrono_tz::UTC
    } else {
        // UTC−1: the local day began an hour before UTC's.
        chrono_tz::Etc::GMTPlus1
    }
}

/// With a database, `energy` shows today's row before the daemon's live
/// rollups have written it (their first step comes at a five-minute
/// boundary): computed from the raw readings so far, marked as such; a row
/// that is written is shown as it is.
#[tokio::test]
async fn energy_shows_today_so_far_before_its_row_is_written() {
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let now = Utc::now();
    let tz = zone_with_a_started_day(now);
    let today = now.with_timezone(&tz).date_naive();
    // PV 1200 W constant, a reading every 10 s over the last ~10 minutes:
    // 60 readings, 59 intervals of 10 s = 1.2 kW × 590 s = 0.19667 kWh.
    db.execute(
        "INSERT INTO victron.solar_readings (installation_id, device, \"timestamp\", pv_power)
         SELECT 'ranch', 'mppt', now() - make_interval(secs => 10 * n + 5), 1200
         FROM generate_series(0, 59) n",
    )
    .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM victron.energy_daily")
            .await,
        0,
        "no row written yet"
    );
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("VICTRON_POLLER_SITE__TIMEZONE", tz.name()),
    ];
    let out = run_cli(&["energy", "--json"], &env);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let days: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let days = days.as_array().unwrap();
    assert_eq!(days.len(), 1, "{stdout}");
    assert_eq!(days[0]["site"], "ranch");
    assert_eq!(days[0]["day"], today.to_string());
    let solar = days[0]["solar_kwh"].as_f64().unwrap();
    let want = 1.2 * 590.0 / 3600.0;
    // (kWh are kept to the Wh's thousandth: six decimals.)
    assert!((solar - want).abs() <= 5e-7, "{solar} kWh, not {want}");

    let out = run_cli(&["energy"], &env);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("ranch        {today}* ")),
        "{stdout}"
    );
    assert!(stdout.contains("    0.20 "), "{stdout}");
    assert!(
        stdout.contains("* today so far, from the raw readings"),
        "{stdout}"
    );

    // Once the daemon wrote the day, its row is what is shown.
    db.execute(&format!(
        "INSERT INTO victron.energy_daily (installation_id, day, solar_kwh, coverage_pct, updated_at)
         VALUES ('ranch', '{today}', 5.0, 100, now())"
    ))
    .await;
    let out = run_cli(&["energy", "--json"], &env);
    let days: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(days.as_array().unwrap().len(), 1);
    assert_eq!(days[0]["solar_kwh"].as_f64(), Some(5.0));
    let out = run_cli(&["energy"], &env);
    assert!(!texts(&out).0.contains("today so far"));
}
