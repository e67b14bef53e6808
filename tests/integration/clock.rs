//! Time on a gateway without a real-time clock: the daemon runs on a clock
//! libfaketime sets wrong (a day behind, an hour back) and steps while it
//! runs, against the test's own true clock, the GX simulator's and the
//! database server's. Every stored reading must carry its true measurement
//! time: checked against when the test sent a VE.Direct cycle, or against
//! the database's own `created_at` of a reading forwarded at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use victron_poller::clock::kernel_synchronised;
use victron_poller::store::StoreReader;

use crate::helpers::faketime::{FakeClock, env_with};
use crate::helpers::process::{log_of, sigterm, spawn_daemon_with, wait_exit, wait_for};
use crate::helpers::simulator::bmv_cycle;

/// A serial-to-network bridge the test plays: a battery monitor's cycle
/// every 250 ms, its voltage counting the cycles, and the true time each
/// was sent.
struct Bridge {
    address: String,
    sent: Arc<Mutex<Vec<DateTime<Utc>>>>,
}

impl Bridge {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let sent: Arc<Mutex<Vec<DateTime<Utc>>>> = Arc::default();
        let log = Arc::clone(&sent);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                loop {
                    let n = u32::try_from(log.lock().unwrap().len()).unwrap();
                    if socket.write_all(&bmv_cycle(n)).await.is_err() {
                        break;
                    }
                    log.lock().unwrap().push(Utc::now());
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
        Self { address, sent }
    }

    /// When cycle `n` (its voltage 26.000 V + n mV) was sent.
    fn sent_at(&self, voltage: f64) -> DateTime<Utc> {
        let n = (voltage * 1000.0 - 26_000.0).round() as usize;
        self.sent.lock().unwrap()[n]
    }

    fn cycles(&self) -> usize {
        self.sent.lock().unwrap().len()
    }
}

/// A config with the bridge's battery monitor and `extra` sections.
fn vedirect_config(dir: &Path, bridge: &Bridge, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[site]\ninstallation_id = \"ranch\"\n[batch]\nmax_age_ms = 100\n{extra}\n\
             [[vedirect]]\nname = \"shunt\"\naddress = \"{}\"\npoll_interval_ms = 0\n",
            bridge.address
        ),
    )
    .unwrap();
    path
}

/// The largest distance (s) between a stored reading's time and the true
/// time its cycle was sent, over `rows` of `(voltage, measured_at)`.
fn worst_error(bridge: &Bridge, rows: &[(f64, DateTime<Utc>)], shift_s: f64) -> f64 {
    rows.iter()
        .map(|(voltage, at)| {
            let truth = bridge.sent_at(*voltage);
            ((*at - truth).num_microseconds().unwrap() as f64 / 1e6 - shift_s).abs()
        })
        .fold(0.0, f64::max)
}

/// Readings in the local store (held ones included), read while the
/// daemon runs; 0 before the store exists.
async fn readings_stored(state: &Path) -> usize {
    let Ok(store) = StoreReader::open(state).await else {
        return 0;
    };
    let n = store.oldest(100_000).await.map_or(0, |rows| rows.len());
    store.close().await;
    n
}

/// Lines of the daemon's log that report a step of the system clock.
fn step_lines(state: &Path) -> Vec<String> {
    log_of(state)
        .lines()
        .filter(|l| l.contains("The system clock stepped by"))
        .map(str::to_string)
        .collect()
}

/// Neither a GX nor a database: with the kernel unsynchronised, nobody
/// knows the time, so readings are held with their boot-clock moment until
/// the clock is set (here: stepped to the true time after 3 s), then
/// re-stamped. (With a synchronised kernel the local clock is trusted, a
/// day behind or not: that is checked instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_reference_readings_are_held_until_the_clock_is_set() {
    let bridge = Bridge::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(dir.path(), "-1d");
    let config = vedirect_config(dir.path(), &bridge, "");
    let state = dir.path().join("state");
    let env = clock.env();
    let mut daemon = spawn_daemon_with(&config, &state, &env_with(&env, &[]));
    wait_for("a dozen cycles sent", Duration::from_secs(20), async || {
        bridge.cycles() >= 12
    })
    .await;
    clock.set("+0");
    let after_step = bridge.cycles() + 12;
    wait_for("a dozen more cycles", Duration::from_secs(20), async || {
        bridge.cycles() >= after_step
    })
    .await;
    // Sent is not yet read: on a busy machine the daemon may be behind.
    wait_for(
        "the cycles sent stored",
        Duration::from_secs(20),
        async || readings_stored(&state).await >= after_step - 2,
    )
    .await;
    sigterm(&daemon);
    assert_eq!(
        wait_exit(&mut daemon, Duration::from_secs(20)),
        0,
        "{}",
        log_of(&state)
    );

    let store = StoreReader::open(&state).await.unwrap();
    let rows: Vec<(f64, DateTime<Utc>)> = store
        .oldest(100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.reading.float("voltage").unwrap(), r.reading.measured_at))
        .collect();
    store.close().await;
    assert!(
        rows.len() >= after_step - 2,
        "{} rows of {after_step} cycles",
        rows.len()
    );
    let log = log_of(&state);
    assert_eq!(step_lines(&state).len(), 1, "{log}");
    if kernel_synchronised() == Some(true) {
        // Trusted before the step: a day behind; then the true time.
        let before: Vec<_> = rows.iter().take(8).copied().collect();
        assert!(worst_error(&bridge, &before, -86_400.0) < 1.0, "{log}");
    } else {
        let worst = worst_error(&bridge, &rows, 0.0);
        assert!(worst < 1.0, "a reading {worst} s from its true time\n{log}");
        assert!(log.contains("stamped now and queued"), "{log}");
    }
    // Per series, times only go forward.
    assert!(rows.windows(2).all(|w| w[1].1 > w[0].1), "{rows:?}");
}

#[cfg(feature = "servers")]
mod with_servers {
    use super::*;
    use crate::helpers::database::{Flavour, TcpProxy, TestDb, server_address, url_via};
    use crate::helpers::process::run_cli;
    use crate::helpers::simulator::{simulator, write_site_config};

    /// Rows of every reading table whose time is 1 s or more away from when
    /// the server inserted them (readings go to the database within a
    /// batch's 100 ms while it answers).
    async fn rows_off_their_insert_time(db: &TestDb) -> i64 {
        db.scalar_i64(
            "SELECT count(*) FROM (
                 SELECT created_at, \"timestamp\" FROM victron.battery_readings
                 UNION ALL SELECT created_at, \"timestamp\" FROM victron.solar_readings
                 UNION ALL SELECT created_at, \"timestamp\" FROM victron.inverter_readings
                 UNION ALL SELECT created_at, \"timestamp\" FROM victron.system_readings) r
             WHERE abs(extract(epoch FROM created_at - \"timestamp\")) >= 1.0",
        )
        .await
    }

    /// Whether a device's series in PostgreSQL only goes forward, in the
    /// order the rows arrived.
    async fn series_goes_forward(db: &TestDb, device: &str) -> bool {
        let closest = db
            .scalar_f64(&format!(
                "SELECT coalesce(min(gap), 1e9)::float8 FROM (SELECT extract(epoch FROM \"timestamp\" - lag(\"timestamp\") OVER (ORDER BY created_at, \"timestamp\")) AS gap
                 FROM victron.battery_readings WHERE device = '{device}') g"
            ))
            .await;
        closest > 0.0
    }

    fn gx_config(dir: &Path, port: u16) -> PathBuf {
        let path = write_site_config(dir, "ranch", port, 200);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("[batch]\nmax_age_ms = 100\n");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A daemon polling the GX simulator (four devices at 5 Hz) into a
    /// database, on a fake clock.
    struct GxRun {
        _sim: victron_poller::simulator::gx::SimHandle,
        db: TestDb,
        dir: tempfile::TempDir,
        clock: FakeClock,
        state: PathBuf,
        daemon: crate::helpers::process::Daemon,
    }

    impl GxRun {
        async fn start(flavour: Flavour, offset: &str) -> Self {
            let sim = simulator().await;
            let db = TestDb::create(flavour).await;
            db.migrate().await;
            let dir = tempfile::tempdir().unwrap();
            let clock = FakeClock::new(dir.path(), offset);
            let config = gx_config(dir.path(), sim.addr().port());
            let state = dir.path().join("state");
            let env = clock.env();
            let daemon = spawn_daemon_with(
                &config,
                &state,
                &env_with(&env, &[("DATABASE_URL", &db.url)]),
            );
            Self {
                _sim: sim,
                db,
                dir,
                clock,
                state,
                daemon,
            }
        }

        async fn bank_rows(&self) -> i64 {
            self.db
                .scalar_i64("SELECT count(*) FROM victron.battery_readings WHERE device = 'bank'")
                .await
        }

        /// Waits for `more` readings of the battery beyond what there is.
        async fn wait_for_more(&self, what: &str, more: i64) {
            let target = self.bank_rows().await + more;
            wait_for(what, Duration::from_secs(30), async || {
                self.bank_rows().await >= target
            })
            .await;
        }

        /// Stops the daemon; every reading was stored with its true time,
        /// its series only goes forward, and one line reported the step,
        /// by about `step_s`.
        async fn stop_and_check(mut self, step_s: f64) {
            sigterm(&self.daemon);
            assert_eq!(wait_exit(&mut self.daemon, Duration::from_secs(20)), 0);
            let log = log_of(&self.state);
            assert_eq!(rows_off_their_insert_time(&self.db).await, 0, "{log}");
            assert!(series_goes_forward(&self.db, "bank").await, "{log}");
            let steps = step_lines(&self.state);
            assert_eq!(steps.len(), 1, "{log}");
            let logged: f64 = steps[0]
                .split("stepped by ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no step size in {}", steps[0]));
            assert!((logged - step_s).abs() < 1.0, "{log}");
            drop(self.dir);
        }
    }

    /// The clock a day behind at start, stepped to the true time after a
    /// few seconds (NTP's first sync), with a GX: every reading stored with
    /// its true time, one log line for the step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clock_a_day_behind_is_corrected_from_the_gx() {
        let run = GxRun::start(Flavour::Timescale, "-1d").await;
        run.wait_for_more("readings on the wrong clock", 15).await;
        let status = run_cli(
            &["status", "--state-dir", run.state.to_str().unwrap()],
            &env_with(&run.clock.env(), &[]),
        );
        let text = String::from_utf8_lossy(&status.stdout).to_string();
        assert!(text.contains("times from gx"), "{text}");
        run.clock.set("+0");
        run.wait_for_more("readings after the step", 15).await;
        wait_for("the step logged", Duration::from_secs(10), async || {
            !step_lines(&run.state).is_empty()
        })
        .await;
        run.stop_and_check(86_400.0).await;
    }

    /// The clock stepped back one hour while running (a person setting the
    /// date): no reading stamped in the past, no series going backwards,
    /// one log line; the schedule goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clock_stepped_back_an_hour_changes_no_stored_time() {
        let run = GxRun::start(Flavour::NoPreload, "+0").await;
        run.wait_for_more("readings on the true clock", 10).await;
        run.clock.set("-1h");
        let started = std::time::Instant::now();
        run.wait_for_more("readings after the step", 15).await;
        // 15 polls at 200 ms: the schedule did not stall.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        run.stop_and_check(-3_600.0).await;
    }

    /// A VE.Direct device and a database, the clock a day behind, the
    /// database out of reach for the first seconds: readings are held
    /// (and the daemon says so), then stamped from the database's clock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vedirect_readings_wait_for_the_database_clock() {
        let bridge = Bridge::start().await;
        let db = TestDb::create(Flavour::Timescale).await;
        db.migrate().await;
        let proxy = TcpProxy::start(server_address(&db.url)).await;
        proxy.cut();
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::new(dir.path(), "-1d");
        let config = vedirect_config(dir.path(), &bridge, "[database]\nconnect_timeout_ms = 500");
        let state = dir.path().join("state");
        let env = clock.env();
        let url = url_via(&db.url, proxy.addr());
        let mut daemon =
            spawn_daemon_with(&config, &state, &env_with(&env, &[("DATABASE_URL", &url)]));
        let synchronised = kernel_synchronised() == Some(true);
        if !synchronised {
            wait_for(
                "the daemon saying readings are held",
                Duration::from_secs(30),
                async || log_of(&state).contains("readings are held until one does"),
            )
            .await;
            // `status` says so too (its document is saved every 5 s here).
            let mut said = None;
            wait_for(
                "status saying readings are held",
                Duration::from_secs(15),
                async || {
                    let status = run_cli(
                        &["status", "--state-dir", state.to_str().unwrap()],
                        &env_with(&env, &[]),
                    );
                    let text = String::from_utf8_lossy(&status.stdout).to_string();
                    let held = text.contains("held for their time");
                    said = Some((status.status.code(), text));
                    held
                },
            )
            .await;
            let (code, text) = said.unwrap();
            assert_eq!(code, Some(1), "{text}");
        }
        proxy.restore();
        let count = "SELECT count(*) FROM victron.battery_readings WHERE device = 'shunt'";
        let target = i64::try_from(bridge.cycles()).unwrap() + 12;
        wait_for(
            "every cycle in the database",
            Duration::from_secs(60),
            async || db.scalar_i64(count).await >= target,
        )
        .await;
        sigterm(&daemon);
        assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
        let log = log_of(&state);
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let rows: Vec<(f64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT voltage, \"timestamp\" FROM victron.battery_readings WHERE device = 'shunt' ORDER BY \"timestamp\"",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        assert!(rows.len() as i64 >= target, "{} rows", rows.len());
        if synchronised {
            // A synchronised kernel is trusted until the database disagrees.
            let later: Vec<_> = rows.iter().rev().take(8).copied().collect();
            assert!(worst_error(&bridge, &later, 0.0) < 1.0, "{log}");
        } else {
            let worst = worst_error(&bridge, &rows, 0.0);
            assert!(worst < 1.0, "a reading {worst} s from its true time\n{log}");
        }
        assert!(rows.windows(2).all(|w| w[1].1 > w[0].1));
    }
}
