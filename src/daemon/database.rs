//! The daemon's database side: bring-up (connect with backoff, migrate,
//! reconcile), then the forwarder, the status writer and the retention job
//! side by side until shutdown. Nothing here blocks polling: readings wait
//! in the local store while the database is slow or gone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::rollups::{RollupTask, rollup_loop};
use super::state::{Observed, STATUS_EVERY, host_name};
use crate::clock::{Basis, seconds_between};
use crate::db::link::retry_backoff;
use crate::db::server::StorageMode;
use crate::db::status_rows::{self, PollerRow, SiteRows};
use crate::forward::{DirectPath, Forwarder, ForwarderState};
use crate::schedule::{Cadence, Save};
use crate::status::{DeviceStatus, ErrorClass};

/// How long the daemon waits before asking again a database server that
/// answered and refused it (credentials, no such database).
const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// The longest one write of the status rows may take: a slow or absent
/// database never stalls anything else.
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a sample of the server's clock may take.
const CLOCK_SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest the last status write at shutdown may take.
const LAST_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// What the database side uses.
#[derive(Debug, Clone)]
pub(super) struct DatabaseTask {
    /// What the status rows say.
    pub(super) observed: Observed,
    /// Forward-first, opened once the forwarder runs.
    pub(super) direct: DirectPath,
    /// Told when the local store has something new to forward.
    pub(super) wake: Arc<Notify>,
    /// Where the forwarder is (a stop waits for a drain only while it runs).
    pub(super) forwarder: Arc<watch::Sender<ForwarderState>>,
    /// The live rollups, started once the database is ready.
    pub(super) rollups: RollupTask,
    /// The daemon's one tracker, for the rollups' task.
    pub(super) tasks: TaskTracker,
}

/// Connects (with backoff), migrates, then forwards, writes status and runs
/// retention until cancelled. Never blocks polling: the store keeps filling.
pub(super) async fn database_loop(task: DatabaseTask, cancel: CancellationToken) {
    let shared = &task.observed;
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
                let db_error = error.downcast_ref::<crate::db::DbError>();
                // Only a server out of reach is an outage; a failed
                // migration is reported as what it is.
                if db_error.is_some_and(|e| !matches!(e, crate::db::DbError::Query(_))) {
                    shared.link.failed();
                }
                if !logged {
                    logged = true;
                    tracing::warn!(error = %format!("{error:#}"), "The database is not ready; readings wait in the local store.");
                }
                // A server that answers and refuses (credentials, no such
                // database) is not asked every second; one that is out of
                // reach is, so that forwarding resumes as soon as it is back.
                let refused = db_error.is_some_and(|e| {
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
                    () = shared.link.retry_after(delay) => {}
                }
            }
        }
    };
    shared.link.works();
    tracing::info!(database = %db.redacted_url(), storage = %mode, "Database ready.");
    // Before anything is forwarded: readings held for their time may be
    // stamped from the server's clock.
    sample_database_clock(shared, &pool).await;
    let forwarder = Forwarder::new(
        shared.store.clone(),
        pool.clone(),
        Arc::clone(&shared.forward),
        Arc::clone(&task.wake),
        Arc::clone(&shared.link),
    )
    .with_write_timeout(db.write_timeout)
    .with_direct_path(task.direct.clone())
    .reporting(task.forwarder.as_ref().clone());
    // Its own task: whatever happens to the rollups, forwarding goes on.
    let rollups = task.tasks.spawn(rollup_loop(
        task.rollups.clone(),
        crate::history::postgres::PostgresRollups(pool.clone()),
        cancel.clone(),
    ));
    tokio::join!(
        forwarder.run(cancel.clone()),
        status_writer(shared.clone(), pool.clone(), mode, cancel.clone()),
        retention_loop(shared.clone(), pool.clone(), mode, cancel.clone()),
        async {
            if let Err(error) = rollups.await {
                tracing::error!(%error, "The live rollups stopped.");
            }
        },
    );
    // A last status row, best effort.
    let last = write_db_status(shared, &pool, mode, polled_devices(shared));
    let _ = tokio::time::timeout(LAST_STATUS_TIMEOUT, last).await;
    pool.close().await;
}

async fn status_writer(
    shared: Observed,
    pool: PgPool,
    mode: StorageMode,
    cancel: CancellationToken,
) {
    let mut tick = crate::schedule::common_ticker(shared.poll_interval);
    let mut cadence = Cadence::new(status_every(&shared));
    let mut failing = false;
    // The first rows at once (the database has just come up), then on the
    // common grid (whose next point may be up to a poll interval away).
    let mut first = true;
    loop {
        let now = if std::mem::take(&mut first) {
            tokio::time::Instant::now()
        } else {
            tokio::select! {
                () = cancel.cancelled() => return,
                at = tick.tick() => at,
            }
        };
        if shared.clock.wants_database_sample() {
            sample_database_clock(&shared, &pool).await;
        }
        let devices = polled_devices(&shared);
        let shape = RowsShape::of(&shared, &devices);
        if cadence.judge(&shape, now) == Save::Not {
            continue;
        }
        // Bounded: a slow or absent database never stalls anything else.
        let result = tokio::time::timeout(
            STATUS_WRITE_TIMEOUT,
            write_db_status(&shared, &pool, mode, devices),
        )
        .await;
        if matches!(result, Ok(Ok(()))) {
            cadence.saved(shape, now);
        } else {
            cadence.forget();
        }
        match &result {
            Ok(Ok(())) => shared.link.works(),
            // The connection itself failed: the database is out of reach. (An
            // error from the server, or a wait for the forwarder's turn on
            // the connection, says nothing about reachability.)
            Ok(Err(sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_))) => {
                shared.link.failed();
            }
            Ok(Err(_)) | Err(_) => {}
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

/// Rolls up the completed local days of every site this daemon polls
/// (see [`crate::history::rebuild::roll_completed_days`]).
async fn roll_completed_days(shared: &Observed, pool: &PgPool) {
    let waiting = shared.store.depth_by_site().await.unwrap_or_default();
    for site in &crate::history::live::sites_of(shared.sites.values()) {
        let rolled = crate::history::rebuild::roll_completed_days(
            pool,
            shared.config.site.timezone,
            shared.config.history.max_gap.as_secs_f64(),
            site,
            shared.config.retention.window,
            waiting.get(site).and_then(|b| b.oldest),
        )
        .await;
        match rolled {
            Ok(days) if days.is_empty() => {}
            Ok(days) => tracing::info!(site, days = ?days, "Rolled up completed days."),
            Err(error) => tracing::warn!(site, %error, "Rolling up completed days failed."),
        }
    }
}

/// Samples the server's clock for the time keeper, bounded; a failure is
/// only a missing sample.
async fn sample_database_clock(shared: &Observed, pool: &PgPool) {
    let sampled = tokio::time::timeout(
        CLOCK_SAMPLE_TIMEOUT,
        crate::db::clock::sample(pool, &shared.clock),
    )
    .await;
    if let Ok(Err(error)) = sampled {
        tracing::debug!(%error, "Cannot read the database server's clock.");
    }
}

/// How often the status rows are rewritten while only their times and
/// counts move: [`STATUS_EVERY`] in whole poll intervals (every poll, when
/// a poll interval is longer).
fn status_every(shared: &Observed) -> Duration {
    crate::schedule::whole_ticks(STATUS_EVERY, shared.poll_interval)
}

/// The devices this daemon polls: those another daemon polls (on standby
/// here) are that daemon's to report.
fn polled_devices(shared: &Observed) -> Vec<DeviceStatus> {
    let mut devices = shared.status.snapshot();
    devices.retain(|d| !d.standby);
    devices
}

/// What makes the status rows worth writing at once rather than at the end
/// of their period: which devices this daemon polls (a failover handover),
/// each one's health and error class, where measurement times come from,
/// whether readings are held, and a stop.
#[derive(Debug, PartialEq)]
struct RowsShape {
    devices: Vec<(String, bool, Option<ErrorClass>)>,
    clock: Basis,
    holds_readings: bool,
    stopped: bool,
}

impl RowsShape {
    fn of(shared: &Observed, devices: &[DeviceStatus]) -> Self {
        let clock = shared.clock.report();
        Self {
            devices: devices
                .iter()
                .map(|d| (d.device.clone(), d.is_healthy(), d.last_error_class))
                .collect(),
            clock: clock.basis,
            holds_readings: clock.holds_readings(),
            stopped: shared.stopped_at.get().is_some(),
        }
    }
}

/// Writes the status rows of the sites of `devices` (those this daemon
/// polls).
async fn write_db_status(
    shared: &Observed,
    pool: &PgPool,
    mode: StorageMode,
    devices: Vec<DeviceStatus>,
) -> Result<(), sqlx::Error> {
    let mut by_site: BTreeMap<String, Vec<DeviceStatus>> = BTreeMap::new();
    for device in devices {
        let site = shared
            .sites
            .get(&device.device)
            .cloned()
            .unwrap_or_default();
        by_site.entry(site).or_default().push(device);
    }
    // The rows say what the one health judge says of each site's part of
    // the daemon's snapshot (its devices; the store and the tasks are every
    // site's).
    let snapshot = super::observe::snapshot(shared).await;
    let now = Utc::now();
    let verdict_of = |devices: &[DeviceStatus]| {
        let mut part = snapshot.clone();
        part.devices
            .retain(|d| devices.iter().any(|s| s.device == d.device));
        part.stalled
            .retain(|h| devices.iter().any(|s| s.device == h.device));
        // A stop is the rows' own column (`poller_stopped_at`), which the
        // views say in words.
        part.stopped_at = None;
        crate::report::health::judge(&part, now, now)
    };
    let spool = shared.store.depth_by_site().await.unwrap_or_default();
    let held = shared.store.held_by_site().await.unwrap_or_default();
    let clock = shared.clock.report();
    let stopped_at = shared.stopped_at.get().copied();
    let sites: Vec<SiteRows> = by_site
        .into_iter()
        .map(|(site, devices)| {
            let healthy = devices.iter().filter(|d| d.is_healthy()).count();
            let verdict = verdict_of(&devices);
            let backlog = spool.get(&site).copied().unwrap_or_default();
            let (spool_depth, oldest) = (backlog.readings, backlog.oldest);
            let (rows_total, rows_last_batch) = shared.forward.site(&site);
            let status = PollerRow {
                last_attempt: devices.iter().filter_map(|d| d.last_attempt).max(),
                last_success: devices.iter().filter_map(|d| d.last_success).max(),
                last_error: verdict.reasons.first().cloned(),
                consecutive_failures: devices
                    .iter()
                    .map(|d| d.consecutive_failures)
                    .max()
                    .unwrap_or(0),
                healthy: verdict.level == crate::report::health::Level::Healthy
                    && healthy == devices.len()
                    && !devices.is_empty()
                    && stopped_at.is_none(),
                host: host_name(),
                version: env!("CARGO_PKG_VERSION"),
                started_at: shared.started_at,
                stopped_at,
                poll_interval: shared.poll_interval,
                devices_configured: devices.len(),
                devices_healthy: healthy,
                rows_last_batch,
                rows_total,
                spool_depth,
                spool_oldest_age_s: oldest.map(|o| seconds_between(o, Utc::now())),
                retention_window: shared.config.retention.window,
                storage_mode: mode,
                clock: clock.basis.as_str(),
                clock_offset_s: clock.offset_s,
                held_readings: held.get(&site).copied().unwrap_or(0),
                status_every: status_every(shared),
            };
            SiteRows {
                site,
                status,
                devices,
            }
        })
        .collect();
    // Every device on standby: the active daemon reports them.
    if sites.is_empty() {
        return Ok(());
    }
    status_rows::write(pool, &sites).await
}

async fn retention_loop(
    shared: Observed,
    pool: PgPool,
    mode: StorageMode,
    cancel: CancellationToken,
) {
    let mut tick = crate::schedule::ticker(shared.config.retention.run_every);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let window = shared.config.retention.window;
        // Completed days are rolled up before their raw rows can expire.
        roll_completed_days(&shared, &pool).await;
        // A stop does not wait for a long run: what it did not delete, the
        // next run does (each batch of deletes is its own statement).
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            result = crate::db::retention::run(&pool, mode, window) => result,
        };
        shared.counters.count_retention(result.is_ok());
        match &result {
            Ok(outcome) => tracing::info!(
                rows = outcome.rows,
                chunks = outcome.chunks,
                "Retention run done."
            ),
            Err(error) => tracing::warn!(%error, "Retention run failed."),
        }
        let _ = status_rows::record_retention(&pool, &result, window).await;
        match crate::history::postgres::expire(&pool, mode, shared.config.history.keep).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "Expired rollups removed."),
            Err(error) => tracing::warn!(%error, "History retention failed."),
        }
    }
}
