//! The reconcile step: after the migrations, upgrade what the server now
//! allows. Enables TimescaleDB (only when preloaded: otherwise `CREATE
//! EXTENSION` kills the session) and pgvector when available, turns plain
//! reading tables into 1-hour-chunk hypertables keeping their rows, adds
//! TimescaleDB retention policies where the licence allows, and turns
//! `kb_chunks.embedding` into `vector(1536)` with an HNSW index.
//!
//! Idempotent: every action first checks the state, so a second run changes
//! nothing. A missing optional feature is not an error; it shows up in
//! [`SchemaState::degraded`](super::server::SchemaState::degraded).

use std::time::Duration;

use serde::Serialize;
use sqlx::{Connection as _, PgConnection};

use super::server::{CHUNK_INTERVAL_US, HISTORY_TABLES, SchemaState, ServerInfo};

/// Why the reconcile step failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A reading table could not become a hypertable.
    #[error("converting {table} to a hypertable: {source}")]
    Hypertable {
        /// The table.
        table: String,
        /// What the server said.
        source: sqlx::Error,
    },
    /// `kb_chunks.embedding` could not take the vector type.
    #[error("converting kb_chunks.embedding from {from} to vector(1536): {source}")]
    Embedding {
        /// The column's type before.
        from: String,
        /// What the server said.
        source: sqlx::Error,
    },
    /// Any other statement.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// What one reconcile run changed, and what it tried but could not do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Changes made, one sentence each.
    pub actions: Vec<String>,
    /// Optional upgrades the server refused, one sentence each.
    pub(crate) refused: Vec<String>,
}

/// Whether a run changes the schema or only finds out what it would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Apply,
    Plan,
}

/// Runs the reconcile step.
pub async fn run(
    conn: &mut PgConnection,
    retention_window: Duration,
) -> Result<ReconcileReport, ReconcileError> {
    let mut report = ReconcileReport::default();
    let server = ServerInfo::probe(conn).await?;
    extensions(conn, &server, Mode::Apply, &mut report).await?;
    // The extensions may have changed what the server offers.
    let server = ServerInfo::probe(conn).await?;
    let state = SchemaState::inspect(conn, &server).await?;
    schema_steps(
        conn,
        &server,
        &state,
        retention_window,
        Mode::Apply,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// What [`run`] would do now, found by the same rules without changing
/// anything, and the server and schema state it looked at.
#[derive(Debug)]
pub(crate) struct Plan {
    /// What `run` would change, one sentence each (after an extension to
    /// enable, the steps that depend on it are not looked at).
    pub(crate) actions: Vec<String>,
    /// The server's capabilities.
    pub(crate) server: ServerInfo,
    /// The schema state.
    pub(crate) state: SchemaState,
}

/// Plans the reconcile step (see [`Plan`]).
pub(crate) async fn plan(
    conn: &mut PgConnection,
    retention_window: Duration,
) -> Result<Plan, ReconcileError> {
    let mut report = ReconcileReport::default();
    let server = ServerInfo::probe(conn).await?;
    extensions(conn, &server, Mode::Plan, &mut report).await?;
    let state = SchemaState::inspect(conn, &server).await?;
    if report.actions.is_empty() {
        schema_steps(
            conn,
            &server,
            &state,
            retention_window,
            Mode::Plan,
            &mut report,
        )
        .await?;
    }
    Ok(Plan {
        actions: report.actions,
        server,
        state,
    })
}

/// TimescaleDB (only when preloaded: otherwise `CREATE EXTENSION` kills the
/// session) and pgvector, when available and not installed.
async fn extensions(
    conn: &mut PgConnection,
    server: &ServerInfo,
    mode: Mode,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileError> {
    if server.timescaledb.installed.is_none()
        && server.timescaledb.available.is_some()
        && server.timescaledb_preloaded
    {
        create_extension(conn, "timescaledb", mode, report).await?;
    }
    if server.vector.installed.is_none() && server.vector.available.is_some() {
        create_extension(conn, "vector", mode, report).await?;
    }
    Ok(())
}

/// Hypertables, retention policies and the vector column.
async fn schema_steps(
    conn: &mut PgConnection,
    server: &ServerInfo,
    state: &SchemaState,
    retention_window: Duration,
    mode: Mode,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileError> {
    if server.timescaledb_usable() {
        hypertables(conn, state, mode, report).await?;
        history_hypertables(conn, state, mode, report).await?;
        if server.timescaledb_license.as_deref() == Some("timescale") {
            retention_policies(conn, state, retention_window, mode, report).await?;
        }
    }
    if server.vector.installed.is_some() {
        vector_column(conn, state, mode, report).await?;
    }
    Ok(())
}

async fn create_extension(
    conn: &mut PgConnection,
    name: &str,
    mode: Mode,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileError> {
    if mode == Mode::Plan {
        report.actions.push(format!("enable extension {name}"));
        return Ok(());
    }
    let statement = format!("CREATE EXTENSION IF NOT EXISTS {name}");
    // A savepoint: `migrate` runs in one transaction, which a refused
    // statement would otherwise abort.
    let mut attempt = conn.begin().await?;
    match sqlx::query(&statement).execute(&mut *attempt).await {
        Ok(_) => {
            attempt.commit().await?;
            report.actions.push(format!("enabled extension {name}"));
        }
        // Typically 42501: the role may not create extensions. Keep going degraded.
        Err(sqlx::Error::Database(e)) => {
            attempt.rollback().await?;
            report.refused.push(format!(
                "could not enable extension {name}: {}",
                e.message()
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn hypertables(
    conn: &mut PgConnection,
    state: &SchemaState,
    mode: Mode,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileError> {
    for table in &state.reading_tables {
        match state.hypertables.iter().find(|(t, _)| t == table) {
            None if mode == Mode::Plan => {
                report
                    .actions
                    .push(format!("make victron.{table} a hypertable"));
            }
            Some((_, interval)) if *interval != CHUNK_INTERVAL_US && mode == Mode::Plan => {
                report
                    .actions
                    .push(format!("give victron.{table} 1-hour chunks"));
            }
            None => {
                let rows: i64 =
                    sqlx::query_scalar(&format!("SELECT count(*) FROM victron.{table}"))
                        .fetch_one(&mut *conn)
                        .await?;
                // The legacy signature works on every TimescaleDB 2.x; the
                // default time index would duplicate idx_*_timestamp.
                sqlx::query(
                    "SELECT create_hypertable($1::regclass, 'timestamp',
                        chunk_time_interval => INTERVAL '1 hour',
                        migrate_data => true, create_default_indexes => false)",
                )
                .bind(format!("victron.{table}"))
                .execute(&mut *conn)
                .await
                .map_err(|source| ReconcileError::Hypertable {
                    table: format!("victron.{table}"),
                    source,
                })?;
                report.actions.push(format!(
                    "victron.{table} is now a hypertable with 1-hour chunks ({rows} existing rows kept)"
                ));
            }
            Some((_, interval)) if *interval != CHUNK_INTERVAL_US => {
                sqlx::query("SELECT set_chunk_time_interval($1::regclass, INTERVAL '1 hour')")
                    .bind(format!("victron.{table}"))
                    .execute(&mut *conn)
                    .await?;
                report.actions.push(format!(
                    "victron.{table}: new chunks now span 1 hour (was {} s)",
                    interval / 1_000_000
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The rollup tables become hypertables on their bucket (their own
/// retention, `history.keep_*_days`, is the daemon's: no policy).
async fn history_hypertables(
    conn: &mut PgConnection,
    state: &SchemaState,
    mode: Mode,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileError> {
    for (table, interval) in HISTORY_TABLES {
        if state.history_hypertables.iter().any(|t| t == table) {
            continue;
        }
        if mode == Mode::Plan {
            report
                .actions
                .push(format!("make victron.{table} a hypertable"));
            continue;
        }
        sqlx::query(&format!(
            "SELECT create_hypertable('victron.{table}'::regclass, 'bucket',
                chunk_time_interval => INTERVAL '{interval}',
                migrate_data => true, create_default_indexes => false)"
        ))
        .execute(&mut *conn)
        .await
        .map_err(|source| ReconcileError::Hypertable {
            table: format!("victron.{table}"),
            source,
        })?;
        report.actions.push(format!(
            "victron.{table} is now a hypertable with {interval} chunks"
        ));
    }
    Ok(())
}

async fn retention_policies(
    conn: &mut PgConnection,
    state: &SchemaState,
    window: Duration,
    mode: Mode,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileError> {
    let hours = window.as_secs() / 3600;
    let wanted = format!("{hours:02}:00:00");
    for (table, _) in &state.hypertables {
        let existing = state.retention_policies.iter().find(|(t, _)| t == table);
        let needs_replacing = match existing {
            Some((_, drop_after)) => !same_interval(drop_after, hours),
            None => true,
        };
        if !needs_replacing {
            continue;
        }
        let relation = format!("victron.{table}");
        if mode == Mode::Plan {
            report
                .actions
                .push(format!("{relation}: set the retention policy to {wanted}"));
            continue;
        }
        if existing.is_some() {
            sqlx::query("SELECT remove_retention_policy($1::regclass, if_exists => true)")
                .bind(&relation)
                .execute(&mut *conn)
                .await?;
        }
        // A savepoint: a refusal must not abort `migrate`'s transaction.
        let mut attempt = conn.begin().await?;
        let added = sqlx::query(
            "SELECT add_retention_policy($1::regclass, drop_after => make_interval(hours => $2))",
        )
        .bind(&relation)
        .bind(i32::try_from(hours).unwrap_or(i32::MAX))
        .execute(&mut *attempt)
        .await;
        match added {
            Ok(_) => {
                attempt.commit().await?;
                report.actions.push(format!(
                    "{relation}: retention policy drops chunks older than {wanted}"
                ));
            }
            // 0A000: refused under the Apache licence; the daemon covers retention.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("0A000") => {
                attempt.rollback().await?;
                report.refused.push(format!(
                    "{relation}: retention policy refused: {}",
                    e.message()
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether a TimescaleDB `drop_after` text (`72:00:00`, `3 days`) equals `hours`.
fn same_interval(drop_after: &str, hours: u64) -> bool {
    let text = drop_after.trim();
    if let Some((h, rest)) = text.split_once(':') {
        return h.parse::<u64>().ok() == Some(hours) && rest == "00:00";
    }
    if let Some(days) = text
        .strip_suffix(" days")
        .or_else(|| text.strip_suffix(" day"))
    {
        return days.parse::<u64>().ok().map(|d| d * 24) == Some(hours);
    }
    false
}

async fn vector_column(
    conn: &mut PgConnection,
    state: &SchemaState,
    mode: Mode,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileError> {
    let Some(column_type) = &state.embedding_type else {
        return Ok(());
    };
    if mode == Mode::Plan {
        if !column_type.starts_with("vector") || state.embedding_index.as_deref() != Some("hnsw") {
            report
                .actions
                .push("give kb_chunks.embedding its vector(1536) type and HNSW index".into());
        }
        return Ok(());
    }
    if !column_type.starts_with("vector") {
        sqlx::query(
            "ALTER TABLE public.kb_chunks
             ALTER COLUMN embedding TYPE vector(1536) USING embedding::vector(1536)",
        )
        .execute(&mut *conn)
        .await
        .map_err(|source| ReconcileError::Embedding {
            from: column_type.to_string(),
            source,
        })?;
        report.actions.push(format!(
            "kb_chunks.embedding converted from {column_type} to vector(1536)"
        ));
    }
    match state.embedding_index.as_deref() {
        Some("hnsw") => {}
        other => {
            if let Some(method) = other {
                // The legacy IVFFlat index was built on an empty table.
                sqlx::query("DROP INDEX public.idx_kb_chunks_embedding")
                    .execute(&mut *conn)
                    .await?;
                report.actions.push(format!(
                    "dropped the {method} index idx_kb_chunks_embedding"
                ));
            }
            sqlx::query(
                "CREATE INDEX IF NOT EXISTS idx_kb_chunks_embedding
                 ON public.kb_chunks USING hnsw (embedding vector_cosine_ops)",
            )
            .execute(&mut *conn)
            .await?;
            report
                .actions
                .push("created HNSW index idx_kb_chunks_embedding (vector_cosine_ops)".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::same_interval;

    #[test]
    fn drop_after_texts_compare_by_hours() {
        assert!(same_interval("72:00:00", 72));
        assert!(same_interval("3 days", 72));
        assert!(same_interval("1 day", 24));
        assert!(!same_interval("48:00:00", 72));
        assert!(!same_interval("72:30:00", 72));
        assert!(!same_interval("garbage", 72));
    }
}
