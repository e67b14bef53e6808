//! Benchmark: forwarding throughput from the local store into a TimescaleDB
//! hypertable with its (device, timestamp) unique key, idempotent (`ON
//! CONFLICT DO NOTHING`), in rows per second; next to it, measured the same
//! way, one INSERT + commit per row, and a bare COPY into a table without
//! indexes (the ceiling). Needs a PostgreSQL + TimescaleDB server:
//! `BENCH_DATABASE_URL` (default: the test server's URL from
//! `scripts/test-databases.sh`).
//!
//! Run: `bash scripts/test-databases.sh start && cargo bench --bench forward`

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use victron_poller::forward::{ForwardCounters, Forwarder};
use victron_poller::reading::{Reading, ReadingTable, SourceKind, Value};
use victron_poller::store::LocalStore;

fn reading(i: i64) -> Reading {
    Reading {
        site: "ranch".into(),
        device: format!("bank-{}", i % 4),
        table: ReadingTable::Battery,
        source: SourceKind::Modbus,
        measured_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap()
            + chrono::Duration::milliseconds(i * 250),
        unconfirmed: None,
        values: vec![
            ("soc", Value::Float(80.0 + (i % 200) as f64 / 10.0)),
            ("voltage", Value::Float(52.31)),
            ("current", Value::Float(-12.5)),
            ("power", Value::Float(-653.9)),
            ("state", Value::Text("discharging".into())),
            ("consumed_ah", Value::Float(-40.2)),
            ("time_to_go_s", Value::Float(86_400.0)),
            ("alarm", Value::Text("".into())),
            ("product_id", Value::Int(0xA389)),
        ],
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:25432/postgres".into());
    let rows: i64 = std::env::var("ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200_000);
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("a running PostgreSQL + TimescaleDB");
    sqlx::query("DROP DATABASE IF EXISTS vp_bench")
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE vp_bench")
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{}/vp_bench", server.rsplit_once('/').unwrap().0);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let report =
        victron_poller::db::migrate::migrate(&mut conn, Duration::from_secs(100 * 365 * 86_400))
            .await
            .unwrap();
    println!(
        "forwarding benchmark: {rows} battery readings, storage {}",
        report.storage_mode
    );

    // 1. The forwarder: local store → UNNEST insert, ON CONFLICT DO NOTHING.
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).await.unwrap();
    let all: Vec<Reading> = (0..rows).map(reading).collect();
    for chunk in all.chunks(10_000) {
        store.append(chunk).await.unwrap();
    }
    let pool = PgPool::connect(&url).await.unwrap();
    let forwarder = Forwarder::new(
        store.clone(),
        pool.clone(),
        Arc::new(ForwardCounters::default()),
        Arc::new(tokio::sync::Notify::new()),
        Arc::default(),
    )
    .with_batch_rows(
        std::env::var("BATCH")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(5000),
    );
    let start = Instant::now();
    let forwarded = forwarder.drain().await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(forwarded as i64, rows);
    let in_db: i64 = sqlx::query_scalar("SELECT count(*) FROM victron.battery_readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_db, rows);
    println!(
        "  forwarder (store → COPY, unique key)     {:>9.0} rows/s   ({:.2} s)",
        rows as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );

    // The same rows again: a replay after a crash inserts nothing.
    for chunk in all.chunks(10_000) {
        store.append(chunk).await.unwrap();
    }
    let start = Instant::now();
    forwarder.drain().await.unwrap();
    let elapsed = start.elapsed();
    let in_db: i64 = sqlx::query_scalar("SELECT count(*) FROM victron.battery_readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_db, rows, "idempotent");
    println!(
        "  replay of the same rows (all conflicts:\n    COPY refused, then UNNEST … ON CONFLICT) {:>9.0} rows/s",
        rows as f64 / elapsed.as_secs_f64()
    );

    // Where the time goes: the two halves of the pipeline, apart.
    let batch = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(5000);
    for chunk in all.chunks(10_000) {
        store.append(chunk).await.unwrap();
    }
    let start = Instant::now();
    let mut batches = Vec::new();
    let mut after = i64::MIN;
    loop {
        let rows_read = store.oldest_after(after, batch).await.unwrap();
        let Some(last) = rows_read.last() else { break };
        after = last.seq;
        batches.push(rows_read);
    }
    let read = start.elapsed();
    sqlx::query("TRUNCATE victron.battery_readings")
        .execute(&pool)
        .await
        .unwrap();
    let start = Instant::now();
    for rows_batch in &batches {
        let refs: Vec<_> = rows_batch.iter().map(|row| &row.reading).collect();
        victron_poller::forward::copy_rows(&pool, &refs)
            .await
            .unwrap();
    }
    let inserted = start.elapsed();
    println!(
        "    the halves apart: reading the store {:>9.0} rows/s; COPY into PostgreSQL {:>9.0} rows/s",
        rows as f64 / read.as_secs_f64(),
        rows as f64 / inserted.as_secs_f64()
    );
    drop(batches);

    // 2. One INSERT + commit per row (a sample of the rows).
    let sample = (rows / 20).clamp(1000, 10_000);
    sqlx::query("TRUNCATE victron.battery_readings")
        .execute(&pool)
        .await
        .unwrap();
    let start = Instant::now();
    for r in all.iter().take(sample as usize) {
        sqlx::query(
            "INSERT INTO victron.battery_readings (\"timestamp\", device, installation_id, source, soc, voltage,
                 current, power, state, consumed_ah, time_to_go_s, alarm, product_id)
             VALUES ($1, $2, 'bench', 'modbus', $3, 52.31, -12.5, -653.9, 'discharging', -40.2, 86400, '', 41865)
             ON CONFLICT (device, \"timestamp\") DO NOTHING",
        )
        .bind(r.measured_at)
        .bind(&r.device)
        .bind(r.float("soc"))
        .execute(&pool)
        .await
        .unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "  one INSERT + commit per row ({sample} rows)  {:>9.0} rows/s",
        sample as f64 / elapsed.as_secs_f64()
    );

    // 3. Bare COPY into a plain table without indexes: the ceiling.
    sqlx::query(
        "CREATE TABLE bare (\"timestamp\" timestamptz, device text, installation_id text, source text,
             soc float8, voltage float8, current float8, power float8, state text, consumed_ah float8,
             time_to_go_s float8, alarm text, product_id int4)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut text = String::with_capacity(rows as usize * 120);
    for r in &all {
        text.push_str(&format!(
            "{}\t{}\tbench\tmodbus\t{}\t52.31\t-12.5\t-653.9\tdischarging\t-40.2\t86400\t\t41865\n",
            r.measured_at.to_rfc3339(),
            r.device,
            r.float("soc").unwrap()
        ));
    }
    let mut conn = pool.acquire().await.unwrap();
    let start = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY bare FROM STDIN (FORMAT text)")
        .await
        .unwrap();
    copy.send(text.as_bytes()).await.unwrap();
    let copied = copy.finish().await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(copied as i64, rows);
    println!(
        "  bare COPY, no indexes (ceiling)          {:>9.0} rows/s",
        rows as f64 / elapsed.as_secs_f64()
    );
    drop(conn);
    pool.close().await;
    store.close().await;
    sqlx::query("DROP DATABASE vp_bench WITH (FORCE)")
        .execute(&mut admin)
        .await
        .unwrap();
}
