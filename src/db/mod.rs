//! PostgreSQL access: connecting with typed, password-free errors, the
//! embedded migrations, the reconcile step and the inspection of the schema
//! state that `migrate` and `status` report.
//!
//! Nothing here prints; callers decide how to show the results.

pub(crate) mod clock;
pub(crate) mod link;
pub(crate) mod locks;
pub mod migrate;
pub mod reconcile;
pub mod retention;
pub mod server;
pub mod status_rows;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::DatabaseConfig;

/// Why the database could not be used. Messages never hold a password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No server answered: refused, unreachable, DNS failure or timeout.
    #[error("cannot reach the database at {target}: {reason}")]
    Unreachable {
        /// The redacted URL.
        target: String,
        /// What the network said.
        reason: String,
    },
    /// The server refused the credentials.
    #[error("the database at {target} refused the credentials: {reason}")]
    Authentication {
        /// The redacted URL.
        target: String,
        /// The server's message.
        reason: String,
    },
    /// The server answered but refused the connection for another reason
    /// (no such database, too many connections, TLS required ...).
    #[error("the database at {target} refused the connection: {reason}")]
    Refused {
        /// The redacted URL.
        target: String,
        /// The server's message.
        reason: String,
    },
    /// TLS could not be set up: the server offers none while `sslmode`
    /// requires it, or its certificate does not verify against
    /// `sslrootcert` (wrong CA, wrong host name, expired).
    #[error(
        "TLS with the database at {target} failed: {reason} (check sslmode and sslrootcert in database.url)"
    )]
    Tls {
        /// The redacted URL.
        target: String,
        /// What TLS said.
        reason: String,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// The options to connect with: the URL's settings plus the configured password.
pub(crate) fn connect_options(config: &DatabaseConfig) -> Result<PgConnectOptions, DbError> {
    let mut options =
        PgConnectOptions::from_str(config.url_without_password().as_str()).map_err(|e| {
            DbError::Refused {
                target: config.redacted_url(),
                reason: format!(
                    "invalid connection settings: {}",
                    redact(&e.to_string(), config)
                ),
            }
        })?;
    if let Some(password) = config.password() {
        options = options.password(password.expose());
    }
    // PgBouncer refuses a startup parameter it does not track, and sqlx
    // sends extra_float_digits = 2 by default; the server's own default
    // (1 since PostgreSQL 12: the shortest exact text) is right anyway, and
    // values travel in binary.
    Ok(options
        .application_name("victron-poller")
        .extra_float_digits(None))
}

/// Opens a pool and proves it works with one connection. Its writers take
/// turns: a writer waits for the one before it for up to a write's own time
/// limit; connections beyond the first close after a minute unused.
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    let pool = lazy_pool(config, config.max_connections)?;
    match pool.acquire().await {
        Ok(conn) => drop(conn),
        Err(e) => return Err(classify_connect_error(e, config)),
    }
    Ok(pool)
}

/// A pool of at most `max_connections` that connects on first use (none
/// is opened here): for a reader that must not hold the daemon's start, nor
/// a connection while it is not used.
pub fn lazy_pool(config: &DatabaseConfig, max_connections: u32) -> Result<PgPool, DbError> {
    let options = connect_options(config)?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .idle_timeout(Some(std::time::Duration::from_secs(60)))
        // No ping before each use (two round trips a second on every
        // gateway, with the one sqlx makes as each connection is released,
        // which closes a broken one): a connection that died since its last
        // use fails that one write, and the local store keeps its batch.
        .test_before_acquire(false)
        .acquire_timeout(config.connect_timeout.max(config.write_timeout))
        .connect_lazy_with(options))
}

/// Opens one connection (not a pool): for `migrate` and `status`, and for
/// migrating at daemon start, whose session lock must end with the connection.
pub async fn connect_once(config: &DatabaseConfig) -> Result<sqlx::PgConnection, DbError> {
    let options = connect_options(config)?;
    match tokio::time::timeout(
        config.connect_timeout,
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(classify_connect_error(e, config)),
        Err(_) => Err(classify_connect_error(sqlx::Error::PoolTimedOut, config)),
    }
}

/// Sorts a connection failure into the cases a user acts on differently.
pub(crate) fn classify_connect_error(error: sqlx::Error, config: &DatabaseConfig) -> DbError {
    let target = config.redacted_url();
    match &error {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let reason = redact(db.message(), config);
            // 28P01 invalid_password, 28000 invalid_authorization_specification
            if code == "28P01" || code == "28000" {
                DbError::Authentication { target, reason }
            } else if code.starts_with("57") || code.starts_with("53") {
                // Starting up, shutting down, too many connections: the
                // server is there but cannot take us yet; it will be back.
                DbError::Unreachable { target, reason }
            } else {
                DbError::Refused { target, reason }
            }
        }
        sqlx::Error::Tls(tls) => DbError::Tls {
            target,
            reason: redact(&tls.to_string(), config),
        },
        // rustls reports a certificate that does not verify as an I/O error
        // of the handshake.
        sqlx::Error::Io(io) if is_tls_failure(io) => DbError::Tls {
            target,
            reason: redact(&io.to_string(), config),
        },
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => {
            let reason = match &error {
                sqlx::Error::PoolTimedOut => format!(
                    "no connection within {} ms",
                    config.connect_timeout.as_millis()
                ),
                other => redact(&other.to_string(), config),
            };
            DbError::Unreachable { target, reason }
        }
        other => DbError::Refused {
            target,
            reason: redact(&other.to_string(), config),
        },
    }
}

fn is_tls_failure(error: &std::io::Error) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    error.get_ref().is_some()
        && (text.contains("certificate") || text.contains("tls") || text.contains("handshake"))
}

/// Removes the password from a message, should a driver ever echo it.
fn redact(message: &str, config: &DatabaseConfig) -> String {
    match config.password() {
        Some(p) if !p.expose().is_empty() => message.replace(p.expose(), "***"),
        _ => message.to_string(),
    }
}

/// The schema state that `status` shows and tests check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SchemaReport {
    /// The database, redacted.
    pub(crate) database: String,
    /// The server's capabilities.
    pub(crate) server: server::ServerInfo,
    /// Applied versus embedded migrations.
    pub(crate) migrations: migrate::MigrationStatus,
    /// How readings are stored and expired.
    pub(crate) storage_mode: server::StorageMode,
    /// The server-dependent schema objects.
    pub schema: server::SchemaState,
    /// Features this database runs without.
    pub(crate) degraded: Vec<server::Degraded>,
}

impl SchemaReport {
    /// Reads the schema state without changing anything.
    pub async fn collect(
        conn: &mut sqlx::PgConnection,
        config: &DatabaseConfig,
    ) -> Result<Self, sqlx::Error> {
        let server = server::ServerInfo::probe(conn).await?;
        let migrations = migrate::status(conn).await?;
        let schema = server::SchemaState::inspect(conn, &server).await?;
        Ok(Self {
            database: config.redacted_url(),
            storage_mode: server.storage_mode(),
            degraded: schema.degraded(&server),
            migrations,
            schema,
            server,
        })
    }
}
