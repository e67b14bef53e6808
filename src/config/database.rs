//! Where and how to reach PostgreSQL ([`DatabaseConfig`]), and the
//! [`Secret`] its password is kept in: neither shows a password, in a
//! message or in `Debug` output.

use std::fmt;
use std::time::Duration;

use url::Url;

use super::{keys, redact};

/// Where and how to reach PostgreSQL.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// The connection URL with any password removed (see [`Self::password`]).
    pub(super) url: Url,
    /// The password: from `database.password`, else from the URL.
    pub(super) password: Option<Secret>,
    /// How long one connection attempt may take (`database.connect_timeout_ms`).
    pub(crate) connect_timeout: Duration,
    /// Longest wait for one batch to be written (`database.write_timeout_ms`):
    /// a link that went silent is given up after this and retried.
    pub(crate) write_timeout: Duration,
    /// Connections the daemon's writes share (`database.max_connections`,
    /// default 1).
    pub(crate) max_connections: u32,
    /// `url` goes through a pooler in transaction mode
    /// (`database.transaction_pooling`): no session outlives a transaction.
    pub(crate) transaction_pooling: bool,
    /// Where the device locks' session connects (`failover.database_url`),
    /// when not `url`: session locks need a session of their own.
    pub(super) lock_session: Option<Box<DatabaseConfig>>,
}

impl DatabaseConfig {
    /// `database.write_timeout_ms` when the file does not set it: for a
    /// writer made without a configuration.
    pub(crate) fn default_write_timeout() -> Duration {
        Duration::from_millis(keys::DATABASE_WRITE_TIMEOUT_MS.integer_default())
    }

    /// The URL to show in logs and messages: no password, ever (the one
    /// rule of `config/redact.rs` for every place a URL is shown).
    pub(crate) fn redacted_url(&self) -> String {
        redact::redact_url(&self.url)
    }

    /// The connection URL without its password.
    pub(crate) fn url_without_password(&self) -> &Url {
        &self.url
    }

    /// The password, if one is configured.
    pub(crate) fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The database the device locks' session connects to: the direct
    /// connection of `failover.database_url` when set, else this one.
    pub(crate) fn lock_session(&self) -> &DatabaseConfig {
        self.lock_session.as_deref().unwrap_or(self)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.redacted_url())
            .field("password", &self.password)
            .field("connect_timeout", &self.connect_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("max_connections", &self.max_connections)
            .field("transaction_pooling", &self.transaction_pooling)
            .field("lock_session", &self.lock_session)
            .finish()
    }
}

/// A string that must not be shown: `Debug` prints `***`, and it has no
/// `Display`; [`Secret::expose`] is the one way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    /// The secret value, for the one place that needs it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
