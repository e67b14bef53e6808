//! The site for people, against the real daemon fed by the simulator: the
//! API's newest values equal the rows the local store (or PostgreSQL)
//! holds, `/metrics`' value gauges too (a value not given is absent), a
//! history's `from`/`to` edges and a gap in the data, the 24-hour flow and
//! the days of energy equal what the test put in the record, the page in
//! Debian's headless chromium shows the stored numbers with no console
//! error and no request to another host, and a password guards all but
//! `/healthz`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Duration as Span, DurationRound as _, NaiveDate, Utc};
use serde_json::Value;
use victron_poller::simulator::gx::SimHandle;

use crate::helpers::http::{health_address, http_get, parse_metrics};
use crate::helpers::process::{Daemon, spawn_daemon, wait_for};
use crate::helpers::simulator::{BANK, simulator, site_devices_toml};

/// The site every test here configures.
const SITE_ID: &str = "page-test";

fn config(dir: &Path, sim: &SimHandle, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[site]\ninstallation_id = \"{SITE_ID}\"\n\
             [health]\nlisten = \"127.0.0.1:0\"\n{extra}\n\
             [history]\nmax_gap_s = 2\n\
             [[gx]]\nhost = \"127.0.0.1\"\nport = {}\npoll_interval_ms = 200\n{}",
            sim.addr().port(),
            site_devices_toml()
        ),
    )
    .unwrap();
    path
}

/// Where the test reads the record from, by its own SQL.
enum Record {
    Store(sqlx::SqlitePool),
    #[cfg(feature = "servers")]
    Database(sqlx::PgPool),
}

/// The value columns of a reading table, in the store's order (the
/// store keeps a row's values as a JSON array in this order).
fn columns(table: &str) -> Vec<&'static str> {
    victron_poller::reading::ReadingTable::ALL
        .into_iter()
        .find(|t| t.name() == table)
        .unwrap()
        .columns()
        .iter()
        .map(|(c, _)| *c)
        .collect()
}

impl Record {
    async fn store(state: &Path) -> Self {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(state.join("victron-poller.sqlite"))
            .busy_timeout(Duration::from_secs(10));
        Self::Store(sqlx::SqlitePool::connect_with(options).await.unwrap())
    }

    /// The stored row of `device` measured at `at` (to the microsecond):
    /// column → value (JSON; null for none).
    async fn row_at(&self, device: &str, at: DateTime<Utc>) -> Vec<(&'static str, Value)> {
        match self {
            Self::Store(pool) => {
                let (table, vals): (String, String) = sqlx::query_as(
                    "SELECT reading_table, vals FROM readings WHERE device = ? AND measured_at_us = ?",
                )
                .bind(device)
                .bind(at.timestamp_micros())
                .fetch_one(pool)
                .await
                .unwrap_or_else(|e| panic!("no stored row of {device} at {at}: {e}"));
                let values: Vec<Value> = serde_json::from_str(&vals).unwrap();
                columns(&table)
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| (c, values.get(i).cloned().unwrap_or(Value::Null)))
                    .collect()
            }
            #[cfg(feature = "servers")]
            Self::Database(pool) => {
                let table = crate::helpers::simulator::SITE
                    .iter()
                    .find(|d| d.name == device)
                    .unwrap()
                    .table;
                let json: Value = sqlx::query_scalar(&format!(
                    "SELECT to_jsonb(r) FROM victron.{table} r WHERE device = $1 AND \"timestamp\" = $2"
                ))
                .bind(device)
                .bind(at)
                .fetch_one(pool)
                .await
                .unwrap_or_else(|e| panic!("no row of {device} at {at}: {e}"));
                columns(table)
                    .into_iter()
                    .map(|c| (c, json[c].clone()))
                    .collect()
            }
        }
    }

    /// The times of `device`'s rows, in order.
    async fn times(&self, device: &str) -> Vec<DateTime<Utc>> {
        match self {
            Self::Store(pool) => {
                let us: Vec<i64> = sqlx::query_scalar(
                    "SELECT measured_at_us FROM readings WHERE device = ? ORDER BY measured_at_us",
                )
                .bind(device)
                .fetch_all(pool)
                .await
                .unwrap();
                us.into_iter()
                    .map(|u| DateTime::from_timestamp_micros(u).unwrap())
                    .collect()
            }
            #[cfg(feature = "servers")]
            Self::Database(pool) => sqlx::query_scalar(
                "SELECT \"timestamp\" FROM victron.battery_readings WHERE device = $1 ORDER BY 1",
            )
            .bind(device)
            .fetch_all(pool)
            .await
            .unwrap(),
        }
    }

    /// Puts 30 days of energy and 22 hours of 5-minute rollups of the GX's
    /// system overview in the record, with a hole of one hour; returns the
    /// seeded buckets (start → PV W), holes as `None`.
    async fn seed(&self, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, Option<f64>)> {
        let first = (now - Span::hours(24))
            .duration_trunc(Span::minutes(5))
            .unwrap();
        let mut buckets = Vec::new();
        let mut at = first;
        let mut i = 0;
        while at < now - Span::hours(2) {
            let hole = (Span::hours(6)..Span::hours(7)).contains(&(at - first));
            buckets.push((at, (!hole).then(|| 1000.0 + 10.0 * f64::from(i))));
            at += Span::minutes(5);
            i += 1;
        }
        let today = now.date_naive();
        let statements = self.seed_statements(&buckets, today);
        match self {
            Self::Store(pool) => {
                for sql in statements {
                    sqlx::query(&sql).execute(pool).await.unwrap();
                }
            }
            #[cfg(feature = "servers")]
            Self::Database(pool) => {
                for sql in statements {
                    sqlx::query(&sql).execute(pool).await.unwrap();
                }
            }
        }
        buckets
    }

    fn seed_statements(
        &self,
        buckets: &[(DateTime<Utc>, Option<f64>)],
        today: NaiveDate,
    ) -> Vec<String> {
        let database = !matches!(self, Self::Store(_));
        let (prefix, site, bucket) = if database {
            ("victron.", "installation_id", "bucket")
        } else {
            ("", "site", "bucket_us")
        };
        let at = |t: DateTime<Utc>| {
            if database {
                format!("'{}'::timestamptz", t.to_rfc3339())
            } else {
                t.timestamp_micros().to_string()
            }
        };
        let mut sql = Vec::new();
        for (start, pv) in buckets {
            let Some(pv) = pv else { continue };
            for (metric, value) in [
                ("dc_pv_power", *pv),
                ("ac_consumption_l1_power", 500.0),
                ("battery_power", 200.0),
                ("battery_soc", 50.0),
            ] {
                sql.push(format!(
                    "INSERT INTO {prefix}history_5m ({site}, device, reading_table, metric, {bucket}, samples, min, max, mean, last)
                     VALUES ('{SITE_ID}', 'gx', 'system_readings', '{metric}', {}, 300, {value}, {value}, {value}, {value})",
                    at(*start)
                ));
            }
        }
        let (day_column, updated) = if database {
            ("day", "updated_at")
        } else {
            ("day", "updated_at_us")
        };
        for k in 1..30 {
            let day = today - Span::days(k);
            let day_value = if database {
                format!("'{day}'::date")
            } else {
                format!("'{day}'")
            };
            let updated_at = at(Utc::now());
            sql.push(format!(
                "INSERT INTO {prefix}energy_daily ({site}, {day_column}, solar_kwh, consumption_kwh, coverage_pct, {updated})
                 VALUES ('{SITE_ID}', {day_value}, {}, {}, 100, {updated_at})",
                10.0 + 0.25 * k as f64,
                8.0 + 0.5 * k as f64,
            ));
        }
        sql
    }
}

/// The solar kWh the test seeds for the day `k` days ago.
fn seeded_solar(k: i64) -> f64 {
    10.0 + 0.25 * k as f64
}

/// A JSON number of the API or the record, as f64.
fn number(value: &Value) -> Option<f64> {
    value.as_f64()
}

/// Waits until the API shows every device of the site.
async fn newest(address: std::net::SocketAddr) -> Value {
    let mut latest = Value::Null;
    wait_for(
        "every device in /api/v1/latest",
        Duration::from_secs(30),
        async || {
            let (code, body) = http_get(address, &format!("/api/v1/latest?site={SITE_ID}"));
            latest = serde_json::from_str(&body).unwrap_or_default();
            code == 200
                && latest["sites"][0]["devices"]
                    .as_array()
                    .is_some_and(|d| d.len() == 4)
        },
    )
    .await;
    latest
}

/// The API's newest values are the stored rows', column for column: a
/// value the row has is there with the same number, one it has not is absent.
async fn api_equals_the_record(address: std::net::SocketAddr, record: &Record) {
    let latest = newest(address).await;
    for device in latest["sites"][0]["devices"].as_array().unwrap() {
        let name = device["device"].as_str().unwrap();
        let at: DateTime<Utc> = device["measured_at"].as_str().unwrap().parse().unwrap();
        let row = record.row_at(name, at).await;
        for (column, stored) in row {
            let shown = &device["values"][column]["value"];
            match stored {
                Value::Null => assert!(shown.is_null(), "{name}.{column}: {shown} not stored"),
                Value::Number(n) => {
                    assert_eq!(number(shown), n.as_f64(), "{name}.{column} at {at}")
                }
                Value::String(s) => assert_eq!(shown.as_str(), Some(s.as_str()), "{name}.{column}"),
                other => panic!("{name}.{column}: {other}"),
            }
        }
    }
    // Units: the battery's SOC in %, its power in W.
    let bank = latest["sites"][0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == BANK.name)
        .unwrap();
    assert_eq!(bank["values"]["soc"]["unit"], "%");
    assert_eq!(bank["values"]["power"]["unit"], "W");
}

/// `/metrics`' value gauges are the stored values of the reading they say
/// they come from; a value the row has not is no sample.
async fn metrics_equal_the_record(address: std::net::SocketAddr, record: &Record) {
    let (_, text) = http_get(address, "/metrics");
    let samples = parse_metrics(&text);
    let label = |labels: &Value| labels["device"].as_str().unwrap_or_default().to_string();
    let stamp = samples
        .iter()
        .find(|(name, labels, _)| {
            name == "victron_reading_timestamp_seconds" && label(labels) == BANK.name
        })
        .map(|(_, _, v)| *v)
        .expect("the bank's reading time in /metrics");
    // The second, to the microsecond as the daemon wrote it.
    let at = DateTime::from_timestamp_micros((stamp * 1e6).round() as i64).unwrap();
    let row = record.row_at(BANK.name, at).await;
    let gauge = |name: &str| {
        samples
            .iter()
            .find(|(n, labels, _)| {
                n == name && label(labels) == BANK.name && labels["site"] == SITE_ID
            })
            .map(|(_, _, v)| *v)
    };
    let stored = |column: &str| {
        row.iter()
            .find(|(c, _)| *c == column)
            .and_then(|(_, v)| v.as_f64())
    };
    for (metric, column) in [
        ("victron_battery_soc_percent", "soc"),
        ("victron_battery_voltage_volts", "voltage"),
        ("victron_battery_current_amperes", "current"),
        ("victron_battery_power_watts", "power"),
        ("victron_battery_temperature_celsius", "temperature"),
        ("victron_battery_time_to_go_seconds", "time_to_go_s"),
        ("victron_battery_starter_voltage_volts", "starter_voltage"),
        ("victron_battery_min_cell_voltage_volts", "min_cell_voltage"),
    ] {
        assert_eq!(
            gauge(metric),
            stored(column),
            "{metric} against the stored {column}"
        );
    }
    assert!(stored("soc").is_some(), "the simulated bank gives its SOC");
    // A value the row has not: no sample of the bank whose name is the
    // column's (`victron_battery_<column>…`), never a 0.
    let float_columns = victron_poller::reading::ReadingTable::Battery.columns();
    let absent: Vec<&str> = row
        .iter()
        .filter(|(c, v)| {
            v.is_null()
                && float_columns.iter().any(|(name, kind)| {
                    name == c && *kind == victron_poller::reading::ColumnKind::Float
                })
        })
        .map(|(c, _)| *c)
        .collect();
    assert!(
        !absent.is_empty(),
        "the check needs a value the simulated bank leaves out"
    );
    for column in absent {
        let prefix = format!("victron_battery_{column}_");
        let found = samples
            .iter()
            .find(|(name, labels, _)| name.starts_with(&prefix) && label(labels) == BANK.name);
        assert!(
            found.is_none(),
            "{found:?} for a value the bank did not give"
        );
    }
}

/// A raw history's `from` is in, its `to` out; a bucketed one has a point
/// per bucket.
async fn history_edges(address: std::net::SocketAddr, record: &Record) {
    let mut times = Vec::new();
    wait_for(
        "20 readings of the bank",
        Duration::from_secs(30),
        async || {
            times = record.times(BANK.name).await;
            times.len() >= 20
        },
    )
    .await;
    let (from, to) = (times[3], times[10]);
    let url = format!(
        "/api/v1/history?site={SITE_ID}&device={}&metric=soc&step=raw&from={}&to={}",
        BANK.name,
        from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    let (code, body) = http_get(address, &url);
    assert_eq!(code, 200, "{body}");
    let history: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(history["unit"], "%");
    let points = history["points"].as_array().unwrap();
    let at: Vec<DateTime<Utc>> = points
        .iter()
        .map(|p| p["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(at, times[3..10], "from is in, to is out");
    for (point, time) in points.iter().zip(&times[3..10]) {
        let row = record.row_at(BANK.name, *time).await;
        let soc = row.iter().find(|(c, _)| *c == "soc").unwrap().1.as_f64();
        assert_eq!(point["value"].as_f64(), soc);
    }
    let (code, body) = http_get(
        address,
        &format!("/api/v1/history?site={SITE_ID}&device=bank&metric=soc&from=yesterday"),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("from"), "{body}");
    // 26 years at 5 minutes: refused, not 2.7 million points.
    let (code, body) = http_get(
        address,
        &format!(
            "/api/v1/history?site={SITE_ID}&device=bank&metric=soc&step=5m&from=2000-01-01T00:00:00Z"
        ),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("too long"), "{body}");
}

/// The bank offline for longer than the history bridges: the raw series
/// has a gap (a null point) exactly where the record has no reading.
async fn a_gap_is_a_gap(address: std::net::SocketAddr, record: &Record, sim: &SimHandle) {
    let before = Utc::now();
    sim.set_offline(BANK.unit_id, true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    sim.set_offline(BANK.unit_id, false);
    let mut times = Vec::new();
    wait_for(
        "the bank's readings after the gap",
        Duration::from_secs(30),
        async || {
            times = record.times(BANK.name).await;
            times
                .iter()
                .filter(|t| **t > before + Span::seconds(4))
                .count()
                >= 5
        },
    )
    .await;
    let times: Vec<DateTime<Utc>> = times
        .into_iter()
        .filter(|t| *t >= before - Span::seconds(2))
        .collect();
    let gaps = times
        .windows(2)
        .filter(|w| w[1] - w[0] > Span::seconds(2))
        .count();
    assert_eq!(
        gaps, 1,
        "the record has one gap of more than 2 s: {times:?}"
    );
    let url = format!(
        "/api/v1/history?site={SITE_ID}&device={}&metric=soc&step=raw&from={}&to={}",
        BANK.name,
        times[0].to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        (*times.last().unwrap() + Span::microseconds(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    let (_, body) = http_get(address, &url);
    let history: Value = serde_json::from_str(&body).unwrap();
    let points = history["points"].as_array().unwrap();
    let nulls = points.iter().filter(|p| p["value"].is_null()).count();
    assert_eq!(nulls, 1, "one gap in the series: {body}");
    assert_eq!(points.len(), times.len() + 1);
}

/// The flow of the last 24 hours is the seeded buckets', holes included.
async fn flow_equals_the_seed(
    address: std::net::SocketAddr,
    seeded: &[(DateTime<Utc>, Option<f64>)],
    today: NaiveDate,
) {
    let (code, body) = http_get(address, &format!("/api/v1/flow?site={SITE_ID}&hours=24"));
    assert_eq!(code, 200, "{body}");
    let flow: Value = serde_json::from_str(&body).unwrap();
    let points = flow["points"].as_array().unwrap();
    for (start, pv) in seeded {
        let Some(point) = points
            .iter()
            .find(|p| p["at"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap() == *start)
        else {
            // The first bucket may have slid out of the 24 hours.
            assert!(*start < Utc::now() - Span::hours(23), "no point at {start}");
            continue;
        };
        assert_eq!(point["value"]["pv_w"].as_f64(), *pv, "PV at {start}");
        if pv.is_some() {
            assert_eq!(point["value"]["loads_w"].as_f64(), Some(500.0));
            assert_eq!(point["value"]["soc_pct"].as_f64(), Some(50.0));
        }
    }
    // One metric of one device at 5 minutes: the seeded means, and a
    // null for each bucket of the hole.
    let (from, to) = (seeded[0].0, seeded[0].0 + Span::hours(8));
    let url = format!(
        "/api/v1/history?site={SITE_ID}&device=gx&metric=dc_pv_power&step=5m&from={}&to={}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let (code, body) = http_get(address, &url);
    assert_eq!(code, 200, "{body}");
    let history: Value = serde_json::from_str(&body).unwrap();
    let points = history["points"].as_array().unwrap();
    let expected: Vec<(DateTime<Utc>, Option<f64>)> =
        seeded.iter().filter(|(at, _)| *at < to).copied().collect();
    assert_eq!(
        points.len(),
        expected.len(),
        "a point per 5 minutes: {body}"
    );
    for (point, (at, pv)) in points.iter().zip(&expected) {
        assert_eq!(
            point["at"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap(),
            *at
        );
        assert_eq!(point["value"].as_f64(), *pv, "dc_pv_power at {at}");
    }
    assert!(
        expected.iter().any(|(_, pv)| pv.is_none()),
        "the range holds the hole"
    );
    let (_, body) = http_get(address, &format!("/api/v1/energy?site={SITE_ID}&days=30"));
    let energy: Value = serde_json::from_str(&body).unwrap();
    let yesterday = (today - Span::days(1)).to_string();
    let day = energy["days"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["day"] == yesterday.as_str())
        .unwrap_or_else(|| panic!("no {yesterday} in {energy}"));
    assert_eq!(day["solar_kwh"].as_f64(), Some(seeded_solar(1)));
}

/// The page in headless chromium: the numbers it shows against the record.
#[cfg(feature = "system-tools")]
async fn the_page_in_chromium(
    address: std::net::SocketAddr,
    record: &Record,
    (dir, name): (&Path, &str),
    today: NaiveDate,
) {
    // 20 s of the page's time: its script fetches it again after 15.
    let url = format!("http://{address}/?site={SITE_ID}");
    let page = crate::helpers::chromium::load(&url, dir, name, 20);
    assert!(
        page.console_errors.is_empty(),
        "console errors: {:?}",
        page.console_errors
    );
    let elsewhere: Vec<&String> = page
        .requests
        .iter()
        .filter(|url| !url.starts_with(&format!("http://{address}/")))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "requests to other hosts: {elsewhere:?}"
    );
    let loads = page.requests.iter().filter(|u| **u == url).count();
    assert!(
        loads >= 2,
        "the page fetches itself again while open: {:?}",
        page.requests
    );
    let dom = &page.dom;
    // The GX's row says when its newest reading was measured: the tiles are
    // that reading's.
    let row = dom
        .split("<tr data-device=\"gx\">")
        .nth(1)
        .expect("the GX's row in the device table");
    let at: DateTime<Utc> = row
        .split("datetime=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|t| t.parse().ok())
        .expect("the GX row's reading time");
    let stored = record.row_at("gx", at).await;
    let value = |column: &str| {
        stored
            .iter()
            .find(|(c, _)| *c == column)
            .and_then(|(_, v)| v.as_f64())
    };
    let soc = value("battery_soc").expect("the GX gives the battery's SOC");
    let tile = |id: &str| {
        dom.split(&format!("id=\"{id}\""))
            .nth(1)
            .and_then(|t| t.split("<b>").nth(1))
            .and_then(|t| t.split("</b>").next())
            .unwrap_or_else(|| panic!("no tile {id}"))
            .to_string()
    };
    assert_eq!(tile("now-soc"), format!("{soc:.1} %"));
    let pv: f64 = [
        "dc_pv_power",
        "pv_on_output_l1_power",
        "pv_on_output_l2_power",
        "pv_on_output_l3_power",
        "pv_on_input_l1_power",
        "pv_on_input_l2_power",
        "pv_on_input_l3_power",
    ]
    .iter()
    .filter_map(|c| value(c))
    .sum();
    let watts = if pv.abs() >= 1000.0 {
        format!("{:.2} kW", pv / 1000.0)
    } else {
        format!("{pv:.0} W")
    };
    assert_eq!(tile("now-pv"), watts);
    // The charts are there, and the days' numbers are the record's.
    assert_eq!(
        dom.matches("<svg").count(),
        3,
        "two 24-hour charts and the kWh bars"
    );
    assert!(dom.contains("class=\"pv\" d=\"M"), "the PV line is drawn");
    for k in [1, 7, 29] {
        let day = today - Span::days(k);
        let row = dom
            .split(&format!("<tr data-day=\"{day}\">"))
            .nth(1)
            .unwrap_or_else(|| panic!("no row for {day}"));
        let cell = row
            .split("<td>")
            .nth(2)
            .unwrap()
            .split("</td>")
            .next()
            .unwrap();
        assert_eq!(cell, format!("{:.2}", seeded_solar(k)), "PV of {day}");
    }
    assert!(
        page.screenshot.metadata().unwrap().len() > 10_000,
        "a screenshot of the page"
    );
    // The whole page on a desktop, light and dark, for the test's output.
    for dark in [false, true] {
        let scheme = if dark { "dark" } else { "light" };
        crate::helpers::chromium::screenshot(
            &url,
            dir,
            &format!("{name}-{scheme}"),
            (1000, 2000),
            dark,
        );
    }
}

/// `status --json` shows each device's newest values as stored, with
/// units; the table for people has a line for the site now.
async fn status_shows_the_record(
    config: &Path,
    state: &Path,
    env: &[(&str, &str)],
    record: &Record,
) {
    let args = |json: bool| {
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "status",
            "--state-dir",
            state.to_str().unwrap(),
        ];
        if json {
            args.push("--json");
        }
        args
    };
    let output = crate::helpers::process::run_cli(&args(true), env);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let site = report["now"]
        .as_array()
        .and_then(|sites| sites.iter().find(|s| s["site"] == SITE_ID))
        .unwrap_or_else(|| panic!("no site now in {report}"));
    let bank = site["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == BANK.name)
        .unwrap_or_else(|| panic!("no bank in {site}"));
    let at: DateTime<Utc> = bank["measured_at"].as_str().unwrap().parse().unwrap();
    let row = record.row_at(BANK.name, at).await;
    for column in ["soc", "voltage", "power"] {
        let stored = row.iter().find(|(c, _)| *c == column).unwrap().1.as_f64();
        assert_eq!(
            bank["values"][column]["value"].as_f64(),
            stored,
            "status --json {column}"
        );
    }
    assert_eq!(bank["values"]["soc"]["unit"], "%");
    assert!(site["flow"]["soc_pct"].is_number(), "{site}");
    let text = String::from_utf8_lossy(&crate::helpers::process::run_cli(&args(false), env).stdout)
        .to_string();
    assert!(
        text.contains(&format!("now          {SITE_ID}: ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("bank ") && l.contains("soc ")),
        "{text}"
    );
}

/// `watch --device bank` prints the bank's readings as they come: each
/// line's SOC is that of the stored reading at the line's time.
async fn watch_follows_the_daemon(config: &Path, address: std::net::SocketAddr, record: &Record) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_victron-poller"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "watch",
            "--device",
            BANK.name,
            "--interval",
            "0.3",
        ])
        .arg("--address")
        .arg(address.to_string())
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Ctrl-C, as a user stops it.
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let stopped = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if stopped.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("watch did not stop on Ctrl-C");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() >= 3,
        "a line per poll of the bank: {text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let times = record.times(BANK.name).await;
    for line in lines.iter().take(3) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[1], BANK.name, "{line}");
        let at = times
            .iter()
            .find(|t| t.format("%H:%M:%S%.3f").to_string() == words[0])
            .unwrap_or_else(|| panic!("no stored reading at {}", words[0]));
        let soc_at = words.iter().position(|w| *w == "soc").expect("the SOC") + 1;
        let shown: f64 = words[soc_at].parse().unwrap();
        let row = record.row_at(BANK.name, *at).await;
        let stored = row
            .iter()
            .find(|(c, _)| *c == "soc")
            .unwrap()
            .1
            .as_f64()
            .unwrap();
        assert!((shown - stored).abs() < 0.005, "{line}: stored {stored}");
    }
}

/// A daemon of the simulated site on its own state directory, its listener
/// up.
struct Running {
    sim: SimHandle,
    /// Holds the state directory's parent (removed with it).
    _dir: tempfile::TempDir,
    state: PathBuf,
    config: PathBuf,
    address: std::net::SocketAddr,
    _daemon: Daemon,
}

impl Running {
    /// With `extra` lines in `[health]` (or more sections), and the
    /// database at `database_url`, if any.
    async fn start(extra: impl FnOnce(&SimHandle) -> String, database_url: Option<&str>) -> Self {
        let sim = simulator().await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let config = config(dir.path(), &sim, &extra(&sim));
        let daemon = spawn_daemon(&config, &state, database_url);
        let address = health_address(&state).await;
        Self {
            sim,
            _dir: dir,
            state,
            config,
            address,
            _daemon: daemon,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_site_without_a_database() {
    let site = Running::start(|_| String::new(), None).await;
    let (address, state, config) = (site.address, &site.state, &site.config);
    let sim = &site.sim;
    let record = Record::store(state).await;
    let now = Utc::now();
    let seeded = record.seed(now).await;

    api_equals_the_record(address, &record).await;
    metrics_equal_the_record(address, &record).await;
    history_edges(address, &record).await;
    flow_equals_the_seed(address, &seeded, now.date_naive()).await;
    #[cfg(feature = "system-tools")]
    the_page_in_chromium(
        address,
        &record,
        (site.state.parent().unwrap(), "page-without-database"),
        now.date_naive(),
    )
    .await;
    status_shows_the_record(config, state, &[], &record).await;
    watch_follows_the_daemon(config, address, &record).await;
    a_gap_is_a_gap(address, &record, sim).await;
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread")]
async fn the_site_with_a_database() {
    use crate::helpers::database::{Flavour, TestDb};
    let db = TestDb::create(Flavour::Timescale).await;
    let url = db.url.clone();
    let site = Running::start(|_| String::new(), Some(&url)).await;
    let (address, state, config) = (site.address, &site.state, &site.config);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    wait_for(
        "the daemon's migrations",
        Duration::from_secs(60),
        async || {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM victron.battery_readings")
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n > 0)
        },
    )
    .await;
    let record = Record::Database(pool);
    let now = Utc::now();
    let seeded = record.seed(now).await;

    api_equals_the_record(address, &record).await;
    metrics_equal_the_record(address, &record).await;
    history_edges(address, &record).await;
    flow_equals_the_seed(address, &seeded, now.date_naive()).await;
    #[cfg(feature = "system-tools")]
    the_page_in_chromium(
        address,
        &record,
        (site.state.parent().unwrap(), "page-with-database"),
        now.date_naive(),
    )
    .await;
    status_shows_the_record(config, state, &[("DATABASE_URL", &url)], &record).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_guards_all_but_healthz() {
    let site = Running::start(|_| "password = \"hunter2 hunter2\"".into(), None).await;
    let address = site.address;
    let (code, _) = http_get(address, "/healthz");
    assert_ne!(code, 401, "/healthz stays open");
    for path in ["/", "/api/v1/latest", "/metrics"] {
        let (code, _) = http_get(address, path);
        assert_eq!(code, 401, "{path} without the password");
    }
    // Any user name, the right password (RFC 7617: base64 of user:password).
    let auth = format!("owner:{}", "hunter2 hunter2");
    let (code, _) = crate::helpers::http::http_get_with(
        address,
        "/api/v1/latest",
        &[("Authorization", &format!("Basic {}", base64_of(&auth)))],
    );
    assert_eq!(code, 200);
    let (code, _) = crate::helpers::http::http_get_with(
        address,
        "/",
        &[(
            "Authorization",
            &format!("Basic {}", base64_of("owner:wrong")),
        )],
    );
    assert_eq!(code, 401);
}

/// The status code of a GET of `path` that names `host` as its host.
fn status_for_host(address: std::net::SocketAddr, path: &str, host: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split(' ').nth(1).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_listener_answers_loopback_names_only() {
    let site = Running::start(|_| String::new(), None).await;
    let (address, port) = (site.address, site.address.port());
    // A page of another site whose name points at 127.0.0.1 (DNS rebinding).
    assert_eq!(
        status_for_host(address, "/api/v1/latest", &format!("evil.example:{port}")),
        "421"
    );
    assert_eq!(status_for_host(address, "/", "evil.example"), "421");
    assert_eq!(
        status_for_host(address, "/api/v1/latest", &format!("localhost:{port}")),
        "200"
    );
    assert_eq!(
        status_for_host(address, "/api/v1/latest", &format!("127.0.0.1:{port}")),
        "200"
    );
    // Checks keep working whatever they call the host.
    assert_ne!(
        status_for_host(address, "/healthz", "monitor.example"),
        "421"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sites_have_a_picker() {
    let cabin = |sim: &SimHandle| {
        format!(
            "[[gx]]\nhost = \"127.0.0.1\"\nport = {}\nsite = \"cabin\"\n\
             [[gx.devices]]\nname = \"cabin-bank\"\nclass = \"battery\"\nunit_id = 226\n",
            sim.addr().port()
        )
    };
    let site = Running::start(cabin, None).await;
    let address = site.address;
    wait_for(
        "the cabin's bank in /api/v1/latest",
        Duration::from_secs(30),
        async || {
            let (_, body) = http_get(address, "/api/v1/latest?site=cabin");
            body.contains("\"cabin-bank\"")
        },
    )
    .await;
    let (code, page) = http_get(address, "/?site=cabin");
    assert_eq!(code, 200);
    assert!(
        page.contains("href=\"?site=page-test\""),
        "a link to the other site"
    );
    assert!(page.contains("<tr data-device=\"cabin-bank\">"));
    assert!(
        !page.contains("<tr data-device=\"bank\">"),
        "only the chosen site's devices"
    );
    let (code, page) = http_get(address, &format!("/?site={SITE_ID}"));
    assert_eq!(code, 200);
    assert!(page.contains("<tr data-device=\"bank\">"));
    assert!(!page.contains("<tr data-device=\"cabin-bank\">"));
    let (code, body) = http_get(address, "/?site=nowhere");
    assert_eq!(code, 404, "{body}");
}

/// Base64 (RFC 4648) of `text`, written out here so that the check does
/// not rest on the daemon's own decoder.
fn base64_of(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_of_is_rfc_4648() {
    // RFC 4648, section 10.
    assert_eq!(base64_of("foob"), "Zm9vYg==");
    assert_eq!(base64_of("fooba"), "Zm9vYmE=");
    assert_eq!(base64_of("foobar"), "Zm9vYmFy");
}
