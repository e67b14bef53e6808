//! The daemon's local side: its [`Snapshot`] as the systemd status line
//! every poll interval (at most once a second) and as the status document in the local store (what
//! `status` reads without a database: committed with the next batch, every
//! few seconds or when the verdict, the devices polled here or the clock's
//! basis change), and the local store's retention.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::observe;
use super::state::{Observed, STATUS_EVERY};
use crate::clock::Basis;
use crate::report::Snapshot;
use crate::report::health::{self, Health, Level};
use crate::schedule::{Cadence, Save};
use crate::store::STATUS_NAME;

/// How often the store's file is checked for having been deleted or
/// replaced under the daemon (a `stat`).
const FILE_CHECK_EVERY: Duration = Duration::from_secs(10);

/// The local side: status document in the store, the store's file, and the
/// store's retention.
pub(super) async fn local_loop(
    shared: Observed,
    rolled: watch::Receiver<Option<DateTime<Utc>>>,
    cancel: CancellationToken,
) {
    // At most once a second: a 10 Hz daemon need not judge itself ten
    // times a second.
    let mut status_tick =
        crate::schedule::common_ticker(shared.poll_interval.max(Duration::from_secs(1)));
    let mut retention_tick = crate::schedule::ticker(shared.config.retention.run_every);
    let mut cadence = Cadence::new(STATUS_EVERY);
    let mut file_tick = crate::schedule::common_ticker(FILE_CHECK_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = file_tick.tick() => {
                if let Err(error) = shared.store.check_file().await {
                    tracing::error!(%error, "Cannot reopen the local store.");
                }
            }
            now = status_tick.tick() => {
                let snapshot = observe::snapshot(&shared).await;
                let wall = Utc::now();
                let verdict = health::judge(&snapshot, wall, wall);
                let shape = Shape::of(&snapshot, &verdict);
                let save = cadence.judge(&shape, now);
                // A batch's age, but never longer than the save period:
                // batches of minutes must not age the document past what
                // `status` allows.
                let unclaimed = cadence
                    .since_saved(now)
                    .is_some_and(|ago| ago >= shared.config.batch.max_age.min(STATUS_EVERY));
                if save != Save::Not {
                    stage(&shared, &snapshot);
                    cadence.saved(shape, now);
                }
                // A change is saved at once (what `status` reads agrees with
                // the systemd status line); the periodic save rides with the
                // next batch, and one that no batch committed in time (no
                // device answers) is committed on its own.
                if (save == Save::Changed || (save == Save::Not && unclaimed))
                    && let Err(error) = shared.store.flush_status().await
                {
                    tracing::debug!(%error, "Cannot save the status document.");
                }
                crate::systemd::status(&snapshot.status_line(&verdict));
            }
            _ = retention_tick.tick() => {
                let mut before = Utc::now() - chrono::Duration::from_std(shared.config.retention.window).unwrap_or_default();
                // Without a database the raw readings are the rollups'
                // source: none goes before its buckets are rolled up.
                if shared.config.database.is_none() {
                    let rolled = rolled.borrow().unwrap_or(DateTime::UNIX_EPOCH);
                    before = before.min(rolled);
                }
                let result = shared.store.expire(before, shared.config.retention.window).await;
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
                // Without a database the store keeps the rollups too.
                if shared.config.database.is_none() {
                    match crate::history::sqlite::LocalRollups(shared.store.clone()).expire_history(shared.config.history.keep, Utc::now()).await {
                        Ok(0) => {}
                        Ok(rows) => tracing::info!(rows, "Expired rollups removed from the local store."),
                        Err(error) => tracing::warn!(%error, "Local history retention failed."),
                    }
                }
            }
        }
    }
}

/// What makes a status document worth saving at once rather than at the
/// end of its [`STATUS_EVERY`]: the verdict, which devices this daemon polls (a
/// failover handover), and where measurement times come from.
#[derive(PartialEq)]
struct Shape {
    level: Level,
    standby: Vec<bool>,
    clock: Basis,
}

impl Shape {
    fn of(snapshot: &Snapshot, verdict: &Health) -> Self {
        Self {
            level: verdict.level,
            standby: snapshot
                .devices
                .iter()
                .map(|device| device.standby)
                .collect(),
            clock: snapshot.clock.basis,
        }
    }
}

/// Stages the snapshot as the status document: the next batch commits it.
fn stage(shared: &Observed, snapshot: &Snapshot) {
    match serde_json::to_value(snapshot) {
        Ok(doc) => shared.store.stage_status(STATUS_NAME, &doc),
        Err(error) => tracing::debug!(%error, "Cannot encode the status document."),
    }
}

/// Saves the daemon's snapshot in the store now (the last one, at a stop).
pub(super) async fn write_local_status(shared: &Observed) -> Snapshot {
    let snapshot = observe::snapshot(shared).await;
    stage(shared, &snapshot);
    if let Err(error) = shared.store.flush_status().await {
        tracing::debug!(%error, "Cannot save the status document.");
    }
    snapshot
}
