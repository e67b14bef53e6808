//! `victron-poller export --from T [--to T] [--site S] [--format csv|json]
//! [--data readings|5m|1h|1d|energy] [--table T]`: what is kept, for a
//! spreadsheet or another tool, on standard output — raw readings, rollups
//! or daily energy, as CSV with a header or as JSON lines. From PostgreSQL
//! when a database is configured, else from the local store (found as for
//! `energy`). Readings and rollups are read a span at a time (an hour of
//! readings), so an export of weeks holds one span in memory, never the
//! whole; a reader that goes away (`export | head`) ends it, successfully.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use clap::{Args, ValueEnum};
use sqlx::Row as _;

use super::{Context, Exit, UsageError};
use crate::config::Config;
use crate::history::DayEnergy;
use crate::history::Resolution;
use crate::history::buckets::{day_start, first_day_from};
use crate::history::sqlite::StoredRollups;
use crate::reading::{ColumnKind, ReadingTable, Value};
use crate::store::{StoreReader, table_from_name};

/// Options of `export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The start, included: an RFC 3339 time (2026-12-01T06:00:00Z) or a
    /// date (2026-12-01: that local day's start in `site.timezone`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    from: TimeArg,
    /// The end, excluded (the same forms); default now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    to: Option<TimeArg>,
    /// Only this site (`installation_id`).
    #[arg(long)]
    site: Option<String>,
    /// CSV with a header line, or JSON lines (one object per line).
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    format: Format,
    /// What: raw readings, rollups of 5 minutes, 1 hour or 1 local day, or
    /// daily energy (the local days that start in the range).
    #[arg(long, value_enum, default_value_t = Data::Readings)]
    data: Data,
    /// Only this reading table (readings and rollups).
    #[arg(long, value_enum)]
    table: Option<TableArg>,
    /// Directory of the local store, read without a database (default as
    /// for `status`).
    #[arg(long, env = crate::config::STATE_DIR_ENV, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// A time on the command line: an instant, or a local day (its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeArg {
    /// An RFC 3339 time.
    At(DateTime<Utc>),
    /// A date: the start of that local day.
    Day(NaiveDate),
}

impl TimeArg {
    /// The instant, local days in `tz`.
    fn resolve(self, tz: chrono_tz::Tz) -> DateTime<Utc> {
        match self {
            Self::At(at) => at,
            Self::Day(day) => day_start(day, tz),
        }
    }
}

/// `--from`/`--to`: an RFC 3339 time or a date (clap names the option).
fn parse_time(text: &str) -> Result<TimeArg, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(TimeArg::At(at.with_timezone(&Utc)));
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(TimeArg::Day(day));
    }
    Err(
        "not an RFC 3339 time (2026-12-01T06:00:00Z, 2026-12-01T07:00:00+01:00) \
         nor a date (2026-12-01)"
            .to_string(),
    )
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Comma-separated values, a header line first (RFC 4180 quoting).
    Csv,
    /// One JSON object per line, with only the values present.
    Json,
}

/// What is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Data {
    /// Raw readings, one line per device and measurement time.
    Readings,
    /// Five-minute rollups.
    #[value(name = "5m")]
    FiveMinutes,
    /// Hourly rollups.
    #[value(name = "1h")]
    Hour,
    /// Local-day rollups.
    #[value(name = "1d")]
    Day,
    /// Daily energy per site.
    Energy,
}

/// `--table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TableArg {
    /// `battery_readings`.
    Battery,
    /// `solar_readings`.
    Solar,
    /// `inverter_readings`.
    Inverter,
    /// `system_readings`.
    System,
}

impl From<TableArg> for ReadingTable {
    fn from(table: TableArg) -> Self {
        match table {
            TableArg::Battery => Self::Battery,
            TableArg::Solar => Self::Solar,
            TableArg::Inverter => Self::Inverter,
            TableArg::System => Self::System,
        }
    }
}

/// How much of the range is read at once: about ten thousand lines for
/// one site (readings at 1 Hz; rollups of some 80 metrics).
fn span(data: Data) -> chrono::Duration {
    match data {
        Data::FiveMinutes => chrono::Duration::hours(6),
        Data::Hour => chrono::Duration::days(5),
        Data::Day => chrono::Duration::days(120),
        Data::Readings | Data::Energy => chrono::Duration::hours(1),
    }
}

/// Which rows: of one site, of one table.
#[derive(Debug, Clone, Default)]
struct Filter {
    site: Option<String>,
    table: Option<ReadingTable>,
}

impl Filter {
    fn site(&self, site: &str) -> bool {
        self.site.as_deref().is_none_or(|s| s == site)
    }

    fn table(&self, table: ReadingTable) -> bool {
        self.table.is_none_or(|t| t == table)
    }

    /// The tables to read.
    fn tables(&self) -> Vec<ReadingTable> {
        ReadingTable::ALL
            .into_iter()
            .filter(|t| self.table(*t))
            .collect()
    }
}

/// Runs the subcommand.
pub(crate) async fn exec(
    config: &Config,
    args: ExportArgs,
    context: &Context,
) -> anyhow::Result<Exit> {
    let tz = config.site.timezone;
    let from = args.from.resolve(tz);
    let to = args.to.map_or_else(Utc::now, |to| to.resolve(tz));
    if from >= to {
        return Err(UsageError(format!(
            "--from ({}) is not before --to ({}): the range [from, to) is empty",
            iso(from),
            iso(to)
        ))
        .into());
    }
    if args.data == Data::Energy && args.table.is_some() {
        return Err(
            UsageError("--table selects readings or rollups, not --data energy".into()).into(),
        );
    }
    let filter = Filter {
        site: args.site.clone(),
        table: args.table.map(ReadingTable::from),
    };
    let source = match &config.database {
        Some(db) => Source::Database(crate::db::connect(db).await?),
        None => {
            let dir = context.store_dir(args.state_dir.clone());
            let store = StoreReader::open(&dir)
                .await?
                .with_legacy_site(config.site.installation_id.as_deref().unwrap_or_default());
            Source::Store(store)
        }
    };
    let mut out = Out::new(std::io::BufWriter::new(std::io::stdout()), args.format);
    let written = export(&source, &args, &filter, (from, to), tz, &mut out).await;
    source.close().await;
    match written.and_then(|()| out.flush()) {
        Ok(()) => Ok(Exit::Ok),
        // The reader has what it wanted.
        Err(error) if error.is::<Closed>() => Ok(Exit::Ok),
        Err(error) => Err(error),
    }
}

/// Writes what `args` asks for in `range` to `out`.
async fn export<W: Write>(
    source: &Source,
    args: &ExportArgs,
    filter: &Filter,
    range: (DateTime<Utc>, DateTime<Utc>),
    tz: chrono_tz::Tz,
    out: &mut Out<W>,
) -> anyhow::Result<()> {
    let resolution = match args.data {
        Data::Readings => {
            let columns = ReadingColumns::new(filter.table);
            out.readings_header(&columns)?;
            return by_span(
                range,
                span(args.data),
                async |at| source.next_reading(at, filter).await,
                async |from, to| source.readings(from, to, filter).await,
                |row| out.reading(&columns, &row),
            )
            .await;
        }
        Data::Energy => {
            out.energy_header()?;
            let first = first_day_from(range.0, tz);
            let end = first_day_from(range.1, tz);
            for day in source.energy(first, end, filter).await? {
                out.energy(&day)?;
            }
            return Ok(());
        }
        Data::FiveMinutes => Resolution::FiveMinutes,
        Data::Hour => Resolution::Hour,
        Data::Day => Resolution::Day,
    };
    out.rollups_header()?;
    by_span(
        range,
        span(args.data),
        async |at| source.next_bucket(resolution, at, filter).await,
        async |from, to| source.rollups(resolution, from, to, filter).await,
        |row| out.rollup(&row),
    )
    .await
}

/// Reads `range` a `span` at a time and writes each row: `next` finds the
/// first time at or after an instant that holds a row (so that a range
/// mostly empty costs a query per stretch of rows, not one per span),
/// `read` the rows of `[from, to)` in their order.
async fn by_span<T>(
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    span: chrono::Duration,
    mut next: impl AsyncFnMut(DateTime<Utc>) -> anyhow::Result<Option<DateTime<Utc>>>,
    mut read: impl AsyncFnMut(DateTime<Utc>, DateTime<Utc>) -> anyhow::Result<Vec<T>>,
    mut write: impl FnMut(T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut start = next(from).await?;
    while let Some(at) = start.filter(|at| *at < to) {
        let end = at.checked_add_signed(span).map_or(to, |end| end.min(to));
        let rows = read(at, end).await?;
        let empty = rows.is_empty();
        for row in rows {
            write(row)?;
        }
        start = if end >= to {
            None
        } else if empty {
            next(end).await?
        } else {
            Some(end)
        };
    }
    Ok(())
}

/// A reading as exported, from either store.
#[derive(Debug, Clone, PartialEq)]
struct ExportReading {
    measured_at: DateTime<Utc>,
    site: Arc<str>,
    device: String,
    table: ReadingTable,
    /// `modbus`, `vedirect`, or what an older writer put in PostgreSQL.
    source: Cow<'static, str>,
    values: Vec<(&'static str, Value)>,
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
struct ExportRollup {
    bucket: DateTime<Utc>,
    site: String,
    device: String,
    table: String,
    metric: String,
    samples: i64,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    last: Option<f64>,
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
enum Source {
    /// The local store, without a database.
    Store(StoreReader),
    /// PostgreSQL.
    Database(sqlx::PgPool),
}

impl Source {
    async fn close(&self) {
        match self {
            Self::Store(store) => store.close().await,
            Self::Database(pool) => pool.close().await,
        }
    }

    /// The first reading's time at or after `at` (of the filter's site and
    /// table in PostgreSQL; of any in the store).
    async fn next_reading(
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
    async fn readings(
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
    async fn next_bucket(
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
    async fn rollups(
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
    async fn energy(
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

/// The value columns of exported readings: one table's, or the union of
/// every table's (in [`ReadingTable::ALL`] order, each name once).
#[derive(Debug)]
struct ReadingColumns {
    names: Vec<&'static str>,
    /// Each name's position in `names`.
    index: HashMap<&'static str, usize>,
}

impl ReadingColumns {
    fn new(table: Option<ReadingTable>) -> Self {
        let mut names = Vec::new();
        let mut index = HashMap::new();
        let tables = table.map_or_else(|| ReadingTable::ALL.to_vec(), |t| vec![t]);
        for table in tables {
            for (column, _) in table.columns() {
                index.entry(*column).or_insert_with(|| {
                    names.push(*column);
                    names.len() - 1
                });
            }
        }
        Self { names, index }
    }
}

/// Standard output went away (`export | head`): the export ends there.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
struct Closed;

/// The lines of the export, written through a buffer (a line costs no
/// system call of its own).
#[derive(Debug)]
struct Out<W: Write> {
    writer: W,
    format: Format,
    /// The line being made.
    line: String,
}

/// The common columns of a reading line.
const READING_COLUMNS: [&str; 5] = ["measured_at", "site", "device", "table", "source"];
/// The columns of a rollup line.
const ROLLUP_COLUMNS: [&str; 10] = [
    "bucket", "site", "device", "table", "metric", "samples", "min", "max", "mean", "last",
];

impl<W: Write> Out<W> {
    fn new(writer: W, format: Format) -> Self {
        Self {
            writer,
            format,
            line: String::new(),
        }
    }

    /// Writes the line made, and a newline.
    fn emit(&mut self) -> anyhow::Result<()> {
        self.line.push('\n');
        let written = self.writer.write_all(self.line.as_bytes());
        self.line.clear();
        written.map_err(failed)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.flush().map_err(failed)
    }

    /// The CSV header line (none for JSON lines).
    fn header<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) -> anyhow::Result<()> {
        if self.format == Format::Json {
            return Ok(());
        }
        for (i, name) in names.into_iter().enumerate() {
            if i > 0 {
                self.line.push(',');
            }
            push_csv(&mut self.line, name);
        }
        self.emit()
    }

    fn readings_header(&mut self, columns: &ReadingColumns) -> anyhow::Result<()> {
        self.header(
            READING_COLUMNS
                .into_iter()
                .chain(columns.names.iter().copied()),
        )
    }

    fn rollups_header(&mut self) -> anyhow::Result<()> {
        self.header(ROLLUP_COLUMNS)
    }

    fn energy_header(&mut self) -> anyhow::Result<()> {
        self.header(
            ["day", "site"]
                .into_iter()
                .chain(DayEnergy::FIGURES)
                .chain(["coverage_pct"]),
        )
    }

    /// Starts a line with its leading fields (texts).
    fn start(&mut self, fields: &[(&str, &str)]) {
        for (i, (name, text)) in fields.iter().enumerate() {
            match self.format {
                Format::Csv => {
                    if i > 0 {
                        self.line.push(',');
                    }
                    push_csv(&mut self.line, text);
                }
                Format::Json => {
                    self.line.push(if i == 0 { '{' } else { ',' });
                    push_json_key(&mut self.line, name);
                    push_json_string(&mut self.line, text);
                }
            }
        }
    }

    /// Adds a field: in CSV an empty cell when absent, in JSON only when
    /// present.
    fn field(&mut self, name: &str, value: Option<&Value>) {
        match self.format {
            Format::Csv => {
                self.line.push(',');
                match value {
                    Some(Value::Float(v)) if v.is_finite() => {
                        let _ = write!(self.line, "{v}");
                    }
                    Some(Value::Int(v)) => {
                        let _ = write!(self.line, "{v}");
                    }
                    Some(Value::Text(t)) => push_csv(&mut self.line, t),
                    Some(Value::Float(_)) | None => {}
                }
            }
            Format::Json => match value {
                Some(Value::Float(v)) if v.is_finite() => {
                    self.line.push(',');
                    push_json_key(&mut self.line, name);
                    let _ = write!(self.line, "{v}");
                }
                Some(Value::Int(v)) => {
                    self.line.push(',');
                    push_json_key(&mut self.line, name);
                    let _ = write!(self.line, "{v}");
                }
                Some(Value::Text(t)) => {
                    self.line.push(',');
                    push_json_key(&mut self.line, name);
                    push_json_string(&mut self.line, t);
                }
                Some(Value::Float(_)) | None => {}
            },
        }
    }

    /// Ends the line and writes it.
    fn end(&mut self) -> anyhow::Result<()> {
        if self.format == Format::Json {
            self.line.push('}');
        }
        self.emit()
    }

    fn reading(&mut self, columns: &ReadingColumns, row: &ExportReading) -> anyhow::Result<()> {
        self.start(&[
            ("measured_at", &iso(row.measured_at)),
            ("site", &row.site),
            ("device", &row.device),
            ("table", row.table.name()),
            ("source", &row.source),
        ]);
        match self.format {
            Format::Csv => {
                let mut slots: Vec<Option<&Value>> = vec![None; columns.names.len()];
                for (column, value) in &row.values {
                    if let Some(slot) = columns.index.get(column).and_then(|i| slots.get_mut(*i)) {
                        *slot = Some(value);
                    }
                }
                for slot in slots {
                    self.field("", slot);
                }
            }
            // In the table's column order.
            Format::Json => {
                for (column, value) in &row.values {
                    self.field(column, Some(value));
                }
            }
        }
        self.end()
    }

    fn rollup(&mut self, row: &ExportRollup) -> anyhow::Result<()> {
        self.start(&[
            ("bucket", &iso(row.bucket)),
            ("site", &row.site),
            ("device", &row.device),
            ("table", &row.table),
            ("metric", &row.metric),
        ]);
        self.field("samples", Some(&Value::Int(row.samples)));
        for (name, value) in [
            ("min", row.min),
            ("max", row.max),
            ("mean", row.mean),
            ("last", row.last),
        ] {
            self.field(name, value.map(Value::Float).as_ref());
        }
        self.end()
    }

    fn energy(&mut self, day: &DayEnergy) -> anyhow::Result<()> {
        self.start(&[("day", &day.day.to_string()), ("site", &day.site)]);
        for (name, value) in DayEnergy::FIGURES.into_iter().zip(day.figures()) {
            self.field(name, value.map(Value::Float).as_ref());
        }
        self.field("coverage_pct", Some(&Value::Float(day.coverage_pct)));
        self.end()
    }
}

/// A write error: [`Closed`] when the reader went away.
fn failed(error: std::io::Error) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        Closed.into()
    } else {
        anyhow::Error::new(error).context("cannot write the export to standard output")
    }
}

/// A time as exported: RFC 3339, UTC, microseconds.
fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Appends a CSV field, quoted when it holds a comma, a double quote, CR or
/// LF (RFC 4180: inner double quotes doubled).
fn push_csv(line: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        line.push('"');
        line.push_str(&field.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(field);
    }
}

/// Appends a JSON string.
fn push_json_string(line: &mut String, text: &str) {
    let _ = write!(line, "{}", serde_json::Value::from(text));
}

/// Appends `"name":`.
fn push_json_key(line: &mut String, name: &str) {
    push_json_string(line, name);
    line.push(':');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_they_must_be() {
        let cases = [
            ("plain", "plain"),
            ("", ""),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("two\nlines", "\"two\nlines\""),
            ("cr\rhere", "\"cr\rhere\""),
            ("\"", "\"\"\"\""),
            ("a;b c", "a;b c"),
        ];
        for (field, want) in cases {
            let mut line = String::new();
            push_csv(&mut line, field);
            assert_eq!(line, want, "{field:?}");
        }
    }

    #[test]
    fn times_are_rfc_3339_or_local_days() {
        let berlin = chrono_tz::Europe::Berlin;
        let at = parse_time("2026-12-07T10:00:00.123456Z").unwrap();
        assert_eq!(iso(at.resolve(berlin)), "2026-12-07T10:00:00.123456Z");
        let offset = parse_time("2026-12-07T11:00:00+01:00").unwrap();
        assert_eq!(iso(offset.resolve(berlin)), "2026-12-07T10:00:00.000000Z");
        // A date is its local midnight.
        let day = parse_time("2026-12-01").unwrap();
        assert_eq!(iso(day.resolve(berlin)), "2026-11-30T23:00:00.000000Z");
        assert_eq!(
            iso(day.resolve(chrono_tz::UTC)),
            "2026-12-01T00:00:00.000000Z"
        );
        for bad in ["yesterday", "2026-13-01", "2026-12-01T25:00:00Z", ""] {
            let error = parse_time(bad).unwrap_err();
            assert!(error.contains("RFC 3339"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_union_of_columns_names_each_once_in_table_order() {
        let all = ReadingColumns::new(None);
        assert_eq!(&all.names[..3], ["soc", "voltage", "current"]);
        let mut unique = all.names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.names.len());
        for table in ReadingTable::ALL {
            for (column, _) in table.columns() {
                assert!(all.index.contains_key(column), "{column}");
            }
        }
        // `product_id` is battery's column first.
        assert!(all.index["product_id"] < all.index["battery_voltage"]);
        let solar = ReadingColumns::new(Some(ReadingTable::Solar));
        assert_eq!(
            solar.names,
            ReadingTable::Solar
                .columns()
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
        );
    }

    fn reading() -> ExportReading {
        ExportReading {
            measured_at: DateTime::parse_from_rfc3339("2026-12-07T10:00:00.5Z")
                .unwrap()
                .with_timezone(&Utc),
            site: Arc::from("ranch, north"),
            device: "bank".into(),
            table: ReadingTable::Battery,
            source: Cow::Borrowed("modbus"),
            values: vec![
                ("soc", Value::Float(87.5)),
                ("state", Value::Text("say \"idle\"".into())),
                ("temperature", Value::Float(f64::NAN)),
                ("product_id", Value::Int(0xA389)),
            ],
        }
    }

    fn lines(format: Format, write: impl FnOnce(&mut Out<&mut Vec<u8>>)) -> String {
        let mut bytes = Vec::new();
        let mut out = Out::new(&mut bytes, format);
        write(&mut out);
        out.flush().unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_reading_as_csv_and_as_a_json_line() {
        let columns = ReadingColumns::new(Some(ReadingTable::Battery));
        let csv = lines(Format::Csv, |out| {
            out.readings_header(&columns).unwrap();
            out.reading(&columns, &reading()).unwrap();
        });
        let mut csv = csv.lines();
        assert!(
            csv.next()
                .unwrap()
                .starts_with("measured_at,site,device,table,source,soc,voltage,")
        );
        assert_eq!(
            csv.next().unwrap(),
            "2026-12-07T10:00:00.500000Z,\"ranch, north\",bank,battery_readings,modbus,\
             87.5,,,,\"say \"\"idle\"\"\",,,,,,,,,,,41865"
        );
        let json = lines(Format::Json, |out| {
            out.readings_header(&columns).unwrap();
            out.reading(&columns, &reading()).unwrap();
        });
        let value: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "measured_at": "2026-12-07T10:00:00.500000Z",
                "site": "ranch, north",
                "device": "bank",
                "table": "battery_readings",
                "source": "modbus",
                "soc": 87.5,
                "state": "say \"idle\"",
                "product_id": 41865,
            }),
            "only the values present, a NaN not"
        );
        assert_eq!(json.lines().count(), 1, "no header");
    }

    #[test]
    fn readings_sort_by_time_then_table_then_device() {
        let at = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let row = |s, table, device: &str| ExportReading {
            measured_at: at(s),
            device: device.into(),
            table,
            ..reading()
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

    /// A closed pipe is [`Closed`] (the export stops, successfully); any
    /// other write error is an error.
    #[test]
    fn a_closed_reader_ends_the_export() {
        struct Failing(std::io::ErrorKind);
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(self.0.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Out::new(Failing(std::io::ErrorKind::BrokenPipe), Format::Csv);
        assert!(out.rollups_header().unwrap_err().is::<Closed>());
        let mut out = Out::new(Failing(std::io::ErrorKind::StorageFull), Format::Csv);
        let error = out.rollups_header().unwrap_err();
        assert!(!error.is::<Closed>());
        assert!(format!("{error:#}").contains("cannot write the export"));
    }

    /// Spans skip what holds nothing and end at `to`.
    #[tokio::test]
    async fn spans_cover_the_range_once() {
        let at = |h: i64| DateTime::from_timestamp(h * 3600, 0).unwrap();
        // Rows at hours 0, 1 and 50; the range [0, 50 h + 30 min).
        let rows = [at(0), at(1), at(50)];
        let mut reads = Vec::new();
        let mut seen = Vec::new();
        by_span(
            (at(0), at(50) + chrono::Duration::minutes(30)),
            chrono::Duration::hours(1),
            async |t| Ok(rows.iter().copied().find(|r| *r >= t)),
            async |from, to| {
                reads.push((from, to));
                Ok(rows
                    .iter()
                    .copied()
                    .filter(|r| *r >= from && *r < to)
                    .collect())
            },
            |row| {
                seen.push(row);
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(seen, rows);
        assert_eq!(
            reads,
            [
                (at(0), at(1)),
                (at(1), at(2)),
                (at(2), at(3)),
                (at(50), at(50) + chrono::Duration::minutes(30)),
            ]
        );
    }
}
