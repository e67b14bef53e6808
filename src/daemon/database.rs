//! The daemon's database side: bring-up (connect with backoff, migrate,
//! reconcile), then the forwarder, the status writer (`status_rows.rs`), the
//! live rollups and the retention job
//! side by side until shutdown. Nothing here blocks polling: readings wait
//! in the local store while the database is slow or gone.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::rollups::{RollupTask, rollup_loop};
use super::state::Observed;
use super::status_rows::{polled_devices, sample_database_clock, status_writer, write_db_status};
use super::supervise::Supervised;
use crate::db::link::retry_backoff;
use crate::db::server::StorageMode;
use crate::db::status_rows;
use crate::forward::{DirectPath, Forwarder, ForwarderState};

/// How long the daemon waits before asking again a database server that
/// answered and refused it (credentials, no such database).
const REFUSED_RETRY: Duration = Duration::from_secs(30);

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
    pub(super) forwarder: watch::Sender<ForwarderState>,
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
    .reporting(task.forwarder.clone());
    // The live rollups: a task of their own under the supervisor (whatever
    // happens to them, forwarding goes on), ending with this database side
    // (dropped by a panic too: a restart of it starts them afresh).
    let rollups_stop = cancel.child_token();
    let _rollups_end = rollups_stop.clone().drop_guard();
    let rollups = {
        let (rollups, rows, stop) = (
            task.rollups.clone(),
            crate::history::postgres::PostgresRollups(pool.clone()),
            rollups_stop.clone(),
        );
        task.tasks.spawn(
            shared.supervise(Supervised::helper("rollups"), rollups_stop, move || {
                rollup_loop(rollups.clone(), rows.clone(), stop.clone())
            }),
        )
    };
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
