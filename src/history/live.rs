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

use super::aggregate::{Aggregator, DayEnergy, Rollup};
use super::buckets::{Resolution, day_end, day_start, local_day};
use crate::store::StoreError;

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

/// Where the live rollups read the raw readings back from and write the
/// rollups to: PostgreSQL's tables ([`super::postgres::PostgresRollups`]) or
/// the local store's ([`super::sqlite::LocalRollups`]).
pub trait RollupStore: Sync {
    /// Whether the raw rows arrive here after the local store (forwarded
    /// to PostgreSQL): then a boundary waits while readings measured before
    /// it still wait in the store, and completed days are the daily
    /// roll-up's.
    fn after_the_store(&self) -> bool;

    /// Where the live rollups start when the daemon starts at `now`.
    fn resume_from(&self, tz: Tz, now: DateTime<Utc>)
    -> impl Future<Output = DateTime<Utc>> + Send;

    /// Feeds the readings of `sites` measured in `[from, to)` to
    /// `aggregator`, in time order per device; returns how many.
    fn feed(
        &self,
        sites: &[String],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        aggregator: &mut Aggregator,
    ) -> impl Future<Output = Result<u64, LiveError>> + Send;

    /// Writes rollups and days of energy computed from the readings
    /// measured before `read_through`, in one transaction; `whole` days are
    /// replaced (what was there for them is removed first), and a bucket or
    /// day already there is replaced.
    fn write(
        &self,
        rollups: &[Rollup],
        days: &[DayEnergy],
        whole: &[SiteDay],
        read_through: DateTime<Utc>,
        tz: Tz,
    ) -> impl Future<Output = Result<(), LiveError>> + Send;
}

/// A site's local day whose rollups are replaced whole.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteDay {
    /// The site.
    pub(crate) site: String,
    /// The local day.
    pub(crate) day: NaiveDate,
    /// Its start.
    pub(crate) start: DateTime<Utc>,
    /// Its end.
    pub(crate) end: DateTime<Utc>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    /// Raw readings read.
    pub readings: u64,
    /// Rollup rows written (final and provisional).
    pub(crate) rollups: usize,
    /// Days that ended and were written whole.
    pub(crate) days_completed: usize,
}

/// The live rollups of a daemon's sites. See the module doc.
#[derive(Debug)]
pub struct LiveRollups {
    tz: Tz,
    max_gap_s: f64,
    sites: Vec<String>,
    /// Everything measured before this has been fed (a 5-minute boundary).
    through: DateTime<Utc>,
    /// The day being aggregated, once its start has been read; it is
    /// written whole once what follows its end within the longest bridged
    /// gap has been read too (the interval across midnight).
    day: Option<(NaiveDate, Aggregator)>,
    /// The day was just read from its start: its next write replaces what
    /// was there for it.
    fresh: bool,
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
            fresh: false,
        }
    }

    /// Everything measured before this is rolled up.
    pub(crate) fn through(&self) -> DateTime<Utc> {
        self.through
    }

    /// The sites rolled up.
    pub(crate) fn sites(&self) -> &[String] {
        &self.sites
    }

    /// The start of the day being rolled up.
    pub(crate) fn open_day_start(&self) -> DateTime<Utc> {
        let day = match &self.day {
            Some((day, _)) => *day,
            None => local_day(self.through, self.tz),
        };
        day_start(day, self.tz)
    }

    /// The earliest measurement a later step may read again: from the
    /// start of the day being rolled up, less the longest bridged gap.
    /// Raw readings before it are no longer needed by the rollups.
    pub(crate) fn needed_from(&self) -> DateTime<Utc> {
        self.open_day_start() - self.gap()
    }

    /// Readings measured at `at` reached the raw rows after their five
    /// minutes were read: the day they fall on is read again from its
    /// start at the next step.
    pub(crate) fn rewind(&mut self, at: DateTime<Utc>) {
        if at < self.through {
            self.through = day_start(local_day(at, self.tz), self.tz);
            self.day = None;
        }
    }

    /// After a failed step: the day being rolled up is read again from its
    /// start (part of a span may have been fed).
    fn restart_day(&mut self) {
        self.through = self.open_day_start().min(self.through);
        self.day = None;
    }

    /// The latest five-minute boundary at or before `at`: what a step may
    /// bring the rollups up to once `at` is settled.
    pub(crate) fn boundary(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        Resolution::FiveMinutes.bucket(at, self.tz)
    }

    fn gap(&self) -> chrono::Duration {
        chrono::Duration::milliseconds((self.max_gap_s * 1000.0) as i64)
    }

    /// Feeds what was measured from [`Self::through`] up to `to` and
    /// writes what changed, a day at a time; on an error the day is read
    /// again from its start at the next step.
    pub async fn advance(
        &mut self,
        rows: &impl RollupStore,
        to: DateTime<Utc>,
    ) -> Result<Step, LiveError> {
        let mut step = Step::default();
        let result = self.advance_inner(rows, to, &mut step).await;
        if result.is_err() {
            self.restart_day();
        }
        result.map(|()| step)
    }

    async fn advance_inner(
        &mut self,
        rows: &impl RollupStore,
        to: DateTime<Utc>,
        step: &mut Step,
    ) -> Result<(), LiveError> {
        let gap = self.gap();
        loop {
            // A day whose end has been reached is written whole once what
            // follows it within the gap has been read.
            if let Some((day, _)) = &self.day {
                let end = day_end(*day, self.tz);
                if self.through >= end {
                    if to < end + gap {
                        return Ok(());
                    }
                    self.finish_day(rows, step).await?;
                }
            }
            if self.through >= to {
                return Ok(());
            }
            let day = local_day(self.through, self.tz);
            let (start, end) = (day_start(day, self.tz), day_end(day, self.tz));
            if self.day.is_none() {
                // Its first readings bound intervals that reach back before
                // midnight, and a day started before (a restart) is read
                // from its start.
                let mut aggregator = Aggregator::new(self.tz, self.max_gap_s).within(start, end);
                rows.feed(&self.sites, start - gap, self.through, &mut aggregator)
                    .await?;
                self.day = Some((day, aggregator));
                self.fresh = true;
            }
            let Some((_, aggregator)) = &mut self.day else {
                return Ok(());
            };
            let until = to.min(end);
            step.readings += rows
                .feed(&self.sites, self.through, until, aggregator)
                .await?;
            // Every bucket that ends by `until` (a 5-minute boundary) is
            // final; the hour and day still open are provisional.
            let mut rollups = aggregator.take_closed(until);
            let (open, days) = aggregator.provisional(until);
            rollups.extend(open);
            let whole = self.replaced(&rollups, day);
            rows.write(&rollups, &days, &whole, until, self.tz).await?;
            self.fresh = false;
            step.rollups += rollups.len();
            self.through = until;
        }
    }

    /// What the next write of `day` replaces: read from its start (a new
    /// day, a restart, a re-read), the day replaces what was there for
    /// each of its sites (a changed time zone leaves nothing behind), in
    /// the same transaction; otherwise nothing.
    fn replaced(&self, rollups: &[Rollup], day: NaiveDate) -> Vec<SiteDay> {
        if self.fresh {
            site_days(rollups, day, day_start(day, self.tz), day_end(day, self.tz))
        } else {
            Vec::new()
        }
    }

    /// Reads what follows the finished day's end within the gap, and writes
    /// the day whole.
    async fn finish_day(
        &mut self,
        rows: &impl RollupStore,
        step: &mut Step,
    ) -> Result<(), LiveError> {
        let Some((day, mut aggregator)) = self.day.take() else {
            return Ok(());
        };
        let (start, end) = (day_start(day, self.tz), day_end(day, self.tz));
        let edge = end + self.gap();
        let written = async {
            rows.feed(&self.sites, end, edge, &mut aggregator).await?;
            let (rollups, days) = aggregator.finish();
            let whole = self.replaced(&rollups, day);
            rows.write(&rollups, &days, &whole, edge, self.tz).await?;
            self.fresh = false;
            Ok::<_, LiveError>(rollups.len())
        }
        .await;
        match written {
            Ok(rollups) => {
                step.rollups += rollups;
                step.days_completed += 1;
                Ok(())
            }
            Err(error) => {
                // The day is read again from its start.
                self.through = start;
                Err(error)
            }
        }
    }

    /// Writes the day being rolled up whole when its end has been reached
    /// (a rebuild that ends there); returns whether it did.
    pub(crate) async fn finish(&mut self, rows: &impl RollupStore) -> Result<Step, LiveError> {
        let mut step = Step::default();
        let ended = self
            .day
            .as_ref()
            .is_some_and(|(day, _)| self.through >= day_end(*day, self.tz));
        if ended {
            self.finish_day(rows, &mut step).await?;
        }
        Ok(step)
    }
}

/// The site-days `rollups` has a daily bucket of.
fn site_days(
    rollups: &[Rollup],
    day: NaiveDate,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Vec<SiteDay> {
    let sites: std::collections::BTreeSet<&str> = rollups
        .iter()
        .filter(|r| r.resolution == Resolution::Day)
        .map(|r| &*r.site)
        .collect();
    sites
        .into_iter()
        .map(|site| SiteDay {
            site: site.to_string(),
            day,
            start,
            end,
        })
        .collect()
}

/// The sites of a daemon's devices, each once.
pub(crate) fn sites_of<'a>(sites: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut sites: Vec<String> = sites.into_iter().map(|s| s.to_string()).collect();
    sites.sort();
    sites.dedup();
    sites
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::sqlite::{LocalRollups, StoredRollups};
    use crate::reading::{Reading, ReadingTable, SourceKind, Value};
    use crate::store::LocalStore;
    use chrono::Duration;

    /// A day and a half of a solar charger and a battery monitor every
    /// 10 s (PV 1 kW by day, the battery the difference to 500 W of loads),
    /// starting at local midnight of `tz`.
    fn readings(tz: Tz, day: NaiveDate) -> Vec<Reading> {
        let start = day_start(day, tz);
        let mut out = Vec::new();
        for step in 0..(36 * 360) {
            let at = start + Duration::seconds(10 * step) + Duration::milliseconds(300);
            let hour = (step / 360) % 24;
            let pv = if (6..18).contains(&hour) { 1000.0 } else { 0.0 };
            let reading = |device: &str, table, values: Vec<(&'static str, f64)>| Reading {
                site: "ranch".into(),
                device: device.into(),
                table,
                source: SourceKind::VeDirect,
                measured_at: at,
                unconfirmed: None,
                values: values
                    .into_iter()
                    .map(|(c, v)| (c, Value::Float(v)))
                    .collect(),
            };
            out.push(reading(
                "mppt",
                ReadingTable::Solar,
                vec![("pv_power", pv + step as f64 % 7.0)],
            ));
            out.push(reading(
                "bank",
                ReadingTable::Battery,
                vec![
                    ("power", pv - 500.0),
                    ("soc", 50.0 + (step % 400) as f64 / 10.0),
                ],
            ));
        }
        out
    }

    /// Five minutes at a time, across a whole day and midnight, the live
    /// rollups write exactly what one aggregator fed the whole day (as a
    /// rebuild reads it) computes.
    #[tokio::test]
    async fn live_steps_write_what_a_rebuild_computes() {
        for (tz, day) in [
            (chrono_tz::UTC, (2026, 6, 1)),
            (chrono_tz::America::Denver, (2026, 11, 1)),
        ] {
            let day = NaiveDate::from_ymd_opt(day.0, day.1, day.2).unwrap();
            let all = readings(tz, day);
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::open(dir.path()).await.unwrap();
            for chunk in all.chunks(5_000) {
                store.append(chunk).await.unwrap();
            }
            let rows = LocalRollups(store.clone());
            let (start, end) = (day_start(day, tz), day_end(day, tz));
            let mut live = LiveRollups::new(tz, 60.0, vec!["ranch".into()], start);
            let mut to = start;
            while to < end + Duration::minutes(10) {
                to += Duration::minutes(5);
                live.advance(&rows, to).await.unwrap();
            }

            let gap = Duration::seconds(60);
            let mut reference = Aggregator::new(tz, 60.0).within(start, end);
            for reading in all
                .iter()
                .filter(|r| r.measured_at >= start - gap && r.measured_at < end + gap)
            {
                reference.push(reading);
            }
            let (mut want, want_days) = reference.finish();
            let key = |r: &Rollup| (r.resolution, r.device.clone(), r.metric, r.bucket);
            want.sort_by_key(key);
            let stored = StoredRollups(crate::store::StoreReader::clone(&store));
            let mut got = Vec::new();
            for resolution in Resolution::ALL {
                got.extend(stored.rollups(resolution, start, end).await.unwrap());
            }
            got.sort_by_key(key);
            assert_eq!(got.len(), want.len(), "{tz}");
            assert!(got == want, "{tz}: the rollups differ");
            let kept = stored.energy_days().await.unwrap();
            let kept = kept.iter().find(|d| d.energy.day == day).unwrap();
            assert!(kept.is_complete(tz), "{tz}");
            assert_eq!(kept.energy, want_days[0], "{tz}");
            // The hours of the day (25 on Denver's autumn change).
            let hours = got
                .iter()
                .filter(|r| r.resolution == Resolution::Hour && r.metric == "pv_power")
                .count();
            assert_eq!(hours, if tz == chrono_tz::UTC { 24 } else { 25 });
            store.close().await;
        }
    }
}
