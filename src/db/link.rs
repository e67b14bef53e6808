//! Whether the database can be reached, as every path that talks to it sees
//! it (the forwarder, the status writer, the bring-up, the lock session),
//! and the one retry policy they share.
//!
//! Any successful contact (a forwarded batch, a status write, a lock round)
//! wakes the forwarder and the bring-up waiting out their backoff, so the
//! backlog moves as soon as one path finds the database back, not when the
//! slowest backoff ends; both retry at least once a second anyway (the lock
//! keeper once a round, its poll interval).

use std::sync::Mutex;
use std::time::Duration;

use backon::ExponentialBuilder;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

/// The database's reachability, shared by the daemon's database paths.
#[derive(Debug, Default)]
pub struct DatabaseLink {
    /// Since when the database cannot be reached or written to; `None` while it works.
    down_since: Mutex<Option<DateTime<Utc>>>,
    /// Woken by every successful contact.
    contact: Notify,
}

impl DatabaseLink {
    /// Notes a failed connection or write (the first failure starts the outage).
    pub(crate) fn failed(&self) {
        let mut since = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        since.get_or_insert_with(Utc::now);
    }

    /// Notes a successful contact, and wakes whoever waits for one.
    pub(crate) fn works(&self) {
        *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.contact.notify_waiters();
    }

    /// Since when the database has been failing, if it is.
    pub(crate) fn down_since(&self) -> Option<DateTime<Utc>> {
        *self.down_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits out `delay`, or less if another path reaches the database first.
    pub(crate) async fn retry_after(&self, delay: Duration) {
        tokio::select! {
            () = self.contact.notified() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Delays between attempts to reach the database: from 100 ms, doubling, to
/// 1 s, jittered. An attempt against a database that is down costs one
/// refused or timed-out connection, so retrying every second is cheap, and
/// it is what bounds the time from the database's return to the backlog
/// moving.
pub(crate) fn retry_backoff() -> ExponentialBuilder {
    crate::schedule::retry_delays(Duration::from_millis(100), RETRY_MAX)
}

/// The longest wait between two attempts to reach the database.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(1);
