//! The daemon's live rollups ([`crate::history::live`]): after each
//! five-minute boundary has settled (the batch that closed it is stored or
//! forwarded), the rollups of the daemon's sites are brought up to it —
//! from PostgreSQL's raw rows when a database is configured, else from the
//! local store's. With a database, a boundary waits while readings measured
//! before it still wait in the local store (an outage's backlog), and such
//! readings arriving for five minutes already read make their day be read
//! again; so after an outage or a restart every bucket holds every reading
//! once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::forward::DIRECT_WRITE_LIMIT;
use crate::history::buckets::{day_start, local_day};
use crate::history::live::{LiveRollups, RawRows, resume_from, sites_of};

/// How often a boundary that cannot be taken yet is looked at again.
const RECHECK: Duration = Duration::from_secs(5);

/// How long after a boundary its readings are all stored: the batch that
/// was open at the boundary closes within its age limit and is written
/// within the direct path's limit (or falls back to the store, where the
/// wait for a backlog takes over).
fn settle(shared: &Shared) -> chrono::Duration {
    let limit = shared.config.batch.max_age + DIRECT_WRITE_LIMIT + Duration::from_secs(3);
    chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::seconds(10))
}

/// Runs the live rollups on `rows` until cancelled.
pub(super) async fn rollup_loop(shared: Shared, rows: RawRows, cancel: CancellationToken) {
    let tz = shared.config.site.timezone;
    let sites = sites_of(shared.sites.values());
    let now = Utc::now();
    let from = match &rows {
        // Completed days are PostgreSQL's daily roll-up's: the live side
        // starts with today.
        RawRows::Database(_) => now,
        RawRows::Store(store) => resume_from(store, tz, now).await,
    };
    let mut live = LiveRollups::new(
        tz,
        shared.config.history.max_gap.as_secs_f64(),
        sites.clone(),
        from,
    );
    let settle = settle(&shared);
    let publish = |live: &LiveRollups| {
        shared
            .rolled_through
            .store(live.through().timestamp_micros(), Ordering::Relaxed);
    };
    publish(&live);
    let mut held_before = shared.store.held();
    let mut failing = false;
    loop {
        let now = Utc::now();
        let target = live.boundary(now - settle);
        let wait = if target <= live.through() {
            // Until the next boundary has settled (looked at again now and
            // then: the wall clock may be set meanwhile).
            let next = live.through() + chrono::Duration::minutes(5) + settle;
            (next - now)
                .to_std()
                .unwrap_or(RECHECK)
                .clamp(RECHECK, Duration::from_secs(60))
        } else if let Some(blocked) =
            waiting_before(&shared, &rows, &sites, &mut live, target).await
        {
            tracing::trace!(%blocked, "Rollups wait for readings still in the local store.");
            RECHECK
        } else {
            // Readings released with a confirmed time land in the past.
            let held = shared.store.held();
            if held < held_before {
                live.rewind(today(&shared, now));
            }
            held_before = held;
            let advanced = live.advance(&rows, target).await;
            publish(&live);
            match advanced {
                Ok(step) => {
                    if failing {
                        failing = false;
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
                    if !failing {
                        failing = true;
                        tracing::warn!(%error, "Cannot write the rollups; they are retried.");
                    }
                    RECHECK * 6
                }
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The start of today, where a rewind may go back to at the furthest:
/// with a database, earlier days are the daily roll-up's.
fn today(shared: &Shared, now: DateTime<Utc>) -> DateTime<Utc> {
    let tz = shared.config.site.timezone;
    let start = day_start(local_day(now, tz), tz);
    match shared.config.database {
        Some(_) => start,
        None => DateTime::<Utc>::MIN_UTC,
    }
}

/// With a database: the measurement time of the oldest reading of `sites`
/// still waiting in the local store, when it is before `target` (the step
/// must wait for it); one before what was read already rewinds.
async fn waiting_before(
    shared: &Shared,
    rows: &RawRows,
    sites: &[String],
    live: &mut LiveRollups,
    target: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let RawRows::Database(_) = rows else {
        return None;
    };
    let waiting = match shared.store.depth_by_site().await {
        Ok(waiting) => waiting,
        // Cannot tell: wait.
        Err(_) => return Some(target),
    };
    let oldest = sites
        .iter()
        .filter_map(|site| waiting.get(site).and_then(|(_, oldest)| *oldest))
        .min()?;
    if oldest < live.through() {
        live.rewind(oldest.max(today(shared, Utc::now())));
    }
    (oldest < target).then_some(oldest)
}
