//! The site for people, on the daemon's HTTP listener: the page at `/`
//! ([`page`]: the site now, the last 24 hours, 30 days of kWh, the clock and
//! the store, drawn here as SVG) and the versioned JSON API under
//! `/api/v1/` ([`api`]), both from one reading of the record ([`series`]):
//! the newest values from memory ([`LatestReadings`]), history from the
//! local store on a gateway without a database, else from PostgreSQL.

pub(crate) mod api;
pub(crate) mod page;
pub(crate) mod series;
mod svg;

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use hyper::StatusCode;
use serde::Serialize;

use crate::config::Config;
use crate::history::read::{Archive, ReadError};
use crate::latest::LatestReadings;
use crate::reading::Reading;
use crate::report::Snapshot;
use crate::report::health::Health;
use crate::report::http::Reply;
use crate::store::StoreReader;

/// The least age at which a device's newest reading is no longer "now"
/// (see [`Site::fresh`]).
const FRESH_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(30);

/// The most connections the page and the API hold to PostgreSQL (closed
/// after a minute unused).
const READER_CONNECTIONS: u32 = 2;

/// What the page and the API read from.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    /// The newest reading of each device.
    latest: LatestReadings,
    /// Where the history is.
    archive: Archive,
    /// The configured sites, sorted.
    sites: Vec<String>,
    /// Each device's site.
    device_sites: HashMap<String, String>,
    /// The sites' time zone (local days).
    tz: Tz,
    /// The longest interval the history bridges (s).
    max_gap_s: f64,
}

/// The daemon's own state at the request: its snapshot and verdict.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Daemon<'a> {
    pub(crate) snapshot: &'a Snapshot,
    pub(crate) health: &'a Health,
    pub(crate) now: DateTime<Utc>,
}

impl Site {
    /// The site of `config`: history from `store`, or from PostgreSQL when
    /// a database is configured (a pool of its own, connected on first use:
    /// the daemon starts, and polls, whether the database answers or not).
    pub(crate) fn new(
        config: &Config,
        store: StoreReader,
        latest: LatestReadings,
    ) -> Result<Self, crate::db::DbError> {
        let archive = match &config.database {
            Some(db) => Archive::Database(crate::db::lazy_pool(db, READER_CONNECTIONS)?),
            None => Archive::Store(store),
        };
        let device_sites = config.device_sites();
        let sites: BTreeSet<String> = device_sites.values().cloned().collect();
        Ok(Self {
            latest,
            archive,
            sites: sites.into_iter().collect(),
            device_sites,
            tz: config.site.timezone,
            max_gap_s: config.history.max_gap.as_secs_f64(),
        })
    }

    /// Whether `path` is the page's or the API's (they need the daemon's
    /// snapshot).
    pub(crate) fn serves(path: &str) -> bool {
        path == "/" || path.starts_with("/api/")
    }

    /// The answer to `GET path?query`, or `None` for a path of neither.
    pub(crate) async fn answer(
        &self,
        path: &str,
        query: Option<&str>,
        daemon: Daemon<'_>,
    ) -> Option<Reply> {
        let query = Query::parse(query);
        if path == "/" {
            return Some(page::render(self, &query, daemon).await);
        }
        let endpoint = path.strip_prefix("/api/v1/")?;
        Some(api::answer(self, endpoint, &query, daemon).await)
    }

    /// The site asked for: `?site=`, else the first configured one.
    fn chosen(&self, query: &Query) -> Result<String, Reply> {
        match query.get("site") {
            Some(site) if self.sites.iter().any(|s| s == site) => Ok(site.to_string()),
            Some(site) => Err(api::error(
                StatusCode::NOT_FOUND,
                &format!("no site {site:?}: the sites are {:?}", self.sites),
            )),
            None => Ok(self.sites.first().cloned().unwrap_or_default()),
        }
    }

    /// The newest reading of each device of `site`.
    fn latest_of(&self, site: &str) -> Vec<Reading> {
        self.latest
            .all()
            .into_iter()
            .filter(|r| *r.site == *site)
            .collect()
    }

    /// Each device's newest reading, unless it is older than the history
    /// bridges (`history.max_gap_s`, at least [`FRESH_AT_LEAST`]): a device
    /// that stopped answering an hour ago has no "now" — not in the flow,
    /// not in `/metrics`.
    pub(crate) fn fresh(&self, now: DateTime<Utc>) -> Vec<Reading> {
        self.latest
            .all()
            .into_iter()
            .filter(|r| self.is_fresh(r, now))
            .collect()
    }

    /// Whether `reading` is still "now" (see [`Self::fresh`]).
    fn is_fresh(&self, reading: &Reading, now: DateTime<Utc>) -> bool {
        let fresh_for = self.max_gap_s.max(FRESH_AT_LEAST.as_secs_f64());
        crate::clock::seconds_between(reading.measured_at, now) <= fresh_for
    }

    /// [`Self::fresh`], of one site.
    fn fresh_of(&self, site: &str, now: DateTime<Utc>) -> Vec<Reading> {
        self.fresh(now)
            .into_iter()
            .filter(|r| *r.site == *site)
            .collect()
    }

    /// How the record is read — unless it is in PostgreSQL and the daemon
    /// knows the database cannot be reached (a page must not wait for the
    /// pool's timeouts; the site now comes from memory regardless).
    fn reader(&self, daemon: Daemon<'_>) -> Result<series::Reader<'_>, ReadError> {
        if let (Archive::Database(_), Some(since)) =
            (&self.archive, daemon.snapshot.database_down_since)
        {
            return Err(ReadError::Unreachable(since));
        }
        Ok(series::Reader {
            archive: &self.archive,
            device_sites: &self.device_sites,
            tz: self.tz,
            max_gap_s: self.max_gap_s,
        })
    }
}

/// A request's query parameters.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Self(
            url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A value with its unit, as the API and `status --json` carry it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    /// The value: a number, or a state's text.
    pub value: serde_json::Value,
    /// Its unit's symbol (`%`, `V`, `W` …); absent for a state or a code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'static str>,
}

/// Every value of a reading, by column, with units.
pub fn measured_values(reading: &Reading) -> serde_json::Map<String, serde_json::Value> {
    use crate::reading::Value;
    reading
        .table
        .columns()
        .iter()
        .filter_map(|(column, _)| {
            let value = match reading.get(column)? {
                Value::Float(v) if v.is_finite() => serde_json::json!(v),
                Value::Float(_) => return None,
                Value::Int(v) => serde_json::json!(v),
                Value::Text(t) => serde_json::json!(t),
            };
            let measured = Measured {
                value,
                unit: crate::quantity::unit_of(reading.table, column).map(|(u, _)| u.symbol()),
            };
            Some((
                column.to_string(),
                serde_json::to_value(measured).unwrap_or_default(),
            ))
        })
        .collect()
}
