//! The JSON API, version 1 (`docs/api.md`): what the page shows, for Home
//! Assistant's REST sensor, Node-RED or a script.
//!
//! - `latest[?site=]`: each device's newest values with units, and the
//!   site's power flow;
//! - `readings[?since=&site=&device=]`: the last few readings of each device
//!   (kept in memory) measured after `since`, in time order;
//! - `devices`: the verdict and every device's health;
//! - `flow[?site=&hours=]`: the site's power flow and SOC per 5 minutes;
//! - `history?device=&metric=[&site=&from=&to=&step=]`: one metric of one
//!   device (`step` raw, 5m, 1h or 1d; by default what the range calls for);
//!   a gap in the data is a `null` point;
//! - `energy[?site=&days=]`: kWh per local day;
//! - `sites`: the configured sites.

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use hyper::StatusCode;
use serde::Serialize;

use super::series::{Point, Step};
use super::{Daemon, Query, Site, measured_values};
use crate::history::flow::Flow;
use crate::history::read::ReadError;
use crate::reading::Reading;
use crate::report::http::Reply;

/// The most points a bucketed history answers (5-minute points for 34
/// days, hourly for 416, daily for 27 years), and the longest raw one: an
/// answer's memory and time stay bounded whatever is asked.
const MOST_POINTS: i64 = 10_000;
const MOST_RAW: Duration = Duration::hours(6);

/// The most days `energy` answers, and hours `flow` does.
const MOST_DAYS: i64 = 3660;
const MOST_HOURS: i64 = 24 * 31;

/// A JSON reply.
pub(crate) fn json(value: &impl Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => Reply {
            status: StatusCode::OK,
            content_type: "application/json",
            body: Bytes::from(body),
        },
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// An error as JSON: `{"error": "…"}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: Bytes::from(serde_json::json!({ "error": message }).to_string()),
    }
}

/// A failure to read the record: the service is unavailable, for a reason.
fn unavailable(e: &ReadError) -> Reply {
    tracing::debug!(error = %e, "The page or API cannot read the record.");
    error(StatusCode::SERVICE_UNAVAILABLE, &format!("cannot read {e}"))
}

/// One device's newest values.
#[derive(Debug, Serialize)]
pub(crate) struct DeviceNow {
    pub(crate) device: String,
    pub(crate) kind: &'static str,
    pub(crate) source: crate::reading::SourceKind,
    pub(crate) measured_at: DateTime<Utc>,
    pub(crate) values: serde_json::Map<String, serde_json::Value>,
}

impl DeviceNow {
    pub(crate) fn of(reading: &Reading) -> Self {
        Self {
            device: reading.device.clone(),
            kind: crate::quantity::device_kind(reading.table),
            source: reading.source,
            measured_at: reading.measured_at,
            values: measured_values(reading),
        }
    }
}

/// A site now.
#[derive(Debug, Serialize)]
struct SiteNow {
    site: String,
    flow: Flow,
    devices: Vec<DeviceNow>,
}

pub(super) async fn answer(
    site: &Site,
    endpoint: &str,
    query: &Query,
    daemon: Daemon<'_>,
) -> Reply {
    match endpoint {
        "latest" => latest(site, query, daemon),
        "readings" => readings(site, query, daemon),
        "devices" => json(&serde_json::json!({
            "at": daemon.now,
            "health": daemon.health.level.as_str(),
            "reasons": daemon.health.reasons,
            "devices": daemon.snapshot.devices,
        })),
        "sites" => json(&serde_json::json!({ "sites": site.sites })),
        "flow" => flow(site, query, daemon).await,
        "history" => history(site, query, daemon).await,
        "energy" => energy(site, query, daemon).await,
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint: latest, readings, devices, sites, flow, history, energy",
        ),
    }
}

fn latest(site: &Site, query: &Query, daemon: Daemon<'_>) -> Reply {
    let sites: Vec<String> = match query.get("site") {
        Some(_) => match site.chosen(query) {
            Ok(one) => vec![one],
            Err(reply) => return reply,
        },
        None => site.sites.clone(),
    };
    let sites: Vec<SiteNow> = sites
        .into_iter()
        .map(|name| {
            let readings = site.fresh_of(&name, daemon.now);
            SiteNow {
                flow: Flow::of(&readings),
                devices: readings.iter().map(DeviceNow::of).collect(),
                site: name,
            }
        })
        .collect();
    json(&serde_json::json!({ "at": daemon.now, "sites": sites }))
}

/// The readings kept in memory (the last few of each device) measured
/// after `since` (all kept without it), of `site` and `device` when given,
/// in time order: what `watch` follows.
fn readings(site: &Site, query: &Query, daemon: Daemon<'_>) -> Reply {
    let since = match time(query, "since", DateTime::<Utc>::MIN_UTC) {
        Ok(t) => t,
        Err(reply) => return reply,
    };
    let found: Vec<serde_json::Value> = site
        .latest
        .after(since)
        .iter()
        .filter(|r| query.get("site").is_none_or(|s| *r.site == *s))
        .filter(|r| query.get("device").is_none_or(|d| r.device == d))
        .map(|r| {
            let mut json = serde_json::to_value(DeviceNow::of(r)).unwrap_or_default();
            json["site"] = serde_json::json!(&*r.site);
            json
        })
        .collect();
    json(&serde_json::json!({ "at": daemon.now, "readings": found }))
}

/// A whole number parameter within `1..=most`, or its default.
fn number(query: &Query, name: &str, default: i64, most: i64) -> Result<i64, Reply> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=most).contains(&n) => Ok(n),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                &format!("{name}={text:?} is not a whole number from 1 to {most}"),
            )),
        },
    }
}

/// A time parameter: RFC 3339, or its default.
fn time(query: &Query, name: &str, default: DateTime<Utc>) -> Result<DateTime<Utc>, Reply> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "{name}={text:?} is not an RFC 3339 time such as 2026-12-07T10:00:00Z: {e}"
                    ),
                )
            }),
    }
}

async fn flow(site: &Site, query: &Query, daemon: Daemon<'_>) -> Reply {
    let (name, hours) = match (site.chosen(query), number(query, "hours", 24, MOST_HOURS)) {
        (Ok(name), Ok(hours)) => (name, hours),
        (Err(reply), _) | (_, Err(reply)) => return reply,
    };
    let range = (daemon.now - Duration::hours(hours), daemon.now);
    let reader = match site.reader(daemon) {
        Ok(reader) => reader,
        Err(e) => return unavailable(&e),
    };
    match reader.flow(&name, range).await {
        Ok(points) => json(&serde_json::json!({
            "site": name, "step": "5m", "from": range.0, "to": range.1, "points": points,
        })),
        Err(e) => unavailable(&e),
    }
}

async fn history(site: &Site, query: &Query, daemon: Daemon<'_>) -> Reply {
    let name = match site.chosen(query) {
        Ok(name) => name,
        Err(reply) => return reply,
    };
    let (Some(device), Some(metric)) = (query.get("device"), query.get("metric")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "device= and metric= are needed (metric: a numeric column, e.g. soc, pv_power)",
        );
    };
    let to = match time(query, "to", daemon.now) {
        Ok(t) => t,
        Err(reply) => return reply,
    };
    let from = match time(query, "from", to - Duration::hours(24)) {
        Ok(t) if t < to => t,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "from must be before to"),
        Err(reply) => return reply,
    };
    let step = match query.get("step") {
        None => Step::for_range(from, to),
        Some(text) => match Step::parse(text) {
            Some(step) => step,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("step={text:?} is not raw, 5m, 1h or 1d"),
                );
            }
        },
    };
    let span = to - from;
    let too_long = match step.length() {
        None => (span > MOST_RAW)
            .then(|| format!("at most {} hours of raw readings", MOST_RAW.num_hours())),
        Some(length) => (span.num_seconds() / length.num_seconds() > MOST_POINTS)
            .then(|| format!("at most {MOST_POINTS} points: a longer step, or a shorter range")),
    };
    if let Some(limit) = too_long {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("from..to is too long: {limit}"),
        );
    }
    let unit = crate::reading::ReadingTable::ALL
        .into_iter()
        .find_map(|t| crate::quantity::unit_of(t, metric))
        .map(|(u, _)| u.symbol());
    let Some(unit) = unit else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("{metric:?} is not a numeric value of any device"),
        );
    };
    let reader = match site.reader(daemon) {
        Ok(reader) => reader,
        Err(e) => return unavailable(&e),
    };
    match reader.metric(&name, device, metric, (from, to), step).await {
        Ok(points) => json(&History {
            site: name,
            device: device.to_string(),
            metric: metric.to_string(),
            unit,
            step,
            from,
            to,
            points,
        }),
        Err(e) => unavailable(&e),
    }
}

/// A metric's series.
#[derive(Debug, Serialize)]
struct History {
    site: String,
    device: String,
    metric: String,
    unit: &'static str,
    step: Step,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    points: Vec<Point<f64>>,
}

async fn energy(site: &Site, query: &Query, daemon: Daemon<'_>) -> Reply {
    let (name, days) = match (site.chosen(query), number(query, "days", 30, MOST_DAYS)) {
        (Ok(name), Ok(days)) => (name, days),
        (Err(reply), _) | (_, Err(reply)) => return reply,
    };
    let reader = match site.reader(daemon) {
        Ok(reader) => reader,
        Err(e) => return unavailable(&e),
    };
    match reader.days(&name, days, daemon.now).await {
        Ok(days) => json(&serde_json::json!({ "site": name, "days": days })),
        Err(e) => unavailable(&e),
    }
}
