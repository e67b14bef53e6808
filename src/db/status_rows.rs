//! Every write of the status rows: the singleton `victron.polling_status`
//! (the poller's state, and the last retention run) and
//! `victron.device_status` (one row per device). The daemon decides what
//! goes in them; this module is the only one that writes them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::db::server::StorageMode;
use crate::retention::RetentionOutcome;
use crate::status::DeviceStatus;

/// What the singleton row says about the poller.
#[derive(Debug, Clone)]
pub struct PollerRow {
    /// The latest poll attempt of any device.
    pub last_attempt: Option<DateTime<Utc>>,
    /// The latest successful poll of any device.
    pub last_success: Option<DateTime<Utc>>,
    /// The first failing device's error, `device: error`.
    pub last_error: Option<String>,
    /// The most consecutive failures of any device.
    pub consecutive_failures: u32,
    /// Every device answers, and the poller runs.
    pub healthy: bool,
    /// The host the poller runs on.
    pub host: String,
    /// The poller's version.
    pub version: &'static str,
    /// When the poller started.
    pub started_at: DateTime<Utc>,
    /// When it stopped cleanly; `None` while it runs.
    pub stopped_at: Option<DateTime<Utc>>,
    /// The shortest poll interval.
    pub poll_interval: Duration,
    /// Devices this poller reports.
    pub devices_configured: usize,
    /// Of them, those answering.
    pub devices_healthy: usize,
    /// Rows in the last forwarded batch.
    pub rows_last_batch: u64,
    /// Rows forwarded since start.
    pub rows_total: u64,
    /// Readings waiting in the local store.
    pub spool_depth: i64,
    /// Age of the oldest of them, in seconds.
    pub spool_oldest_age_s: Option<f64>,
    /// The raw readings' retention window.
    pub retention_window: Duration,
    /// How readings are stored.
    pub storage_mode: StorageMode,
}

fn int(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

fn big(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Upserts the singleton and every device's row in one bounded transaction
/// (a slow database never holds the caller for long).
pub async fn write(
    pool: &PgPool,
    poller: &PollerRow,
    devices: &[DeviceStatus],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO victron.polling_status (id, last_poll_attempt, last_successful_poll, last_error,
             consecutive_failures, is_healthy, poller_host, poller_version, poller_started_at,
             poll_interval_ms, devices_configured, devices_healthy, rows_written_last_batch,
             rows_written_total, spool_depth, spool_oldest_age_s, retention_window_s, storage_mode,
             poller_stopped_at)
         VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
         ON CONFLICT (id) DO UPDATE SET last_poll_attempt = excluded.last_poll_attempt,
             last_successful_poll = excluded.last_successful_poll, last_error = excluded.last_error,
             consecutive_failures = excluded.consecutive_failures, is_healthy = excluded.is_healthy,
             poller_host = excluded.poller_host, poller_version = excluded.poller_version,
             poller_started_at = excluded.poller_started_at, poll_interval_ms = excluded.poll_interval_ms,
             devices_configured = excluded.devices_configured, devices_healthy = excluded.devices_healthy,
             rows_written_last_batch = excluded.rows_written_last_batch,
             rows_written_total = excluded.rows_written_total, spool_depth = excluded.spool_depth,
             spool_oldest_age_s = excluded.spool_oldest_age_s, retention_window_s = excluded.retention_window_s,
             storage_mode = excluded.storage_mode, poller_stopped_at = excluded.poller_stopped_at"
    )
    .bind(poller.last_attempt)
    .bind(poller.last_success)
    .bind(&poller.last_error)
    .bind(int(poller.consecutive_failures))
    .bind(poller.healthy)
    .bind(&poller.host)
    .bind(poller.version)
    .bind(poller.started_at)
    .bind(int(poller.poll_interval.as_millis()))
    .bind(int(poller.devices_configured))
    .bind(int(poller.devices_healthy))
    .bind(int(poller.rows_last_batch))
    .bind(big(poller.rows_total))
    .bind(poller.spool_depth)
    .bind(poller.spool_oldest_age_s)
    .bind(big(poller.retention_window.as_secs()))
    .bind(poller.storage_mode.as_str())
    .bind(poller.stopped_at)
    .execute(&mut *tx)
    .await?;
    for d in devices {
        sqlx::query(
            "INSERT INTO victron.device_status (device, source, address, product_id, product_name, serial,
                 firmware, last_attempt, last_success, last_error, last_error_class, consecutive_failures,
                 backoff_ms, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now())
             ON CONFLICT (device) DO UPDATE SET source = excluded.source, address = excluded.address,
                 product_id = excluded.product_id, product_name = excluded.product_name,
                 serial = excluded.serial, firmware = excluded.firmware,
                 last_attempt = excluded.last_attempt, last_success = excluded.last_success,
                 last_error = excluded.last_error, last_error_class = excluded.last_error_class,
                 consecutive_failures = excluded.consecutive_failures, backoff_ms = excluded.backoff_ms,
                 updated_at = now()"
        )
        .bind(&d.device)
        .bind(d.source.as_str())
        .bind(&d.address)
        .bind(d.product_id.and_then(|p| i32::try_from(p).ok()))
        .bind(&d.product_name)
        .bind(&d.serial)
        .bind(&d.firmware)
        .bind(d.last_attempt)
        .bind(d.last_success)
        .bind(&d.last_error)
        .bind(d.last_error_class.map(|c| c.as_str()))
        .bind(int(d.consecutive_failures))
        .bind(big(d.backoff.as_millis()))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Records a retention run in `victron.polling_status`.
pub async fn record_retention(
    pool: &PgPool,
    at: DateTime<Utc>,
    result: &Result<RetentionOutcome, sqlx::Error>,
    window: Duration,
) -> Result<(), sqlx::Error> {
    let (rows, chunks, error) = match result {
        Ok(o) => (Some(o.rows as i64), Some(o.chunks as i32), None),
        Err(e) => (None, None, Some(e.to_string())),
    };
    sqlx::query(
        "INSERT INTO victron.polling_status (id, last_retention_run, last_retention_rows_dropped,
             last_retention_chunks_dropped, last_retention_error, retention_window_s)
         VALUES (1, $1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET last_retention_run = excluded.last_retention_run,
             last_retention_rows_dropped = excluded.last_retention_rows_dropped,
             last_retention_chunks_dropped = excluded.last_retention_chunks_dropped,
             last_retention_error = excluded.last_retention_error,
             retention_window_s = excluded.retention_window_s",
    )
    .bind(at)
    .bind(rows)
    .bind(chunks)
    .bind(error)
    .bind(i64::try_from(window.as_secs()).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}
