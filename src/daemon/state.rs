//! What the daemon's tasks share, by who reads it: [`Observed`] is what its
//! status is made of (the status writers, `/healthz` and `/metrics` take a
//! [`crate::report::Snapshot`] of it); [`DaemonCounters`]; and the facts of
//! the configuration every task agrees on (the shortest poll interval, the
//! device names, the host name).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::supervise;
use crate::clock::TimeKeeper;
use crate::config::Config;
use crate::db::link::DatabaseLink;
use crate::forward::ForwardCounters;
use crate::latest::LatestReadings;
use crate::pipeline::WriteHealth;
use crate::status::StatusBoard;
use crate::store::LocalStore;

/// How often the daemon's status is saved (the status document in the local
/// store, the status rows in PostgreSQL) while only its times and counts
/// move; a change in what it says is saved at once. The snapshot and the
/// rows carry the period, so that `status` allows for it
/// ([`crate::report::health::stale_after`]); rare enough to cost neither
/// the SD card nor the CPU.
pub(super) const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Counters shared by the daemon's tasks.
#[derive(Debug, Default)]
pub(super) struct DaemonCounters {
    /// Readings committed to the local store since start.
    pub(super) rows_stored: Arc<AtomicU64>,
    /// Readings dropped from the store because they outlived the window
    /// before they could be forwarded.
    pub(super) rows_expired_unforwarded: AtomicU64,
    /// Retention runs that completed (local store and database).
    pub(super) retention_runs: AtomicU64,
    /// Retention runs that failed.
    pub(super) retention_failures: AtomicU64,
}

impl DaemonCounters {
    /// Counts one retention run, local or remote.
    pub(super) fn count_retention(&self, succeeded: bool) {
        let counter = if succeeded {
            &self.retention_runs
        } else {
            &self.retention_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the daemon's status is made of: the status writers (the local
/// document, the database rows) and the health endpoint take their
/// [`crate::report::Snapshot`] of it.
#[derive(Debug, Clone)]
pub(super) struct Observed {
    pub(super) config: Arc<Config>,
    pub(super) store: LocalStore,
    pub(super) status: StatusBoard,
    pub(super) counters: Arc<DaemonCounters>,
    pub(super) forward: Arc<ForwardCounters>,
    /// Whether the database can be reached, as every database path sees it.
    pub(super) link: Arc<DatabaseLink>,
    pub(super) started_at: DateTime<Utc>,
    /// When the daemon stopped cleanly: set once, before the last status
    /// writes, so that `status` says "stopped" at once.
    pub(super) stopped_at: Arc<std::sync::OnceLock<DateTime<Utc>>>,
    pub(super) poll_interval: Duration,
    /// Each device's site.
    pub(super) sites: Arc<HashMap<String, String>>,
    /// Measurement times: fed by the GX pollers and the database side.
    pub(super) clock: Arc<TimeKeeper>,
    /// How the local store takes the batches.
    pub(super) writes: Arc<WriteHealth>,
    /// The tasks restarted after a panic.
    pub(super) restarts: Arc<supervise::Restarts>,
    /// Each device's newest reading.
    pub(super) latest: LatestReadings,
}

impl Observed {
    /// A daemon of `config` on `store`, starting now: nothing counted yet.
    pub(super) fn starting(config: &Arc<Config>, store: &LocalStore) -> Self {
        Self {
            config: Arc::clone(config),
            store: store.clone(),
            status: StatusBoard::new(),
            counters: Arc::default(),
            forward: Arc::default(),
            link: Arc::new(DatabaseLink::default()),
            started_at: Utc::now(),
            stopped_at: Arc::default(),
            poll_interval: poll_interval(config),
            sites: Arc::new(config.device_sites()),
            writes: Arc::default(),
            restarts: Arc::default(),
            latest: LatestReadings::new(),
            clock: Arc::new(TimeKeeper::new(
                config.clock.trust_local,
                config.database.is_some(),
            )),
        }
    }

    /// `start()`'s task under a supervisor reporting to this daemon's
    /// status and restarts.
    pub(super) fn supervise<F, Fut>(
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
pub(crate) fn poll_interval(config: &Config) -> Duration {
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
pub(super) fn device_names(config: &Config) -> Vec<&str> {
    config
        .gx
        .iter()
        .flat_map(|g| g.devices.iter().map(|d| d.name.as_str()))
        .chain(config.vedirect.iter().map(|v| v.name.as_str()))
        .collect()
}

/// The host's name, for the status rows: read once (a file read at every
/// status write is a gateway's CPU for nothing).
pub(super) fn host_name() -> String {
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
