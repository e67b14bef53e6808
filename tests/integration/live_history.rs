//! Live rollups. libfaketime sets the daemon's clock (trusted, as an NTP
//! clock is) just before a five-minute boundary, so that a test sees the
//! daemon close a bucket within seconds; the rollups it wrote are checked
//! against what `history rebuild` computes from the same raw rows, and
//! against the raw rows themselves (a bucket's samples are its readings,
//! each counted once), after a database outage and a kill -9 in the bucket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::helpers::faketime::{FakeClock, env_with};
use crate::helpers::process::{Daemon, log_of, sigterm, spawn_daemon_with, wait_exit, wait_for};
use crate::helpers::simulator::{simulator, write_site_config};

/// A fake clock `lead` seconds before the next five-minute boundary (of
/// the true time plus a little), and that boundary.
fn clock_before_boundary(dir: &Path, lead: i64) -> (FakeClock, DateTime<Utc>) {
    let now = Utc::now().timestamp();
    let boundary = ((now + lead + 5) / 300 + 1) * 300;
    let offset = boundary - lead - now;
    (
        FakeClock::new(dir, &format!("+{offset}")),
        Utc.timestamp_opt(boundary, 0).unwrap(),
    )
}

/// The simulator site's config, polled every `poll_ms`, its clock trusted.
fn config(dir: &Path, port: u16, poll_ms: u64) -> PathBuf {
    let path = write_site_config(dir, "ranch", port, poll_ms);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("[clock]\ntrust_local = true\n[batch]\nmax_age_ms = 200\n");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(config: &Path, state: &Path, clock: &FakeClock, extra: &[(&str, &str)]) -> Daemon {
    let env = clock.env();
    spawn_daemon_with(config, state, &env_with(&env, extra))
}

#[cfg(feature = "servers")]
mod with_database {
    use super::*;
    use crate::helpers::database::{Flavour, TcpProxy, TestDb, server_address, url_via};
    use crate::helpers::process::{run_cli, texts};

    /// A 5-minute bucket's rows: (device, metric, samples, min, max, mean, last).
    type Rows = Vec<(String, String, i32, f64, f64, f64, f64)>;

    async fn bucket_rows(db: &TestDb, table: &str, bucket: DateTime<Utc>) -> Rows {
        let mut conn = db.connect().await;
        sqlx::query_as(&format!(
            "SELECT device, metric, samples, min, max, mean, last FROM victron.{table}
             WHERE installation_id = 'ranch' AND bucket = $1 ORDER BY device, metric"
        ))
        .bind(bucket)
        .fetch_all(&mut conn)
        .await
        .unwrap()
    }

    /// Raw rows of the battery monitor measured in `[from, to)`.
    async fn raw_bank(db: &TestDb, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
        let mut conn = db.connect().await;
        sqlx::query_scalar(
            "SELECT count(*) FROM victron.battery_readings
             WHERE device = 'bank' AND \"timestamp\" >= $1 AND \"timestamp\" < $2",
        )
        .bind(from)
        .bind(to)
        .fetch_one(&mut conn)
        .await
        .unwrap()
    }

    async fn bank_voltage_samples(db: &TestDb, bucket: DateTime<Utc>) -> i64 {
        db.scalar_i64(&format!(
            "SELECT coalesce(max(samples), 0)::bigint FROM victron.history_5m
             WHERE device = 'bank' AND metric = 'voltage' AND bucket = '{}'",
            bucket.to_rfc3339()
        ))
        .await
    }

    /// The daemon polls across a boundary: the bucket it closed is in
    /// `history_5m` (on a hypertable), its samples are the raw rows, and a
    /// rebuild of the day from the raw rows writes exactly the same rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_rollups_equal_a_rebuild() {
        let db = TestDb::create(Flavour::Timescale).await;
        db.migrate().await;
        let sim = simulator().await;
        let dir = tempfile::tempdir().unwrap();
        let (clock, boundary) = clock_before_boundary(dir.path(), 15);
        let bucket = boundary - chrono::Duration::minutes(5);
        let config = config(dir.path(), sim.addr().port(), 250);
        let state = dir.path().join("state");
        let mut daemon = spawn(&config, &state, &clock, &[("DATABASE_URL", &db.url)]);
        wait_for(
            "the bucket before the boundary rolled up",
            Duration::from_secs(60),
            async || bank_voltage_samples(&db, bucket).await > 0,
        )
        .await;
        sigterm(&daemon);
        assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
        assert_eq!(
            db.scalar_i64(
                "SELECT count(*) FROM timescaledb_information.hypertables
                 WHERE hypertable_schema = 'victron' AND hypertable_name LIKE 'history_%'"
            )
            .await,
            3,
            "the rollup tables are hypertables"
        );
        let raw = raw_bank(&db, bucket, boundary).await;
        assert!(raw >= 20, "{raw} readings before the boundary");
        assert_eq!(bank_voltage_samples(&db, bucket).await, raw);
        let live = bucket_rows(&db, "history_5m", bucket).await;
        assert!(live.len() > 40, "{live:?}");
        let live_days: Vec<(f64, f64)> = {
            let mut conn = db.connect().await;
            sqlx::query_as(
                "SELECT coalesce(solar_kwh, -1), coverage_pct FROM victron.energy_daily
                 WHERE installation_id = 'ranch'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap()
        };
        assert_eq!(live_days.len(), 1, "today's energy so far: {live_days:?}");

        let day = bucket.date_naive().to_string();
        let out = run_cli(
            &[
                "history", "rebuild", "--site", "ranch", "--from", &day, "--to", &day,
            ],
            &[("DATABASE_URL", &db.url)],
        );
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        let rebuilt = bucket_rows(&db, "history_5m", bucket).await;
        assert_eq!(live, rebuilt, "{}", log_of(&state));
    }

    /// Long enough for the daemon's retry delays to reach their 1 s cap
    /// (within 1.5 s) and for batches to be given up on after 2 s and kept
    /// in the local store: the backlog the kill then interrupts.
    const OUTAGE: Duration = Duration::from_secs(5);

    /// A 5 s database outage and a kill -9 inside one bucket: after the
    /// boundary the bucket holds every reading PostgreSQL has of it, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_and_a_kill_in_a_bucket_count_every_reading_once() {
        let db = TestDb::create(Flavour::NoPreload).await;
        db.migrate().await;
        let proxy = TcpProxy::start(server_address(&db.url)).await;
        let url = url_via(&db.url, proxy.addr());
        let sim = simulator().await;
        let dir = tempfile::tempdir().unwrap();
        let (clock, boundary) = clock_before_boundary(dir.path(), 55);
        let bucket = boundary - chrono::Duration::minutes(5);
        let config = config(dir.path(), sim.addr().port(), 200);
        let state = dir.path().join("state");
        let mut first = spawn(&config, &state, &clock, &[("DATABASE_URL", &url)]);
        wait_for("first rows", Duration::from_secs(20), async || {
            db.scalar_i64("SELECT count(*) FROM victron.battery_readings")
                .await
                > 3
        })
        .await;
        proxy.outage(OUTAGE).await;
        // Killed while what the outage left in the store may still be on
        // its way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.0.kill().unwrap();
        first.0.wait().unwrap();
        let mut second = spawn(&config, &state, &clock, &[("DATABASE_URL", &url)]);
        wait_for(
            "the bucket rolled up",
            Duration::from_secs(90),
            async || bank_voltage_samples(&db, bucket).await > 0,
        )
        .await;
        sigterm(&second);
        assert_eq!(wait_exit(&mut second, Duration::from_secs(20)), 0);
        let raw = raw_bank(&db, bucket, boundary).await;
        // 200 ms polls over most of the bucket's last minute, the outage's
        // included.
        assert!(raw >= 150, "{raw} readings in the bucket");
        assert_eq!(
            bank_voltage_samples(&db, bucket).await,
            raw,
            "{}",
            log_of(&state)
        );
    }
}

/// Without a database the live rollups go to the local store: the bucket
/// closed at the boundary is there with its readings' count, and `energy`
/// answers today from the store while the daemon runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_gateway_keeps_its_rollups_in_the_local_store() {
    use victron_poller::history::Resolution;
    use victron_poller::reading::ReadingTable;
    use victron_poller::store::StoreReader;

    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let (clock, boundary) = clock_before_boundary(dir.path(), 15);
    let bucket = boundary - chrono::Duration::minutes(5);
    let config = config(dir.path(), sim.addr().port(), 250);
    let state = dir.path().join("state");
    let mut daemon = spawn(&config, &state, &clock, &[]);
    let samples = async || -> Option<(i64, usize)> {
        let store = StoreReader::open(&state).await.ok()?;
        let rollups = victron_poller::history::sqlite::StoredRollups(store.clone())
            .rollups(Resolution::FiveMinutes, bucket, boundary)
            .await
            .ok()?;
        let raw = store
            .readings_between(bucket, boundary)
            .await
            .ok()?
            .iter()
            .filter(|r| r.reading.device == "bank" && r.reading.table == ReadingTable::Battery)
            .count();
        store.close().await;
        rollups
            .iter()
            .find(|r| r.device == "bank" && r.metric == "voltage")
            .map(|r| (r.samples, raw))
    };
    wait_for(
        "the bucket rolled up in the local store",
        Duration::from_secs(60),
        async || samples().await.is_some(),
    )
    .await;
    let (rolled, raw) = samples().await.unwrap();
    assert!(raw >= 20, "{raw}");
    assert_eq!(rolled, raw as i64, "{}", log_of(&state));
    let store = StoreReader::open(&state).await.unwrap();
    let kept = victron_poller::history::sqlite::StoredRollups(store.clone())
        .energy_days()
        .await
        .unwrap();
    store.close().await;
    assert!(
        kept.iter()
            .any(|d| d.energy.site == "ranch" && d.energy.coverage_pct > 0.0),
        "today's energy so far is kept: {kept:?}"
    );
    let out = crate::helpers::process::run_cli(
        &[
            "energy",
            "--days",
            "2",
            "--json",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    );
    let (stdout, stderr) = crate::helpers::process::texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let days: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        days.as_array()
            .unwrap()
            .iter()
            .any(|d| d["site"] == "ranch"),
        "{stdout}"
    );
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
}
