//! `victron-poller history rebuild`: the raw rows of whole local days, read
//! from PostgreSQL in time order per device, through the aggregator; those
//! days' rollups and daily energy are replaced in one transaction.

use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use sqlx::{PgPool, Row};

use super::aggregate::{Aggregator, DayEnergy};
use super::buckets::{day_end, day_start, first_day_from, local_day};
use super::postgres::{feed, read_from, write};
use crate::reading::ReadingTable;

/// What to rebuild: a site (every site when `None`) and local days
/// (from the oldest raw row, to the newest, when not given).
#[derive(Debug, Clone, Default)]
pub(crate) struct Range {
    /// The site.
    pub(crate) site: Option<String>,
    /// The first day.
    pub(crate) from: Option<NaiveDate>,
    /// The last day (included).
    pub(crate) to: Option<NaiveDate>,
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Report {
    /// The days rebuilt, when there were raw rows.
    pub(crate) days: Option<(NaiveDate, NaiveDate)>,
    /// Raw readings read.
    pub(crate) readings: u64,
    /// Rollup rows written.
    pub(crate) rollups: usize,
    /// Site-days of energy written.
    pub(crate) energy_days: usize,
    /// How long it took.
    pub(crate) elapsed: Duration,
}

/// Rebuilds `range` for local days of `tz`, bridging up to `max_gap_s`.
pub(crate) async fn rebuild(
    pool: &PgPool,
    tz: Tz,
    max_gap_s: f64,
    range: &Range,
) -> Result<Report, sqlx::Error> {
    let started = Instant::now();
    let Some((first, last)) = days(pool, tz, range).await? else {
        return Ok(Report {
            days: None,
            readings: 0,
            rollups: 0,
            energy_days: 0,
            elapsed: started.elapsed(),
        });
    };
    // Before any raw row is read: a row committed while this runs counts
    // as arrived after it.
    let read_from = read_from(pool).await?;
    let (from, to) = (day_start(first, tz), day_end(last, tz));
    let mut aggregator = Aggregator::new(tz, max_gap_s).within(from, to);
    // Readings just outside bound the intervals that reach into the days.
    let margin = chrono::Duration::milliseconds((max_gap_s * 1000.0) as i64);
    let mut readings = 0;
    for table in ReadingTable::ALL {
        readings += feed(
            pool,
            table,
            range.site.as_deref(),
            from - margin,
            to + margin,
            &mut aggregator,
        )
        .await?;
    }
    let (rollups, energy) = aggregator.finish();
    write(pool, tz, &rollups, &energy, read_from).await?;
    Ok(Report {
        days: Some((first, last)),
        readings,
        rollups: rollups.len(),
        energy_days: energy.len(),
        elapsed: started.elapsed(),
    })
}

/// The energy of local day `day` of `tz` so far — measured before `now` —
/// from PostgreSQL's raw readings of `site` (every site when `None`), one
/// row per site with readings: what the live rollups write for the day at
/// their next five-minute step, for a reader that cannot wait for it (a
/// daemon that started minutes ago, a day that began minutes ago).
pub(crate) async fn day_so_far(
    pool: &PgPool,
    tz: Tz,
    max_gap_s: f64,
    site: Option<&str>,
    day: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Vec<DayEnergy>, sqlx::Error> {
    let (start, end) = (day_start(day, tz), day_end(day, tz));
    let through = now.min(end);
    if through <= start {
        return Ok(Vec::new());
    }
    let mut aggregator = Aggregator::new(tz, max_gap_s).within(start, end);
    // Readings just before midnight bound the intervals that reach into it.
    let margin = chrono::Duration::milliseconds((max_gap_s * 1000.0) as i64);
    for table in ReadingTable::ALL {
        feed(pool, table, site, start - margin, through, &mut aggregator).await?;
    }
    let (_, days) = aggregator.provisional(through);
    Ok(days.into_iter().filter(|d| d.day == day).collect())
}

/// The days to rebuild: as given, or those of the oldest and newest raw rows.
async fn days(
    pool: &PgPool,
    tz: Tz,
    range: &Range,
) -> Result<Option<(NaiveDate, NaiveDate)>, sqlx::Error> {
    if let (Some(from), Some(to)) = (range.from, range.to) {
        return Ok((from <= to).then_some((from, to)));
    }
    let union = ReadingTable::ALL
        .iter()
        .map(|t| {
            format!(
                "SELECT min(\"timestamp\") AS lo, max(\"timestamp\") AS hi FROM victron.{} WHERE $1::text IS NULL OR installation_id = $1",
                t.name()
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let row = sqlx::query(&format!("SELECT min(lo), max(hi) FROM ({union}) r"))
        .bind(range.site.as_deref())
        .fetch_one(pool)
        .await?;
    let (lo, hi): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (row.get(0), row.get(1));
    // Unless asked for, a day raw retention has started on is left as it
    // is: its rollups hold more than its raw rows now do.
    let (_, intact_from) = retention_bound(pool).await?;
    let oldest = lo.map(|t| match intact_from {
        Some(bound) if t < bound => first_day_from(bound, tz),
        _ => local_day(t, tz),
    });
    let from = range.from.or(oldest);
    let to = range.to.or(hi.map(|t| local_day(t, tz)));
    Ok(match (from, to) {
        (Some(from), Some(to)) if from <= to => Some((from, to)),
        _ => None,
    })
}

/// The database's time now, and the first instant whose raw rows raw
/// retention has not touched: its last run minus its window, both as the
/// server recorded them (`None` before any run: everything is there).
async fn retention_bound(
    pool: &PgPool,
) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>), sqlx::Error> {
    let row = sqlx::query(
        "SELECT now(), (SELECT last_retention_run - make_interval(secs => retention_window_s)
                        FROM victron.polling_status WHERE id = 1)",
    )
    .fetch_one(pool)
    .await?;
    Ok((row.get(0), row.get(1)))
}

/// How long after a local day ends its readings are taken as all there:
/// what the daemon forwards late (a batch in flight, a short outage) has
/// arrived by then.
pub(crate) const SETTLE: chrono::Duration = chrono::Duration::hours(1);

/// Rolls up the completed local days of `site` whose raw readings are all
/// still there (raw retention has not started on them) that have no daily
/// energy yet, one computed before the day had settled, or raw rows that
/// arrived after it (a backlog forwarded late): each such day is rebuilt
/// from its raw rows, oldest first, so that every day is rolled up, with
/// everything it has, before raw retention takes its rows. `complete_before` is when the
/// oldest reading of the site still waiting in the local store was measured
/// (a day after it is not complete in PostgreSQL yet). Returns the days
/// rebuilt.
pub async fn roll_completed_days(
    pool: &PgPool,
    tz: Tz,
    max_gap_s: f64,
    site: &str,
    window: Duration,
    complete_before: Option<DateTime<Utc>>,
) -> Result<Vec<NaiveDate>, sqlx::Error> {
    let (now, intact_from) = retention_bound(pool).await?;
    // A day raw retention has started on is not rebuilt: its rollups would
    // lose what expired. Before any retention run, the window says where
    // it will start.
    let window = chrono::Duration::from_std(window).unwrap_or_default();
    let oldest = first_day_from(intact_from.unwrap_or(now - window), tz);
    let today = local_day(now, tz);
    let rolled: Vec<(NaiveDate, DateTime<Utc>)> = sqlx::query_as(
        "SELECT day, updated_at FROM victron.energy_daily WHERE installation_id = $1 AND day >= $2",
    )
    .bind(site)
    .bind(oldest)
    .fetch_all(pool)
    .await?;
    let mut done = Vec::new();
    let mut day = oldest;
    while day < today {
        let end = day_end(day, tz);
        let settled = end + SETTLE <= now && complete_before.is_none_or(|t| t >= end);
        let current = match rolled.iter().find(|(d, _)| *d == day) {
            Some((_, updated)) if *updated >= end + SETTLE => {
                !arrived_since(pool, site, day_start(day, tz), end, *updated).await?
            }
            _ => false,
        };
        if settled && !current {
            let range = Range {
                site: Some(site.to_string()),
                from: Some(day),
                to: Some(day),
            };
            let report = rebuild(pool, tz, max_gap_s, &range).await?;
            // (A day without readings of its own reads at most its
            // neighbours' edges: nothing to report.)
            if report.rollups > 0 {
                done.push(day);
            }
        }
        day = day.succ_opt().unwrap_or(today);
    }
    Ok(done)
}

/// Whether raw rows of `site` measured in `[from, to)` reached the database
/// after `since` (a backlog forwarded late, after the day was rolled up).
async fn arrived_since(
    pool: &PgPool,
    site: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    since: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let any = ReadingTable::ALL
        .iter()
        .map(|t| {
            format!(
                "EXISTS (SELECT 1 FROM victron.{} WHERE installation_id = $1 AND \"timestamp\" >= $2
                 AND \"timestamp\" < $3 AND created_at > $4)",
                t.name()
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    sqlx::query_scalar(&format!("SELECT {any}"))
        .bind(site)
        .bind(from)
        .bind(to)
        .bind(since)
        .fetch_one(pool)
        .await
}
