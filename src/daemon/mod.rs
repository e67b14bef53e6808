//! The daemon: sources → batcher → local store → forwarder → PostgreSQL,
//! plus the status writer and the retention job, and the ordered shutdown.
//!
//! Shutdown order: sources stop between polls and drop their senders; the
//! batcher commits the partial batch to the local store and ends; the
//! forwarder gets a deadline to drain, then is abandoned (what it did not
//! ship stays in the store for the next start); a last status is written.
//!
//! Around it: the device locks when failover is on ([`crate::failover`]),
//! the health/metrics endpoint ([`crate::http`], fed by `report.rs`), and the
//! systemd notifications and watchdog ([`crate::systemd`]).

mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::link::{DatabaseLink, retry_backoff};
use crate::db::server::StorageMode;
use crate::failover::{LeaseKeeper, Leases};
use crate::forward::{ForwardCounters, Forwarder};
use crate::pipeline::{BatchReport, Batcher, StoreSink};
use crate::reading::Reading;
use crate::sources::modbus::GxPoller;
use crate::sources::vedirect::VeDirectSource;
use crate::status::StatusBoard;
use crate::store::LocalStore;

/// How long the daemon waits before asking again a database server that
/// answered and refused it (credentials, no such database).
const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// How the daemon runs, beyond the configuration.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the local store lives.
    pub state_dir: PathBuf,
    /// Longest wait for the forwarder to drain at shutdown.
    pub drain_deadline: Duration,
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
}

/// The shortest configured poll interval (status rows are written that often).
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
    let store = LocalStore::open(&options.state_dir).await?;
    tracing::info!(store = %store.path().display(), "Local store open.");
    let http_listener = match config.health.listen {
        Some(address) => Some(crate::http::bind(address).await?),
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
    };

    let (tx, rx) = mpsc::channel::<Reading>(4096);
    let sources_cancel = CancellationToken::new();
    let mut sources = JoinSet::new();
    for gx in &config.gx {
        let poller =
            GxPoller::new(gx, shared.status.clone(), tx.clone()).with_leases(leases.clone());
        let cancel = sources_cancel.clone();
        sources.spawn(async move {
            poller.run(cancel).await;
        });
    }
    for device in &config.vedirect {
        let source = VeDirectSource::new(device, shared.status.clone(), tx.clone())
            .with_leases(leases.clone());
        let cancel = sources_cancel.clone();
        sources.spawn(async move {
            source.run(cancel).await;
        });
    }
    drop(tx);

    let wake = Arc::new(Notify::new());
    let sink = StoreSink::new(
        store.clone(),
        Arc::clone(&shared.counters.rows_stored),
        Arc::clone(&wake),
    )
    .with_report(options.batch_report.clone());
    let batcher = tokio::spawn(Batcher::new(config.batch, sink).run(rx));

    let background = CancellationToken::new();
    let mut helpers = JoinSet::new();
    helpers.spawn(local_loop(shared.clone(), background.clone()));
    if let Some(db) = lock_database {
        let keeper = LeaseKeeper::new(
            db.clone(),
            leases.clone(),
            shared.status.clone(),
            shared.poll_interval,
            Arc::clone(&shared.link),
        );
        helpers.spawn(keeper.run(background.clone()));
    }
    if let Some(listener) = http_listener {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "Serving /healthz and /metrics.");
        }
        let observer = Arc::new(report::DaemonObserver::new(shared.clone()));
        helpers.spawn(crate::http::serve(listener, observer, background.clone()));
    }
    helpers.spawn(crate::systemd::feed_watchdog(
        shared.status.clone(),
        config.health.stall_timeout,
        background.clone(),
    ));
    let forwarder_cancel = CancellationToken::new();
    if config.database.is_some() {
        helpers.spawn(database_loop(
            shared.clone(),
            Arc::clone(&wake),
            forwarder_cancel.clone(),
            background.clone(),
        ));
    }

    let devices = device_names(&config).len();
    crate::systemd::ready(&format!("polling {devices} device(s)"));

    shutdown.cancelled().await;
    crate::systemd::stopping();
    tracing::info!("Stopping: finishing the current polls.");
    sources_cancel.cancel();
    while sources.join_next().await.is_some() {}
    batcher.await.context("The batcher stopped abnormally")?;
    tracing::info!("Every reading received is in the local store.");

    if config.database.is_some() {
        let drained = tokio::time::timeout(options.drain_deadline, async {
            loop {
                match store.depth().await {
                    Ok((0, _)) | Err(_) => break,
                    Ok(_) => {
                        wake.notify_one();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            let (left, _) = store.depth().await.unwrap_or_default();
            tracing::warn!(
                readings = left,
                "Shutdown deadline reached; the rest is forwarded at the next start."
            );
        }
    }
    forwarder_cancel.cancel();
    let _ = shared.stopped_at.set(Utc::now());
    background.cancel();
    // Every helper ends at its next await on cancellation; a database call in
    // flight is bounded by its timeouts. Do not wait forever regardless.
    let joined = tokio::time::timeout(Duration::from_secs(15), async {
        while helpers.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        tracing::warn!("A database task did not stop in 15 s; leaving it.");
        helpers.abort_all();
    }
    write_local_status(&shared).await;
    if tokio::time::timeout(Duration::from_secs(5), store.close())
        .await
        .is_err()
    {
        tracing::warn!("The local store did not close in 5 s; its last commit is safe.");
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// The local side: status document in the store, and the store's retention.
async fn local_loop(shared: Shared, cancel: CancellationToken) {
    let mut status_tick = crate::sources::ticker(shared.poll_interval);
    let mut retention_tick = crate::sources::ticker(shared.config.retention.run_every);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = status_tick.tick() => {
                let depth = write_local_status(&shared).await;
                crate::systemd::status(&report::one_line(&shared, depth));
            }
            _ = retention_tick.tick() => {
                let before = Utc::now() - chrono::Duration::from_std(shared.config.retention.window).unwrap_or_default();
                let result = shared.store.expire(before).await;
                shared.counters.count_retention(result.is_ok());
                match result {
                    Ok(0) => {}
                    Ok(n) if shared.config.database.is_some() => {
                        shared.counters.rows_expired_unforwarded.fetch_add(n, Ordering::Relaxed);
                        tracing::error!(
                            readings = n,
                            "The local store hit its bound: readings older than the retention window were never forwarded and are dropped."
                        );
                    }
                    Ok(n) => tracing::info!(readings = n, "Retention removed expired readings from the local store."),
                    Err(error) => tracing::warn!(%error, "Local retention failed."),
                }
            }
        }
    }
}

/// Saves the status document in the store; returns the store's depth.
async fn write_local_status(shared: &Shared) -> i64 {
    let depth = report::store_depth(shared).await;
    let doc = report::status_document(shared, depth);
    if let Err(error) = shared.store.save_status("daemon", &doc).await {
        tracing::debug!(%error, "Cannot save the status document.");
    }
    depth.0
}

/// The host's name, for the status row.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Connects (with backoff), migrates, then forwards, writes status and runs
/// retention until cancelled. Never blocks polling: the store keeps filling.
async fn database_loop(
    shared: Shared,
    wake: Arc<Notify>,
    forwarder_cancel: CancellationToken,
    cancel: CancellationToken,
) {
    let Some(db) = shared.config.database.clone() else {
        return;
    };
    let mut delays = retry_backoff().build();
    let mut logged = false;
    let (pool, mode) = loop {
        let attempt = async {
            let mut conn = crate::db::connect_once(&db).await?;
            let report =
                crate::db::migrate::migrate(&mut conn, shared.config.retention.window).await?;
            for d in &report.degraded {
                tracing::info!(feature = d.feature, reason = %d.reason, "Degraded database feature.");
            }
            let pool = crate::db::connect(&db).await?;
            anyhow::Ok((pool, report.storage_mode))
        };
        match attempt.await {
            Ok(ready) => break ready,
            Err(error) => {
                shared.link.failed();
                if !logged {
                    logged = true;
                    tracing::warn!(error = %format!("{error:#}"), "The database is not ready; readings wait in the local store.");
                }
                // A server that answers and refuses (credentials, no such
                // database) is not asked every second; one that is out of
                // reach is, so that forwarding resumes as soon as it is back.
                let refused = error.downcast_ref::<crate::db::DbError>().is_some_and(|e| {
                    matches!(
                        e,
                        crate::db::DbError::Authentication { .. }
                            | crate::db::DbError::Refused { .. }
                    )
                });
                let delay = if refused {
                    REFUSED_RETRY
                } else {
                    delays.next().unwrap_or(crate::db::link::RETRY_MAX)
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    shared.link.works();
    tracing::info!(database = %db.redacted_url(), storage = %mode, "Database ready.");
    let forwarder = Forwarder::new(
        shared.store.clone(),
        pool.clone(),
        shared.config.site.installation_id.clone(),
        Arc::clone(&shared.forward),
        wake,
        Arc::clone(&shared.link),
    )
    .with_write_timeout(db.write_timeout);
    tokio::join!(
        forwarder.run(forwarder_cancel),
        status_writer(shared.clone(), pool.clone(), mode, cancel.clone()),
        retention_loop(shared.clone(), pool.clone(), mode, cancel.clone()),
    );
    // A last status row, best effort.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        write_db_status(&shared, &pool, mode),
    )
    .await;
    pool.close().await;
}

async fn status_writer(shared: Shared, pool: PgPool, mode: StorageMode, cancel: CancellationToken) {
    let mut tick = crate::sources::ticker(shared.poll_interval);
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Bounded: a slow or absent database never stalls anything else.
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            write_db_status(&shared, &pool, mode),
        )
        .await;
        if matches!(result, Ok(Ok(()))) {
            shared.link.works();
        }
        match result {
            Ok(Ok(())) if failing => {
                failing = false;
                tracing::info!("Status rows are written again.");
            }
            Ok(Ok(())) => {}
            Ok(Err(error)) if !failing => {
                failing = true;
                tracing::warn!(%error, "Cannot write the status rows.");
            }
            Err(_) if !failing => {
                failing = true;
                tracing::warn!("Writing the status rows timed out.");
            }
            _ => {}
        }
    }
}

async fn write_db_status(
    shared: &Shared,
    pool: &PgPool,
    mode: StorageMode,
) -> Result<(), sqlx::Error> {
    // Devices another daemon polls are that daemon's to report.
    let devices: Vec<_> = shared
        .status
        .snapshot()
        .into_iter()
        .filter(|d| !d.standby)
        .collect();
    if devices.is_empty() && shared.config.failover.enabled {
        return Ok(());
    }
    let (depth, oldest) = shared.store.depth().await.unwrap_or_default();
    let last_attempt = devices.iter().filter_map(|d| d.last_attempt).max();
    let last_success = devices.iter().filter_map(|d| d.last_success).max();
    let failing = devices.iter().filter(|d| !d.is_healthy());
    let last_error = failing
        .clone()
        .filter_map(|d| d.last_error.as_ref().map(|e| format!("{}: {e}", d.device)))
        .next();
    let consecutive = devices
        .iter()
        .map(|d| d.consecutive_failures)
        .max()
        .unwrap_or(0);
    let healthy = devices.iter().filter(|d| d.is_healthy()).count();
    let stopped_at = shared.stopped_at.get().copied();
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO victron.polling_status (id, last_poll_attempt, last_successful_poll, last_error,
             consecutive_failures, is_healthy, poller_host, poller_version, poller_started_at,
             poll_interval_ms, devices_configured, devices_healthy, rows_written_last_batch,
             rows_written_total, spool_depth, spool_oldest_age_s, retention_window_s, storage_mode,
             poller_stopped_at)
         VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
         ON CONFLICT (id) DO UPDATE SET last_poll_attempt = excluded.last_poll_attempt,
             last_successful_poll = excluded.last_successful_poll, last_error = excluded.last_error,
             consecutive_failures = excluded.consecutive_failures, is_healthy = excluded.is_healthy,
             poller_host = excluded.poller_host, poller_version = excluded.poller_version,
             poller_started_at = excluded.poller_started_at, poll_interval_ms = excluded.poll_interval_ms,
             devices_configured = excluded.devices_configured, devices_healthy = excluded.devices_healthy,
             rows_written_last_batch = excluded.rows_written_last_batch,
             rows_written_total = excluded.rows_written_total, spool_depth = excluded.spool_depth,
             spool_oldest_age_s = excluded.spool_oldest_age_s, retention_window_s = excluded.retention_window_s,
             storage_mode = excluded.storage_mode, poller_stopped_at = excluded.poller_stopped_at",
    )
    .bind(last_attempt)
    .bind(last_success)
    .bind(last_error)
    .bind(i32::try_from(consecutive).unwrap_or(i32::MAX))
    .bind(healthy == devices.len() && !devices.is_empty() && stopped_at.is_none())
    .bind(host_name())
    .bind(env!("CARGO_PKG_VERSION"))
    .bind(shared.started_at)
    .bind(i32::try_from(shared.poll_interval.as_millis()).unwrap_or(i32::MAX))
    .bind(i32::try_from(devices.len()).unwrap_or(i32::MAX))
    .bind(i32::try_from(healthy).unwrap_or(i32::MAX))
    .bind(i32::try_from(shared.forward.last_batch_rows.load(Ordering::Relaxed)).unwrap_or(i32::MAX))
    .bind(i64::try_from(shared.forward.rows_forwarded.load(Ordering::Relaxed)).unwrap_or(i64::MAX))
    .bind(depth)
    .bind(oldest.map(|o| (Utc::now() - o).num_milliseconds() as f64 / 1000.0))
    .bind(i64::try_from(shared.config.retention.window.as_secs()).unwrap_or(i64::MAX))
    .bind(mode.as_str())
    .bind(stopped_at)
    .execute(&mut *tx)
    .await?;
    for d in &devices {
        sqlx::query(
            "INSERT INTO victron.device_status (device, source, address, product_id, product_name, serial,
                 firmware, last_attempt, last_success, last_error, last_error_class, consecutive_failures,
                 backoff_ms, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now())
             ON CONFLICT (device) DO UPDATE SET source = excluded.source, address = excluded.address,
                 product_id = excluded.product_id, product_name = excluded.product_name,
                 serial = excluded.serial, firmware = excluded.firmware,
                 last_attempt = excluded.last_attempt, last_success = excluded.last_success,
                 last_error = excluded.last_error, last_error_class = excluded.last_error_class,
                 consecutive_failures = excluded.consecutive_failures, backoff_ms = excluded.backoff_ms,
                 updated_at = now()",
        )
        .bind(&d.device)
        .bind(d.source.as_str())
        .bind(&d.address)
        .bind(d.product_id.and_then(|p| i32::try_from(p).ok()))
        .bind(&d.product_name)
        .bind(&d.serial)
        .bind(&d.firmware)
        .bind(d.last_attempt)
        .bind(d.last_success)
        .bind(&d.last_error)
        .bind(d.last_error_class.map(|c| c.as_str()))
        .bind(i32::try_from(d.consecutive_failures).unwrap_or(i32::MAX))
        .bind(i64::try_from(d.backoff.as_millis()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

async fn retention_loop(
    shared: Shared,
    pool: PgPool,
    mode: StorageMode,
    cancel: CancellationToken,
) {
    let mut tick = crate::sources::ticker(shared.config.retention.run_every);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let window = shared.config.retention.window;
        let result = crate::retention::run(&pool, mode, window).await;
        shared.counters.count_retention(result.is_ok());
        match &result {
            Ok(outcome) => tracing::info!(
                rows = outcome.rows,
                chunks = outcome.chunks,
                "Retention run done."
            ),
            Err(error) => tracing::warn!(%error, "Retention run failed."),
        }
        let _ = crate::retention::record(&pool, Utc::now(), &result, window).await;
    }
}
