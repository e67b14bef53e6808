//! The daemon: sources → batcher → local store → forwarder → PostgreSQL
//! (or, while the store has nothing waiting and the database answers,
//! batcher → PostgreSQL directly), plus the status writer and the retention
//! job, and the ordered shutdown.
//!
//! Shutdown order, on one task tracker: sources stop between polls and drop
//! their senders; the batcher commits the partial batch to the local store
//! and ends when their stream does; the forwarder gets a deadline to drain
//! (it says when the store is empty), then everything else is cancelled
//! (what was not shipped stays in the store for the next start); a last
//! status is written. [`DrainPolicy`] names every limit.
//!
//! Around it: the device locks when failover is on ([`crate::db::locks`]),
//! the health/metrics endpoint ([`crate::report::http`], fed by
//! `observe.rs`), and the systemd notifications and watchdog
//! ([`crate::systemd`]).

mod database;
mod local;
mod observe;
mod rollups;
mod sink;
pub mod supervise;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::TimeKeeper;
use crate::config::Config;
use crate::db::link::DatabaseLink;
use crate::db::locks::LeaseKeeper;
use crate::failover::Leases;
use crate::forward::{DirectPath, ForwardCounters};
use crate::pipeline::{Batcher, WriteHealth};
use crate::reading::Reading;
use crate::sources::modbus::GxPoller;
use crate::sources::vedirect::VeDirectSource;
use crate::status::StatusBoard;
use crate::store::LocalStore;
pub use sink::BatchReport;
use sink::StoreSink;

/// How often the daemon's status is saved (the status document in the local
/// store, the status rows in PostgreSQL) while only its times and counts
/// move; a change in what it says is saved at once. The snapshot and the
/// rows carry the period, so that `status` allows for it
/// ([`crate::report::health::stale_after`]); rare enough to cost neither
/// the SD card nor the CPU.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How long each step of an ordered stop may take. Sources stop between
/// polls and the batcher commits the partial batch without a limit (the
/// local store is the durability boundary); the rest is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPolicy {
    /// The forwarder's time to ship what the store holds; the rest waits
    /// for the next start (`--drain-deadline-s`, default 10 s).
    pub forward: Duration,
    /// The helpers' time to end once cancelled (a database call in flight is
    /// bounded by its own timeouts).
    pub helpers: Duration,
    /// The local store's time to close (its last commit is safe regardless).
    pub store_close: Duration,
}

impl DrainPolicy {
    /// The policy with the forwarder's deadline `forward`.
    pub fn with_forward_deadline(forward: Duration) -> Self {
        Self {
            forward,
            helpers: Duration::from_secs(15),
            store_close: Duration::from_secs(5),
        }
    }

    /// The longest an ordered stop may take before it is forced: every
    /// bounded step, plus 10 s for the sources' last polls and the batch.
    pub fn hard_limit(&self) -> Duration {
        self.forward + self.helpers + self.store_close + Duration::from_secs(10)
    }
}

/// How the daemon runs, beyond the configuration.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the local store lives.
    pub state_dir: PathBuf,
    /// The limits of an ordered stop.
    pub drain: DrainPolicy,
    /// Receives a line per batch committed (for `demo`).
    pub batch_report: Option<mpsc::UnboundedSender<BatchReport>>,
}

/// Counters shared by the daemon's tasks.
#[derive(Debug, Default)]
pub struct DaemonCounters {
    /// Readings committed to the local store since start.
    pub rows_stored: Arc<AtomicU64>,
    /// Readings dropped from the store because they outlived the window
    /// before they could be forwarded.
    pub rows_expired_unforwarded: AtomicU64,
    /// Retention runs that completed (local store and database).
    pub retention_runs: AtomicU64,
    /// Retention runs that failed.
    pub retention_failures: AtomicU64,
}

impl DaemonCounters {
    /// Counts one retention run, local or remote.
    fn count_retention(&self, succeeded: bool) {
        let counter = if succeeded {
            &self.retention_runs
        } else {
            &self.retention_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything the status writers need.
#[derive(Debug, Clone)]
struct Shared {
    config: Arc<Config>,
    store: LocalStore,
    status: StatusBoard,
    counters: Arc<DaemonCounters>,
    forward: Arc<ForwardCounters>,
    /// Whether the database can be reached, as every database path sees it.
    link: Arc<DatabaseLink>,
    started_at: DateTime<Utc>,
    /// When the daemon stopped cleanly: set once, before the last status
    /// writes, so that `status` says "stopped" at once.
    stopped_at: Arc<std::sync::OnceLock<DateTime<Utc>>>,
    poll_interval: Duration,
    /// Each device's site.
    sites: Arc<HashMap<String, String>>,
    /// Forward-first, opened by the database side once it forwards.
    direct: DirectPath,
    /// Measurement times: fed by the GX pollers and the database side.
    clock: Arc<TimeKeeper>,
    /// Without a database: everything measured before this (µs since the
    /// epoch) is rolled up, so the local store's retention may take it.
    rolled_through: Arc<std::sync::atomic::AtomicI64>,
    /// How the local store takes the batches.
    writes: Arc<WriteHealth>,
    /// The tasks restarted after a panic.
    restarts: Arc<supervise::Restarts>,
}

impl Shared {
    /// `start()`'s task under a supervisor reporting to this daemon's
    /// status and restarts.
    fn supervise<F, Fut>(
        &self,
        what: supervise::Supervised,
        stop: CancellationToken,
        start: F,
    ) -> impl std::future::Future<Output = ()> + use<F, Fut>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        supervise::supervise(
            what,
            self.status.clone(),
            Arc::clone(&self.restarts),
            stop,
            start,
        )
    }
}

/// The shortest configured poll interval (what the status rows' staleness
/// is judged by).
pub fn poll_interval(config: &Config) -> Duration {
    config
        .gx
        .iter()
        .map(|g| g.poll_interval)
        .chain(
            config
                .vedirect
                .iter()
                .map(|v| v.poll_interval)
                .filter(|d| !d.is_zero()),
        )
        .min()
        .unwrap_or(Duration::from_secs(5))
}

/// Every configured device's name.
fn device_names(config: &Config) -> Vec<&str> {
    config
        .gx
        .iter()
        .flat_map(|g| g.devices.iter().map(|d| d.name.as_str()))
        .chain(config.vedirect.iter().map(|v| v.name.as_str()))
        .collect()
}

/// Runs the daemon until `shutdown` fires.
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // Held until the daemon ends: one daemon per local store.
    let _state_lock = crate::store::StateLock::take(&options.state_dir)?;
    let store = LocalStore::open_with(&options.state_dir, config.store.sync)
        .await?
        .with_legacy_site(config.site.installation_id.as_deref().unwrap_or_default());
    tracing::info!(store = %store.path().display(), "Local store open.");
    let unstampable = store.park_held_from_earlier_boots().await?;
    if unstampable > 0 {
        tracing::warn!(
            readings = unstampable,
            "Readings held for their time before the machine restarted can no longer be stamped: they are parked in the local store."
        );
    }
    let http_listener = match config.health.listen {
        Some(address) => Some(crate::report::http::bind(address).await?),
        None => None,
    };
    // The database that holds the device locks, when failover is on.
    let lock_database = config.database.as_ref().filter(|_| config.failover.enabled);
    let leases = match lock_database {
        Some(_) => Leases::new(
            device_names(&config),
            config.failover.poll_when_database_unreachable,
        ),
        None => Leases::always(),
    };
    let shared = Shared {
        config: Arc::clone(&config),
        store: store.clone(),
        status: StatusBoard::new(),
        counters: Arc::new(DaemonCounters::default()),
        forward: Arc::new(ForwardCounters::default()),
        link: Arc::new(DatabaseLink::default()),
        started_at: Utc::now(),
        stopped_at: Arc::default(),
        poll_interval: poll_interval(&config),
        sites: Arc::new(config.device_sites()),
        direct: DirectPath::default(),
        rolled_through: Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
        writes: Arc::default(),
        restarts: Arc::default(),
        clock: Arc::new(TimeKeeper::new(
            config.clock.trust_local,
            config.database.is_some(),
        )),
    };

    // One tracker for every task; the ordered stop below follows the data:
    // sources end on `shutdown`, the batcher ends when their stream does,
    // then the forwarder drains, then everything else is cancelled.
    let tasks = TaskTracker::new();
    let (tx, rx) = mpsc::channel::<Reading>(4096);
    // Every source under a supervisor: one that panics is restarted with
    // its own reconnect backoff, its devices failed meanwhile.
    for gx in &config.gx {
        let what = supervise::Supervised {
            task: format!("source gx {}:{}", gx.host, gx.port),
            devices: gx.devices.iter().map(|d| d.name.clone()).collect(),
            backoff: (gx.reconnect_min, gx.reconnect_max),
        };
        let (gx, status, tx, leases, clock, stop) = (
            gx.clone(),
            shared.status.clone(),
            tx.clone(),
            leases.clone(),
            Arc::clone(&shared.clock),
            shutdown.clone(),
        );
        tasks.spawn(shared.supervise(what, shutdown.clone(), move || {
            let poller = GxPoller::new(&gx, status.clone(), tx.clone())
                .with_leases(leases.clone())
                .with_clock(Arc::clone(&clock));
            let stop = stop.clone();
            async move {
                poller.run(stop).await;
            }
        }));
    }
    for device in &config.vedirect {
        let what = supervise::Supervised {
            task: format!("source vedirect {}", device.name),
            devices: vec![device.name.clone()],
            backoff: (device.reconnect_min, device.reconnect_max),
        };
        let (device, status, tx, leases, stop) = (
            device.clone(),
            shared.status.clone(),
            tx.clone(),
            leases.clone(),
            shutdown.clone(),
        );
        tasks.spawn(shared.supervise(what, shutdown.clone(), move || {
            let source = VeDirectSource::new(&device, status.clone(), tx.clone())
                .with_leases(leases.clone());
            let stop = stop.clone();
            async move {
                source.run(stop).await;
            }
        }));
    }
    drop(tx);

    let wake = Arc::new(Notify::new());
    let drained = Arc::new(Notify::new());
    let forwarding = Arc::new(AtomicBool::new(false));
    let sink = StoreSink::new(
        store.clone(),
        Arc::clone(&shared.counters.rows_stored),
        Arc::clone(&wake),
        Arc::clone(&shared.clock),
    )
    .with_report(options.batch_report.clone());
    let sink = if config.database.is_some() {
        sink.with_direct_path(
            shared.direct.clone(),
            Arc::clone(&shared.forward),
            Arc::clone(&shared.link),
        )
    } else {
        sink
    };
    let batcher = tasks.spawn(
        Batcher::new(config.batch, sink)
            .on_grid(
                crate::schedule::Grid::common(),
                crate::schedule::Alarm::kernel(),
            )
            .holding(
                config.store.max_readings_in_memory,
                Arc::clone(&shared.writes),
                options.drain.store_close.max(Duration::from_secs(5)),
            )
            .run(rx),
    );

    let background = CancellationToken::new();
    // The helpers too run under the supervisor: a panic in one is logged,
    // counted as a reason in the verdict, and the task started again.
    let helper = |task: &str| supervise::Supervised {
        task: task.to_string(),
        devices: Vec::new(),
        backoff: (Duration::from_secs(1), Duration::from_secs(30)),
    };
    {
        let (shared_, stop) = (shared.clone(), background.clone());
        tasks.spawn(shared.supervise(
            helper("local status and retention"),
            background.clone(),
            move || local::local_loop(shared_.clone(), stop.clone()),
        ));
    }
    if let Some(db) = lock_database {
        let (session, leases, status, link, sites, interval, stop) = (
            db.lock_session().clone(),
            leases.clone(),
            shared.status.clone(),
            Arc::clone(&shared.link),
            Arc::clone(&shared.sites),
            shared.poll_interval,
            background.clone(),
        );
        tasks.spawn(
            shared.supervise(helper("device locks"), background.clone(), move || {
                LeaseKeeper::new(
                    session.clone(),
                    leases.clone(),
                    status.clone(),
                    interval,
                    Arc::clone(&link),
                    Arc::clone(&sites),
                )
                .run(stop.clone())
            }),
        );
    }
    if let Some(listener) = http_listener {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "Serving /healthz and /metrics.");
        }
        let observer = Arc::new(observe::DaemonObserver::new(shared.clone()));
        // Not restartable (it owns the listening socket); each connection
        // is a task of its own, so a panic answering one costs that one.
        tasks.spawn(crate::report::http::serve(
            listener,
            observer,
            background.clone(),
        ));
    }
    {
        let (status, stall, stop) = (
            shared.status.clone(),
            config.health.stall_timeout,
            background.clone(),
        );
        tasks.spawn(
            shared.supervise(helper("watchdog"), background.clone(), move || {
                crate::systemd::feed_watchdog(status.clone(), stall, stop.clone())
            }),
        );
    }
    if config.database.is_none() {
        let (shared_, store, stop) = (shared.clone(), store.clone(), background.clone());
        tasks.spawn(
            shared.supervise(helper("rollups"), background.clone(), move || {
                rollups::rollup_loop(
                    shared_.clone(),
                    crate::history::sqlite::LocalRollups(store.clone()),
                    stop.clone(),
                )
            }),
        );
    }
    if config.database.is_some() {
        let (shared_, wake, drained, forwarding, stop) = (
            shared.clone(),
            Arc::clone(&wake),
            Arc::clone(&drained),
            Arc::clone(&forwarding),
            background.clone(),
        );
        tasks.spawn(
            shared.supervise(helper("database"), background.clone(), move || {
                database::database_loop(
                    shared_.clone(),
                    database::Signals {
                        wake: Arc::clone(&wake),
                        drained: Arc::clone(&drained),
                        forwarding: Arc::clone(&forwarding),
                    },
                    stop.clone(),
                )
            }),
        );
    }
    tasks.close();

    let devices = device_names(&config).len();
    crate::systemd::ready(&format!("polling {devices} device(s)"));

    shutdown.cancelled().await;
    crate::systemd::stopping();
    tracing::info!("Stopping: finishing the current polls.");
    let finished = batcher.await.context("The batcher stopped abnormally")?;
    let writes = shared.writes.now();
    if writes.readings_dropped == 0 {
        tracing::info!("Every reading received is in the local store.");
    } else {
        tracing::error!(
            lost = writes.readings_dropped,
            lost_at_stop = finished.unstored,
            error = writes.last_error.as_deref().unwrap_or_default(),
            "Not every reading received is in the local store: it refused writes, and the readings it could not take are lost."
        );
    }

    let drain = options.drain;
    // Only a forwarder that runs against a reachable database can drain;
    // otherwise what the store holds waits for the next start at once.
    let can_drain = forwarding.load(Ordering::Relaxed) && shared.link.down_since().is_none();
    if can_drain {
        let forwarded = tokio::time::timeout(drain.forward, async {
            loop {
                // Registered before the wake-up, so no drain is missed.
                let notified = drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                wake.notify_one();
                notified.await;
                if store.depth().await.is_ok_and(|b| b.readings > 0) {
                } else {
                    break;
                }
            }
        })
        .await;
        if forwarded.is_err() {
            let left = store.depth().await.unwrap_or_default().readings;
            tracing::warn!(
                readings = left,
                "Shutdown deadline reached; the rest is forwarded at the next start."
            );
        }
    }
    let _ = shared.stopped_at.set(Utc::now());
    background.cancel();
    if tokio::time::timeout(drain.helpers, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            limit_s = drain.helpers.as_secs(),
            "A database task did not stop in time; leaving it."
        );
    }
    local::write_local_status(&shared).await;
    if tokio::time::timeout(drain.store_close, store.close())
        .await
        .is_err()
    {
        tracing::warn!("The local store did not close in time; its last commit is safe.");
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// The host's name, for the status rows: read once (a file read at every
/// status write is a gateway's CPU for nothing).
pub fn host_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into())
    })
    .clone()
}
