//! Benchmark: what the live rollups cost the daemon. One site of five
//! devices at 1 Hz (a GX system overview, a battery monitor, two solar
//! chargers, an inverter; every numeric column of each table filled), two
//! hours of readings in the local store and in PostgreSQL; the live
//! rollups primed, then brought up five minutes at a time, as the daemon
//! does after each boundary. Prints the daemon's own CPU time per step
//! (process CPU clock: PostgreSQL's work is another process's), and what
//! that is per one-second poll cycle, to set against the cycle's cost
//! (`scripts/bench-footprint`). Needs a PostgreSQL server:
//! `BENCH_DATABASE_URL` (default: the test server of
//! `scripts/test-databases.sh`).
//!
//! Run: `bash scripts/test-databases.sh start && cargo bench --bench live_rollups`

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use victron_poller::history::live::{LiveRollups, RollupStore};
use victron_poller::history::postgres::PostgresRollups;
use victron_poller::history::sqlite::LocalRollups;
use victron_poller::reading::{ColumnKind, Reading, ReadingTable, SourceKind, Value};
use victron_poller::store::LocalStore;

const DEVICES: [(&str, ReadingTable); 5] = [
    ("gx", ReadingTable::System),
    ("bank", ReadingTable::Battery),
    ("mppt-1", ReadingTable::Solar),
    ("mppt-2", ReadingTable::Solar),
    ("multi", ReadingTable::Inverter),
];

/// A reading of `device` at second `s`, every numeric column set.
fn reading(device: &str, table: ReadingTable, start: DateTime<Utc>, s: i64) -> Reading {
    let values = table
        .columns()
        .iter()
        .enumerate()
        .filter_map(|(i, (column, kind))| {
            let v = (s as f64 / (60.0 + i as f64)).sin() * 100.0 + i as f64;
            match kind {
                ColumnKind::Float => Some((*column, Value::Float(v))),
                ColumnKind::Int => Some((*column, Value::Int(v as i64))),
                ColumnKind::Text => None,
            }
        })
        .collect();
    Reading {
        site: "ranch".into(),
        device: device.into(),
        table,
        source: SourceKind::Modbus,
        measured_at: start + chrono::Duration::seconds(s),
        unconfirmed: None,
        values,
    }
}

fn cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Primes live rollups at `start` and times `steps` five-minute steps:
/// (median, largest) CPU time per step, rows per step.
async fn measure(
    rows: &impl RollupStore,
    start: DateTime<Utc>,
    steps: i64,
) -> (Duration, Duration, u64) {
    let five = chrono::Duration::minutes(5);
    let mut live = LiveRollups::new(chrono_tz::UTC, 60.0, vec!["ranch".into()], start);
    live.advance(rows, start + five).await.unwrap();
    let mut times = Vec::new();
    let mut readings = 0;
    for k in 2..(2 + steps) {
        let before = cpu();
        let step = live.advance(rows, start + five * k as i32).await.unwrap();
        times.push(cpu() - before);
        readings = step.readings;
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1], readings)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:25432/postgres".into());
    let start = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let seconds = 2 * 3600;
    let batch: Vec<Reading> = (0..seconds)
        .flat_map(|s| {
            DEVICES
                .iter()
                .map(move |(device, table)| reading(device, *table, start, s))
        })
        .collect();

    // The local store (an embedded gateway).
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).await.unwrap();
    for chunk in batch.chunks(5_000) {
        store.append(chunk).await.unwrap();
    }
    let (local_median, local_max, local_rows) =
        measure(&LocalRollups(store.clone()), start, 20).await;
    store.close().await;

    // PostgreSQL (a forwarding gateway).
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("a running PostgreSQL");
    sqlx::query("DROP DATABASE IF EXISTS vp_live_bench WITH (FORCE)")
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE vp_live_bench")
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{}/vp_live_bench", server.rsplit_once('/').unwrap().0);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    victron_poller::db::migrate::migrate(&mut conn, Duration::from_secs(72 * 3600 * 1000))
        .await
        .unwrap();
    drop(conn);
    let pool = PgPool::connect(&url).await.unwrap();
    let refs: Vec<&Reading> = batch.iter().collect();
    for chunk in refs.chunks(20_000) {
        victron_poller::forward::copy_rows(&pool, chunk)
            .await
            .unwrap();
    }
    let (pg_median, pg_max, pg_rows) = measure(&PostgresRollups(pool.clone()), start, 20).await;
    pool.close().await;
    sqlx::query("DROP DATABASE vp_live_bench WITH (FORCE)")
        .execute(&mut admin)
        .await
        .unwrap();

    let per_cycle = |d: Duration| d.as_secs_f64() * 1000.0 / 300.0;
    println!("live rollups, one five-minute step of 5 devices at 1 Hz (daemon CPU, 20 steps):");
    for (name, median, max, rows) in [
        ("local store", local_median, local_max, local_rows),
        ("PostgreSQL", pg_median, pg_max, pg_rows),
    ] {
        println!(
            "  {name:<12} {rows} readings: median {:.1} ms, largest {:.1} ms = {:.3} ms per 1-s cycle",
            median.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0,
            per_cycle(median)
        );
    }
}
