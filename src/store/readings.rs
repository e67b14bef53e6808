//! Readings in the store: appended in one transaction per batch (values as a
//! JSON array in the order of the reading table's columns), and read back by
//! time for the rollups, `status` and the sites.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::status_doc::upsert_status;
use super::{DeviceCount, LocalStore, StoreError, StoreReader, StoredReading};
use crate::clock::{Mono, boot_id, from_micros};
use crate::reading::{Reading, ReadingTable, Value};

/// Inserts readings (none already stored: same table, device and time) in
/// one statement, in order; returns how many were new.
async fn insert_rows(
    conn: &mut sqlx::SqliteConnection,
    next_seq: &std::sync::atomic::AtomicI64,
    readings: &[&Reading],
) -> Result<u64, sqlx::Error> {
    if readings.is_empty() {
        return Ok(0);
    }
    let first = next_seq.fetch_add(
        i64::try_from(readings.len()).unwrap_or(i64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    let rows: Vec<serde_json::Value> = readings
        .iter()
        .zip(first..)
        .map(|(r, seq)| {
            let moment = r.unconfirmed.map(Mono::nanos);
            serde_json::json!([
                seq,
                r.table.name(),
                r.device,
                r.source.as_str(),
                micros(r.measured_at),
                encode_values(r.table, &r.values),
                &*r.site,
                moment,
                moment.map(|_| boot_id()),
            ])
        })
        .collect();
    Ok(sqlx::query(
        // Only a reading already stored is skipped: a clash of `seq` (which
        // one writer per store never makes) is an error, not a lost reading.
        "INSERT INTO readings (seq, reading_table, device, source, measured_at_us, vals, site, held_mono, held_boot)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6,
                value ->> 7, value ->> 8
         FROM json_each(?) WHERE true ORDER BY key
         ON CONFLICT (measured_at_us, reading_table, device) DO NOTHING",
    )
    .bind(serde_json::Value::Array(rows).to_string())
    .execute(conn)
    .await?
    .rows_affected())
}

/// A time as the store keeps it: microseconds since the Unix epoch.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// The reading table a stored name stands for.
pub(crate) fn table_from_name(name: &str) -> Option<ReadingTable> {
    ReadingTable::ALL.into_iter().find(|t| t.name() == name)
}

/// A reading's values as the store keeps them: a JSON array in the order of
/// its table's columns (`null` for a column without a value, trailing ones
/// left out) — a third of the bytes of an object naming every column, and
/// so fewer pages per commit. (Rows stored as objects are read as well.)
fn encode_values(table: ReadingTable, values: &[(&'static str, Value)]) -> String {
    let columns = table.columns();
    let mut slots = vec![serde_json::Value::Null; columns.len()];
    for (column, value) in values {
        let Some(index) = columns.iter().position(|(c, _)| c == column) else {
            continue;
        };
        slots[index] = match value {
            Value::Float(v) => serde_json::Number::from_f64(*v)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Int(v) => serde_json::Value::from(*v),
            Value::Text(t) => serde_json::Value::from(t.as_ref()),
        };
    }
    while slots.last().is_some_and(serde_json::Value::is_null) {
        slots.pop();
    }
    serde_json::Value::Array(slots).to_string()
}

impl LocalStore {
    /// Commits readings in one transaction; a reading already stored (same
    /// table, device and time) is ignored. Returns how many were new.
    ///
    /// One statement for the whole batch (its rows as one JSON array), and
    /// without a status document to save nor readings held for their time
    /// no explicit transaction either: a single statement is its own, so a
    /// batch costs one round trip to SQLite's thread and one commit.
    pub async fn append(&self, readings: &[Reading]) -> Result<u64, StoreError> {
        let (held, confirmed): (Vec<&Reading>, Vec<&Reading>) =
            readings.iter().partition(|r| r.unconfirmed.is_some());
        let staged = self.take_staged_status();
        let (added, held) = if held.is_empty() && staged.is_none() {
            let mut conn = self.pool().acquire().await?;
            match insert_rows(&mut conn, &self.next_seq, &confirmed).await {
                Ok(added) => (added, 0),
                Err(error) => {
                    // Not back into the pool: see `write`.
                    conn.close_on_drop();
                    return Err(error.into());
                }
            }
        } else {
            let written = async {
                let mut tx = super::write::WriteTx::begin(&self.pool()).await?;
                let added = insert_rows(tx.conn(), &self.next_seq, &confirmed).await?;
                let held = insert_rows(tx.conn(), &self.next_seq, &held).await?;
                if let Some(status) = &staged {
                    upsert_status(status).execute(tx.conn()).await?;
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>((added, held))
            }
            .await;
            match written {
                Ok(counts) => counts,
                Err(error) => {
                    self.restage(staged);
                    return Err(error.into());
                }
            }
        };
        if added == u64::try_from(confirmed.len()).unwrap_or(u64::MAX) {
            let oldest_us = confirmed
                .iter()
                .map(|r| micros(r.measured_at))
                .min()
                .unwrap_or(i64::MAX);
            self.count_appended(added, oldest_us);
        } else {
            // Some were stored already: which is the oldest now is not known.
            self.count_waiting(i64::try_from(added).unwrap_or(i64::MAX));
        }
        self.held.fetch_add(
            i64::try_from(held).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(added + held)
    }
}

impl StoreReader {
    /// The latest reading of a device, if any.
    pub async fn latest(&self, device: &str) -> Result<Option<StoredReading>, StoreError> {
        let found = self
            .select(
                "WHERE device = ?3 ORDER BY measured_at_us DESC LIMIT ?2",
                0,
                1,
                device,
            )
            .await?;
        Ok(found.into_iter().next())
    }

    /// Every confirmed reading measured in `[from, to)`, in time order (by
    /// the time index: a span of minutes costs what its rows cost, however
    /// long the store's backlog).
    pub async fn readings_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let tail = format!(
            "WHERE measured_at_us >= ?1 AND measured_at_us < {} AND held_mono IS NULL
             ORDER BY measured_at_us, seq LIMIT ?2",
            micros(to)
        );
        self.select(&tail, micros(from), i64::MAX, "").await
    }

    /// Every confirmed reading of `device` measured in `[from, to)`, in
    /// time order (only its rows are parsed).
    pub(crate) async fn device_between(
        &self,
        device: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let tail = format!(
            "WHERE measured_at_us >= ?1 AND measured_at_us < {} AND device = ?3 AND held_mono IS NULL
             ORDER BY measured_at_us LIMIT ?2",
            micros(to)
        );
        self.select(&tail, micros(from), i64::MAX, device).await
    }

    /// Readings matching `tail` (binds: ?1 an i64, ?2 a limit, ?3 a text).
    /// They come back as one row of JSON: sqlx's SQLite driver hands rows
    /// over one by one between threads, which costs far more than parsing.
    pub(super) async fn select(
        &self,
        tail: &str,
        number: i64,
        limit: i64,
        text: &str,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let sql = format!(
            "SELECT json_group_array(json_array(seq, reading_table, device, source, measured_at_us, json(vals), site))
             FROM (SELECT * FROM readings {tail})"
        );
        let json: Option<String> = sqlx::query_scalar(&sql)
            .bind(number)
            .bind(limit)
            .bind(text)
            .fetch_one(&self.pool())
            .await?;
        let Some(json) = json else {
            return Ok(Vec::new());
        };
        super::rows::parse(&json, &self.legacy_site)
            .map_err(|e| StoreError::Sql(sqlx::Error::Decode(Box::new(e))))
    }

    /// The sites of the stored readings (a reading stored before sites were
    /// recorded is the legacy site's).
    pub(crate) async fn sites(&self) -> Result<Vec<String>, StoreError> {
        let sites: Vec<Option<String>> =
            sqlx::query_scalar("SELECT DISTINCT site FROM readings ORDER BY 1")
                .fetch_all(&self.pool())
                .await?;
        let mut sites: Vec<String> = sites
            .into_iter()
            .map(|s| s.unwrap_or_else(|| self.legacy_site.to_string()))
            .collect();
        sites.sort();
        sites.dedup();
        Ok(sites)
    }

    /// When the first confirmed reading measured at or after `at` was
    /// measured.
    pub(crate) async fn next_confirmed(
        &self,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(measured_at_us) FROM readings WHERE measured_at_us >= ? AND held_mono IS NULL",
        )
        .bind(micros(at))
        .fetch_one(&self.pool())
        .await?;
        Ok(next.map(from_micros))
    }

    /// When the oldest confirmed reading was measured.
    pub(crate) async fn oldest_confirmed(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT min(measured_at_us) FROM readings WHERE held_mono IS NULL")
                .fetch_one(&self.pool())
                .await?;
        Ok(oldest.map(from_micros))
    }

    /// Readings per table and device since `since` (embedded status).
    pub(crate) async fn counts_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<DeviceCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT reading_table, device, count(*), max(measured_at_us) FROM readings
             WHERE measured_at_us >= ? GROUP BY reading_table, device ORDER BY reading_table, device",
        )
        .bind(micros(since))
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DeviceCount {
                table: r.get(0),
                device: r.get(1),
                readings: r.get(2),
                newest: from_micros(r.get(3)),
            })
            .collect())
    }
}
