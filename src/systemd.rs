//! systemd integration for `Type=notify` units: `READY=1` once the daemon
//! polls, `STATUS=` lines for `systemctl status`, `STOPPING=1` at shutdown,
//! and the watchdog. The watchdog is fed only while every source makes
//! progress (completes polls, successful or not, or receives data): a
//! source hung for longer than `health.stall_timeout_ms` stops the feeding,
//! and systemd restarts the daemon after `WatchdogSec=`.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::status::StatusBoard;

/// Tells systemd the daemon is up.
pub(crate) fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the one-line status `systemctl status` shows.
pub(crate) fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping.
pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::debug!(%error, "Cannot notify systemd.");
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// Feeds the watchdog at half its interval while no source is hung, until
/// `cancel`. Returns at once when systemd set no watchdog.
pub(crate) async fn feed_watchdog(
    board: StatusBoard,
    stall_timeout: Duration,
    cancel: CancellationToken,
) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    tracing::debug!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled."
    );
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut starving = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stalled = board.stalled(stall_timeout);
        if stalled.is_empty() {
            if starving {
                starving = false;
                tracing::info!("Every source makes progress again; feeding the watchdog.");
            }
            notify(&[NotifyState::Watchdog]);
        } else if !starving {
            starving = true;
            let devices: Vec<String> = stalled
                .iter()
                .map(|(device, idle)| format!("{device} ({:.0} s)", idle.as_secs_f64()))
                .collect();
            tracing::error!(
                devices = %devices.join(", "),
                "A source is hung: no poll completed within health.stall_timeout_ms; no longer feeding the watchdog, so systemd restarts the daemon."
            );
        }
    }
}
