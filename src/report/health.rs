//! The health verdict — healthy, degraded or down, with the reasons — shared
//! by `victron-poller status` (exit 0, 1, 2) and the `/healthz` endpoint
//! (200, 200, 503). It judges either the daemon's status document (what the
//! daemon saves in its local store, and what it holds live) or the status
//! rows in PostgreSQL.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

/// How well the daemon is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Every device answers and readings flow.
    Healthy,
    /// Working, with something to look at (a device failing, a backlog).
    Degraded,
    /// Not doing its job: no device answers, a source is hung, the database
    /// has been unreachable for a while, or the daemon is not running.
    Down,
}

impl Level {
    /// The word `status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }
}

/// The verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The verdict.
    pub level: Level,
    /// What made it degraded or down.
    pub reasons: Vec<String>,
}

impl Health {
    /// Down when anything says down, else degraded when anything says so.
    pub fn from_findings(down: Vec<String>, degraded: Vec<String>) -> Self {
        if !down.is_empty() {
            Self {
                level: Level::Down,
                reasons: down,
            }
        } else if !degraded.is_empty() {
            Self {
                level: Level::Degraded,
                reasons: degraded,
            }
        } else {
            Self {
                level: Level::Healthy,
                reasons: Vec::new(),
            }
        }
    }
}

/// How long the database may stay unreachable before the daemon counts as
/// down: three poll intervals, at least 10 s (a restart of the server or a
/// short network blip is only degraded).
pub fn database_down_after(poll_interval_s: f64) -> f64 {
    (3.0 * poll_interval_s).max(10.0)
}

/// Judges a status document saved at `saved_at` (see
/// `daemon::status_document`), as of `now`.
pub fn judge_document(doc: &Json, saved_at: DateTime<Utc>, now: DateTime<Utc>) -> Health {
    let mut down = Vec::new();
    let mut degraded = Vec::new();
    let interval_s = doc["poll_interval_ms"].as_f64().unwrap_or(5000.0) / 1000.0;
    let age = seconds_between(saved_at, now);
    if let Some(stopped) = doc["stopped_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        let ago = seconds_between(stopped.with_timezone(&Utc), now);
        down.push(format!("the daemon stopped {ago:.0} s ago"));
    } else if age > (3.0 * interval_s).max(15.0) {
        down.push(format!(
            "the daemon is not running (last status {age:.0} s ago)"
        ));
    }
    for stalled in doc["stalled"].as_array().into_iter().flatten() {
        down.push(format!(
            "{}: no poll completed for {:.0} s (hung)",
            stalled["device"].as_str().unwrap_or("?"),
            stalled["idle_s"].as_f64().unwrap_or_default()
        ));
    }
    if let Some(since) = doc["database_down_since"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        let for_s = seconds_between(since.with_timezone(&Utc), now);
        let message = format!("the database has been unreachable for {for_s:.0} s");
        if for_s > database_down_after(interval_s) {
            down.push(message);
        } else {
            degraded.push(message);
        }
    }
    let devices: Vec<&Json> = doc["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["standby"].as_bool() != Some(true))
        .collect();
    let failing: Vec<String> = devices
        .iter()
        .filter(|d| {
            d["consecutive_failures"].as_i64().unwrap_or(0) > 0 || d["last_success"].is_null()
        })
        .map(|d| {
            format!(
                "{}: {}",
                d["device"].as_str().unwrap_or("?"),
                d["last_error"].as_str().unwrap_or("no data yet")
            )
        })
        .collect();
    if !devices.is_empty() && failing.len() == devices.len() {
        down.push("no device answers".into());
    }
    degraded.extend(failing);
    Health::from_findings(down, degraded)
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn device(name: &str, failures: i64, standby: bool) -> Json {
        json!({"device": name, "consecutive_failures": failures, "standby": standby,
               "last_success": if failures == 0 { json!("2026-01-01T00:00:00Z") } else { Json::Null },
               "last_error": if failures == 0 { Json::Null } else { json!("timeout") }})
    }

    #[test]
    fn verdicts() {
        let now = Utc::now();
        let doc = |devices: Vec<Json>, extra: Json| {
            let mut d = json!({"poll_interval_ms": 1000, "devices": devices});
            if let (Some(d), Some(e)) = (d.as_object_mut(), extra.as_object()) {
                d.extend(e.clone());
            }
            d
        };
        let healthy = doc(vec![device("a", 0, false)], json!({}));
        assert_eq!(judge_document(&healthy, now, now).level, Level::Healthy);
        let stale = judge_document(&healthy, now - chrono::Duration::seconds(60), now);
        assert_eq!(stale.level, Level::Down, "{stale:?}");

        let one_failing = doc(
            vec![device("a", 0, false), device("b", 3, false)],
            json!({}),
        );
        assert_eq!(
            judge_document(&one_failing, now, now).level,
            Level::Degraded
        );
        let all_failing = doc(vec![device("b", 3, false)], json!({}));
        assert_eq!(judge_document(&all_failing, now, now).level, Level::Down);
        let standby = doc(vec![device("a", 0, false), device("b", 3, true)], json!({}));
        assert_eq!(judge_document(&standby, now, now).level, Level::Healthy);

        let hung = doc(
            vec![device("a", 0, false)],
            json!({"stalled": [{"device": "a", "idle_s": 130.0}]}),
        );
        let verdict = judge_document(&hung, now, now);
        assert_eq!(verdict.level, Level::Down);
        assert!(verdict.reasons[0].contains("hung"), "{verdict:?}");

        let since = |s: i64| (now - chrono::Duration::seconds(s)).to_rfc3339();
        let blip = doc(
            vec![device("a", 0, false)],
            json!({"database_down_since": since(5)}),
        );
        assert_eq!(judge_document(&blip, now, now).level, Level::Degraded);
        let outage = doc(
            vec![device("a", 0, false)],
            json!({"database_down_since": since(11)}),
        );
        assert_eq!(judge_document(&outage, now, now).level, Level::Down);
    }
}
