//! The running daemon's [`Snapshot`], taken from its shared state, and the
//! observer that answers `/healthz`, `/metrics`, the page and the API
//! from it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;

use super::state::{Observed, STATUS_EVERY, host_name};
use crate::report::health::{self, Health};
use crate::report::http::Reply;
use crate::report::{Snapshot, Stalled, metrics};
use crate::web::{Daemon, Site};

/// The daemon's status now (one query to the local store for its depth).
pub(super) async fn snapshot(shared: &Observed) -> Snapshot {
    let backlog = shared.store.depth().await.unwrap_or_default();
    let (spool_depth, spool_oldest) = (backlog.readings, backlog.oldest);
    let stalled = shared
        .status
        .stalled(shared.config.health.stall_timeout)
        .into_iter()
        .map(|(device, idle)| Stalled {
            device,
            idle_s: idle.as_secs_f64(),
        })
        .collect();
    let counters = &shared.counters;
    let forward = &shared.forward;
    Snapshot {
        version: env!("CARGO_PKG_VERSION").into(),
        host: host_name(),
        started_at: shared.started_at,
        stopped_at: shared.stopped_at.get().copied(),
        poll_interval_ms: u64::try_from(shared.poll_interval.as_millis()).unwrap_or(u64::MAX),
        status_every_ms: u64::try_from(status_every(shared).as_millis()).unwrap_or(u64::MAX),
        rows_stored: counters.rows_stored.load(Ordering::Relaxed),
        rows_forwarded: forward.rows_forwarded.load(Ordering::Relaxed),
        rows_parked: forward.rows_parked.load(Ordering::Relaxed),
        rows_expired_unforwarded: counters.rows_expired_unforwarded.load(Ordering::Relaxed),
        forward_errors: forward.errors.load(Ordering::Relaxed),
        retention_runs: counters.retention_runs.load(Ordering::Relaxed),
        retention_failures: counters.retention_failures.load(Ordering::Relaxed),
        log_lines_dropped: crate::logging::dropped_lines(),
        spool_depth,
        spool_oldest,
        database: shared.config.database.as_ref().map(|d| d.redacted_url()),
        database_down_since: shared.link.down_since(),
        stall_timeout_ms: u64::try_from(shared.config.health.stall_timeout.as_millis())
            .unwrap_or(u64::MAX),
        stalled,
        devices: shared.status.snapshot(),
        clock: shared.clock.report(),
        held_readings: shared.store.held(),
        store_writes: shared.writes.now(),
        store_incidents: shared.store.incidents(),
        restarts: shared.restarts.recent(),
    }
}

/// Answers the health endpoint from the live daemon.
#[derive(Debug)]
pub(super) struct DaemonObserver {
    shared: Observed,
    site: Site,
}

impl DaemonObserver {
    pub(super) fn new(shared: Observed, site: Site) -> Self {
        Self { shared, site }
    }
}

impl crate::report::http::Observe for DaemonObserver {
    async fn health(&self) -> Health {
        let now = Utc::now();
        health::judge(&snapshot(&self.shared).await, now, now)
    }

    async fn metrics(&self) -> String {
        let now = Utc::now();
        let snapshot = snapshot(&self.shared).await;
        let verdict = health::judge(&snapshot, now, now);
        let mut page = metrics::page(&snapshot, &verdict, now);
        page.push_str(&metrics::values(&self.site.fresh(now)));
        page
    }

    async fn answer(&self, path: &str, query: Option<&str>) -> Option<Reply> {
        if !Site::serves(path) {
            return None;
        }
        let now = Utc::now();
        let snapshot = snapshot(&self.shared).await;
        let health = health::judge(&snapshot, now, now);
        let daemon = Daemon {
            snapshot: &snapshot,
            health: &health,
            now,
        };
        self.site.answer(path, query, daemon).await
    }
}

/// The longest gap between two saves of the status document: its period
/// in whole status ticks, and then up to a batch's age for the batch it
/// rides with.
pub(super) fn status_every(shared: &Observed) -> Duration {
    crate::schedule::whole_ticks(
        STATUS_EVERY,
        shared.poll_interval.max(Duration::from_secs(1)),
    ) + shared.config.batch.max_age.min(STATUS_EVERY)
}
