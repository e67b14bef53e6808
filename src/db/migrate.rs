//! The embedded migrations (`migrations/*.sql`, tracked in
//! `_sqlx_migrations`), their status, and `migrate`: apply what is pending,
//! then run the reconcile step, all in one transaction under one advisory
//! lock, so that two daemons starting together do not race.
//!
//! A failing statement stops the run with the file, the line and the statement.

use std::time::Duration;

use serde::Serialize;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgDatabaseError, PgErrorPosition};
use sqlx::{Connection as _, PgConnection};

use super::reconcile::{self, ReconcileReport};
use super::server::{Degraded, SchemaState, ServerInfo, StorageMode};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Advisory lock key held while migrating and reconciling ("VICTRN").
const SCHEMA_LOCK_KEY: i64 = 0x5649_4354_524e;

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A statement of a migration file failed; the file's changes were rolled back.
    #[error("migration {file} failed{at}: {message}", at = .location.as_deref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Statement {
        /// The migration's file name.
        file: String,
        /// `line N: <statement text>`, when the server gave a position.
        location: Option<String>,
        /// The server's message, detail and hint.
        message: String,
    },
    /// The database records a migration this binary does not have (a newer
    /// version of victron-poller migrated it).
    #[error(
        "the database has migration {0} applied, which this version of victron-poller does not know; upgrade victron-poller"
    )]
    Unknown(i64),
    /// An applied migration's file has changed since it was applied.
    #[error("migration {0} was changed after it was applied to this database")]
    Modified(String),
    /// The reconcile step failed.
    #[error("reconcile step failed: {0}")]
    Reconcile(#[from] super::reconcile::ReconcileError),
    /// The migration tracking refused to run (a dirty or out-of-order record).
    #[error("{0}")]
    Tracking(MigrateError),
    /// Any other database error.
    #[error("database error while migrating: {0}")]
    Db(#[from] sqlx::Error),
}

/// One embedded migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationInfo {
    /// The version (file number).
    pub(crate) version: i64,
    /// The file name, e.g. `0003_victron_readings.sql`.
    pub file: String,
}

/// Applied versus embedded migrations.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MigrationStatus {
    /// Embedded migrations recorded as applied.
    pub(crate) applied: Vec<MigrationInfo>,
    /// Embedded migrations not yet applied.
    pub(crate) pending: Vec<MigrationInfo>,
    /// Versions applied to the database that this binary does not have.
    pub(crate) unknown: Vec<i64>,
    /// Applied migrations whose embedded text differs from what was applied.
    pub(crate) modified: Vec<MigrationInfo>,
}

impl MigrationStatus {
    /// Nothing to apply and nothing inconsistent.
    pub(crate) fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.modified.is_empty()
    }
}

/// Every embedded migration, in order.
pub fn embedded() -> Vec<MigrationInfo> {
    MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationInfo {
            version: m.version,
            file: file_name(m.version, &m.description),
        })
        .collect()
}

fn file_name(version: i64, description: &str) -> String {
    format!("{version:04}_{}.sql", description.replace(' ', "_"))
}

/// Compares the embedded migrations with those recorded in the database.
pub(crate) async fn status(conn: &mut PgConnection) -> Result<MigrationStatus, sqlx::Error> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    let recorded: Vec<(i64, Vec<u8>)> = if table_exists {
        sqlx::query_as(
            "SELECT version, checksum FROM public._sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&mut *conn)
        .await?
    } else {
        Vec::new()
    };
    let mut status = MigrationStatus {
        applied: Vec::new(),
        pending: Vec::new(),
        unknown: Vec::new(),
        modified: Vec::new(),
    };
    for m in MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
    {
        let info = MigrationInfo {
            version: m.version,
            file: file_name(m.version, &m.description),
        };
        match recorded.iter().find(|(v, _)| *v == m.version) {
            Some((_, checksum)) if checksum.as_slice() != &*m.checksum => {
                status.modified.push(info);
            }
            Some(_) => status.applied.push(info),
            None => status.pending.push(info),
        }
    }
    status.unknown = recorded
        .iter()
        .map(|(v, _)| *v)
        .filter(|v| !MIGRATOR.version_exists(*v))
        .collect();
    Ok(status)
}

/// What `migrate` did and the state it left.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    /// Migrations applied by this run.
    pub applied_now: Vec<MigrationInfo>,
    /// What the reconcile step changed.
    pub reconcile: ReconcileReport,
    /// The server's capabilities.
    pub(crate) server: ServerInfo,
    /// How readings are stored and expired.
    pub storage_mode: StorageMode,
    /// Features this database runs without.
    pub degraded: Vec<Degraded>,
}

/// Applies pending migrations, then reconciles the schema with what the
/// server allows. Idempotent: a second run applies and changes nothing.
///
/// The whole run is one transaction under a transaction-scoped advisory
/// lock: a second daemon starting at the same moment waits, then finds the
/// schema current; a failure leaves the database as it was; and nothing
/// outlives the transaction, so it works the same through a pooler in
/// transaction mode (PgBouncer), where a session lock would stay behind on
/// a server connection that other clients then use. Each migration is a
/// savepoint inside it.
///
/// When nothing is pending and the reconcile step would change nothing (a
/// daemon starting on a current schema: the usual case), no lock is taken at
/// all, so a hundred daemons starting together do not queue behind it.
pub async fn migrate(
    conn: &mut PgConnection,
    retention_window: Duration,
) -> Result<MigrateReport, MigrationError> {
    if let Some(report) = already_current(conn, retention_window).await? {
        return Ok(report);
    }
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let report = migrate_locked(&mut tx, retention_window).await?;
    tx.commit().await?;
    Ok(report)
}

/// The report of a run that would change nothing, or `None` when it would.
async fn already_current(
    conn: &mut PgConnection,
    retention_window: Duration,
) -> Result<Option<MigrateReport>, MigrationError> {
    if !status(conn).await?.is_current() {
        return Ok(None);
    }
    let plan = reconcile::plan(conn, retention_window).await?;
    if !plan.actions.is_empty() {
        return Ok(None);
    }
    Ok(Some(MigrateReport {
        applied_now: Vec::new(),
        reconcile: ReconcileReport::default(),
        storage_mode: plan.server.storage_mode(),
        degraded: plan.state.degraded(&plan.server),
        server: plan.server,
    }))
}

async fn migrate_locked(
    conn: &mut PgConnection,
    retention_window: Duration,
) -> Result<MigrateReport, MigrationError> {
    let before = status(conn).await?;
    if let Some(version) = before.unknown.first() {
        return Err(MigrationError::Unknown(*version));
    }
    if let Some(m) = before.modified.first() {
        return Err(MigrationError::Modified(m.file.clone()));
    }
    // The migrator's own session lock is off: the run already holds ours.
    let mut migrator = Migrator {
        migrations: MIGRATOR.migrations.clone(),
        ..Migrator::DEFAULT
    };
    migrator.set_locking(false);
    migrator.run_direct(&mut *conn).await.map_err(explain)?;

    let reconcile = reconcile::run(conn, retention_window).await?;
    let server = ServerInfo::probe(conn).await?;
    let state = SchemaState::inspect(conn, &server).await?;
    Ok(MigrateReport {
        applied_now: before.pending,
        reconcile,
        storage_mode: server.storage_mode(),
        degraded: state.degraded(&server),
        server,
    })
}

/// Turns sqlx's migration error into one naming the file, line and statement.
fn explain(error: MigrateError) -> MigrationError {
    match error {
        MigrateError::ExecuteMigration(source, version) => {
            let migration = MIGRATOR.iter().find(|m| m.version == version);
            let file = migration
                .map(|m| file_name(m.version, &m.description))
                .unwrap_or_else(|| version.to_string());
            let sql = migration.map(|m| m.sql.as_ref()).unwrap_or_default();
            let (message, location) = describe_db_error(&source, sql);
            MigrationError::Statement {
                file,
                location,
                message,
            }
        }
        MigrateError::VersionMismatch(v) => MigrationError::Modified(
            embedded()
                .into_iter()
                .find(|m| m.version == v)
                .map_or_else(|| v.to_string(), |m| m.file),
        ),
        MigrateError::VersionMissing(v) => MigrationError::Unknown(v),
        MigrateError::Execute(e) => MigrationError::Db(e),
        other => MigrationError::Tracking(other),
    }
}

/// The server's message with detail and hint, and where in `sql` it happened.
fn describe_db_error(error: &sqlx::Error, sql: &str) -> (String, Option<String>) {
    let Some(pg) = error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<PgDatabaseError>())
    else {
        return (error.to_string(), None);
    };
    let mut message = pg.message().to_string();
    if let Some(detail) = pg.detail() {
        message.push_str(&format!(" ({detail})"));
    }
    if let Some(hint) = pg.hint() {
        message.push_str(&format!("; hint: {hint}"));
    }
    let location = match pg.position() {
        Some(PgErrorPosition::Original(position)) => Some(locate(sql, position)),
        _ => pg
            .r#where()
            .map(|w| w.lines().next().unwrap_or(w).to_string()),
    };
    (message, location)
}

/// `line N: <the line's text>` for a 1-based character position in `sql`.
fn locate(sql: &str, position: usize) -> String {
    let before: String = sql.chars().take(position.saturating_sub(1)).collect();
    let line_number = before.matches('\n').count() + 1;
    let line = sql.lines().nth(line_number - 1).unwrap_or("").trim();
    let mut text: String = line.chars().take(160).collect();
    if line.chars().count() > 160 {
        text.push('…');
    }
    format!("line {line_number}: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_unique_and_contiguous_from_one() {
        let versions: Vec<i64> = embedded().iter().map(|m| m.version).collect();
        let expected: Vec<i64> = (1..=versions.len() as i64).collect();
        assert_eq!(versions, expected);
    }

    #[test]
    fn every_file_in_the_directory_is_embedded_once() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = embedded().into_iter().map(|m| m.file).collect();
        assert_eq!(on_disk, embedded);
        // Two files sharing a number (the legacy 003 mistake) cannot both embed:
        let numbers: std::collections::BTreeSet<&str> = on_disk.iter().map(|f| &f[..4]).collect();
        assert_eq!(numbers.len(), on_disk.len());
    }

    #[test]
    fn locate_names_line_and_text() {
        let sql = "SELECT 1;\n  CREATE TABLE x (;\n";
        assert_eq!(locate(sql, 13), "line 2: CREATE TABLE x (;");
    }
}
