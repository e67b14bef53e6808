//! The daemon's status rows in PostgreSQL ([`crate::db::status_rows`]):
//! written when what they say changes (a device's health or error class,
//! which devices this daemon polls, the clock's basis, readings held, a
//! stop) and otherwise every [`STATUS_EVERY`] in whole poll intervals;
//! each write bounded, a failed one retried at the next tick. The
//! database server's clock is sampled here too, when the time keeper wants
//! it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::state::{Observed, STATUS_EVERY, host_name};
use crate::clock::{Basis, seconds_between};
use crate::db::server::StorageMode;
use crate::db::status_rows::{self, PollerRow, SiteRows};
use crate::schedule::{Cadence, Save};
use crate::status::{DeviceStatus, ErrorClass};

/// The longest one write of the status rows may take: a slow or absent
/// database never stalls anything else.
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn status_writer(
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

/// How often the status rows are rewritten while only their times and
/// counts move: [`STATUS_EVERY`] in whole poll intervals (every poll, when
/// a poll interval is longer).
fn status_every(shared: &Observed) -> Duration {
    crate::schedule::whole_ticks(STATUS_EVERY, shared.poll_interval)
}

/// The devices this daemon polls: those another daemon polls (on standby
/// here) are that daemon's to report.
pub(super) fn polled_devices(shared: &Observed) -> Vec<DeviceStatus> {
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
pub(super) async fn write_db_status(
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

/// The longest a sample of the server's clock may take.
const CLOCK_SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Samples the server's clock for the time keeper, bounded; a failure is
/// only a missing sample.
pub(super) async fn sample_database_clock(shared: &Observed, pool: &PgPool) {
    let sampled = tokio::time::timeout(
        CLOCK_SAMPLE_TIMEOUT,
        crate::db::clock::sample(pool, &shared.clock),
    )
    .await;
    if let Ok(Err(error)) = sampled {
        tracing::debug!(%error, "Cannot read the database server's clock.");
    }
}
