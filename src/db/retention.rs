//! Retention in PostgreSQL, for each server flavour: on TimescaleDB (either
//! licence) drop whole chunks older than the window (`drop_chunks`; under
//! the TSL licence the retention policy covers it too); on plain PostgreSQL
//! delete expired rows in bounded batches. The outcome is recorded in the
//! status row by [`super::status_rows::record_retention`]. The rollups
//! have their own retention ([`crate::history::postgres::expire`]).

use std::time::Duration;

use sqlx::PgPool;

use super::server::{StorageMode, reading_table_names};

/// What one retention run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Rows deleted (plain PostgreSQL).
    pub rows: u64,
    /// Chunks dropped (TimescaleDB).
    pub chunks: u64,
}

/// Rows deleted per statement on plain PostgreSQL.
pub(crate) const DELETE_BATCH: i64 = 10_000;

/// Removes readings older than `window` from the four reading tables.
pub async fn run(
    pool: &PgPool,
    mode: StorageMode,
    window: Duration,
) -> Result<RetentionOutcome, sqlx::Error> {
    let window_s = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    let mut outcome = RetentionOutcome::default();
    for table in reading_table_names() {
        match mode {
            StorageMode::TimescaleDb | StorageMode::TimescaleDbApache => {
                let dropped: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM drop_chunks($1::regclass, older_than => now() - make_interval(secs => $2))",
                )
                .bind(format!("victron.{table}"))
                .bind(window_s as f64)
                .fetch_one(pool)
                .await?;
                outcome.chunks += u64::try_from(dropped).unwrap_or(0);
            }
            StorageMode::Postgres => loop {
                let deleted = sqlx::query(&format!(
                    "DELETE FROM victron.{table} WHERE ctid IN (
                         SELECT ctid FROM victron.{table}
                         WHERE \"timestamp\" < now() - make_interval(secs => $1) LIMIT $2)"
                ))
                .bind(window_s as f64)
                .bind(DELETE_BATCH)
                .execute(pool)
                .await?
                .rows_affected();
                outcome.rows += deleted;
                if deleted < DELETE_BATCH as u64 {
                    break;
                }
            },
        }
    }
    Ok(outcome)
}
