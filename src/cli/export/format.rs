//! The lines of an export: CSV (RFC 4180 quoting) with a header, or JSON
//! lines carrying only the values present, written through a buffer; a
//! closed standard output is [`Closed`], which ends an export successfully.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};

use super::Format;
use super::source::{ExportReading, ExportRollup};
use crate::history::DayEnergy;
use crate::reading::{ReadingTable, Value};

/// The value columns of exported readings: one table's, or the union of
/// every table's (in [`ReadingTable::ALL`] order, each name once).
#[derive(Debug)]
pub(super) struct ReadingColumns {
    names: Vec<&'static str>,
    /// Each name's position in `names`.
    index: HashMap<&'static str, usize>,
}

impl ReadingColumns {
    pub(super) fn new(table: Option<ReadingTable>) -> Self {
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
pub(super) struct Closed;

/// The lines of the export, written through a buffer (a line costs no
/// system call of its own).
#[derive(Debug)]
pub(super) struct Out<W: Write> {
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
    pub(super) fn new(writer: W, format: Format) -> Self {
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

    pub(super) fn flush(&mut self) -> anyhow::Result<()> {
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

    pub(super) fn readings_header(&mut self, columns: &ReadingColumns) -> anyhow::Result<()> {
        self.header(
            READING_COLUMNS
                .into_iter()
                .chain(columns.names.iter().copied()),
        )
    }

    pub(super) fn rollups_header(&mut self) -> anyhow::Result<()> {
        self.header(ROLLUP_COLUMNS)
    }

    pub(super) fn energy_header(&mut self) -> anyhow::Result<()> {
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

    pub(super) fn reading(
        &mut self,
        columns: &ReadingColumns,
        row: &ExportReading,
    ) -> anyhow::Result<()> {
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

    pub(super) fn rollup(&mut self, row: &ExportRollup) -> anyhow::Result<()> {
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

    pub(super) fn energy(&mut self, day: &DayEnergy) -> anyhow::Result<()> {
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
pub(super) fn iso(at: DateTime<Utc>) -> String {
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
    use std::borrow::Cow;
    use std::sync::Arc;

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
}
