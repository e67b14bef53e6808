//! The daemon's status document: saved in the store's `status` table,
//! staged to ride with the next batch's commit, and read back by `status`.

use chrono::{DateTime, Utc};

use sqlx::Row;

use super::{LocalStore, StoreError, StoreReader, micros};
use crate::clock::from_micros;

/// The name the daemon saves its [`crate::report::Snapshot`] under.
pub const STATUS_NAME: &str = "daemon";

/// A status document staged by [`LocalStore::stage_status`].
#[derive(Debug)]
pub(super) struct StagedStatus {
    name: String,
    doc: String,
    at_us: i64,
}

/// The statement that saves a status document.
pub(super) fn upsert_status(
    status: &StagedStatus,
) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
    sqlx::query(
        "INSERT INTO status (name, doc, updated_at_us) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, updated_at_us = excluded.updated_at_us",
    )
    .bind(&status.name)
    .bind(&status.doc)
    .bind(status.at_us)
}

impl LocalStore {
    /// Stages a status document: the next [`Self::append`] commits it in its
    /// own transaction, so that the document costs no commit (no fsync) of
    /// its own; [`Self::flush_status`] commits one no batch took. A newer
    /// staged document replaces an older one.
    pub fn stage_status(&self, name: &str, doc: &serde_json::Value) {
        let staged = StagedStatus {
            name: name.to_string(),
            doc: doc.to_string(),
            at_us: micros(Utc::now()),
        };
        *self.staged_status.lock().unwrap_or_else(|p| p.into_inner()) = Some(staged);
    }

    /// Commits the staged status document, if no batch took it. Returns
    /// whether there was one.
    pub async fn flush_status(&self) -> Result<bool, StoreError> {
        let Some(status) = self.take_staged_status() else {
            return Ok(false);
        };
        if let Err(error) = super::write::execute(&self.pool(), upsert_status(&status)).await {
            self.restage(Some(status));
            return Err(error.into());
        }
        Ok(true)
    }

    pub(super) fn take_staged_status(&self) -> Option<StagedStatus> {
        self.staged_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Puts back a staged document a failed commit did not write, unless a
    /// newer one was staged meanwhile.
    pub(super) fn restage(&self, status: Option<StagedStatus>) {
        let mut slot = self.staged_status.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = status;
        }
    }
}

impl StoreReader {
    /// Loads a named status document and when it was saved.
    pub async fn load_status(
        &self,
        name: &str,
    ) -> Result<Option<(serde_json::Value, DateTime<Utc>)>, StoreError> {
        let row = sqlx::query("SELECT doc, updated_at_us FROM status WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool())
            .await?;
        Ok(row.and_then(|r| {
            let doc = serde_json::from_str(r.get::<&str, _>(0)).ok()?;
            Some((doc, from_micros(r.get(1))))
        }))
    }
}
