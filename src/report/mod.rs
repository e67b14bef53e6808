//! What the daemon says about itself, as one typed [`Snapshot`]: saved in
//! the local store every poll interval (what `status` reads without a
//! database), judged live by [`health`] for `/healthz` and `status`,
//! rendered by [`metrics`] for `/metrics`, and summed up in the line systemd
//! shows. A field renamed here is a compile error everywhere it is read.

pub mod health;
pub mod http;
pub mod metrics;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::{Basis, ClockReport};
use crate::status::DeviceStatus;

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
}

/// A source that made no progress for too long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stalled {
    /// The device.
    pub device: String,
    /// Seconds since its source last made progress.
    pub idle_s: f64,
}

impl Snapshot {
    /// The poll interval in seconds.
    pub fn poll_interval_s(&self) -> f64 {
        self.poll_interval_ms as f64 / 1000.0
    }

    /// One line for `systemctl status`.
    pub fn one_line(&self) -> String {
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
