//! `victron-poller export --from T [--to T] [--site S] [--format csv|json]
//! [--data readings|5m|1h|1d|energy] [--table T]`: what is kept, for a
//! spreadsheet or another tool, on standard output — raw readings, rollups
//! or daily energy, as CSV with a header or as JSON lines. From PostgreSQL
//! when a database is configured, else from the local store (found as for
//! `energy`). Readings and rollups are read a span at a time (an hour of
//! readings), so an export of weeks holds one span in memory, never the
//! whole; a reader that goes away (`export | head`) ends it, successfully.
//!
//! Here the options, the range and the span loop; `source` reads the rows
//! from either store, `format` writes them as CSV or JSON lines.

mod format;
mod source;

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, ValueEnum};

use super::{Context, Exit, UsageError};
use crate::config::Config;
use crate::history::Resolution;
use crate::history::buckets::{day_start, first_day_from};
use crate::reading::ReadingTable;
use crate::store::StoreReader;
use format::{Closed, Out, ReadingColumns, iso};
use source::Source;

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
pub(super) enum Format {
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
pub(super) struct Filter {
    pub(super) site: Option<String>,
    pub(super) table: Option<ReadingTable>,
}

impl Filter {
    pub(super) fn site(&self, site: &str) -> bool {
        self.site.as_deref().is_none_or(|s| s == site)
    }

    pub(super) fn table(&self, table: ReadingTable) -> bool {
        self.table.is_none_or(|t| t == table)
    }

    /// The tables to read.
    pub(super) fn tables(&self) -> Vec<ReadingTable> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
