//! What the daemon says about itself, as one typed [`Snapshot`]: saved in
//! the local store when what it says changes and otherwise every few
//! seconds (what `status` reads without a database), judged by [`health`]
//! for `/healthz`, `status`, the line systemd shows and the status rows,
//! and rendered by [`metrics`] for `/metrics`. A field renamed here is a compile error everywhere it is read.

pub mod health;
pub(crate) mod http;
pub(crate) mod metrics;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::{Basis, ClockReport};
use crate::pipeline::StoreWrites;
use crate::status::DeviceStatus;
use crate::store::StoreIncident;

/// The daemon's status at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The daemon's version.
    pub version: String,
    /// The host it runs on.
    pub host: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it stopped cleanly; `None` while it runs.
    #[serde(default)]
    pub stopped_at: Option<DateTime<Utc>>,
    /// The shortest poll interval, in milliseconds.
    pub poll_interval_ms: u64,
    /// The longest the daemon goes between two saves of this status, in
    /// milliseconds.
    #[serde(default = "older_status_every_ms")]
    pub status_every_ms: u64,
    /// Readings committed to the local store since start.
    pub rows_stored: u64,
    /// Readings committed to PostgreSQL since start.
    pub rows_forwarded: u64,
    /// Readings PostgreSQL refused for good, parked in the local store.
    pub rows_parked: u64,
    /// Readings dropped from the local store before they could be forwarded.
    pub rows_expired_unforwarded: u64,
    /// Failed attempts to forward.
    pub forward_errors: u64,
    /// Retention runs completed (local store and database).
    #[serde(default)]
    pub retention_runs: u64,
    /// Retention runs that failed.
    #[serde(default)]
    pub retention_failures: u64,
    /// Log lines dropped because the reader of the output fell behind.
    #[serde(default)]
    pub log_lines_dropped: u64,
    /// Readings in the local store (waiting to be forwarded, with a database).
    pub spool_depth: i64,
    /// When the oldest of them was measured.
    pub spool_oldest: Option<DateTime<Utc>>,
    /// The database, redacted; `None` without one.
    pub database: Option<String>,
    /// Since when the database cannot be reached; `None` while it can.
    pub database_down_since: Option<DateTime<Utc>>,
    /// How long a source may make no progress before it counts as hung, in ms.
    pub stall_timeout_ms: u64,
    /// Sources that made no progress for longer than that.
    pub stalled: Vec<Stalled>,
    /// Every device.
    pub devices: Vec<DeviceStatus>,
    /// Where measurement times come from, and the offsets to the references.
    #[serde(default)]
    pub clock: ClockReport,
    /// Readings waiting in the local store for their time.
    #[serde(default)]
    pub held_readings: i64,
    /// How the local store takes writes (a full disk refuses them).
    #[serde(default)]
    pub store_writes: StoreWrites,
    /// What happened to the local store's file lately (damaged and moved
    /// aside, deleted under the daemon).
    #[serde(default)]
    pub store_incidents: Vec<StoreIncident>,
    /// The daemon's tasks restarted after a panic lately.
    #[serde(default)]
    pub restarts: Vec<TaskRestart>,
}

/// What a document of an older daemon, which does not say, is allowed:
/// what `status` allowed it then (15 s at a 1-s poll).
fn older_status_every_ms() -> u64 {
    13_000
}

/// A task of the daemon that panicked and was restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRestart {
    /// The task: `source gx 127.0.0.1:502`, `source vedirect bank` …
    pub(crate) task: String,
    /// How many times it panicked since the daemon started.
    pub(crate) panics: u64,
    /// The last panic's message.
    pub(crate) last_panic: String,
    /// When it last panicked.
    pub(crate) at: DateTime<Utc>,
}

/// A source that made no progress for too long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stalled {
    /// The device.
    pub(crate) device: String,
    /// Seconds since its source last made progress.
    pub(crate) idle_s: f64,
}

impl Snapshot {
    /// A daemon on `host` as it starts at `started_at`: nothing counted
    /// yet, no device, no database, polling every second and saving its
    /// status every 5 s (what tests and examples change from).
    pub fn starting(host: &str, started_at: DateTime<Utc>) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").into(),
            host: host.into(),
            started_at,
            stopped_at: None,
            poll_interval_ms: 1000,
            status_every_ms: 5000,
            rows_stored: 0,
            rows_forwarded: 0,
            rows_parked: 0,
            rows_expired_unforwarded: 0,
            forward_errors: 0,
            retention_runs: 0,
            retention_failures: 0,
            log_lines_dropped: 0,
            spool_depth: 0,
            spool_oldest: None,
            database: None,
            database_down_since: None,
            stall_timeout_ms: 120_000,
            stalled: Vec::new(),
            devices: Vec::new(),
            clock: ClockReport::default(),
            held_readings: 0,
            store_writes: StoreWrites::default(),
            store_incidents: Vec::new(),
            restarts: Vec::new(),
        }
    }

    /// The poll interval in seconds.
    pub(crate) fn poll_interval_s(&self) -> f64 {
        self.poll_interval_ms as f64 / 1000.0
    }

    /// The line for `systemctl status`: the verdict and its first reason,
    /// then the summary.
    pub(crate) fn status_line(&self, verdict: &health::Health) -> String {
        let mut line = verdict.level.as_str().to_string();
        if let Some(first) = verdict.reasons.first() {
            line.push_str(": ");
            line.push_str(first);
            if verdict.reasons.len() > 1 {
                line.push_str(&format!(" (+{} more)", verdict.reasons.len() - 1));
            }
        }
        line.push_str("; ");
        line.push_str(&self.one_line());
        line
    }

    /// One line summing the daemon up.
    pub(crate) fn one_line(&self) -> String {
        let active = self.devices.iter().filter(|d| !d.standby).count();
        let failing = self.devices.iter().filter(|d| d.is_failing()).count();
        let mut line = format!("{} of {active} device(s) answering", active - failing);
        if active < self.devices.len() {
            line.push_str(&format!(", {} on standby", self.devices.len() - active));
        }
        let depth = self.spool_depth;
        if self.database.is_some() {
            line.push_str(&format!(", {depth} reading(s) waiting to be forwarded"));
        } else {
            line.push_str(&format!(", {depth} reading(s) in the local store"));
        }
        if self.clock.basis != Basis::Local {
            line.push_str(&format!(", times from {}", self.clock.basis.as_str()));
        }
        if self.held_readings > 0 {
            line.push_str(&format!(", {} held for their time", self.held_readings));
        }
        line
    }
}
