//! Live status of every configured device, shared between the sources that
//! update it and whoever reports it (`status`, the database status rows, the
//! health endpoint). Also where device state changes are logged: a device
//! going down or coming back is logged once, not every failed poll — and
//! not at all when its source logs the cause itself (a GX that cannot be
//! reached is one line for all its devices).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::reading::SourceKind;

/// What went wrong, in the classes an operator acts on differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// No TCP connection (refused, unreachable, DNS).
    Connect,
    /// No reply in time.
    Timeout,
    /// The connection broke or a reply was malformed.
    Transport,
    /// The GX has no such device on this unit id, or it is offline (0x0A/0x0B).
    Unavailable,
    /// The GX refused the request (0x01/0x02/0x03 ...).
    Exception,
    /// A serial port or stream problem.
    Port,
    /// The daemon's own task for the device failed (a panic): a bug.
    Internal,
}

impl ErrorClass {
    /// The name stored in `device_status.last_error_class`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Transport => "transport",
            Self::Unavailable => "unavailable",
            Self::Exception => "exception",
            Self::Port => "port",
            Self::Internal => "internal",
        }
    }
}

/// One device's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The configured name.
    pub(crate) device: String,
    /// Modbus or VE.Direct.
    pub(crate) source: SourceKind,
    /// host:port/unit id, or a serial path.
    pub(crate) address: String,
    /// Victron product id, when known.
    pub product_id: Option<i64>,
    /// Product name, when known.
    pub product_name: Option<String>,
    /// Serial number, when known.
    pub serial: Option<String>,
    /// Firmware version (for Modbus devices: the GX's, register 834).
    pub firmware: Option<String>,
    /// Last poll attempt.
    pub(crate) last_attempt: Option<DateTime<Utc>>,
    /// Last successful poll.
    pub(crate) last_success: Option<DateTime<Utc>>,
    /// Last error message.
    pub last_error: Option<String>,
    /// Last error class.
    pub last_error_class: Option<ErrorClass>,
    /// Failed polls since the last success.
    pub consecutive_failures: u32,
    /// Polls (attempts) since start.
    pub polls: u64,
    /// Failed polls since start.
    pub failures: u64,
    /// Current reconnect delay (0 when connected); `backoff_ms` in JSON.
    #[serde(rename = "backoff_ms", with = "milliseconds")]
    pub backoff: Duration,
    /// Frames dropped for a failed checksum (VE.Direct).
    pub corrupt_blocks: u64,
    /// Another daemon holds this device's lock: it is not polled here.
    pub(crate) standby: bool,
    /// When its source last completed a poll or received data, or was
    /// registered or resumed: what hang detection measures from.
    #[serde(skip, default = "Instant::now")]
    pub(crate) progress_at: Instant,
}

/// A duration as whole milliseconds (`backoff_ms`).
mod milliseconds {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_millis)
    }
}

impl DeviceStatus {
    /// Whether the last poll succeeded.
    pub fn is_healthy(&self) -> bool {
        self.last_success.is_some() && self.consecutive_failures == 0
    }

    /// Whether the device counts against this daemon's health: it is polled
    /// here (not on standby) and its last poll did not succeed, or none has.
    /// The one definition of "failing" that `status`, `/healthz`, the
    /// metrics and the status rows use.
    pub(crate) fn is_failing(&self) -> bool {
        !self.standby && !self.is_healthy()
    }
}

/// The status of every device, cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    devices: Arc<Mutex<BTreeMap<String, DeviceStatus>>>,
}

impl StatusBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, DeviceStatus>> {
        // A panic elsewhere must not take status down with it.
        self.devices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a device before its first poll.
    pub fn register(&self, device: &str, source: SourceKind, address: String) {
        self.lock()
            .entry(device.to_string())
            .or_insert_with(|| DeviceStatus {
                device: device.to_string(),
                source,
                address,
                product_id: None,
                product_name: None,
                serial: None,
                firmware: None,
                last_attempt: None,
                last_success: None,
                last_error: None,
                last_error_class: None,
                consecutive_failures: 0,
                polls: 0,
                failures: 0,
                backoff: Duration::ZERO,
                corrupt_blocks: 0,
                standby: false,
                progress_at: Instant::now(),
            });
    }

    /// Notes that a device's source is alive: it completed a poll (even a
    /// skipped one, while waiting to reconnect) or received data.
    pub(crate) fn heartbeat(&self, device: &str) {
        if let Some(status) = self.lock().get_mut(device) {
            status.progress_at = Instant::now();
        }
    }

    /// Puts a device in or out of standby (not polled by this daemon: another
    /// one holds its lock, or the lock cannot be checked).
    pub(crate) fn set_standby(&self, device: &str, standby: bool) {
        if let Some(status) = self.lock().get_mut(device) {
            status.standby = standby;
            // Hang detection starts over when polling resumes.
            status.progress_at = Instant::now();
        }
    }

    /// Devices whose source has shown no progress for longer than `limit`
    /// (standby devices excluded), with how long.
    pub(crate) fn stalled(&self, limit: Duration) -> Vec<(String, Duration)> {
        self.lock()
            .values()
            .filter(|s| !s.standby)
            .map(|s| (s.device.clone(), s.progress_at.elapsed()))
            .filter(|(_, idle)| *idle > limit)
            .collect()
    }

    /// Records a successful poll; logs the recovery of a failing device.
    pub fn success(&self, device: &str, at: DateTime<Utc>) {
        self.record_success(device, at, true);
    }

    /// Records a successful poll whose recovery its source logged itself
    /// (a GX that answers again brings all its devices back: one line).
    pub(crate) fn success_unlogged(&self, device: &str, at: DateTime<Utc>) {
        self.record_success(device, at, false);
    }

    fn record_success(&self, device: &str, at: DateTime<Utc>, log: bool) {
        // Log after the lock is released: a slow log sink must not hold it.
        let (was_failing, first, address) = {
            let mut devices = self.lock();
            let Some(status) = devices.get_mut(device) else {
                return;
            };
            let noted = (
                status.consecutive_failures,
                status.last_success.is_none(),
                status.address.clone(),
            );
            status.last_attempt = Some(at);
            status.last_success = Some(at);
            status.progress_at = Instant::now();
            status.consecutive_failures = 0;
            status.polls += 1;
            status.backoff = Duration::ZERO;
            noted
        };
        if was_failing > 0 && log {
            tracing::info!(device, failed_polls = was_failing, "Device is back.");
        } else if first {
            tracing::info!(device, address = %address, "Device answered its first poll.");
        }
    }

    /// Records a failed poll; logs only the first failure of a run.
    pub(crate) fn failure(&self, device: &str, at: DateTime<Utc>, class: ErrorClass, error: &str) {
        self.record_failure(device, at, class, error, true);
    }

    /// Records a failed poll whose cause its source logs itself (a GX that
    /// cannot be reached takes all its devices with it: one line for the
    /// GX, not one per device).
    pub(crate) fn failure_unlogged(
        &self,
        device: &str,
        at: DateTime<Utc>,
        class: ErrorClass,
        error: &str,
    ) {
        self.record_failure(device, at, class, error, false);
    }

    fn record_failure(
        &self,
        device: &str,
        at: DateTime<Utc>,
        class: ErrorClass,
        error: &str,
        log: bool,
    ) {
        let newly_down = {
            let mut devices = self.lock();
            let Some(status) = devices.get_mut(device) else {
                return;
            };
            let newly_down =
                status.consecutive_failures == 0 || status.last_error_class != Some(class);
            status.last_attempt = Some(at);
            status.progress_at = Instant::now();
            status.last_error = Some(error.to_string());
            status.last_error_class = Some(class);
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            status.polls += 1;
            status.failures += 1;
            newly_down
        };
        if newly_down && log {
            tracing::warn!(
                device,
                error_class = class.as_str(),
                error,
                "Device is down."
            );
        }
    }

    /// Updates identity fields and the reconnect delay.
    pub(crate) fn update(&self, device: &str, change: impl FnOnce(&mut DeviceStatus)) {
        if let Some(status) = self.lock().get_mut(device) {
            change(status);
        }
    }

    /// A copy of one device's status.
    pub fn get(&self, device: &str) -> Option<DeviceStatus> {
        self.lock().get(device).cloned()
    }

    /// A copy of every device's status, by name.
    pub fn snapshot(&self) -> Vec<DeviceStatus> {
        self.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_until_a_success() {
        let board = StatusBoard::new();
        board.register("bank", SourceKind::Modbus, "gx:502/226".into());
        let t = Utc::now();
        board.failure("bank", t, ErrorClass::Unavailable, "exception 0x0A");
        board.failure("bank", t, ErrorClass::Unavailable, "exception 0x0A");
        let s = board.get("bank").unwrap();
        assert_eq!((s.consecutive_failures, s.failures, s.polls), (2, 2, 2));
        assert!(!s.is_healthy());
        board.success("bank", t);
        let s = board.get("bank").unwrap();
        assert_eq!((s.consecutive_failures, s.failures, s.polls), (0, 2, 3));
        assert!(s.is_healthy());
        assert_eq!(
            s.last_error_class,
            Some(ErrorClass::Unavailable),
            "the last error is kept"
        );
        // Unknown devices are ignored, not created.
        board.success("nope", t);
        assert_eq!(board.snapshot().len(), 1);
    }

    #[test]
    fn stalls_are_measured_from_the_last_progress_and_skip_standby() {
        let board = StatusBoard::new();
        board.register("bank", SourceKind::Modbus, "gx:502/226".into());
        board.register("mppt", SourceKind::Modbus, "gx:502/224".into());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(board.stalled(Duration::from_millis(20)).len(), 2);
        // Progress restarts the measure: from the heartbeat and the failed
        // poll on (not "not stalled 20 ms later", which a busy machine may
        // not give this thread).
        let progress = Instant::now();
        board.heartbeat("bank");
        board.failure("mppt", Utc::now(), ErrorClass::Timeout, "no reply");
        for device in ["bank", "mppt"] {
            assert!(
                board.get(device).unwrap().progress_at >= progress,
                "{device}"
            );
        }
        std::thread::sleep(Duration::from_millis(30));
        board.set_standby("mppt", true);
        let stalled = board.stalled(Duration::from_millis(20));
        let since_progress = progress.elapsed();
        assert_eq!(stalled.len(), 1);
        assert_eq!(stalled[0].0, "bank");
        // Idle since the heartbeat, not since it was registered.
        assert!(stalled[0].1 >= Duration::from_millis(30));
        assert!(stalled[0].1 <= since_progress);
    }
}
