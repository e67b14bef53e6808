//! The rows of an export, from the local store or PostgreSQL: readings,
//! rollups and days of energy of a span, in export order, and where the
//! next rows are (so that the span loop skips what holds nothing).

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row as _;

use super::Filter;
use crate::history::DayEnergy;
use crate::history::Resolution;
use crate::history::sqlite::StoredRollups;
use crate::reading::{ColumnKind, ReadingTable, Value};
use crate::store::{StoreReader, table_from_name};

/// A reading as exported, from either store.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ExportReading {
    pub(super) measured_at: DateTime<Utc>,
    pub(super) site: Arc<str>,
    pub(super) device: String,
    pub(super) table: ReadingTable,
    /// `modbus`, `vedirect`, or what an older writer put in PostgreSQL.
    pub(super) source: Cow<'static, str>,
    pub(super) values: Vec<(&'static str, Value)>,
}

/// Readings in export order: by time, then table, then device (then site).
fn sort_readings(rows: &mut [ExportReading]) {
    rows.sort_by(|a, b| {
        (a.measured_at, a.table, &a.device, &a.site).cmp(&(
            b.measured_at,
            b.table,
            &b.device,
            &b.site,
        ))
    });
}

/// A rollup as exported, from either store.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ExportRollup {
    pub(super) bucket: DateTime<Utc>,
    pub(super) site: String,
    pub(super) device: String,
    pub(super) table: String,
    pub(super) metric: String,
    pub(super) samples: i64,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
    pub(super) mean: Option<f64>,
    pub(super) last: Option<f64>,
}

/// Rollups in export order: by bucket, then table, then device, then metric
/// (then site).
fn sort_rollups(rows: &mut [ExportRollup]) {
    rows.sort_by(|a, b| {
        let key = |r: &ExportRollup| {
            (
                r.bucket,
                table_from_name(&r.table).map_or(ReadingTable::ALL.len(), |t| t as usize),
            )
        };
        (key(a), &a.table, &a.device, &a.metric, &a.site).cmp(&(
            key(b),
            &b.table,
            &b.device,
            &b.metric,
            &b.site,
        ))
    });
}

/// Where the rows come from.
#[derive(Debug)]
pub(super) enum Source {
    /// The local store, without a database.
    Store(StoreReader),
    /// PostgreSQL.
    Database(sqlx::PgPool),
}

impl Source {
    pub(super) async fn close(&self) {
        match self {
            Self::Store(store) => store.close().await,
            Self::Database(pool) => pool.close().await,
        }
    }

    /// The first reading's time at or after `at` (of the filter's site and
    /// table in PostgreSQL; of any in the store).
    pub(super) async fn next_reading(
        &self,
        at: DateTime<Utc>,
        filter: &Filter,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        match self {
            Self::Store(store) => Ok(store.next_confirmed(at).await?),
            Self::Database(pool) => {
                let firsts: Vec<String> = filter
                    .tables()
                    .into_iter()
                    .map(|t| {
                        format!(
                            "(SELECT min(\"timestamp\") FROM victron.{} WHERE \"timestamp\" >= $1
                              AND ($2::text IS NULL OR installation_id = $2))",
                            t.name()
                        )
                    })
                    .collect();
                let next: Option<DateTime<Utc>> =
                    sqlx::query_scalar(&format!("SELECT LEAST({})", firsts.join(", ")))
                        .bind(at)
                        .bind(filter.site.as_deref())
                        .fetch_one(pool)
                        .await
                        .map_err(|e| anyhow::Error::new(e).context("cannot read the readings"))?;
                Ok(next)
            }
        }
    }

    /// The readings measured in `[from, to)`, in export order.
    pub(super) async fn readings(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        filter: &Filter,
    ) -> anyhow::Result<Vec<ExportReading>> {
        let mut rows = match self {
            Self::Store(store) => store
                .readings_between(from, to)
                .await?
                .into_iter()
                .filter(|r| filter.site(&r.reading.site) && filter.table(r.reading.table))
                .map(|r| ExportReading {
                    measured_at: r.reading.measured_at,
                    site: r.reading.site,
                    device: r.reading.device,
                    table: r.reading.table,
                    source: Cow::Borrowed(r.reading.source.as_str()),
                    values: r.reading.values,
                })
                .collect(),
            Self::Database(pool) => {
                let mut rows = Vec::new();
                for table in filter.tables() {
                    database_readings(pool, table, from, to, filter, &mut rows)
                        .await
                        .map_err(|e| {
                            anyhow::Error::new(e)
                                .context(format!("cannot read victron.{}", table.name()))
                        })?;
                }
                rows
            }
        };
        sort_readings(&mut rows);
        Ok(rows)
    }

    /// The start of the first bucket at or after `at`.
    pub(super) async fn next_bucket(
        &self,
        resolution: Resolution,
        at: DateTime<Utc>,
        filter: &Filter,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        match self {
            Self::Store(store) => Ok(StoredRollups(store.clone())
                .next_bucket(resolution, at)
                .await?),
            Self::Database(pool) => {
                let next: Option<DateTime<Utc>> = sqlx::query_scalar(&format!(
                    "SELECT min(bucket) FROM victron.{} WHERE bucket >= $1
                     AND ($2::text IS NULL OR installation_id = $2)
                     AND ($3::text IS NULL OR reading_table = $3)",
                    resolution.table()
                ))
                .bind(at)
                .bind(filter.site.as_deref())
                .bind(filter.table.map(ReadingTable::name))
                .fetch_one(pool)
                .await
                .map_err(|e| {
                    anyhow::Error::new(e)
                        .context(format!("cannot read victron.{}", resolution.table()))
                })?;
                Ok(next)
            }
        }
    }

    /// The rollups with buckets in `[from, to)`, in export order.
    pub(super) async fn rollups(
        &self,
        resolution: Resolution,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        filter: &Filter,
    ) -> anyhow::Result<Vec<ExportRollup>> {
        let finite = |v: f64| v.is_finite().then_some(v);
        let mut rows: Vec<ExportRollup> = match self {
            Self::Store(store) => StoredRollups(store.clone())
                .rollups(resolution, from, to)
                .await?
                .into_iter()
                .filter(|r| filter.site(&r.site) && filter.table(r.table))
                .map(|r| ExportRollup {
                    bucket: r.bucket,
                    site: r.site.to_string(),
                    device: r.device,
                    table: r.table.name().to_string(),
                    metric: r.metric.to_string(),
                    samples: r.samples,
                    min: finite(r.min),
                    max: finite(r.max),
                    mean: finite(r.mean),
                    last: finite(r.last),
                })
                .collect(),
            Self::Database(pool) => {
                let context = || format!("cannot read victron.{}", resolution.table());
                let rows = sqlx::query(&format!(
                    "SELECT bucket, installation_id, device, reading_table, metric, samples::int8,
                            min::float8, max::float8, mean::float8, last::float8
                     FROM victron.{} WHERE bucket >= $1 AND bucket < $2
                     AND ($3::text IS NULL OR installation_id = $3)
                     AND ($4::text IS NULL OR reading_table = $4)",
                    resolution.table()
                ))
                .bind(from)
                .bind(to)
                .bind(filter.site.as_deref())
                .bind(filter.table.map(ReadingTable::name))
                .fetch_all(pool)
                .await
                .map_err(|e| anyhow::Error::new(e).context(context()))?;
                rows.iter()
                    .map(|r| {
                        Ok(ExportRollup {
                            bucket: r.try_get(0)?,
                            site: r.try_get(1)?,
                            device: r.try_get(2)?,
                            table: r.try_get(3)?,
                            metric: r.try_get(4)?,
                            samples: r.try_get(5)?,
                            min: r.try_get::<Option<f64>, _>(6)?.and_then(finite),
                            max: r.try_get::<Option<f64>, _>(7)?.and_then(finite),
                            mean: r.try_get::<Option<f64>, _>(8)?.and_then(finite),
                            last: r.try_get::<Option<f64>, _>(9)?.and_then(finite),
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(|e| anyhow::Error::new(e).context(context()))?
            }
        };
        sort_rollups(&mut rows);
        Ok(rows)
    }

    /// The days of energy in `[first, end)` (of the filter's site), by day
    /// then site.
    pub(super) async fn energy(
        &self,
        first: NaiveDate,
        end: NaiveDate,
        filter: &Filter,
    ) -> anyhow::Result<Vec<DayEnergy>> {
        let mut days: Vec<DayEnergy> = match self {
            Self::Store(store) => StoredRollups(store.clone())
                .energy_days()
                .await?
                .into_iter()
                .map(|d| d.energy)
                .filter(|d| d.day >= first && d.day < end && filter.site(&d.site))
                .collect(),
            Self::Database(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT installation_id, day, {}, coverage_pct::float8
                     FROM victron.energy_daily
                     WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR installation_id = $3)",
                    DayEnergy::FIGURES
                        .map(|f| format!("{f}::float8 AS {f}"))
                        .join(", ")
                ))
                .bind(first)
                .bind(end)
                .bind(filter.site.as_deref())
                .fetch_all(pool)
                .await
                .map_err(|e| anyhow::Error::new(e).context("cannot read victron.energy_daily"))?;
                rows.iter()
                    .map(|r| {
                        let mut failed = None;
                        let day = DayEnergy::from_columns(
                            r.try_get("installation_id")?,
                            r.try_get("day")?,
                            |column| {
                                r.try_get(column)
                                    .map_err(|e| failed = Some(e))
                                    .ok()
                                    .flatten()
                            },
                            r.try_get("coverage_pct")?,
                        );
                        failed.map_or(Ok(day), Err)
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(|e| {
                        anyhow::Error::new(e).context("cannot read victron.energy_daily")
                    })?
            }
        };
        days.sort_by(|a, b| (a.day, &a.site).cmp(&(b.day, &b.site)));
        Ok(days)
    }
}

/// Appends `table`'s rows measured in `[from, to)` (of the filter's site)
/// to `rows`.
async fn database_readings(
    pool: &sqlx::PgPool,
    table: ReadingTable,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    filter: &Filter,
    rows: &mut Vec<ExportReading>,
) -> Result<(), sqlx::Error> {
    let columns = table.columns();
    let values = columns
        .iter()
        .map(|(column, kind)| match kind {
            ColumnKind::Float => format!("{column}::float8"),
            ColumnKind::Int => format!("{column}::int8"),
            ColumnKind::Text => format!("{column}::text"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let found = sqlx::query(&format!(
        "SELECT \"timestamp\", installation_id::text, device, coalesce(source, '')::text, {values}
         FROM victron.{} WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2
         AND ($3::text IS NULL OR installation_id = $3)",
        table.name()
    ))
    .bind(from)
    .bind(to)
    .bind(filter.site.as_deref())
    .fetch_all(pool)
    .await?;
    // Consecutive rows mostly share a site: one allocation per change.
    let mut site: Arc<str> = Arc::from("");
    for row in &found {
        let this: &str = row.try_get(1)?;
        if *site != *this {
            site = Arc::from(this);
        }
        let mut values = Vec::new();
        for (i, (column, kind)) in columns.iter().enumerate() {
            let value = match kind {
                ColumnKind::Float => row.try_get::<Option<f64>, _>(i + 4)?.map(Value::Float),
                ColumnKind::Int => row.try_get::<Option<i64>, _>(i + 4)?.map(Value::Int),
                ColumnKind::Text => row
                    .try_get::<Option<String>, _>(i + 4)?
                    .map(|t| Value::Text(Cow::Owned(t))),
            };
            values.extend(value.map(|v| (*column, v)));
        }
        rows.push(ExportReading {
            measured_at: row.try_get(0)?,
            site: Arc::clone(&site),
            device: row.try_get(2)?,
            table,
            source: Cow::Owned(row.try_get(3)?),
            values,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_sort_by_time_then_table_then_device() {
        let at = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let row = |s, table, device: &str| ExportReading {
            measured_at: at(s),
            site: Arc::from("ranch"),
            device: device.into(),
            table,
            source: Cow::Borrowed("modbus"),
            values: Vec::new(),
        };
        let mut rows = vec![
            row(1, ReadingTable::Battery, "a"),
            row(0, ReadingTable::System, "a"),
            row(0, ReadingTable::Solar, "b"),
            row(0, ReadingTable::Solar, "a"),
            row(0, ReadingTable::Battery, "z"),
        ];
        sort_readings(&mut rows);
        let order: Vec<_> = rows
            .iter()
            .map(|r| (r.measured_at, r.table, r.device.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                (at(0), ReadingTable::Battery, "z"),
                (at(0), ReadingTable::Solar, "a"),
                (at(0), ReadingTable::Solar, "b"),
                (at(0), ReadingTable::System, "a"),
                (at(1), ReadingTable::Battery, "a"),
            ]
        );
    }
}
