//! The daemon's live rollups ([`crate::history::live`]): after each
//! five-minute boundary has settled (the batch that closed it is stored or
//! forwarded), the rollups of the daemon's sites are brought up to it —
//! from PostgreSQL's raw rows when a database is configured, else from the
//! local store's. With a database, a boundary waits while readings measured
//! before it still wait in the local store (an outage's backlog), and such
//! readings arriving for five minutes already read make their day be read
//! again; so after an outage or a restart every bucket holds every reading
//! once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::state::Observed;
use crate::clock::TimeKeeper;
use crate::config::Config;
use crate::forward::DIRECT_WRITE_LIMIT;
use crate::history::buckets::{day_start, first_day_from, local_day};
use crate::history::live::{LiveRollups, RollupStore, sites_of};
use crate::store::LocalStore;

/// What the live rollups use.
#[derive(Debug, Clone)]
pub(super) struct RollupTask {
    config: Arc<Config>,
    /// The time readings are stamped with.
    clock: Arc<TimeKeeper>,
    /// Readings still waiting in it hold a boundary back (with a database);
    /// readings released from it rewind.
    store: LocalStore,
    /// Each device's site.
    sites: Arc<HashMap<String, String>>,
    /// How far the rollups have come: everything measured before it is
    /// rolled up (the local store's retention waits for it).
    rolled: watch::Sender<Option<DateTime<Utc>>>,
}

impl RollupTask {
    /// The rollups of the daemon's devices, telling `rolled` how far they
    /// have come.
    pub(super) fn new(observed: &Observed, rolled: watch::Sender<Option<DateTime<Utc>>>) -> Self {
        Self {
            config: Arc::clone(&observed.config),
            clock: Arc::clone(&observed.clock),
            store: observed.store.clone(),
            sites: Arc::clone(&observed.sites),
            rolled,
        }
    }
}

/// How often a boundary that cannot be taken yet is looked at again.
const RECHECK: Duration = Duration::from_secs(5);

/// How long after a boundary its readings are all stored: the batch that
/// was open at the boundary closes within its age limit and is written
/// within the direct path's limit (or falls back to the store, where the
/// wait for a backlog takes over).
fn settle(task: &RollupTask) -> chrono::Duration {
    let limit = task.config.batch.max_age + DIRECT_WRITE_LIMIT + Duration::from_secs(3);
    chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::seconds(10))
}

/// Runs the live rollups on `rows` until cancelled. Time is the clock
/// readings are stamped with (a gateway without a real-time clock may take
/// it from its GX or its database); while readings are held for their
/// time, nothing is rolled up.
pub(super) async fn rollup_loop(
    task: RollupTask,
    rows: impl RollupStore,
    cancel: CancellationToken,
) {
    let tz = task.config.site.timezone;
    let sites = sites_of(task.sites.values());
    let now = loop {
        if let Some(now) = task.clock.now() {
            break now;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(RECHECK) => {}
        }
    };
    let from = rows.resume_from(tz, now).await;
    let mut live = LiveRollups::new(tz, task.config.history.max_gap.as_secs_f64(), sites, from);
    let settle = settle(&task);
    let publish = |live: &LiveRollups| {
        task.rolled.send_replace(Some(live.needed_from()));
    };
    publish(&live);
    let mut failing = false;
    loop {
        let wait = match task.clock.now() {
            None => RECHECK,
            Some(now) => step(&task, &rows, &mut live, now - settle, &mut failing).await,
        };
        publish(&live);
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One look: brings the rollups up to the last boundary settled at
/// `settled`, when nothing it needs still waits; returns how long to wait
/// before the next look.
async fn step(
    task: &RollupTask,
    rows: &impl RollupStore,
    live: &mut LiveRollups,
    settled: DateTime<Utc>,
    failing: &mut bool,
) -> Duration {
    // Readings released with a confirmed time join the readings in the
    // past; readings of an outage's backlog still wait in the store.
    if let Some(released) = task.store.take_released_from() {
        live.rewind(released.max(earliest_rewind(task, live, settled)));
    }
    let target = live.boundary(settled);
    if target <= live.through() {
        // Until the next boundary has settled (looked at again now and
        // then: the clock may be set meanwhile).
        let next = live.through() + chrono::Duration::minutes(5);
        return (next - settled)
            .to_std()
            .unwrap_or(RECHECK)
            .clamp(RECHECK, Duration::from_secs(60));
    }
    if let Some(blocked) = waiting_before(task, rows, live, settled, target).await {
        tracing::trace!(%blocked, "Rollups wait for readings still in the local store.");
        return RECHECK;
    }
    match live.advance(rows, target).await {
        Ok(step) => {
            if *failing {
                *failing = false;
                tracing::info!("Rollups are written again.");
            }
            tracing::debug!(
                readings = step.readings,
                rollups = step.rollups,
                days = step.days_completed,
                through = %live.through(),
                "Rollups brought up to date."
            );
            if step.days_completed > 0 {
                tracing::info!(days = step.days_completed, "Rolled up a completed day.");
            }
            Duration::ZERO
        }
        Err(error) => {
            if !*failing {
                *failing = true;
                tracing::warn!(%error, "Cannot write the rollups; they are retried.");
            }
            RECHECK * 6
        }
    }
}

/// How far back a rewind may go: with a database, to the start of the day
/// being rolled up or of today, whichever is earlier (earlier days are the
/// daily roll-up's, which sees late rows by their arrival); without one,
/// to the first day raw retention has not started on (a day it has would
/// be rolled up again with less than it had).
fn earliest_rewind(task: &RollupTask, live: &LiveRollups, now: DateTime<Utc>) -> DateTime<Utc> {
    let tz = task.config.site.timezone;
    match task.config.database {
        Some(_) => day_start(local_day(now, tz), tz).min(live.open_day_start()),
        None => {
            let window = chrono::Duration::from_std(task.config.retention.window)
                .unwrap_or(chrono::Duration::days(3));
            day_start(first_day_from(now - window, tz), tz)
        }
    }
}

/// With a database: the measurement time of the oldest reading of `sites`
/// still waiting in the local store, when it is before `target` (the step
/// must wait for it); one before what was read already rewinds.
async fn waiting_before(
    task: &RollupTask,
    rows: &impl RollupStore,
    live: &mut LiveRollups,
    now: DateTime<Utc>,
    target: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if !rows.after_the_store() {
        return None;
    }
    if task.store.depth().await.is_ok_and(|b| b.readings == 0) {
        return None;
    }
    let waiting = match task.store.depth_by_site().await {
        Ok(waiting) => waiting,
        // Cannot tell: wait.
        Err(_) => return Some(target),
    };
    let oldest = live
        .sites()
        .iter()
        .filter_map(|site| waiting.get(site).and_then(|b| b.oldest))
        .min()?;
    if oldest < live.through() {
        live.rewind(oldest.max(earliest_rewind(task, live, now)));
    }
    (oldest < target).then_some(oldest)
}
