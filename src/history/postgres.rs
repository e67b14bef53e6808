//! The rollups in PostgreSQL (`victron.history_5m`, `_1h`, `_1d` and
//! `victron.energy_daily`): the raw rows read back in time order per device,
//! the idempotent upserts, and their retention. [`PostgresRollups`] is the
//! live rollups' [`RollupStore`] with a database.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use futures_util::TryStreamExt as _;
use sqlx::{PgPool, Row};

use super::aggregate::{Aggregator, DayEnergy, Rollup};
use super::buckets::{Resolution, day_end, local_day};
use super::live::{LiveError, RollupStore, SiteDay};
use crate::db::retention::DELETE_BATCH;
use crate::db::server::StorageMode;
use crate::reading::{ColumnKind, Reading, ReadingTable, SourceKind, Value};

/// The server's time now, less what a writer's open transaction may take:
/// the `updated_at` of days computed from raw rows read after it (a row's
/// `created_at` is when its transaction began, which may be before this
/// read although it commits after).
pub(super) async fn read_from(pool: &PgPool) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT clock_timestamp() - interval '10 minutes'")
        .fetch_one(pool)
        .await
}

/// Streams a table's rows in `[from, to)` (of `site`) into the aggregator,
/// in time order per device. Returns how many.
pub(super) async fn feed(
    pool: &PgPool,
    table: ReadingTable,
    site: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    aggregator: &mut Aggregator,
) -> Result<u64, sqlx::Error> {
    let numeric: Vec<&'static str> = table
        .columns()
        .iter()
        .filter(|(_, kind)| *kind != ColumnKind::Text)
        .map(|(name, _)| *name)
        .collect();
    let select = numeric
        .iter()
        .map(|c| format!("{c}::float8"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT coalesce(installation_id, ''), device, \"timestamp\", {select} FROM victron.{}
         WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2 AND ($3::text IS NULL OR installation_id = $3)
         ORDER BY installation_id, device, \"timestamp\"",
        table.name()
    );
    let mut rows = sqlx::query(&sql).bind(from).bind(to).bind(site).fetch(pool);
    let mut count = 0;
    let mut site_name: Arc<str> = Arc::from("");
    while let Some(row) = rows.try_next().await? {
        let site: &str = row.get(0);
        if *site != *site_name {
            site_name = Arc::from(site);
        }
        let values = numeric
            .iter()
            .enumerate()
            .filter_map(|(i, column)| {
                row.get::<Option<f64>, _>(i + 3)
                    .map(|v| (*column, Value::Float(v)))
            })
            .collect();
        aggregator.push(&Reading {
            site: Arc::clone(&site_name),
            device: row.get(1),
            table,
            source: SourceKind::Modbus,
            measured_at: row.get(2),
            unconfirmed: None,
            values,
        });
        count += 1;
    }
    Ok(count)
}

/// Replaces the rollups and energy of the site-days the raw rows gave.
pub(super) async fn write(
    pool: &PgPool,
    tz: Tz,
    rollups: &[Rollup],
    energy: &[DayEnergy],
    read_from: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    // Only the site-days the raw rows gave are replaced: a day without
    // raw rows (expired, or never there) keeps what it has.
    let days: Vec<(&str, DateTime<Utc>)> = rollups
        .iter()
        .filter(|r| r.resolution == Resolution::Day)
        .map(|r| (&*r.site, r.bucket))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let sites: Vec<&str> = days.iter().map(|(site, _)| *site).collect();
    let starts: Vec<DateTime<Utc>> = days.iter().map(|(_, start)| *start).collect();
    let ends: Vec<DateTime<Utc>> = days
        .iter()
        .map(|(_, start)| day_end(local_day(*start, tz), tz))
        .collect();
    let dates: Vec<NaiveDate> = days
        .iter()
        .map(|(_, start)| local_day(*start, tz))
        .collect();
    let mut tx = pool.begin().await?;
    for resolution in Resolution::ALL {
        sqlx::query(&format!(
            "DELETE FROM victron.{} h USING UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS d(site, lo, hi)
             WHERE h.installation_id = d.site AND h.bucket >= d.lo AND h.bucket < d.hi",
            resolution.table()
        ))
        .bind(&sites)
        .bind(&starts)
        .bind(&ends)
        .execute(&mut *tx)
        .await?;
    }
    upsert_all(&mut tx, rollups).await?;
    sqlx::query(
        "DELETE FROM victron.energy_daily e USING UNNEST($1::text[], $2::date[]) AS d(site, day)
         WHERE e.installation_id = d.site AND e.day = d.day",
    )
    .bind(&sites)
    .bind(&dates)
    .execute(&mut *tx)
    .await?;
    if !energy.is_empty() {
        upsert_energy(&mut tx, energy, read_from).await?;
    }
    tx.commit().await
}

/// Writes rollup rows of every resolution; a bucket already there is
/// replaced.
pub(super) async fn upsert_all(
    conn: &mut sqlx::PgConnection,
    rollups: &[Rollup],
) -> Result<(), sqlx::Error> {
    for resolution in Resolution::ALL {
        let rows: Vec<&Rollup> = rollups
            .iter()
            .filter(|r| r.resolution == resolution)
            .collect();
        for chunk in rows.chunks(20_000) {
            upsert_rollups(conn, resolution, chunk).await?;
        }
    }
    Ok(())
}

/// Writes rollup rows; a bucket already there is replaced.
pub(crate) async fn upsert_rollups(
    conn: &mut sqlx::PgConnection,
    resolution: Resolution,
    rows: &[&Rollup],
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO victron.{} (installation_id, device, reading_table, metric, bucket, samples, min, max, mean, last)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int[],
             $7::float8[], $8::float8[], $9::float8[], $10::float8[])
         ON CONFLICT (installation_id, device, metric, bucket) DO UPDATE SET reading_table = excluded.reading_table,
             samples = excluded.samples, min = excluded.min, max = excluded.max, mean = excluded.mean,
             last = excluded.last",
        resolution.table()
    ))
    .bind(rows.iter().map(|r| &*r.site).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.device.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.table.name()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.metric).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.bucket).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| i32::try_from(r.samples).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.min).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.max).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.mean).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.last).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes days of energy computed from the raw rows as they were at
/// `read_from` (their `updated_at`); a day already there is replaced.
pub(crate) async fn upsert_energy(
    conn: &mut sqlx::PgConnection,
    days: &[DayEnergy],
    read_from: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    // $1 sites, $2 days, one array per figure, then coverage and the time.
    let figures = DayEnergy::FIGURES.len();
    let arrays: Vec<String> = (3..3 + figures)
        .map(|n| format!("${n}::float8[]"))
        .collect();
    let statement = format!(
        "INSERT INTO victron.energy_daily (installation_id, day, {columns}, coverage_pct, updated_at)
         SELECT *, ${at}::timestamptz FROM UNNEST($1::text[], $2::date[], {arrays}, ${coverage}::float8[])
         ON CONFLICT (installation_id, day) DO UPDATE SET {updates},
             coverage_pct = excluded.coverage_pct, updated_at = excluded.updated_at",
        columns = DayEnergy::figure_columns(),
        arrays = arrays.join(", "),
        coverage = 3 + figures,
        at = 4 + figures,
        updates = DayEnergy::figure_updates(),
    );
    let mut query = sqlx::query(&statement)
        .bind(days.iter().map(|d| d.site.as_str()).collect::<Vec<_>>())
        .bind(days.iter().map(|d| d.day).collect::<Vec<_>>());
    for figure in 0..figures {
        query = query.bind(days.iter().map(|d| d.figures()[figure]).collect::<Vec<_>>());
    }
    query
        .bind(days.iter().map(|d| d.coverage_pct).collect::<Vec<_>>())
        .bind(read_from)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Removes rollups older than their resolution's retention (`keep`, finest
/// first; `None`: kept forever), in bounded batches on plain tables (one
/// statement on hypertables, where a row's `ctid` names a place in its
/// chunk only); daily energy follows the daily rollups. Returns how many
/// rows.
pub async fn expire(
    pool: &PgPool,
    mode: StorageMode,
    keep: [Option<Duration>; 3],
) -> Result<u64, sqlx::Error> {
    let mut removed = 0;
    for (resolution, keep) in Resolution::ALL.into_iter().zip(keep) {
        let Some(keep) = keep else { continue };
        let keep_s = keep.as_secs() as f64;
        let table = resolution.table();
        if mode == StorageMode::Postgres {
            loop {
                let deleted = sqlx::query(&format!(
                    "DELETE FROM victron.{table} WHERE ctid IN (SELECT ctid FROM victron.{table}
                     WHERE bucket < now() - make_interval(secs => $1) LIMIT $2)"
                ))
                .bind(keep_s)
                .bind(DELETE_BATCH)
                .execute(pool)
                .await?
                .rows_affected();
                removed += deleted;
                if deleted < DELETE_BATCH as u64 {
                    break;
                }
            }
        } else {
            removed += sqlx::query(&format!(
                "DELETE FROM victron.{table} WHERE bucket < now() - make_interval(secs => $1)"
            ))
            .bind(keep_s)
            .execute(pool)
            .await?
            .rows_affected();
        }
        if resolution == Resolution::Day {
            removed += sqlx::query(
                "DELETE FROM victron.energy_daily WHERE day < (now() - make_interval(secs => $1))::date",
            )
            .bind(keep_s)
            .execute(pool)
            .await?
            .rows_affected();
        }
    }
    Ok(removed)
}

/// The live rollups' [`RollupStore`] with a database: PostgreSQL's reading
/// tables and `victron.history_*`.
#[derive(Debug, Clone)]
pub struct PostgresRollups(pub PgPool);

impl RollupStore for PostgresRollups {
    fn after_the_store(&self) -> bool {
        true
    }

    async fn resume_from(&self, _tz: Tz, now: DateTime<Utc>) -> DateTime<Utc> {
        // Completed days are PostgreSQL's daily roll-up's: the live side
        // starts with today.
        now
    }

    async fn feed(
        &self,
        sites: &[String],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        aggregator: &mut Aggregator,
    ) -> Result<u64, LiveError> {
        let mut count = 0;
        for site in sites {
            for table in ReadingTable::ALL {
                count += feed(&self.0, table, Some(site), from, to, aggregator).await?;
            }
        }
        Ok(count)
    }

    async fn write(
        &self,
        rollups: &[Rollup],
        days: &[DayEnergy],
        whole: &[SiteDay],
        _read_through: DateTime<Utc>,
        tz: Tz,
    ) -> Result<(), LiveError> {
        let pool = &self.0;
        let read_from = read_from(pool).await?;
        if whole.is_empty() {
            let mut tx = pool.begin().await?;
            upsert_all(&mut tx, rollups).await?;
            if !days.is_empty() {
                upsert_energy(&mut tx, days, read_from).await?;
            }
            tx.commit().await?;
        } else {
            // As a rebuild writes its days.
            write(pool, tz, rollups, days, read_from).await?;
        }
        Ok(())
    }
}

/// The days of energy from `first` on (of `site`, or every site's), by site
/// and day.
pub async fn energy_days(
    pool: &PgPool,
    first: NaiveDate,
    site: Option<&str>,
) -> Result<Vec<DayEnergy>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT installation_id, day, {}, coverage_pct
         FROM victron.energy_daily
         WHERE day >= $1 AND ($2::text IS NULL OR installation_id = $2)
         ORDER BY installation_id, day",
        DayEnergy::figure_columns()
    ))
    .bind(first)
    .bind(site)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            DayEnergy::from_columns(
                r.get("installation_id"),
                r.get::<NaiveDate, _>("day"),
                |column| r.get(column),
                r.get("coverage_pct"),
            )
        })
        .collect())
}
