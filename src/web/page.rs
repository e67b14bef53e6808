//! The page at `/`: the site now (its power flow, SOC and every device with
//! its health and last reading), the last 24 hours (power and SOC per 5
//! minutes), the last 30 days of kWh, the clock and the store, and a place
//! for alarms. One HTML document with its style and a few lines of script
//! inline: nothing is fetched from another host (a ranch LAN has no
//! internet), no font, no framework. The script fetches the page again every
//! 15 seconds while it is visible and swaps in its `<main>`; without script
//! the page is complete, only still.

use std::fmt::Write as _;

use bytes::Bytes;
use chrono::{DateTime, Duration, Timelike as _, Utc};
use hyper::StatusCode;

use super::series::Point;
use super::svg::{self, Line};
use super::{Daemon, Query, Site};
use crate::history::DayEnergy;
use crate::history::flow::Flow;
use crate::history::read::ReadError;
use crate::quantity::{label, shown};
use crate::reading::Reading;
use crate::report::http::Reply;

/// The style sheet: light by default, dark when the reader's system says.
const STYLE: &str = "
:root{--bg:#fafaf7;--fg:#1d232a;--muted:#5b6570;--card:#fff;--line:#d9dde2;--pv:#c77700;--loads:#2f6fb5;--bat:#1d8a4a;--grid:#7a4fb5;--gen:#b53a3a;--soc:#1d8a4a;--bad:#b3261e;--warn:#8a5a00}
@media (prefers-color-scheme:dark){:root{--bg:#121416;--fg:#e6e8ea;--muted:#9aa4ad;--card:#1c1f22;--line:#33383d;--pv:#f2a33a;--loads:#6ea8f0;--bat:#4cc47e;--grid:#b793f0;--gen:#f07a7a;--soc:#4cc47e;--bad:#ff8a80;--warn:#f2c14e}}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.4 system-ui,sans-serif}
header,main{max-width:960px;margin:0 auto;padding:12px}header{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:baseline}
h1{font-size:1.3em;margin:0}h2{font-size:1.05em;margin:18px 0 8px}nav a{margin-right:10px;color:var(--loads)}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px;margin-bottom:10px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(130px,1fr));gap:8px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 10px}
.tile b{display:block;font-size:1.5em;font-variant-numeric:tabular-nums}.tile span{color:var(--muted);font-size:.9em}
.healthy{color:var(--bat)}.degraded{color:var(--warn)}.down,.failing{color:var(--bad)}.muted{color:var(--muted)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}td,th{text-align:left;padding:3px 6px;border-bottom:1px solid var(--line);vertical-align:top}
.scroll{overflow-x:auto}.chart{width:100%;height:auto;display:block}
.chart .grid{stroke:var(--line);stroke-width:1}.chart .axis{fill:var(--muted);font-size:11px}
.chart path{fill:none;stroke-width:2}.chart .pv{stroke:var(--pv);fill:var(--pv)}.chart .loads{stroke:var(--loads);fill:var(--loads)}
.chart .bat{stroke:var(--bat)}.chart .grid-in{stroke:var(--grid)}.chart .gen{stroke:var(--gen)}.chart .soc{stroke:var(--soc)}
.chart path.pv,.chart path.loads{fill:none}.legend i{display:inline-block;width:12px;height:3px;margin:0 4px 3px 10px;vertical-align:middle}
details summary{cursor:pointer;color:var(--muted)}#stale{display:none;color:var(--warn)}body[data-stale] #stale{display:inline}
";

/// Fetches the page again every 15 s while it is visible.
const SCRIPT: &str = "
setInterval(async()=>{if(document.hidden)return;
try{const r=await fetch(location.href,{cache:'no-store'});if(!r.ok)throw r.status;
const d=new DOMParser().parseFromString(await r.text(),'text/html');
document.querySelector('main').replaceWith(d.querySelector('main'));delete document.body.dataset.stale}
catch(e){document.body.dataset.stale='1'}},15000);
";

/// `&`, `<`, `>`, `"` and `'` escaped for HTML text and attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A power for people: `1.23 kW` or `850 W`; `–` when unknown.
fn watts(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), crate::quantity::watts)
}

/// The page for the site the query chooses.
pub(crate) async fn render(site: &Site, query: &Query, daemon: Daemon<'_>) -> Reply {
    let name = match site.chosen(query) {
        Ok(name) => name,
        Err(reply) => return reply,
    };
    let now = daemon.now;
    let readings = site.latest_of(&name);
    let flow = Flow::of(&site.fresh_of(&name, now));
    let (day, days) = match site.reader(daemon) {
        Ok(reader) => (
            reader.flow(&name, (now - Duration::hours(24), now)).await,
            reader.days(&name, 30, now).await,
        ),
        Err(e) => {
            let since = daemon.snapshot.database_down_since.unwrap_or(now);
            (Err(e), Err(ReadError::Unreachable(since)))
        }
    };

    let mut html = String::with_capacity(64 * 1024);
    let title = if name.is_empty() {
        "Victron site".to_string()
    } else {
        format!("Site {}", escape(&name))
    };
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="color-scheme" content="light dark"><title>{title} · victron-poller</title><style>{STYLE}</style></head><body><header><h1>{title}</h1>"#
    );
    if site.sites.len() > 1 {
        html.push_str(r#"<nav aria-label="Sites">"#);
        for s in &site.sites {
            let current = if *s == name {
                r#" aria-current="page""#
            } else {
                ""
            };
            let _ = write!(
                html,
                r#"<a href="?site={}"{current}>{}</a>"#,
                url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>(),
                escape(if s.is_empty() { "(no site)" } else { s })
            );
        }
        html.push_str("</nav>");
    }
    let local = now.with_timezone(&site.tz);
    let _ = write!(
        html,
        r#"<span id="stale">Not updated: the daemon does not answer.</span></header><main><p class="muted">{} · <time datetime="{}">{}</time></p>"#,
        escape(&daemon.snapshot.host),
        now.to_rfc3339(),
        local.format("%Y-%m-%d %H:%M:%S %Z")
    );
    now_section(&mut html, &flow, days.as_ref().ok(), &local.date_naive());
    health_section(&mut html, site, &name, &readings, daemon);
    html.push_str(r#"<section id="alarms" class="card"><h2>Alarms</h2><p class="muted">No alarm is configured.</p></section>"#);
    match &day {
        Ok(points) => day_section(&mut html, points, site.tz),
        Err(e) => {
            let _ = write!(
                html,
                r#"<section class="card"><h2>Last 24 hours</h2><p class="failing">Cannot read the history: {}</p></section>"#,
                escape(&e.to_string())
            );
        }
    }
    match &days {
        Ok(days) => days_section(&mut html, days, now, site),
        Err(e) => {
            let _ = write!(
                html,
                r#"<section class="card"><h2>Last 30 days</h2><p class="failing">Cannot read the energy: {}</p></section>"#,
                escape(&e.to_string())
            );
        }
    }
    clock_section(&mut html, daemon);
    let _ = write!(
        html,
        r#"</main><footer><p class="muted" style="text-align:center">victron-poller {} · <a href="/api/v1/latest">API</a> · <a href="/metrics">metrics</a></p></footer><script>{SCRIPT}</script></body></html>"#,
        escape(&daemon.snapshot.version)
    );
    Reply {
        status: StatusCode::OK,
        content_type: "text/html; charset=utf-8",
        body: Bytes::from(html),
    }
}

/// The power-flow tiles and today's kWh.
fn now_section(
    html: &mut String,
    flow: &Flow,
    days: Option<&Vec<DayEnergy>>,
    today: &chrono::NaiveDate,
) {
    let battery = match flow.battery_w {
        Some(w) if w < 0.0 => format!("{} out", watts(Some(-w))),
        Some(w) => format!("{} in", watts(Some(w))),
        None => "–".into(),
    };
    let soc = flow
        .soc_pct
        .map_or_else(|| "–".into(), |s| format!("{s:.1} %"));
    let tiles = [
        ("soc", "State of charge", soc),
        ("pv", "PV", watts(flow.pv_w)),
        ("loads", "Loads", watts(flow.loads_w)),
        ("battery", "Battery", battery),
        ("grid", "Grid", watts(flow.grid_w)),
        ("genset", "Generator", watts(flow.genset_w)),
    ];
    html.push_str(r#"<section aria-labelledby="now"><h2 id="now">Now</h2><div class="tiles">"#);
    for (id, name, value) in tiles {
        let _ = write!(
            html,
            r#"<div class="tile" id="now-{id}"><span>{name}</span><b>{}</b></div>"#,
            escape(&value)
        );
    }
    let today_row = days.and_then(|days| days.iter().find(|d| d.day == *today));
    let kwh = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{v:.2} kWh"));
    let _ = write!(
        html,
        r#"<div class="tile" id="today-solar"><span>PV today</span><b>{}</b></div><div class="tile" id="today-loads"><span>Loads today</span><b>{}</b></div></div></section>"#,
        kwh(today_row.and_then(|d| d.solar_kwh)),
        kwh(today_row.and_then(|d| d.consumption_kwh)),
    );
}

/// The verdict and every device of the site.
fn health_section(
    html: &mut String,
    site: &Site,
    name: &str,
    readings: &[Reading],
    daemon: Daemon<'_>,
) {
    let level = daemon.health.level.as_str();
    let _ = write!(
        html,
        r#"<section class="card" aria-labelledby="devices"><h2 id="devices">Devices · <span class="{level}" id="verdict">{level}</span></h2>"#
    );
    if !daemon.health.reasons.is_empty() {
        html.push_str("<ul>");
        for reason in &daemon.health.reasons {
            let _ = write!(html, "<li>{}</li>", escape(reason));
        }
        html.push_str("</ul>");
    }
    html.push_str(r#"<div class="scroll"><table><thead><tr><th>Device</th><th>Health</th><th>Last reading</th><th>Values</th></tr></thead><tbody>"#);
    for device in &daemon.snapshot.devices {
        if site
            .device_sites
            .get(&device.device)
            .is_some_and(|s| s != name)
        {
            continue;
        }
        let health = if device.standby {
            r#"<span class="muted">standby</span>"#.to_string()
        } else if device.is_failing() {
            format!(
                r#"<span class="failing">failing</span> {}"#,
                escape(device.last_error.as_deref().unwrap_or_default())
            )
        } else {
            r#"<span class="healthy">ok</span>"#.to_string()
        };
        let reading = readings.iter().find(|r| r.device == device.device);
        let (last, values) = match reading {
            Some(r) => (
                format!(
                    r#"<time datetime="{}"{}>{}</time>{}"#,
                    r.measured_at.to_rfc3339(),
                    if site.is_fresh(r, daemon.now) {
                        ""
                    } else {
                        r#" class="failing""#
                    },
                    r.measured_at.with_timezone(&site.tz).format("%H:%M:%S"),
                    if site.is_fresh(r, daemon.now) {
                        ""
                    } else {
                        " (old: not counted as now)"
                    },
                ),
                crate::quantity::headline(r.table)
                    .iter()
                    .filter_map(|c| {
                        shown(r, c).map(|v| format!("{} {}", label(r.table, c), escape(&v)))
                    })
                    .collect::<Vec<_>>()
                    .join(" · "),
            ),
            None => ("–".into(), String::new()),
        };
        let _ = write!(
            html,
            r#"<tr data-device="{d}"><td>{d}</td><td>{health}</td><td>{last}</td><td>{values}</td></tr>"#,
            d = escape(&device.device)
        );
    }
    html.push_str("</tbody></table></div></section>");
}

/// The 24-hour charts and their numbers (hourly means).
fn day_section(html: &mut String, points: &[Point<Flow>], tz: chrono_tz::Tz) {
    let times: Vec<DateTime<Utc>> = points.iter().map(|p| p.at).collect();
    let of = |f: fn(&Flow) -> Option<f64>| -> Vec<Option<f64>> {
        points
            .iter()
            .map(|p| p.value.as_ref().and_then(f))
            .collect()
    };
    let mut power = vec![
        Line {
            name: "PV",
            class: "pv",
            values: of(|f| f.pv_w),
        },
        Line {
            name: "Loads",
            class: "loads",
            values: of(|f| f.loads_w),
        },
        Line {
            name: "Battery",
            class: "bat",
            values: of(|f| f.battery_w),
        },
    ];
    for (name, class, values) in [
        ("Grid", "grid-in", of(|f| f.grid_w)),
        ("Generator", "gen", of(|f| f.genset_w)),
    ] {
        if values.iter().any(Option::is_some) {
            power.push(Line {
                name,
                class,
                values,
            });
        }
    }
    let soc = [Line {
        name: "SOC",
        class: "soc",
        values: of(|f| f.soc_pct),
    }];
    html.push_str(r#"<section class="card" aria-labelledby="day"><h2 id="day">Last 24 hours</h2><p class="legend">"#);
    for line in &power {
        let _ = write!(
            html,
            r#"<i style="background:var(--{})"></i>{}"#,
            css_var(line.class),
            line.name
        );
    }
    html.push_str("</p>");
    html.push_str(&svg::lines(
        "Power over the last 24 hours (W)",
        &times,
        &power,
        "W",
        None,
        tz,
    ));
    html.push_str(&svg::lines(
        "State of charge over the last 24 hours (%)",
        &times,
        &soc,
        "%",
        Some((0.0, 100.0)),
        tz,
    ));
    // Hourly means of the 5-minute points, as text.
    html.push_str(r#"<details><summary>The numbers (hourly means)</summary><div class="scroll"><table id="day-numbers"><thead><tr><th>Hour</th>"#);
    for line in power.iter().chain(&soc) {
        let _ = write!(html, "<th>{}</th>", line.name);
    }
    html.push_str("</tr></thead><tbody>");
    // Rows from each hour of the site's clock the points reach into.
    let mut starts: Vec<usize> = (0..points.len())
        .filter(|&i| i == 0 || points[i].at.with_timezone(&tz).minute() == 0)
        .collect();
    starts.push(points.len());
    for row in starts.windows(2) {
        let (start, end) = (row[0], row[1]);
        let _ = write!(
            html,
            "<tr><td>{}</td>",
            points[start].at.with_timezone(&tz).format("%H:%M")
        );
        for line in power.iter().chain(&soc) {
            let present: Vec<f64> = line.values[start..end].iter().flatten().copied().collect();
            let cell = if present.is_empty() {
                "–".to_string()
            } else {
                let mean = present.iter().sum::<f64>() / present.len() as f64;
                if line.class == "soc" {
                    format!("{mean:.1} %")
                } else {
                    format!("{mean:.0} W")
                }
            };
            let _ = write!(html, "<td>{cell}</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div></details></section>");
}

/// The CSS variable of a line's class.
fn css_var(class: &str) -> &str {
    match class {
        "grid-in" => "grid",
        "gen" => "gen",
        "bat" => "bat",
        other => other,
    }
}

/// 30 days of kWh, bars and a table.
fn days_section(html: &mut String, days: &[DayEnergy], now: DateTime<Utc>, site: &Site) {
    let today = crate::history::buckets::local_day(now, site.tz);
    let dates: Vec<chrono::NaiveDate> = (0..30).rev().map(|n| today - Duration::days(n)).collect();
    let find = |date: &chrono::NaiveDate| days.iter().find(|d| d.day == *date);
    let series = [
        Line {
            name: "PV",
            class: "pv",
            values: dates
                .iter()
                .map(|d| find(d).and_then(|d| d.solar_kwh))
                .collect(),
        },
        Line {
            name: "Loads",
            class: "loads",
            values: dates
                .iter()
                .map(|d| find(d).and_then(|d| d.consumption_kwh))
                .collect(),
        },
    ];
    html.push_str(r#"<section class="card" aria-labelledby="days"><h2 id="days">Last 30 days (kWh)</h2><p class="legend"><i style="background:var(--pv)"></i>PV<i style="background:var(--loads)"></i>Loads</p>"#);
    html.push_str(&svg::bars(
        "Energy per day over the last 30 days (kWh)",
        &dates,
        &series,
    ));
    html.push_str(r#"<details><summary>The numbers</summary><div class="scroll"><table id="days-numbers"><thead><tr><th>Day</th><th>PV</th><th>Loads</th><th>Charge</th><th>Discharge</th><th>SOC</th><th>Covered</th></tr></thead><tbody>"#);
    let kwh = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{v:.2}"));
    for day in days.iter().rev() {
        let soc = match (day.min_soc, day.max_soc) {
            (Some(lo), Some(hi)) => format!("{lo:.0}–{hi:.0} %"),
            _ => "–".into(),
        };
        let _ = write!(
            html,
            r#"<tr data-day="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{soc}</td><td>{:.0} %</td></tr>"#,
            day.day,
            day.day,
            kwh(day.solar_kwh),
            kwh(day.consumption_kwh),
            kwh(day.battery_charge_kwh),
            kwh(day.battery_discharge_kwh),
            day.coverage_pct,
        );
    }
    html.push_str("</tbody></table></div></details></section>");
}

/// Where times come from, and the store.
fn clock_section(html: &mut String, daemon: Daemon<'_>) {
    let snapshot = daemon.snapshot;
    let clock = &snapshot.clock;
    let offset = clock
        .offset_s
        .map_or_else(String::new, |o| format!(", {o:+.3} s from the reference"));
    let store = if snapshot.database.is_some() {
        format!(
            "{} reading(s) waiting to be forwarded",
            snapshot.spool_depth
        )
    } else {
        format!("{} reading(s) in the local store", snapshot.spool_depth)
    };
    let writes = match snapshot.store_writes.failing_since {
        Some(since) => format!(
            r#"<span class="failing">refuses writes since {}</span>"#,
            since.format("%H:%M:%S")
        ),
        None => "takes writes".into(),
    };
    let _ = write!(
        html,
        r#"<section class="card" aria-labelledby="clock"><h2 id="clock">Clock and store</h2><p>Times from <b>{}</b>{offset}. {store}; the store {writes}. Up since {}.</p></section>"#,
        clock.basis.as_str(),
        snapshot.started_at.format("%Y-%m-%d %H:%M UTC"),
    );
}
