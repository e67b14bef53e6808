//! The rollups and daily energy of a gateway without a database: the same
//! tables as in PostgreSQL (`history_5m`, `history_1h`, `history_1d`,
//! `energy_daily`), in the local store, written by the live rollups
//! ([`crate::history::live`]) and kept for `history.keep_*_days`, so that
//! an embedded gateway's energy record outlives its raw readings.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use sqlx::Row;

use super::aggregate::{Aggregator, DayEnergy, Rollup};
use super::buckets::{Resolution, day_end, day_start, local_day};
use super::live::{LiveError, RollupStore, SiteDay};
use crate::store::{LocalStore, StoreError, StoreReader, from_micros, micros, table_from_name};

/// A day of energy as the store keeps it, with when it was computed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDay {
    /// The day's energy.
    pub energy: DayEnergy,
    /// The readings measured before this were in it (a day computed from
    /// readings before its end is the day so far).
    pub(crate) updated_at: DateTime<Utc>,
}

impl StoredDay {
    /// Whether the day was computed from readings through its end (else it
    /// is the day so far).
    pub(crate) fn is_complete(&self, tz: Tz) -> bool {
        self.updated_at >= day_end(self.energy.day, tz)
    }
}

/// The live rollups' [`RollupStore`] on a gateway without a database: the
/// local store's readings and its history tables.
#[derive(Debug, Clone)]
pub struct LocalRollups(pub LocalStore);

impl LocalRollups {
    /// Writes rollups and days of energy in one transaction, computed from
    /// the readings measured before `read_through`: what `replace` names is
    /// removed first (a day written whole), and a bucket or day already
    /// there is replaced.
    pub(crate) async fn write_history(
        &self,
        rollups: &[Rollup],
        days: &[DayEnergy],
        replace: &[SiteDay],
        read_through: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = crate::store::write::WriteTx::begin(&self.0.pool()).await?;
        for whole in replace {
            for resolution in Resolution::ALL {
                sqlx::query(&format!(
                    "DELETE FROM {} WHERE site = ? AND bucket_us >= ? AND bucket_us < ?",
                    resolution.table()
                ))
                .bind(&whole.site)
                .bind(micros(whole.start))
                .bind(micros(whole.end))
                .execute(tx.conn())
                .await?;
            }
            sqlx::query("DELETE FROM energy_daily WHERE site = ? AND day = ?")
                .bind(&whole.site)
                .bind(whole.day.to_string())
                .execute(tx.conn())
                .await?;
        }
        for resolution in Resolution::ALL {
            let rows: Vec<serde_json::Value> = rollups
                .iter()
                .filter(|r| r.resolution == resolution)
                .map(|r| {
                    serde_json::json!([
                        &*r.site,
                        r.device,
                        r.table.name(),
                        r.metric,
                        micros(r.bucket),
                        r.samples,
                        r.min,
                        r.max,
                        r.mean,
                        r.last
                    ])
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            sqlx::query(&format!(
                "INSERT INTO {} (site, device, reading_table, metric, bucket_us, samples, min, max, mean, last)
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
                        value ->> 6, value ->> 7, value ->> 8, value ->> 9
                 FROM json_each(?) WHERE true
                 ON CONFLICT (site, device, metric, bucket_us) DO UPDATE SET
                     reading_table = excluded.reading_table, samples = excluded.samples,
                     min = excluded.min, max = excluded.max, mean = excluded.mean, last = excluded.last",
                resolution.table()
            ))
            .bind(serde_json::Value::Array(rows).to_string())
            .execute(tx.conn())
            .await?;
        }
        let upsert_day = format!(
            "INSERT INTO energy_daily (site, day, {}, coverage_pct, updated_at_us)
             VALUES (?, ?, {}, ?, ?)
             ON CONFLICT (site, day) DO UPDATE SET {},
                 coverage_pct = excluded.coverage_pct, updated_at_us = excluded.updated_at_us",
            DayEnergy::figure_columns(),
            ["?"; DayEnergy::FIGURES.len()].join(", "),
            DayEnergy::figure_updates(),
        );
        for d in days {
            let mut query = sqlx::query(&upsert_day)
                .bind(&d.site)
                .bind(d.day.to_string());
            for figure in d.figures() {
                query = query.bind(figure);
            }
            query
                .bind(d.coverage_pct)
                .bind(micros(read_through))
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes rollups older than their resolution's retention (`keep`,
    /// finest first; `None`: kept forever) as of `now`; daily energy
    /// follows the daily rollups. Returns how many rows.
    pub(crate) async fn expire_history(
        &self,
        keep: [Option<std::time::Duration>; 3],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        for (resolution, keep) in Resolution::ALL.into_iter().zip(keep) {
            let Some(keep) = keep else { continue };
            let Some(before) = chrono::Duration::from_std(keep)
                .ok()
                .and_then(|keep| now.checked_sub_signed(keep))
            else {
                continue;
            };
            let sql = format!("DELETE FROM {} WHERE bucket_us < ?", resolution.table());
            removed += crate::store::write::execute(
                &self.0.pool(),
                sqlx::query(&sql).bind(micros(before)),
            )
            .await?
            .rows_affected();
            if resolution == Resolution::Day {
                removed += crate::store::write::execute(
                    &self.0.pool(),
                    sqlx::query("DELETE FROM energy_daily WHERE day < ?")
                        .bind(before.date_naive().to_string()),
                )
                .await?
                .rows_affected();
            }
        }
        Ok(removed)
    }
}

impl RollupStore for LocalRollups {
    fn after_the_store(&self) -> bool {
        false
    }

    async fn resume_from(&self, tz: Tz, now: DateTime<Utc>) -> DateTime<Utc> {
        resume_from(&self.0, tz, now).await
    }

    async fn feed(
        &self,
        sites: &[String],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        aggregator: &mut Aggregator,
    ) -> Result<u64, LiveError> {
        Ok(feed_reader(&self.0, sites, from, to, aggregator).await?)
    }

    async fn write(
        &self,
        rollups: &[Rollup],
        days: &[DayEnergy],
        whole: &[SiteDay],
        read_through: DateTime<Utc>,
        _tz: Tz,
    ) -> Result<(), LiveError> {
        self.write_history(rollups, days, whole, read_through)
            .await?;
        Ok(())
    }
}

/// Where an embedded gateway's live rollups start: the day after the last
/// day the store holds whole, or the first day of its readings (today when
/// it has none).
async fn resume_from(store: &LocalStore, tz: Tz, now: DateTime<Utc>) -> DateTime<Utc> {
    let today = day_start(local_day(now, tz), tz);
    let complete = StoredRollups(StoreReader::clone(store))
        .energy_days()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.is_complete(tz))
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

/// Feeds the store's confirmed readings of `sites` in `[from, to)` to the
/// aggregator, in time order. Returns how many.
pub(super) async fn feed_reader(
    store: &StoreReader,
    sites: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    aggregator: &mut Aggregator,
) -> Result<u64, StoreError> {
    let mut count = 0;
    // In spans of minutes: a day read again after a restart is
    // never one large result. A span that holds nothing skips
    // to the next reading: a day read from its start on a new
    // store costs one query, not one per span.
    let mut start = from;
    while start < to {
        let end = (start + chrono::Duration::minutes(10)).min(to);
        let rows = store.readings_between(start, end).await?;
        if rows.is_empty() {
            match store.next_confirmed(end).await? {
                Some(next) => start = next.max(end),
                None => break,
            }
            continue;
        }
        for row in rows {
            if sites.iter().any(|s| **s == *row.reading.site) {
                aggregator.push(&row.reading);
                count += 1;
            }
        }
        start = end;
    }
    Ok(count)
}

/// The rollups and days of energy a local store keeps, read only (for
/// `energy`, and for where the live rollups resume).
#[derive(Debug, Clone)]
pub struct StoredRollups(pub StoreReader);

impl StoredRollups {
    /// Every day of energy the store keeps, oldest first (none in a store
    /// written before it kept energy).
    pub async fn energy_days(&self) -> Result<Vec<StoredDay>, StoreError> {
        if !self.has_table("energy_daily").await? {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT site, day, {}, coverage_pct, updated_at_us
             FROM energy_daily ORDER BY day, site",
            DayEnergy::figure_columns()
        ))
        .fetch_all(&self.0.pool())
        .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let day: String = row.try_get("day").ok()?;
                Some(StoredDay {
                    energy: DayEnergy::from_columns(
                        row.get("site"),
                        day.parse::<NaiveDate>().ok()?,
                        |column| row.get(column),
                        row.try_get("coverage_pct").ok()?,
                    ),
                    updated_at: from_micros(row.try_get("updated_at_us").ok()?),
                })
            })
            .collect())
    }

    /// The rollups of one resolution with buckets in `[from, to)`, for
    /// reading the history back (a metric no reading table has any more is
    /// left out).
    pub async fn rollups(
        &self,
        resolution: Resolution,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Rollup>, StoreError> {
        if !self.has_table(resolution.table()).await? {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT site, device, reading_table, metric, bucket_us, samples, min, max, mean, last
             FROM {} WHERE bucket_us >= ? AND bucket_us < ? ORDER BY site, device, metric, bucket_us",
            resolution.table()
        ))
        .bind(micros(from))
        .bind(micros(to))
        .fetch_all(&self.0.pool())
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let table = table_from_name(r.get(2))?;
                let metric: &str = r.get(3);
                let metric = table.columns().iter().find(|(c, _)| *c == metric)?.0;
                Some(Rollup {
                    site: Arc::from(r.get::<&str, _>(0)),
                    device: r.get(1),
                    table,
                    metric,
                    resolution,
                    bucket: from_micros(r.get(4)),
                    samples: r.get(5),
                    // A value that was not a number is kept as NULL.
                    min: r
                        .try_get::<Option<f64>, _>(6)
                        .ok()
                        .flatten()
                        .unwrap_or(f64::NAN),
                    max: r
                        .try_get::<Option<f64>, _>(7)
                        .ok()
                        .flatten()
                        .unwrap_or(f64::NAN),
                    mean: r
                        .try_get::<Option<f64>, _>(8)
                        .ok()
                        .flatten()
                        .unwrap_or(f64::NAN),
                    last: r
                        .try_get::<Option<f64>, _>(9)
                        .ok()
                        .flatten()
                        .unwrap_or(f64::NAN),
                })
            })
            .collect())
    }

    /// The start of the first bucket of one resolution at or after `at`, if
    /// any (for a reader that skips what holds nothing).
    pub(crate) async fn next_bucket(
        &self,
        resolution: Resolution,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        if !self.has_table(resolution.table()).await? {
            return Ok(None);
        }
        let next: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT min(bucket_us) FROM {} WHERE bucket_us >= ?",
            resolution.table()
        ))
        .bind(micros(at))
        .fetch_one(&self.0.pool())
        .await?;
        Ok(next.map(from_micros))
    }

    pub(super) async fn has_table(&self, name: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?",
        )
        .bind(name)
        .fetch_one(&self.0.pool())
        .await?)
    }
}
