//! `victron-poller export` run as a process: what a daemon stored (in the
//! local store, and in PostgreSQL) comes back row for row, read by the
//! test's own SQL, not the crate's; CSV as Python's `csv` module reads it,
//! JSON lines with only the values present; the range's edges; a bad
//! `--from`.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value as Json;
use sqlx::Row as _;
use victron_poller::reading::ReadingTable;

use crate::helpers::process::{run_cli, sigterm, texts, try_store_status, wait_exit, wait_for};
#[cfg(feature = "servers")]
use crate::helpers::simulator::BANK;
use crate::helpers::simulator::{simulator, write_config};

/// A stored reading as the test reads it: the common columns, and the
/// values present (`null` ones left out) in its table's column order.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    measured_at: String,
    site: String,
    device: String,
    table: String,
    source: String,
    values: Vec<(&'static str, Json)>,
}

/// A time as the export writes it.
fn iso_micros(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn table_named(name: &str) -> ReadingTable {
    ReadingTable::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no table {name}"))
}

/// The values present in `doc`: by column name (an object), or by the
/// position of the table's columns (an array, as the store keeps them).
fn present(table: ReadingTable, doc: &Json) -> Vec<(&'static str, Json)> {
    table
        .columns()
        .iter()
        .enumerate()
        .filter_map(|(i, (column, _))| {
            let value = match doc {
                Json::Array(slots) => slots.get(i),
                Json::Object(map) => map.get(*column),
                _ => panic!("values: {doc}"),
            }?;
            (!value.is_null()).then(|| (*column, value.clone()))
        })
        .collect()
}

/// Export order: by time, then table (in `ReadingTable::ALL` order), then
/// device, then site.
fn sort_expected(rows: &mut [Expected]) {
    let key = |r: &Expected| {
        (
            r.measured_at.clone(),
            table_named(&r.table),
            r.device.clone(),
            r.site.clone(),
        )
    };
    rows.sort_by_key(key);
}

/// Every confirmed reading of the store in `state`, by its own SQL.
async fn store_rows(state: &Path) -> Vec<Expected> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(state.join("victron-poller.sqlite"))
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let rows = sqlx::query(
        "SELECT measured_at_us, coalesce(site, ''), device, reading_table, source, vals
         FROM readings WHERE held_mono IS NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut rows: Vec<Expected> = rows
        .iter()
        .map(|r| {
            let table: String = r.get(3);
            let vals: String = r.get(5);
            Expected {
                measured_at: iso_micros(r.get(0)),
                site: r.get(1),
                device: r.get(2),
                values: present(table_named(&table), &serde_json::from_str(&vals).unwrap()),
                table,
                source: r.get(4),
            }
        })
        .collect();
    sort_expected(&mut rows);
    rows
}

/// Every reading of the database, by its own SQL.
#[cfg(feature = "servers")]
async fn database_rows(db: &crate::helpers::database::TestDb) -> Vec<Expected> {
    let mut conn = db.connect().await;
    let mut rows = Vec::new();
    for table in ReadingTable::ALL {
        let found = sqlx::query(&format!(
            "SELECT (extract(epoch FROM \"timestamp\") * 1000000)::int8, installation_id::text,
                    device, coalesce(source, ''), to_jsonb(r)::text
             FROM victron.{} r",
            table.name()
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for r in &found {
            let doc: String = r.get(4);
            rows.push(Expected {
                measured_at: iso_micros(r.get(0)),
                site: r.get(1),
                device: r.get(2),
                table: table.name().to_string(),
                source: r.get(3),
                values: present(table, &serde_json::from_str(&doc).unwrap()),
            });
        }
    }
    sort_expected(&mut rows);
    rows
}

/// The CSV as Python's `csv` module reads it: one map of column to cell per
/// row (the header's names), and the header itself.
fn parse_csv(text: &str) -> (Vec<String>, Vec<HashMap<String, String>>) {
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import csv, json, sys\n\
             rows = list(csv.reader(sys.stdin, strict=True))\n\
             json.dump({'header': rows[0], 'rows': [dict(zip(rows[0], r)) for r in rows[1:]],\n\
                        'widths': sorted({len(r) for r in rows})}, sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3, to read the CSV");
    {
        use std::io::Write as _;
        let mut stdin = python.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let output = python.wait_with_output().unwrap();
    assert!(output.status.success(), "python3's csv failed");
    let parsed: Json = serde_json::from_slice(&output.stdout).unwrap();
    let header: Vec<String> = serde_json::from_value(parsed["header"].clone()).unwrap();
    assert_eq!(
        parsed["widths"],
        serde_json::json!([header.len()]),
        "every row as wide as the header"
    );
    (
        header,
        serde_json::from_value(parsed["rows"].clone()).unwrap(),
    )
}

/// A cell holds `want`: the same number, or the same text.
fn cell_is(cell: &str, want: &Json) -> bool {
    match want {
        Json::Number(n) => cell.parse::<f64>().ok() == n.as_f64(),
        Json::String(s) => cell == s,
        _ => false,
    }
}

/// The CSV rows are the expected rows: common columns, every value present
/// in its column, every other value column empty.
fn assert_csv_is(csv: &str, expected: &[Expected], value_columns: &[&str]) {
    let (header, rows) = parse_csv(csv);
    let mut want_header = vec!["measured_at", "site", "device", "table", "source"];
    want_header.extend(value_columns);
    assert_eq!(header, want_header);
    // The header line is plain names: split by hand, the same.
    assert_eq!(csv.lines().next().unwrap(), want_header.join(","));
    assert_eq!(rows.len(), expected.len(), "one CSV row per stored reading");
    for (i, (row, want)) in rows.iter().zip(expected).enumerate() {
        let common = [
            ("measured_at", &want.measured_at),
            ("site", &want.site),
            ("device", &want.device),
            ("table", &want.table),
            ("source", &want.source),
        ];
        for (column, value) in common {
            assert_eq!(&row[column], value, "row {i}: {column}");
        }
        for column in value_columns {
            let cell = &row[*column];
            match want.values.iter().find(|(c, _)| c == column) {
                Some((_, value)) => {
                    assert!(cell_is(cell, value), "row {i} {column}: {cell:?} ≠ {value}")
                }
                None => assert_eq!(cell, "", "row {i} {column}: absent, so empty"),
            }
        }
    }
}

/// The JSON lines are the expected rows: typed values, only those present.
fn assert_json_lines_are(text: &str, expected: &[Expected]) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), expected.len(), "one line per stored reading");
    for (line, want) in lines.iter().zip(expected) {
        let object: serde_json::Map<String, Json> = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        let mut expected_object = serde_json::Map::new();
        for (key, value) in [
            ("measured_at", &want.measured_at),
            ("site", &want.site),
            ("device", &want.device),
            ("table", &want.table),
            ("source", &want.source),
        ] {
            expected_object.insert(key.into(), Json::from(value.as_str()));
        }
        for (column, value) in &want.values {
            expected_object.insert((*column).into(), value.clone());
        }
        assert_eq!(object.len(), expected_object.len(), "{line}");
        for (key, value) in &expected_object {
            let got = &object[key];
            let same = match (got, value) {
                (Json::Number(a), Json::Number(b)) => a.as_f64() == b.as_f64(),
                _ => got == value,
            };
            assert!(same, "{key}: {got} ≠ {value} in {line}");
        }
    }
}

/// The union of the tables' value columns, as the export's header has them
/// without `--table`.
fn every_value_column() -> Vec<&'static str> {
    let mut columns = Vec::new();
    for table in ReadingTable::ALL {
        for (column, _) in table.columns() {
            if !columns.contains(column) {
                columns.push(*column);
            }
        }
    }
    columns
}

/// Whether the rows have numbers and texts to compare (the simulator's
/// battery serves both).
fn has_values(rows: &[Expected]) -> bool {
    let values = || rows.iter().flat_map(|r| &r.values);
    values().any(|(c, v)| *c == "soc" && v.is_number()) && values().any(|(_, v)| v.is_string())
}

/// Runs `export` with `args`; asserts it succeeded; its standard output.
fn export(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["export"];
    all.extend(args);
    let output = run_cli(&all, env);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    stdout
}

/// The daemon polls the simulator into its local store; stopped, its store
/// exports as CSV and as JSON lines, every reading once, in order, each
/// value in its column, as the test's own SQL reads the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemons_store_exports_row_for_row() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    let mut daemon = crate::helpers::process::spawn_daemon(&config, &state, None);
    wait_for("40 readings stored", Duration::from_secs(20), async || {
        try_store_status(&state)
            .await
            .is_some_and(|doc| doc["rows_stored"].as_i64().unwrap_or(0) >= 40)
    })
    .await;
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);

    let expected = store_rows(&state).await;
    assert!(expected.len() >= 40, "{}", expected.len());
    assert!(has_values(&expected), "values to compare");
    let tables: std::collections::BTreeSet<&str> =
        expected.iter().map(|r| r.table.as_str()).collect();
    assert_eq!(tables.len(), 4, "every table polled: {tables:?}");
    let (config, state) = (config.to_str().unwrap(), state.to_str().unwrap());
    let common = ["--config", config, "--state-dir", state];
    let from = ["--from", "2020-01-01T00:00:00Z"];

    let csv = export(&[&common[..], &from].concat(), &[]);
    assert_csv_is(&csv, &expected, &every_value_column());

    // One table: its columns only, its rows only.
    let bank: Vec<Expected> = expected
        .iter()
        .filter(|r| r.table == "battery_readings")
        .cloned()
        .collect();
    let battery: Vec<&str> = ReadingTable::Battery
        .columns()
        .iter()
        .map(|(c, _)| *c)
        .collect();
    let csv = export(&[&common[..], &from, &["--table", "battery"]].concat(), &[]);
    assert_csv_is(&csv, &bank, &battery);

    let json = export(&[&common[..], &from, &["--format", "json"]].concat(), &[]);
    assert_json_lines_are(&json, &expected);

    // Another site's: nothing but the header.
    let none = export(
        &[&common[..], &from, &["--site", "elsewhere"]].concat(),
        &[],
    );
    assert_eq!(none.lines().count(), 1, "{none}");
}

/// The range is `[from, to)`: a reading exactly at `from` is in, one
/// exactly at `to` is not, nor one a microsecond before `from`; `--site`
/// keeps one site's. Texts with commas, quotes and a newline survive CSV
/// quoting; a JSON line carries only the values present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_range_includes_from_and_excludes_to() {
    use std::sync::Arc;
    use victron_poller::reading::{Reading, SourceKind, Value};
    use victron_poller::store::LocalStore;

    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).await.unwrap();
    let from = DateTime::parse_from_rfc3339("2026-12-07T10:00:00.123456Z")
        .unwrap()
        .with_timezone(&Utc);
    let to = from + chrono::Duration::hours(3);
    let us = chrono::Duration::microseconds(1);
    let reading = |site: &str, at: DateTime<Utc>, soc: f64| Reading {
        site: Arc::from(site),
        device: "bank".into(),
        table: ReadingTable::Battery,
        source: SourceKind::VeDirect,
        measured_at: at,
        unconfirmed: None,
        values: vec![("soc", Value::Float(soc))],
    };
    let mut alarmed = reading("ranch", from + chrono::Duration::hours(2), 3.0);
    alarmed.values.push((
        "alarm",
        Value::Text("low voltage, \"high\" temperature\nand more".into()),
    ));
    store
        .append(&[
            reading("ranch", from - us, 0.0),
            reading("ranch", from, 1.0),
            // (The store keys a reading by time, table and device.)
            reading("other", from + chrono::Duration::minutes(30), 9.0),
            reading("ranch", from + chrono::Duration::seconds(1), 2.0),
            alarmed,
            reading("ranch", to - us, 4.0),
            reading("ranch", to, 5.0),
        ])
        .await
        .unwrap();
    store.close().await;

    let state = dir.path().to_str().unwrap();
    let (from_arg, to_arg) = (
        from.to_rfc3339_opts(SecondsFormat::Micros, true),
        to.to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    let args = [
        "--state-dir",
        state,
        "--from",
        &from_arg,
        "--to",
        &to_arg,
        "--site",
        "ranch",
    ];
    let json = export(&[&args[..], &["--format", "json"]].concat(), &[]);
    let lines: Vec<Json> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let socs: Vec<f64> = lines.iter().map(|l| l["soc"].as_f64().unwrap()).collect();
    assert_eq!(socs, [1.0, 2.0, 3.0, 4.0], "{json}");
    assert_eq!(lines[0]["measured_at"], "2026-12-07T10:00:00.123456Z");
    assert_eq!(lines[3]["measured_at"], "2026-12-07T13:00:00.123455Z");
    let keys: Vec<&str> = lines[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec!["device", "measured_at", "site", "soc", "source", "table"];
    want.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, want, "only the values present");
    assert_eq!(lines[0]["source"], "vedirect");
    assert_eq!(
        lines[2]["alarm"],
        "low voltage, \"high\" temperature\nand more"
    );

    let csv = export(&[&args[..], &["--table", "battery"]].concat(), &[]);
    let (_, rows) = parse_csv(&csv);
    assert_eq!(rows.len(), 4, "{csv}");
    assert_eq!(rows[0]["measured_at"], "2026-12-07T10:00:00.123456Z");
    assert_eq!(
        rows[2]["alarm"],
        "low voltage, \"high\" temperature\nand more"
    );
    assert_eq!(rows[2]["soc"], "3");
    assert_eq!(rows[1]["alarm"], "");

    // Without `--site`, the other site's reading too.
    let all = export(&args[..6], &[]);
    let (_, rows) = parse_csv(&all);
    let sites: Vec<&str> = rows.iter().map(|r| r["site"].as_str()).collect();
    assert_eq!(
        sites,
        ["ranch", "ranch", "other", "ranch", "ranch"],
        "{all}"
    );
}

/// A bad `--from` names the option and what is wrong; an empty range is
/// refused too; both are usage errors (64).
#[test]
fn a_bad_from_is_a_usage_error() {
    let output = run_cli(&["export", "--from", "yesterday"], &[]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(64), "{stdout}{stderr}");
    assert!(
        stderr.contains("--from") && stderr.contains("yesterday") && stderr.contains("RFC 3339"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");

    let output = run_cli(
        &[
            "export",
            "--from",
            "2026-12-02",
            "--to",
            "2026-12-01T00:00:00Z",
        ],
        &[("VICTRON_POLLER_SITE__TIMEZONE", "UTC")],
    );
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(64), "{stdout}{stderr}");
    assert!(
        stderr.contains("--from (2026-12-02T00:00:00.000000Z) is not before --to"),
        "{stderr}"
    );
}

/// With PostgreSQL: the daemon forwards its readings; the export (from the
/// database, no store named) is the database's rows, as the test's own SQL
/// reads them, as CSV and as JSON lines.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_databases_readings_export_row_for_row() {
    use crate::helpers::database::{Flavour, TestDb, rows};

    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    let mut daemon = crate::helpers::process::spawn_daemon(&config, &state, Some(&db.url));
    wait_for(
        "readings in the database",
        Duration::from_secs(30),
        async || rows(&db, BANK.table).await >= 10,
    )
    .await;
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);

    let expected = database_rows(&db).await;
    assert!(expected.len() >= 10, "{}", expected.len());
    assert!(has_values(&expected), "values to compare");
    let config = config.to_str().unwrap();
    let env = [("DATABASE_URL", db.url.as_str())];
    let args = ["--config", config, "--from", "2020-01-01"];
    let csv = export(&args, &env);
    assert_csv_is(&csv, &expected, &every_value_column());
    let json = export(&[&args[..], &["--format", "json"]].concat(), &env);
    assert_json_lines_are(&json, &expected);

    // One site's, one table's.
    let bank: Vec<Expected> = expected
        .iter()
        .filter(|r| r.table == BANK.table)
        .cloned()
        .collect();
    let battery: Vec<&str> = ReadingTable::Battery
        .columns()
        .iter()
        .map(|(c, _)| *c)
        .collect();
    let csv = export(
        &[&args[..], &["--table", "battery", "--site", "test-site"]].concat(),
        &env,
    );
    assert_csv_is(&csv, &bank, &battery);
}

/// Rollups and daily energy from the local store: two hours of PV at 1 kW
/// rolled up by `history rebuild` (no database), exported as the test's own
/// SQL reads the store's tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_and_energy_export_from_the_store() {
    use std::sync::Arc;
    use victron_poller::reading::{Reading, SourceKind, Value};
    use victron_poller::store::LocalStore;

    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).await.unwrap();
    let start = DateTime::parse_from_rfc3339("2026-06-03T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let readings: Vec<Reading> = (0..720)
        .map(|step| Reading {
            site: Arc::from("ranch"),
            device: "mppt".into(),
            table: ReadingTable::Solar,
            source: SourceKind::VeDirect,
            measured_at: start + chrono::Duration::seconds(10 * step),
            unconfirmed: None,
            values: vec![("pv_power", Value::Float(1000.0))],
        })
        .collect();
    store.append(&readings).await.unwrap();
    store.close().await;
    let state = dir.path().to_str().unwrap();
    let utc = [("VICTRON_POLLER_SITE__TIMEZONE", "UTC")];
    let rebuilt = run_cli(
        &[
            "history",
            "rebuild",
            "--from",
            "2026-06-03",
            "--to",
            "2026-06-03",
            "--state-dir",
            state,
        ],
        &utc,
    );
    assert_eq!(rebuilt.status.code(), Some(0), "{:?}", texts(&rebuilt));

    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("victron-poller.sqlite"))
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let count = async |table: &str| -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let (hours, five_minutes) = (count("history_1h").await, count("history_5m").await);
    let solar: f64 =
        sqlx::query_scalar("SELECT solar_kwh FROM energy_daily WHERE day = '2026-06-03'")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert!(hours > 0 && five_minutes > hours, "{hours} {five_minutes}");

    let range = [
        "--state-dir",
        state,
        "--from",
        "2026-06-03",
        "--to",
        "2026-06-04",
    ];
    let csv = export(&[&range[..], &["--data", "1h"]].concat(), &utc);
    let (header, rows) = parse_csv(&csv);
    assert_eq!(
        header,
        [
            "bucket", "site", "device", "table", "metric", "samples", "min", "max", "mean", "last"
        ]
    );
    assert_eq!(rows.len() as i64, hours);
    let pv: Vec<&HashMap<String, String>> =
        rows.iter().filter(|r| r["metric"] == "pv_power").collect();
    assert_eq!(pv.len(), 2, "{csv}");
    assert_eq!(pv[0]["bucket"], "2026-06-03T10:00:00.000000Z");
    assert_eq!(pv[1]["bucket"], "2026-06-03T11:00:00.000000Z");
    for r in &pv {
        assert_eq!(
            (
                r["site"].as_str(),
                r["device"].as_str(),
                r["table"].as_str()
            ),
            ("ranch", "mppt", "solar_readings")
        );
        assert_eq!((r["samples"].as_str(), r["mean"].as_str()), ("360", "1000"));
    }

    let json = export(
        &[&range[..], &["--data", "5m", "--format", "json"]].concat(),
        &utc,
    );
    let lines: Vec<Json> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as i64, five_minutes);
    let buckets: Vec<&str> = lines
        .iter()
        .map(|l| l["bucket"].as_str().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "by time");

    let csv = export(&[&range[..], &["--data", "energy"]].concat(), &utc);
    let (header, rows) = parse_csv(&csv);
    assert_eq!(&header[..3], ["day", "site", "solar_kwh"]);
    assert_eq!(header.last().unwrap(), "coverage_pct");
    assert_eq!(rows.len(), 1, "{csv}");
    assert_eq!(
        (rows[0]["day"].as_str(), rows[0]["site"].as_str()),
        ("2026-06-03", "ranch")
    );
    assert_eq!(rows[0]["solar_kwh"].parse::<f64>().unwrap(), solar);
    assert!((solar - 2.0).abs() < 0.01, "{solar}");
    // The day starts before `--from`'s time: not in the range.
    let later = export(
        &[
            "--state-dir",
            state,
            "--from",
            "2026-06-03T06:00:00Z",
            "--data",
            "energy",
        ],
        &utc,
    );
    assert_eq!(later.lines().count(), 1, "the header only: {later}");
}
