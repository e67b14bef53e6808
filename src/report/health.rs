//! The one health judge: healthy, degraded or down, with the reasons. Every
//! surface says what it decides — `/healthz` (200, 200, 503), `status`
//! (exit 0, 1, 2), the systemd `STATUS=` line, and the status rows in
//! PostgreSQL (a site's `is_healthy` and `last_error` are its verdict and
//! first reason). [`judge`] decides from the daemon's [`Snapshot`] (what
//! the daemon holds live, and saves in its local store): devices, hung
//! sources, the database's reachability, the backlog, the clock, the local
//! store's faults (writes refused, readings lost, a damaged or deleted
//! file) and tasks restarted after a panic. [`judge_rows`] decides from the
//! status rows, which carry that verdict, with the same rules (one
//! [`stale_after`], one [`backlog_after`], one [`failing_devices`]).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Snapshot;
use crate::clock::seconds_between;
use crate::db::status_rows::PollerView;
use crate::status::DeviceStatus;

/// How well the daemon is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Level {
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }
}

/// The verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    /// The verdict.
    pub(crate) level: Level,
    /// What made it degraded or down.
    pub(crate) reasons: Vec<String>,
}

impl Health {
    /// Down when anything says down, else degraded when anything says so;
    /// the reasons for down first, then the others.
    pub(crate) fn from_findings(mut down: Vec<String>, degraded: Vec<String>) -> Self {
        if !down.is_empty() {
            down.extend(degraded);
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
pub(crate) fn database_down_after(poll_interval_s: f64) -> f64 {
    (3.0 * poll_interval_s).max(10.0)
}

/// The one definition of stale: no sign of life for two poll intervals
/// plus the longer of a poll interval and the period between two saves of
/// the status (it lags by up to that period). A status document older than
/// that means the daemon is not running; a status row whose last success is
/// older is stale. `victron.status_is_stale` (migration 0011) is this rule
/// in SQL, held equal to it by a test on a real server.
pub fn stale_after(poll_interval: Duration, status_every: Duration) -> Duration {
    2 * poll_interval + poll_interval.max(status_every)
}

/// How old the oldest reading waiting to be forwarded may be before the
/// backlog is a reason: three poll intervals, at least 15 s.
pub(crate) fn backlog_after(poll_interval_s: f64) -> f64 {
    3.0 * poll_interval_s.max(5.0)
}

/// Judges a daemon's [`Snapshot`] taken at `saved_at` (now, live; or when
/// the daemon last saved it in its local store), as of `now`.
pub(crate) fn judge(snapshot: &Snapshot, saved_at: DateTime<Utc>, now: DateTime<Utc>) -> Health {
    judge_saved(snapshot, saved_at, now, false)
}

/// [`judge`] for a saved snapshot, knowing whether the daemon still runs
/// (it holds its state directory's lock): one that runs but has not saved
/// its status for too long is not down but degraded — its store refuses
/// writes (a full disk), which it alone can tell live (`/healthz`).
pub(crate) fn judge_saved(
    snapshot: &Snapshot,
    saved_at: DateTime<Utc>,
    now: DateTime<Utc>,
    still_runs: bool,
) -> Health {
    let mut down = Vec::new();
    let mut degraded = Vec::new();
    let interval_s = snapshot.poll_interval_s();
    let age = seconds_between(saved_at, now);
    let stale = stale_after(
        Duration::from_millis(snapshot.poll_interval_ms),
        Duration::from_millis(snapshot.status_every_ms),
    );
    if let Some(stopped) = snapshot.stopped_at {
        let ago = seconds_between(stopped, now);
        down.push(format!("the daemon stopped {ago:.0} s ago"));
    } else if age > stale.as_secs_f64() {
        if still_runs {
            degraded.push(format!(
                "the daemon runs but has not saved its status for {age:.0} s: its local store \
                 refuses writes (a full disk?); /healthz has its live verdict"
            ));
        } else {
            down.push(format!(
                "the daemon is not running (last status {age:.0} s ago)"
            ));
        }
    }
    for stalled in &snapshot.stalled {
        down.push(format!(
            "{}: no poll completed for {:.0} s (hung)",
            stalled.device, stalled.idle_s
        ));
    }
    if let Some(since) = snapshot.database_down_since {
        let for_s = seconds_between(since, now);
        let message = format!("the database has been unreachable for {for_s:.0} s");
        if for_s > database_down_after(interval_s) {
            down.push(message);
        } else {
            degraded.push(message);
        }
    }
    let active = snapshot.devices.iter().filter(|d| !d.standby).count();
    let failing = failing_devices(&snapshot.devices);
    if active > 0 && failing.len() == active {
        down.push("no device answers".into());
    }
    degraded.extend(failing);
    if snapshot.clock.holds_readings() {
        degraded.push(format!(
            "readings held for their time for {:.0} s: the local clock is not synchronised and no clock reference has answered",
            snapshot.clock.held_for_s.unwrap_or_default()
        ));
    }
    if snapshot.database.is_some()
        && let Some(oldest) = snapshot.spool_oldest
    {
        let waited = seconds_between(oldest, now);
        if waited > backlog_after(interval_s) {
            degraded.push(format!(
                "readings wait in the local store since {waited:.0} s ({} waiting)",
                snapshot.spool_depth
            ));
        }
    }
    degraded.extend(store_findings(snapshot, now));
    for restart in &snapshot.restarts {
        degraded.push(format!(
            "{} panicked {} time(s), last {:.0} s ago ({}); it was restarted",
            restart.task,
            restart.panics,
            seconds_between(restart.at, now),
            restart.last_panic
        ));
    }
    Health::from_findings(down, degraded)
}

/// What is wrong with the local store: it refuses writes, readings were
/// lost, its file was damaged or deleted.
fn store_findings(snapshot: &Snapshot, now: DateTime<Utc>) -> Vec<String> {
    let mut found = Vec::new();
    let writes = &snapshot.store_writes;
    if let Some(since) = writes.failing_since {
        found.push(format!(
            "the local store refuses writes since {:.0} s ({}): {} reading(s) wait in memory",
            seconds_between(since, now),
            writes.last_error.as_deref().unwrap_or("no reason given"),
            writes.readings_in_memory
        ));
    }
    let lost_lately = writes
        .last_dropped_at
        .is_some_and(|at| seconds_between(at, now) < crate::store::INCIDENT_LASTS.as_secs_f64());
    if writes.readings_dropped > 0 && lost_lately {
        found.push(format!(
            "{} reading(s) lost since the daemon started: the local store refused them for too long",
            writes.readings_dropped
        ));
    }
    found.extend(snapshot.store_incidents.iter().map(|i| i.what.clone()));
    found
}

/// Judges the status rows in PostgreSQL (what `status` reads with a
/// database): the poller's singleton (or a site's row) and the devices,
/// with `migrations_pending` migrations not applied. A site's row carries
/// [`judge`]'s verdict of the daemon that wrote it (`is_healthy`, and its
/// first reason as `last_error`); staleness is `victron.status_is_stale`,
/// which is [`stale_after`].
pub(crate) fn judge_rows(
    migrations_pending: usize,
    poller: Option<&PollerView>,
    devices: &[DeviceStatus],
    site: Option<&str>,
) -> Health {
    let mut down = Vec::new();
    let mut degraded = Vec::new();
    if migrations_pending > 0 {
        degraded.push(format!(
            "{migrations_pending} migration(s) pending: run `victron-poller migrate`"
        ));
    }
    match poller {
        Some(p) if p.poller_started_at.is_some() => {
            // With several sites the singleton's age is the worst site's:
            // one stale site is that site's problem (below), not the
            // database's, unless no site is healthy.
            let sites = p.sites.unwrap_or(0);
            let unhealthy = p.sites_unhealthy.unwrap_or(0);
            if p.poller_stopped_at.is_some() {
                let ago = p
                    .poller_stopped_at
                    .map_or(0.0, |at| seconds_between(at, Utc::now()));
                down.push(format!("the daemon stopped {ago:.0} s ago"));
            } else if p.last_successful_poll.is_none() {
                down.push("no successful poll yet".into());
            } else if sites > 1 && unhealthy >= sites {
                down.push(format!("no site is healthy ({sites} sites)"));
            } else if sites <= 1 && p.is_stale == Some(true) {
                down.push(format!(
                    "no successful poll for {:.0} s (stale)",
                    p.seconds_since_last_success.unwrap_or_default()
                ));
            }
            let interval_s = p.poll_interval_ms.map_or(5.0, |ms| ms as f64 / 1000.0);
            if let Some(age) = p
                .spool_oldest_age_s
                .filter(|a| *a > backlog_after(interval_s))
            {
                degraded.push(format!("readings wait in the local store since {age:.0} s"));
            }
            if let Some(n) = p.sites_unhealthy.filter(|n| *n > 0) {
                degraded.push(format!(
                    "{n} of {} site(s) not healthy: {}",
                    p.sites.unwrap_or(n),
                    p.last_error.as_deref().unwrap_or("see the sites below")
                ));
            }
        }
        _ => match site {
            Some(site) => down.push(format!("no daemon has written status for site \"{site}\"")),
            None => down.push("no daemon has written status here yet".into()),
        },
    }
    degraded.extend(failing_devices(devices));
    Health::from_findings(down, degraded)
}

/// `device: what is wrong`, for each failing device.
pub(crate) fn failing_devices(devices: &[DeviceStatus]) -> Vec<String> {
    devices
        .iter()
        .filter(|d| d.is_failing())
        .map(|d| {
            format!(
                "{}: {}",
                d.device,
                d.last_error.as_deref().unwrap_or("no data yet")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::SourceKind;
    use crate::report::Stalled;
    use crate::status::StatusBoard;

    /// A snapshot of devices `(name, consecutive failures, standby)`.
    fn snapshot(devices: &[(&str, u32, bool)]) -> Snapshot {
        let board = StatusBoard::new();
        let now = Utc::now();
        for (name, failures, standby) in devices {
            board.register(name, SourceKind::Modbus, "gx:502/100".into());
            board.success(name, now);
            for _ in 0..*failures {
                board.failure(name, now, crate::status::ErrorClass::Timeout, "timeout");
            }
            board.set_standby(name, *standby);
        }
        Snapshot {
            devices: board.snapshot(),
            ..Snapshot::starting("test", now)
        }
    }

    /// Readings held for their time make a daemon degraded when they hold
    /// back forwarding, not in a daemon without a database.
    #[test]
    fn readings_held_for_their_time_degrade() {
        let now = Utc::now();
        let mut held = snapshot(&[("a", 0, false)]);
        held.clock.basis = crate::clock::Basis::Held;
        held.clock.held_for_s = Some(42.0);
        held.clock.forwarding = true;
        let verdict = judge(&held, now, now);
        assert_eq!(verdict.level, Level::Degraded);
        assert!(
            verdict.reasons[0].contains("held for their time for 42 s"),
            "{verdict:?}"
        );
        held.clock.forwarding = false;
        assert_eq!(judge(&held, now, now).level, Level::Healthy);
    }

    #[test]
    fn verdicts() {
        let now = Utc::now();
        let healthy = snapshot(&[("a", 0, false)]);
        assert_eq!(judge(&healthy, now, now).level, Level::Healthy);
        let stale = judge(&healthy, now - chrono::Duration::seconds(60), now);
        assert_eq!(stale.level, Level::Down, "{stale:?}");
        // Its lock still held: the daemon runs, and cannot save.
        let unsaved = judge_saved(&healthy, now - chrono::Duration::seconds(60), now, true);
        assert_eq!(unsaved.level, Level::Degraded, "{unsaved:?}");
        assert!(unsaved.reasons[0].contains("has not saved its status for 60 s"));

        let one_failing = snapshot(&[("a", 0, false), ("b", 3, false)]);
        let verdict = judge(&one_failing, now, now);
        assert_eq!(verdict.level, Level::Degraded);
        assert_eq!(verdict.reasons, vec!["b: timeout".to_string()]);
        let all_failing = snapshot(&[("b", 3, false)]);
        assert_eq!(judge(&all_failing, now, now).level, Level::Down);
        let standby = snapshot(&[("a", 0, false), ("b", 3, true)]);
        assert_eq!(judge(&standby, now, now).level, Level::Healthy);

        let mut hung = snapshot(&[("a", 0, false)]);
        hung.stalled.push(Stalled {
            device: "a".into(),
            idle_s: 130.0,
        });
        let verdict = judge(&hung, now, now);
        assert_eq!(verdict.level, Level::Down);
        assert!(verdict.reasons[0].contains("hung"), "{verdict:?}");

        let mut blip = snapshot(&[("a", 0, false)]);
        blip.database_down_since = Some(now - chrono::Duration::seconds(5));
        assert_eq!(judge(&blip, now, now).level, Level::Degraded);
        let mut outage = blip.clone();
        outage.database_down_since = Some(now - chrono::Duration::seconds(11));
        assert_eq!(judge(&outage, now, now).level, Level::Down);

        let mut stopped = snapshot(&[("a", 0, false)]);
        stopped.stopped_at = Some(now - chrono::Duration::seconds(2));
        let verdict = judge(&stopped, now, now);
        assert_eq!(verdict.level, Level::Down);
        assert_eq!(
            verdict.reasons,
            vec!["the daemon stopped 2 s ago".to_string()]
        );
    }

    #[test]
    fn a_snapshot_survives_the_store_as_json() {
        let snapshot = snapshot(&[("a", 0, false), ("b", 2, true)]);
        let text = serde_json::to_string(&snapshot).unwrap();
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        // Instants are not saved; everything else is.
        let strip = |mut s: Snapshot| {
            for d in &mut s.devices {
                d.progress_at = snapshot.devices[0].progress_at;
            }
            s
        };
        assert_eq!(strip(back), strip(snapshot.clone()));
        assert!(text.contains("\"backoff_ms\":0"), "{text}");
        assert!(text.contains("\"source\":\"modbus\""), "{text}");
    }
}
