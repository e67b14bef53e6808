//! The device locks between two daemons: a PostgreSQL session-level
//! advisory lock per device decides which daemon polls it. The
//! [`LeaseKeeper`] task holds the locks on a connection of its own and
//! retries the ones another daemon holds, so the standby takes over within a
//! few poll intervals when the active daemon stops, dies or drops off the
//! network; what it learns goes into the [`Leases`] the sources ask.
//!
//! A lock lives as long as the session that took it. The keeper keeps its
//! session busy (one `SELECT 1` per round) and sets `idle_session_timeout`
//! on it, so that the server ends the session of a daemon that vanished
//! without closing it (a gateway whose internet went down) and its devices
//! are taken over instead of waiting hours for TCP keepalives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder as _;
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;

use crate::config::DatabaseConfig;
use crate::db::link::{DatabaseLink, RETRY_MAX, retry_backoff};
use crate::failover::{LeaseState, Leases};
use crate::status::StatusBoard;

/// The advisory lock key of a site's device: a stable 64-bit FNV-1a hash
/// of a namespace, the site and the device name (stable across builds and
/// versions, unlike the standard library's hasher; the same in every
/// daemon). Two sites with the same device names never share a lock; the
/// gateway and the cloud worker of one site (the same site id) do. The empty
/// site hashes as before sites existed, so such daemons keep agreeing.
pub(crate) fn lock_key(site: &str, device: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let site_part: &[u8] = if site.is_empty() {
        b""
    } else {
        site.as_bytes()
    };
    let separator: &[u8] = if site.is_empty() { b"" } else { b"/" };
    for byte in b"victron-poller/device/"
        .iter()
        .chain(site_part)
        .chain(separator)
        .chain(device.as_bytes().iter())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Why a round of lock checks failed.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Holds the locks of the devices this daemon polls.
#[derive(Debug)]
pub(crate) struct LeaseKeeper {
    database: DatabaseConfig,
    leases: Leases,
    status: StatusBoard,
    round: Duration,
    link: Arc<DatabaseLink>,
    /// Each device's site, for its lock key.
    sites: Arc<HashMap<String, String>>,
}

impl LeaseKeeper {
    /// A keeper that asks every `round` (the shortest poll interval). Until
    /// its first answer every device counts as standby on `status`: a
    /// starting daemon polls and reports none, so its empty status never
    /// overwrites the active daemon's.
    pub(crate) fn new(
        database: DatabaseConfig,
        leases: Leases,
        status: StatusBoard,
        round: Duration,
        link: Arc<DatabaseLink>,
        sites: Arc<HashMap<String, String>>,
    ) -> Self {
        for (device, _) in leases.devices() {
            status.set_standby(&device, true);
        }
        Self {
            database,
            leases,
            status,
            round,
            link,
            sites,
        }
    }

    /// The site of `device` (`""` when it has none).
    fn site_of(&self, device: &str) -> &str {
        self.sites.get(device).map_or("", String::as_str)
    }

    /// Runs until `cancel`; dropping the connection at the end releases the
    /// locks, so a standby daemon takes over at once.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        // Reconnecting follows the retry policy every database path shares
        // (at most one attempt a second): the locks come back as soon as
        // the database does, without a storm of attempts while it is down.
        let backoff = retry_backoff();
        let mut delays = backoff.build();
        let mut next_attempt = tokio::time::Instant::now();
        let mut connection: Option<sqlx::PgConnection> = None;
        let mut unreachable_logged = false;
        loop {
            if connection.is_none() && tokio::time::Instant::now() >= next_attempt {
                match self.open().await {
                    Ok(conn) => {
                        if unreachable_logged {
                            tracing::info!("Device locks: the database is reachable again.");
                        }
                        unreachable_logged = false;
                        delays = backoff.build();
                        connection = Some(conn);
                    }
                    Err(error) => {
                        if !unreachable_logged {
                            unreachable_logged = true;
                            tracing::warn!(%error, "Device locks cannot be taken or checked: the database is unreachable.");
                        }
                        self.mark_unreachable();
                        self.link.failed();
                        next_attempt =
                            tokio::time::Instant::now() + delays.next().unwrap_or(RETRY_MAX);
                    }
                }
            }
            if let Some(conn) = connection.as_mut() {
                match self.round(conn).await {
                    Ok(()) => self.link.works(),
                    Err(error) => {
                        tracing::warn!(%error, "Device locks: the lock session failed; the locks are unknown until it is back.");
                        unreachable_logged = true;
                        connection = None;
                        self.mark_unreachable();
                        self.link.failed();
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(self.round) => {}
            }
        }
        if let Some(conn) = connection {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
        }
    }

    async fn open(&self) -> Result<sqlx::PgConnection, crate::db::DbError> {
        let mut conn = crate::db::connect_once(&self.database).await?;
        // The server ends this session when the daemon falls silent for
        // three rounds (at least 10 s): its locks go to the standby.
        let idle_ms = (self.round.as_millis() * 3).max(10_000);
        let set = format!("SET idle_session_timeout = {idle_ms}");
        // PostgreSQL before 14 lacks the setting: the locks then last until
        // TCP notices a dead peer, which is slower but still correct.
        let _ = sqlx::query(&set).execute(&mut conn).await;
        Ok(conn)
    }

    /// One round: proves the session is alive and tries every lock this
    /// daemon does not hold.
    async fn round(&self, conn: &mut sqlx::PgConnection) -> Result<(), RoundError> {
        let bounded = async {
            sqlx::query("SELECT 1").execute(&mut *conn).await?;
            for (device, state) in self.leases.devices() {
                if state == LeaseState::Held {
                    continue;
                }
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(lock_key(self.site_of(&device), &device))
                    .fetch_one(&mut *conn)
                    .await?;
                self.transition(
                    &device,
                    state,
                    if got {
                        LeaseState::Held
                    } else {
                        LeaseState::Standby
                    },
                );
            }
            Ok::<(), sqlx::Error>(())
        };
        let limit = self.database.connect_timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(limit, bounded).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RoundError::TimedOut(limit)),
        }
    }

    fn mark_unreachable(&self) {
        for (device, state) in self.leases.devices() {
            if state != LeaseState::Unknown {
                self.transition(&device, state, LeaseState::Unknown);
            }
        }
    }

    fn transition(&self, device: &str, from: LeaseState, to: LeaseState) {
        if from == to {
            return;
        }
        self.leases.set(device, to);
        let polled = self.leases.may_poll(device);
        self.status.set_standby(device, !polled);
        match to {
            LeaseState::Standby => {
                tracing::info!(device, "Another daemon polls this device; standing by.");
            }
            LeaseState::Held if from != LeaseState::Pending => {
                tracing::info!(device, "Device lock taken: this daemon polls it now.");
            }
            LeaseState::Unknown if !polled => tracing::warn!(
                device,
                "This device's lock cannot be checked (database unreachable): not polling it meanwhile."
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        // Fixed forever: two versions of the daemon must agree on them.
        assert_ne!(lock_key("", "house-bank"), lock_key("", "house-bank2"));
        // Sites never share a device's lock; the empty site keeps the old key.
        assert_ne!(
            lock_key("ranch-a", "house-bank"),
            lock_key("ranch-b", "house-bank")
        );
        assert_ne!(
            lock_key("ranch-a", "house-bank"),
            lock_key("", "house-bank")
        );
        // FNV-1a 64 of "victron-poller/device/house-bank", computed independently.
        assert_eq!(lock_key("", "house-bank"), 7_029_246_286_901_057_186);
    }
}
