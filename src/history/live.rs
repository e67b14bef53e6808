//! Live rollups: while the daemon runs, the rollups of its sites are
//! brought up to the latest settled five-minute boundary, five minutes at a
//! time. Each step reads back the raw readings of the new five minutes from
//! where they are kept for good — PostgreSQL when one is configured, else
//! the local store — and feeds them to one [`Aggregator`] per local day,
//! which carries the open hour and day (and each device's last reading, for
//! the trapezoid across the boundary) from step to step. Closed 5-minute and
//! hourly buckets are written as they close; the open hour, the day so far
//! and its energy are written provisionally and replaced as they grow; a day
//! is written whole when it ends.
//!
//! Because the aggregator sees exactly the rows a rebuild reads, in the same
//! order per device, every bucket equals what `history rebuild` computes
//! from the same rows. Nothing is kept only in memory: after a restart (or
//! a kill -9) the current day is read again from its start, and readings
//! that reach the raw tables after their five minutes were read (a backlog
//! forwarded late) make the day be read again (see [`LiveRollups::rewind`]).

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;

use super::aggregate::{Aggregator, DayEnergy, Rollup};
use super::buckets::{Resolution, day_end, day_start, local_day};
use crate::reading::ReadingTable;
use crate::store::{LocalStore, StoreError};

/// Why a step failed (nothing was written; the next step retries).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The local store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Where the raw readings are read back from, and the rollups written to.
#[derive(Debug, Clone)]
pub enum RawRows {
    /// PostgreSQL's reading tables and `victron.history_*`.
    Database(PgPool),
    /// The local store's readings and its history tables.
    Store(LocalStore),
}

impl RawRows {
    /// Feeds the readings of `sites` measured in `[from, to)` to
    /// `aggregator`, in time order per device; returns how many.
    async fn feed(
        &self,
        sites: &[String],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        aggregator: &mut Aggregator,
    ) -> Result<u64, LiveError> {
        let mut count = 0;
        match self {
            Self::Database(pool) => {
                for site in sites {
                    for table in ReadingTable::ALL {
                        count +=
                            super::rebuild::feed(pool, table, Some(site), from, to, aggregator)
                                .await?;
                    }
                }
            }
            Self::Store(store) => {
                // In spans of minutes: a day read again after a restart is
                // never one large result.
                let mut start = from;
                while start < to {
                    let end = (start + chrono::Duration::minutes(10)).min(to);
                    for row in store.readings_between(start, end).await? {
                        if sites.iter().any(|s| **s == *row.reading.site) {
                            aggregator.push(&row.reading);
                            count += 1;
                        }
                    }
                    start = end;
                }
            }
        }
        Ok(count)
    }

    /// Writes rollups and days of energy (a bucket or day already there is
    /// replaced), in one transaction.
    async fn write(&self, rollups: &[Rollup], days: &[DayEnergy]) -> Result<(), LiveError> {
        match self {
            Self::Database(pool) => {
                // As a rebuild: the server's time, less what a writer's
                // open transaction may take (see `rebuild`).
                let updated_at: DateTime<Utc> =
                    sqlx::query_scalar("SELECT clock_timestamp() - interval '10 minutes'")
                        .fetch_one(pool)
                        .await?;
                let mut tx = pool.begin().await?;
                for resolution in Resolution::ALL {
                    let rows: Vec<&Rollup> = rollups
                        .iter()
                        .filter(|r| r.resolution == resolution)
                        .collect();
                    for chunk in rows.chunks(20_000) {
                        super::rebuild::upsert_rollups(&mut tx, resolution, chunk).await?;
                    }
                }
                if !days.is_empty() {
                    super::rebuild::upsert_energy(&mut tx, days, updated_at).await?;
                }
                tx.commit().await?;
            }
            Self::Store(store) => store.write_history(rollups, days, Utc::now()).await?,
        }
        Ok(())
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    /// Raw readings read.
    pub readings: u64,
    /// Rollup rows written (final and provisional).
    pub rollups: usize,
    /// Days that ended and were written whole.
    pub days_completed: usize,
}

/// The live rollups of a daemon's sites. See the module doc.
#[derive(Debug)]
pub struct LiveRollups {
    tz: Tz,
    max_gap_s: f64,
    sites: Vec<String>,
    /// Everything measured before this has been fed (a 5-minute boundary).
    through: DateTime<Utc>,
    /// The day being aggregated, once its start has been read.
    day: Option<(NaiveDate, Aggregator)>,
}

impl LiveRollups {
    /// Live rollups of `sites`, to be brought up from `from` (the start of
    /// a local day: what was measured before it is rolled up already).
    pub fn new(tz: Tz, max_gap_s: f64, sites: Vec<String>, from: DateTime<Utc>) -> Self {
        Self {
            tz,
            max_gap_s,
            sites,
            through: day_start(local_day(from, tz), tz),
            day: None,
        }
    }

    /// Everything measured before this is rolled up.
    pub fn through(&self) -> DateTime<Utc> {
        self.through
    }

    /// Readings measured at `at` reached the raw rows after their five
    /// minutes were read: the day they fall on is read again from its
    /// start at the next step.
    pub fn rewind(&mut self, at: DateTime<Utc>) {
        if at < self.through {
            self.through = day_start(local_day(at, self.tz), self.tz);
            self.day = None;
        }
    }

    /// The latest five-minute boundary at or before `at`: what a step may
    /// bring the rollups up to once `at` is settled.
    pub fn boundary(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        Resolution::FiveMinutes.bucket(at, self.tz)
    }

    /// Feeds what was measured from [`Self::through`] up to `to` and
    /// writes what changed, a day at a time; on an error nothing of the
    /// failing day's part is counted as done.
    pub async fn advance(&mut self, rows: &RawRows, to: DateTime<Utc>) -> Result<Step, LiveError> {
        let mut step = Step::default();
        let gap = chrono::Duration::milliseconds((self.max_gap_s * 1000.0) as i64);
        while self.through < to {
            let day = local_day(self.through, self.tz);
            let (start, end) = (day_start(day, self.tz), day_end(day, self.tz));
            let (_, aggregator) = match &mut self.day {
                Some((d, aggregator)) if *d == day => (d, aggregator),
                slot => {
                    // A new day: its first readings bound intervals that
                    // reach back before midnight, and a day started before
                    // (a restart) is read from its start.
                    let mut aggregator =
                        Aggregator::new(self.tz, self.max_gap_s).within(start, end);
                    if let Err(error) = rows
                        .feed(&self.sites, start - gap, self.through, &mut aggregator)
                        .await
                    {
                        *slot = None;
                        return Err(error);
                    }
                    let filled = slot.insert((day, aggregator));
                    (&mut filled.0, &mut filled.1)
                }
            };
            let until = to.min(end);
            let fed = rows
                .feed(&self.sites, self.through, until, aggregator)
                .await;
            let fed = match fed {
                Ok(n) => n,
                Err(error) => {
                    // Part of the span may have been fed: read the day again.
                    self.day = None;
                    self.through = start;
                    return Err(error);
                }
            };
            step.readings += fed;
            let (rollups, days, complete) = if until == end {
                let Some((_, aggregator)) = self.day.take() else {
                    break;
                };
                let (rollups, days) = aggregator.finish();
                (rollups, days, true)
            } else {
                // Every bucket that ends by `until` (a 5-minute boundary)
                // is final; the hour and day still open are provisional.
                let mut rollups = aggregator.take_closed(until);
                let (open, days) = aggregator.provisional(until);
                rollups.extend(open);
                (rollups, days, false)
            };
            if let Err(error) = rows.write(&rollups, &days).await {
                self.day = None;
                self.through = start;
                return Err(error);
            }
            step.rollups += rollups.len();
            step.days_completed += usize::from(complete);
            self.through = until;
        }
        Ok(step)
    }
}

/// Where an embedded gateway's live rollups start: the day after the last
/// day the store holds whole, or the first day of its readings (today when
/// it has none).
pub async fn resume_from(store: &LocalStore, tz: Tz, now: DateTime<Utc>) -> DateTime<Utc> {
    let today = day_start(local_day(now, tz), tz);
    let complete = store
        .energy_days()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.updated_at >= day_end(d.energy.day, tz))
        .map(|d| d.energy.day)
        .max();
    let from = match complete {
        Some(day) => day_end(day, tz),
        None => match store.oldest_confirmed().await {
            Ok(Some(oldest)) => day_start(local_day(oldest, tz), tz),
            _ => today,
        },
    };
    from.min(today)
}

/// The sites of a daemon's devices, each once.
pub fn sites_of<'a>(sites: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut sites: Vec<String> = sites.into_iter().map(|s| s.to_string()).collect();
    sites.sort();
    sites.dedup();
    sites
}
