//! Retention on each server flavour, directly and through PgBouncer: rows
//! older than the window are gone; on TimescaleDB whole chunks are dropped.

use std::time::Duration;

use crate::helpers::database::{Flavour, Route, TestDb, daemon_pool, rows};

/// Rows older than the window are gone after the job runs; on TimescaleDB
/// whole chunks are dropped.
#[tokio::test]
async fn retention_on_every_flavour() {
    retention(Route::Direct).await;
}

#[tokio::test]
async fn retention_on_every_flavour_through_pgbouncer() {
    retention(Route::PgBouncer).await;
}

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
