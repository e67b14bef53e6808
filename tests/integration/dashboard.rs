//! The Grafana dashboard (`dashboards/victron-poller.json`): every panel's
//! query, with the template variables and Grafana's PostgreSQL macros
//! expanded as Grafana expands them (`$__timeFilter`, `$__timeFrom()`,
//! `$__timeTo()`, `$__timeGroupAlias` — with and without the data source's
//! TimescaleDB option — and `$__interval`), runs on the three server
//! flavours over short, medium and long ranges and returns every column its
//! panel names.

use chrono::{DateTime, Duration, Utc};
#[cfg(feature = "servers")]
use sqlx::{Column as _, Connection as _, Executor as _, PgConnection, Statement as _};

#[cfg(feature = "servers")]
use crate::helpers::database::{Flavour, TestDb};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/dashboards/victron-poller.json"
);

/// Grafana's macro expansion (its PostgreSQL data source's `macros.go`):
/// `$name(args)` with no `)` inside the arguments.
fn expand_macros(sql: &str, from: DateTime<Utc>, to: DateTime<Utc>, timescaledb: bool) -> String {
    let time = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let (name, tail) = after.split_at(name_len);
        let Some(args_and_more) = tail.strip_prefix('(') else {
            out.push('$');
            rest = after;
            continue;
        };
        let close = args_and_more
            .find(')')
            .expect("a macro's arguments end with ')'");
        let args: Vec<&str> = args_and_more[..close].split(',').map(str::trim).collect();
        let group = |args: &[&str]| {
            let seconds = interval_seconds(args[1].trim_matches('\'')) as f64;
            if timescaledb {
                format!("time_bucket('{seconds:.3}s',{})", args[0])
            } else {
                format!("floor(extract(epoch from {})/{seconds})*{seconds}", args[0])
            }
        };
        let expanded = match name {
            "__timeFilter" => format!("{} BETWEEN '{}' AND '{}'", args[0], time(from), time(to)),
            "__timeFrom" => format!("'{}'", time(from)),
            "__timeTo" => format!("'{}'", time(to)),
            "__time" => format!("{} AS \"time\"", args[0]),
            "__timeGroup" => group(&args),
            "__timeGroupAlias" => format!("{} AS \"time\"", group(&args)),
            other => panic!("the dashboard uses a macro this test does not know: {other}"),
        };
        out.push_str(&expanded);
        rest = &args_and_more[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Seconds of a Grafana interval (`30s`, `1m`, `2h`, `1d`).
fn interval_seconds(text: &str) -> u64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().expect("an interval's number");
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => panic!("interval unit {other}"),
    }
}

/// The panels' queries and the columns each names, from the dashboard.
fn panels() -> Vec<(String, String, String, Vec<String>)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6, "the dashboard has its panels");
    panels
        .iter()
        .map(|p| {
            let names = p["fieldConfig"]["overrides"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["matcher"]["options"].as_str().unwrap().to_string())
                .collect();
            (
                p["title"].as_str().unwrap().to_string(),
                p["type"].as_str().unwrap().to_string(),
                p["targets"][0]["rawSql"].as_str().unwrap().to_string(),
                names,
            )
        })
        .collect()
}

#[cfg(feature = "servers")]
async fn check_panels(db: &TestDb, timescaledb: bool) {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let to = Utc::now();
    for range in [Duration::hours(1), Duration::days(3), Duration::days(90)] {
        for (title, kind, sql, names) in panels() {
            // The frontend interpolates variables first, then the server
            // expands macros.
            let sql = sql.replace("$site", "ranch").replace("$__interval", "1m");
            let sql = expand_macros(&sql, to - range, to, timescaledb);
            let statement = conn
                .prepare(&sql)
                .await
                .unwrap_or_else(|e| panic!("{:?} {title}: {e}\n{sql}", db.flavour));
            let columns: Vec<String> = statement
                .columns()
                .iter()
                .map(|c| c.name().to_string())
                .collect();
            for name in &names {
                assert!(
                    columns.contains(name),
                    "{title}: no column {name} in {columns:?}"
                );
            }
            if kind == "timeseries" || kind == "barchart" {
                assert_eq!(columns[0], "time", "{title}");
            }
            conn.fetch_all(sql.as_str())
                .await
                .unwrap_or_else(|e| panic!("{:?} {title} over {range}: {e}", db.flavour));
        }
    }
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_runs_on_every_flavour() {
    for flavour in [Flavour::Timescale, Flavour::NoPreload, Flavour::Plain] {
        let db = TestDb::create(flavour).await;
        db.migrate().await;
        check_panels(&db, false).await;
        if flavour == Flavour::Timescale {
            // The data source's TimescaleDB option: `time_bucket`.
            check_panels(&db, true).await;
        }
    }
}

/// Every panel has a raw SQL query for the PostgreSQL data source the
/// import asks for, and names the columns it shows.
#[test]
fn every_panel_queries_the_imported_data_source() {
    for (title, _, sql, names) in panels() {
        assert!(sql.contains("victron."), "{title}");
        assert!(!names.is_empty(), "{title}");
    }
    let text = std::fs::read_to_string(DASHBOARD).unwrap();
    assert!(text.contains("\"${DS_POSTGRES}\""));
    assert!(
        !text.contains("time_bucket"),
        "no TimescaleDB-only function"
    );
}

#[test]
fn macros_expand_as_grafana_expands_them() {
    let from = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let to = from + Duration::hours(1);
    assert_eq!(
        expand_macros(
            "WHERE $__timeFilter(\"timestamp\") AND x < $__timeTo()",
            from,
            to,
            false
        ),
        "WHERE \"timestamp\" BETWEEN '2026-12-01T10:00:00Z' AND '2026-12-01T11:00:00Z' AND x < '2026-12-01T11:00:00Z'"
    );
    assert_eq!(
        expand_macros("SELECT $__timeGroupAlias(bucket, 5m), v", from, to, false),
        "SELECT floor(extract(epoch from bucket)/300)*300 AS \"time\", v"
    );
    assert_eq!(
        expand_macros("SELECT $__timeGroupAlias(bucket, 5m)", from, to, true),
        "SELECT time_bucket('300.000s',bucket) AS \"time\""
    );
}
