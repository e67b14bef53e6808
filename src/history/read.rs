//! The site's record read back for people — the page on the gateway, its
//! API, `status` — from wherever it is kept ([`Archive`]): the local store
//! on a gateway without a database, PostgreSQL with one (where
//! forward-first leaves the store empty). Rollups of chosen metrics, the
//! open buckets computed from the raw readings not rolled up yet, days of
//! energy, and each device's newest reading.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use sqlx::{PgPool, Row};

use super::aggregate::{Aggregator, DayEnergy, Rollup};
use super::buckets::Resolution;
use super::live::RollupStore as _;
use super::postgres::PostgresRollups;
use super::sqlite::StoredRollups;
use crate::reading::{ColumnKind, Reading, ReadingTable, SourceKind, Value};
use crate::store::{StoreError, StoreReader, from_micros, micros, table_from_name};

/// Why the record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The local store.
    #[error("the local store: {0}")]
    Store(#[from] StoreError),
    /// PostgreSQL.
    #[error("the database: {0}")]
    Database(#[from] sqlx::Error),
    /// Reading the raw rows for the open buckets.
    #[error("the raw readings: {0}")]
    Raw(#[from] super::live::LiveError),
    /// The database is known to be out of reach: not asked (a reader must
    /// not wait for its timeouts).
    #[error("the database: unreachable since {0}")]
    Unreachable(DateTime<Utc>),
}

/// A rollup row as read: device, table, metric, bucket (µs), samples, and
/// min, max, mean, last.
type RollupRow = (String, String, String, i64, i64, [Option<f64>; 4]);

/// The same as SQLite's JSON array gives it.
type RollupJson = (
    String,
    String,
    String,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

/// Where the site's record is kept.
#[derive(Debug, Clone)]
pub enum Archive {
    /// The local store (a gateway without a database).
    Store(StoreReader),
    /// PostgreSQL.
    Database(PgPool),
}

impl Archive {
    /// The rollups of `metrics` (all when empty) of `site`'s `devices`
    /// with buckets in `[from, to)`, by device, metric and bucket (each
    /// device a range of the tables' key: site, device, metric, bucket).
    pub async fn rollups(
        &self,
        resolution: Resolution,
        site: &str,
        devices: &[&str],
        metrics: &[&str],
        (from, to): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<Vec<Rollup>, ReadError> {
        let metrics = serde_json::to_string(metrics).unwrap_or_else(|_| "[]".into());
        let rows: Vec<RollupRow> = match self {
            Self::Store(store) => {
                if !StoredRollups(store.clone())
                    .has_table(resolution.table())
                    .await?
                {
                    return Ok(Vec::new());
                }
                let mut parsed: Vec<RollupJson> = Vec::new();
                for device in devices {
                    // One row of JSON: sqlx hands SQLite rows over one by one.
                    let json: Option<String> = sqlx::query_scalar(&format!(
                        "SELECT json_group_array(json_array(device, reading_table, metric, bucket_us,
                                                            samples, min, max, mean, last))
                         FROM (SELECT * FROM {} WHERE site = ?1 AND device = ?4
                                 AND (?5 = '[]' OR metric IN (SELECT value FROM json_each(?5)))
                                 AND bucket_us >= ?2 AND bucket_us < ?3
                               ORDER BY metric, bucket_us)",
                        resolution.table()
                    ))
                    .bind(site)
                    .bind(micros(from))
                    .bind(micros(to))
                    .bind(device)
                    .bind(&metrics)
                    .fetch_one(&store.pool())
                    .await
                    .map_err(StoreError::from)?;
                    if let Some(json) = json {
                        let rows: Vec<RollupJson> = serde_json::from_str(&json)
                            .map_err(|e| StoreError::Sql(sqlx::Error::Decode(Box::new(e))))?;
                        parsed.extend(rows);
                    }
                }
                parsed
                    .into_iter()
                    .map(|(d, t, m, b, s, min, max, mean, last)| {
                        (d, t, m, b, s, [min, max, mean, last])
                    })
                    .collect()
            }
            Self::Database(pool) => sqlx::query(&format!(
                "SELECT device, reading_table, metric, bucket, samples::int8, min, max, mean, last
                 FROM victron.{} WHERE installation_id = $1 AND device = ANY($4)
                   AND bucket >= $2 AND bucket < $3
                   AND ($5 = '[]' OR metric IN (SELECT jsonb_array_elements_text($5::jsonb)))
                 ORDER BY device, metric, bucket",
                resolution.table()
            ))
            .bind(site)
            .bind(from)
            .bind(to)
            .bind(devices)
            .bind(&metrics)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    micros(r.get::<DateTime<Utc>, _>(3)),
                    r.get(4),
                    [r.get(5), r.get(6), r.get(7), r.get(8)],
                )
            })
            .collect(),
        };
        let site: Arc<str> = Arc::from(site);
        Ok(rows
            .into_iter()
            .filter_map(
                |(device, table, metric, bucket, samples, [min, max, mean, last])| {
                    let table = table_from_name(&table)?;
                    let metric = table.columns().iter().find(|(c, _)| *c == metric)?.0;
                    let nan = f64::NAN;
                    Some(Rollup {
                        site: Arc::clone(&site),
                        device,
                        table,
                        metric,
                        resolution,
                        bucket: from_micros(bucket),
                        samples,
                        min: min.unwrap_or(nan),
                        max: max.unwrap_or(nan),
                        mean: mean.unwrap_or(nan),
                        last: last.unwrap_or(nan),
                    })
                },
            )
            .collect())
    }

    /// The buckets of `resolution` the raw readings of `site` in
    /// `[from, to)` make (the open ones, not rolled up yet), in the local
    /// days of `tz`, bridging intervals up to `max_gap_s`.
    pub async fn open_buckets(
        &self,
        resolution: Resolution,
        site: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        (tz, max_gap_s): (Tz, f64),
    ) -> Result<Vec<Rollup>, ReadError> {
        let mut aggregator = Aggregator::new(tz, max_gap_s).within(from, to);
        let sites = [site.to_string()];
        match self {
            Self::Store(store) => {
                super::sqlite::feed_reader(store, &sites, from, to, &mut aggregator).await?;
            }
            Self::Database(pool) => {
                PostgresRollups(pool.clone())
                    .feed(&sites, from, to, &mut aggregator)
                    .await?;
            }
        }
        let (rollups, _) = aggregator.finish();
        Ok(rollups
            .into_iter()
            .filter(|r| r.resolution == resolution)
            .collect())
    }

    /// The raw values of one metric of one device in `[from, to)`, in time
    /// order.
    pub async fn raw(
        &self,
        site: &str,
        device: &str,
        metric: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<Vec<(DateTime<Utc>, f64)>, ReadError> {
        let mut points = Vec::new();
        match self {
            Self::Store(store) => {
                for row in store.device_between(device, from, to).await? {
                    let reading = row.reading;
                    if *reading.site == *site
                        && let Some(value) = reading.float(metric)
                    {
                        points.push((reading.measured_at, value));
                    }
                }
            }
            Self::Database(pool) => {
                for table in ReadingTable::ALL {
                    if table.column_kind(metric) != Some(ColumnKind::Float) {
                        continue;
                    }
                    let rows: Vec<(DateTime<Utc>, f64)> = sqlx::query_as(&format!(
                        "SELECT \"timestamp\", {metric}::float8 FROM victron.{}
                         WHERE installation_id = $1 AND device = $2
                           AND \"timestamp\" >= $3 AND \"timestamp\" < $4 AND {metric} IS NOT NULL
                         ORDER BY \"timestamp\"",
                        table.name()
                    ))
                    .bind(site)
                    .bind(device)
                    .bind(from)
                    .bind(to)
                    .fetch_all(pool)
                    .await?;
                    points.extend(rows);
                }
            }
        }
        Ok(points)
    }

    /// `site`'s days of energy from `first` on (every site's when `None`),
    /// oldest first.
    pub async fn days(
        &self,
        site: Option<&str>,
        first: NaiveDate,
    ) -> Result<Vec<DayEnergy>, ReadError> {
        match self {
            Self::Store(store) => Ok(StoredRollups(store.clone())
                .energy_days()
                .await?
                .into_iter()
                .map(|d| d.energy)
                .filter(|d| d.day >= first && site.is_none_or(|s| d.site == s))
                .collect()),
            Self::Database(pool) => Ok(super::postgres::energy_days(pool, first, site).await?),
        }
    }

    /// The newest reading of each of `devices` (site, device) in the last
    /// `within`.
    pub async fn latest(
        &self,
        devices: &[(String, String)],
        within: chrono::Duration,
    ) -> Result<Vec<Reading>, ReadError> {
        let since = Utc::now() - within;
        let mut found = Vec::new();
        match self {
            Self::Store(store) => {
                for (site, device) in devices {
                    if let Some(row) = store.latest(device).await?
                        && *row.reading.site == **site
                        && row.reading.measured_at >= since
                    {
                        found.push(row.reading);
                    }
                }
            }
            Self::Database(pool) => {
                // One probe of the (installation_id, device, "timestamp")
                // key per device and table, not a scan of a day of rows.
                for (site, device) in devices {
                    for table in ReadingTable::ALL {
                        if let Some(reading) = latest_in(pool, table, (site, device), since).await?
                        {
                            found.push(reading);
                        }
                    }
                }
            }
        }
        Ok(found)
    }
}

/// The newest row of `device` of `site` in a PostgreSQL reading table, if
/// measured since `since`.
async fn latest_in(
    pool: &PgPool,
    table: ReadingTable,
    (site, device): (&str, &str),
    since: DateTime<Utc>,
) -> Result<Option<Reading>, sqlx::Error> {
    let columns = table.columns();
    let select = columns
        .iter()
        .map(|(name, kind)| match kind {
            ColumnKind::Float => format!("{name}::float8"),
            ColumnKind::Int => format!("{name}::int8"),
            ColumnKind::Text => format!("{name}::text"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let rows = sqlx::query(&format!(
        "SELECT coalesce(installation_id, ''), device, \"timestamp\", source, {select}
         FROM victron.{} WHERE device = $1 AND \"timestamp\" >= $2
           AND installation_id = $3
         ORDER BY \"timestamp\" DESC LIMIT 1",
        table.name()
    ))
    .bind(device)
    .bind(since)
    .bind(site)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let values = columns
                .iter()
                .enumerate()
                .filter_map(|(i, (name, kind))| {
                    let at = i + 4;
                    let value = match kind {
                        ColumnKind::Float => Value::Float(row.try_get::<Option<f64>, _>(at).ok()??),
                        ColumnKind::Int => Value::Int(row.try_get::<Option<i64>, _>(at).ok()??),
                        ColumnKind::Text => {
                            Value::Text(row.try_get::<Option<String>, _>(at).ok()??.into())
                        }
                    };
                    Some((*name, value))
                })
                .collect();
            let source: Option<String> = row.try_get(3).ok().flatten();
            Reading {
                site: Arc::from(row.get::<String, _>(0)),
                device: row.get(1),
                table,
                source: if source.as_deref() == Some("vedirect") {
                    SourceKind::VeDirect
                } else {
                    SourceKind::Modbus
                },
                measured_at: row.get(2),
                unconfirmed: None,
                values,
            }
        })
        .next())
}
