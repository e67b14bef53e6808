//! The status rows: the singleton `victron.polling_status` (the poller's
//! state, and the last retention run), `victron.device_status` (one row per
//! device), and the operator's `victron.polling_status_view` over them. The
//! daemon decides what goes in them; this module is the only one that
//! writes them, and `status` reads them through it, typed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Executor as _, PgPool, Row as _};

use super::retention::RetentionOutcome;
use crate::db::server::StorageMode;
use crate::reading::SourceKind;
use crate::status::DeviceStatus;

/// What the singleton row says about the poller.
#[derive(Debug, Clone)]
pub(crate) struct PollerRow {
    /// The latest poll attempt of any device.
    pub(crate) last_attempt: Option<DateTime<Utc>>,
    /// The latest successful poll of any device.
    pub(crate) last_success: Option<DateTime<Utc>>,
    /// The first failing device's error, `device: error`.
    pub(crate) last_error: Option<String>,
    /// The most consecutive failures of any device.
    pub(crate) consecutive_failures: u32,
    /// Every device answers, and the poller runs.
    pub(crate) healthy: bool,
    /// The host the poller runs on.
    pub(crate) host: String,
    /// The poller's version.
    pub(crate) version: &'static str,
    /// When the poller started.
    pub(crate) started_at: DateTime<Utc>,
    /// When it stopped cleanly; `None` while it runs.
    pub(crate) stopped_at: Option<DateTime<Utc>>,
    /// The shortest poll interval.
    pub(crate) poll_interval: Duration,
    /// Devices this poller reports.
    pub(crate) devices_configured: usize,
    /// Of them, those answering.
    pub(crate) devices_healthy: usize,
    /// Rows in the last forwarded batch.
    pub(crate) rows_last_batch: u64,
    /// Rows forwarded since start.
    pub(crate) rows_total: u64,
    /// Readings waiting in the local store.
    pub(crate) spool_depth: i64,
    /// Age of the oldest of them, in seconds.
    pub(crate) spool_oldest_age_s: Option<f64>,
    /// The raw readings' retention window.
    pub(crate) retention_window: Duration,
    /// How readings are stored.
    pub(crate) storage_mode: StorageMode,
    /// Where measurement times come from ([`crate::clock::Basis`]).
    pub(crate) clock: &'static str,
    /// The local clock minus its best reference (s).
    pub(crate) clock_offset_s: Option<f64>,
    /// Readings waiting in the local store for their time.
    pub(crate) held_readings: i64,
    /// How often the rows are rewritten while only their times and counts
    /// change (what the views' `is_stale` allows for).
    pub(crate) status_every: Duration,
}

fn int(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

fn big(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// One site's status row and the rows of its devices this daemon polls.
#[derive(Debug, Clone)]
pub(crate) struct SiteRows {
    /// The site (`installation_id`; `""` for none).
    pub(crate) site: String,
    /// The site's status.
    pub(crate) status: PollerRow,
    /// Its devices this daemon polls.
    pub(crate) devices: Vec<DeviceStatus>,
}

/// Upserts each site's row and its devices' rows, then recomputes the
/// singleton from every site's row, in one bounded transaction (a slow
/// database never holds the caller for long). The singleton's row lock is
/// taken first, so writers of other sites wait their turn and each
/// recomputation sees every committed site row.
pub(crate) async fn write(pool: &PgPool, sites: &[SiteRows]) -> Result<(), sqlx::Error> {
    // Three round trips (each one is a gateway's CPU): one opens the transaction, bounds it and takes the
    // lock; one per site writes its rows; one recomputes the singleton and
    // commits.
    let mut open = RawTransaction {
        connection: pool.acquire().await?,
        ended: false,
    };
    // A text without parameters goes as a simple query: several statements
    // in one message.
    open.connection
        .execute(
            "BEGIN; SET LOCAL statement_timeout = '5s';
             SELECT 1 FROM victron.polling_status WHERE id = 1 FOR UPDATE",
        )
        .await?;
    for site in sites {
        write_site(&mut open.connection, site).await?;
    }
    open.connection.execute(SINGLETON_AND_COMMIT).await?;
    open.ended = true;
    Ok(())
}

/// A pool connection in a transaction opened by hand (so that its last
/// statement and the `COMMIT` go in one round trip): unless the
/// transaction ended, the connection is closed when this is dropped, never
/// returned to the pool mid-transaction (an error, a caller's timeout).
struct RawTransaction {
    connection: sqlx::pool::PoolConnection<sqlx::Postgres>,
    ended: bool,
}

impl Drop for RawTransaction {
    fn drop(&mut self) {
        if !self.ended {
            self.connection.close_on_drop();
        }
    }
}

async fn write_site(tx: &mut sqlx::PgConnection, site: &SiteRows) -> Result<(), sqlx::Error> {
    let poller = &site.status;
    let devices = &site.devices;
    // The site's row and every device's row in one statement: one round
    // trip, however many devices.
    sqlx::query(
        "WITH site AS (INSERT INTO victron.site_status (installation_id, last_poll_attempt, last_successful_poll,
             last_error, consecutive_failures, is_healthy, poller_host, poller_version,
             poller_started_at, poll_interval_ms, devices_configured, devices_healthy,
             rows_written_last_batch, rows_written_total, spool_depth, spool_oldest_age_s,
             retention_window_s, storage_mode, poller_stopped_at, clock, clock_offset_s, held_readings,
             status_every_ms, updated_at)
         VALUES ($19, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
             $20, $21, $22, $36, now())
         ON CONFLICT (installation_id) DO UPDATE SET last_poll_attempt = excluded.last_poll_attempt,
             last_successful_poll = excluded.last_successful_poll, last_error = excluded.last_error,
             consecutive_failures = excluded.consecutive_failures, is_healthy = excluded.is_healthy,
             poller_host = excluded.poller_host, poller_version = excluded.poller_version,
             poller_started_at = excluded.poller_started_at, poll_interval_ms = excluded.poll_interval_ms,
             devices_configured = excluded.devices_configured, devices_healthy = excluded.devices_healthy,
             rows_written_last_batch = excluded.rows_written_last_batch,
             rows_written_total = excluded.rows_written_total, spool_depth = excluded.spool_depth,
             spool_oldest_age_s = excluded.spool_oldest_age_s, retention_window_s = excluded.retention_window_s,
             storage_mode = excluded.storage_mode, poller_stopped_at = excluded.poller_stopped_at,
             clock = excluded.clock, clock_offset_s = excluded.clock_offset_s,
             held_readings = excluded.held_readings, status_every_ms = excluded.status_every_ms,
             updated_at = now())
         INSERT INTO victron.device_status (device, source, address, product_id, product_name, serial,
             firmware, last_attempt, last_success, last_error, last_error_class, consecutive_failures,
             backoff_ms, installation_id, updated_at)
         SELECT d.*, $19, now() FROM UNNEST($23::text[], $24::text[], $25::text[], $26::int[], $27::text[],
             $28::text[], $29::text[], $30::timestamptz[], $31::timestamptz[], $32::text[], $33::text[],
             $34::int[], $35::bigint[]) AS d
         ON CONFLICT (installation_id, device) DO UPDATE SET source = excluded.source, address = excluded.address,
             product_id = excluded.product_id, product_name = excluded.product_name,
             serial = excluded.serial, firmware = excluded.firmware,
             last_attempt = excluded.last_attempt, last_success = excluded.last_success,
             last_error = excluded.last_error, last_error_class = excluded.last_error_class,
             consecutive_failures = excluded.consecutive_failures, backoff_ms = excluded.backoff_ms,
             updated_at = now()",
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
    .bind(&site.site)
    .bind(poller.clock)
    .bind(poller.clock_offset_s)
    .bind(poller.held_readings)
    .bind(devices.iter().map(|d| d.device.as_str()).collect::<Vec<_>>())
    .bind(devices.iter().map(|d| d.source.as_str()).collect::<Vec<_>>())
    .bind(devices.iter().map(|d| d.address.as_str()).collect::<Vec<_>>())
    .bind(
        devices
            .iter()
            .map(|d| d.product_id.and_then(|p| i32::try_from(p).ok()))
            .collect::<Vec<_>>(),
    )
    .bind(devices.iter().map(|d| d.product_name.as_deref()).collect::<Vec<_>>())
    .bind(devices.iter().map(|d| d.serial.as_deref()).collect::<Vec<_>>())
    .bind(devices.iter().map(|d| d.firmware.as_deref()).collect::<Vec<_>>())
    .bind(devices.iter().map(|d| d.last_attempt).collect::<Vec<_>>())
    .bind(devices.iter().map(|d| d.last_success).collect::<Vec<_>>())
    .bind(devices.iter().map(|d| d.last_error.as_deref()).collect::<Vec<_>>())
    .bind(
        devices
            .iter()
            .map(|d| d.last_error_class.map(|c| c.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(devices.iter().map(|d| int(d.consecutive_failures)).collect::<Vec<_>>())
    .bind(devices.iter().map(|d| big(d.backoff.as_millis())).collect::<Vec<_>>())
    .bind(int(poller.status_every.as_millis()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The singleton as the sum of every site's row, and the commit: healthy only when every
/// site is, the oldest last success (the worst age), sums of counts; its
/// error names the first unhealthy site. The retention columns are the
/// retention job's and stay as they are.
const SINGLETON_AND_COMMIT: &str = "
INSERT INTO victron.polling_status (id, last_poll_attempt, last_successful_poll, last_error,
    consecutive_failures, is_healthy, poller_host, poller_version, poller_started_at,
    poller_stopped_at, poll_interval_ms, devices_configured, devices_healthy,
    rows_written_last_batch, rows_written_total, spool_depth, spool_oldest_age_s,
    retention_window_s, storage_mode, clock, clock_offset_s, held_readings, status_every_ms)
SELECT 1, max(last_poll_attempt), min(last_successful_poll),
    (SELECT CASE WHEN u.installation_id = '' THEN '' ELSE u.installation_id || ': ' END
            || coalesce(u.last_error,
                        CASE WHEN u.poller_stopped_at IS NOT NULL THEN 'the daemon stopped'
                             ELSE 'not every device answers' END)
       FROM victron.site_status u WHERE NOT u.is_healthy ORDER BY u.installation_id LIMIT 1),
    coalesce(max(consecutive_failures), 0), coalesce(bool_and(is_healthy), false),
    CASE WHEN count(DISTINCT poller_host) <= 1 THEN max(poller_host)
         ELSE count(DISTINCT poller_host) || ' hosts' END,
    max(poller_version), min(poller_started_at),
    CASE WHEN bool_and(poller_stopped_at IS NOT NULL) THEN max(poller_stopped_at) END,
    min(poll_interval_ms), sum(devices_configured)::int, sum(devices_healthy)::int,
    sum(rows_written_last_batch)::int, sum(rows_written_total)::bigint, sum(spool_depth)::bigint,
    max(spool_oldest_age_s), max(retention_window_s), max(storage_mode),
    (SELECT c.clock FROM victron.site_status c WHERE c.clock IS NOT NULL
       ORDER BY CASE c.clock WHEN 'held' THEN 0 WHEN 'carried' THEN 1 WHEN 'database' THEN 2
                             WHEN 'gx' THEN 3 ELSE 4 END LIMIT 1),
    (SELECT c.clock_offset_s FROM victron.site_status c
       ORDER BY abs(c.clock_offset_s) DESC NULLS LAST LIMIT 1),
    sum(held_readings)::bigint, max(status_every_ms)
FROM victron.site_status
ON CONFLICT (id) DO UPDATE SET last_poll_attempt = excluded.last_poll_attempt,
    last_successful_poll = excluded.last_successful_poll, last_error = excluded.last_error,
    consecutive_failures = excluded.consecutive_failures, is_healthy = excluded.is_healthy,
    poller_host = excluded.poller_host, poller_version = excluded.poller_version,
    poller_started_at = excluded.poller_started_at, poller_stopped_at = excluded.poller_stopped_at,
    poll_interval_ms = excluded.poll_interval_ms, devices_configured = excluded.devices_configured,
    devices_healthy = excluded.devices_healthy, rows_written_last_batch = excluded.rows_written_last_batch,
    rows_written_total = excluded.rows_written_total, spool_depth = excluded.spool_depth,
    spool_oldest_age_s = excluded.spool_oldest_age_s, retention_window_s = excluded.retention_window_s,
    storage_mode = excluded.storage_mode, clock = excluded.clock,
    clock_offset_s = excluded.clock_offset_s, held_readings = excluded.held_readings,
    status_every_ms = excluded.status_every_ms;
COMMIT";

/// Records a retention run in `victron.polling_status`, at the server's
/// time (the clock retention's cutoff is on).
pub async fn record_retention(
    pool: &PgPool,
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
         VALUES (1, now(), $1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET last_retention_run = excluded.last_retention_run,
             last_retention_rows_dropped = excluded.last_retention_rows_dropped,
             last_retention_chunks_dropped = excluded.last_retention_chunks_dropped,
             last_retention_error = excluded.last_retention_error,
             retention_window_s = excluded.retention_window_s",
    )
    .bind(rows)
    .bind(chunks)
    .bind(error)
    .bind(i64::try_from(window.as_secs()).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// A row of `victron.polling_status_view`, as `status` reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PollerView {
    /// The site, in a row of `site_status_view` (absent from the singleton's).
    #[serde(default)]
    pub(crate) installation_id: Option<String>,
    /// Always 1: the singleton.
    pub(crate) id: Option<i64>,
    /// Every device answered at the last write, and the poller runs.
    pub(crate) is_healthy: Option<bool>,
    /// The latest poll attempt of any device.
    pub(crate) last_poll_attempt: Option<DateTime<Utc>>,
    /// The latest successful poll of any device.
    pub(crate) last_successful_poll: Option<DateTime<Utc>>,
    /// Seconds since then.
    pub(crate) seconds_since_last_success: Option<f64>,
    /// No successful poll for 2 poll intervals plus the longer of a poll
    /// interval and the rows' rewrite period (3 poll intervals, when the
    /// rows are rewritten every poll).
    pub(crate) is_stale: Option<bool>,
    /// The first failing device's error.
    pub(crate) last_error: Option<String>,
    /// The most consecutive failures of any device.
    pub(crate) consecutive_failures: Option<i64>,
    /// The shortest poll interval.
    pub(crate) poll_interval_ms: Option<i64>,
    /// Devices the poller reports.
    pub(crate) devices_configured: Option<i64>,
    /// Of them, those answering at the last write.
    pub(crate) devices_healthy: Option<i64>,
    /// Device rows failing or never polled.
    pub(crate) devices_unhealthy: Option<i64>,
    /// Readings measured in the last hour.
    pub(crate) readings_last_hour: Option<i64>,
    /// Readings measured in the last 24 h.
    pub(crate) readings_last_24h: Option<i64>,
    /// What the poller could have taken in the part of those 24 h it ran.
    pub(crate) expected_readings_24h: Option<i64>,
    /// The one as a percentage of the other.
    pub(crate) collection_health_pct: Option<f64>,
    /// The newest reading.
    pub(crate) newest_reading_at: Option<DateTime<Utc>>,
    /// The oldest reading.
    pub(crate) oldest_reading_at: Option<DateTime<Utc>>,
    /// Its age, in seconds.
    pub(crate) oldest_reading_age_s: Option<f64>,
    /// Rows in the last forwarded batch.
    pub(crate) rows_written_last_batch: Option<i64>,
    /// Rows forwarded since the poller started.
    pub(crate) rows_written_total: Option<i64>,
    /// Readings waiting in the local store.
    pub(crate) spool_depth: Option<i64>,
    /// Age of the oldest of them, in seconds.
    pub(crate) spool_oldest_age_s: Option<f64>,
    /// `timescaledb`, `timescaledb-apache` or `postgres`.
    pub(crate) storage_mode: Option<String>,
    /// Reading tables that are hypertables.
    pub(crate) reading_hypertables: Option<i64>,
    /// Reading tables with a TimescaleDB retention policy.
    pub(crate) retention_policies: Option<i64>,
    /// The raw readings' retention window.
    pub(crate) retention_window_s: Option<i64>,
    /// When retention last ran.
    pub(crate) last_retention_run: Option<DateTime<Utc>>,
    /// Rows it deleted (plain PostgreSQL).
    pub(crate) last_retention_rows_dropped: Option<i64>,
    /// Chunks it dropped (TimescaleDB).
    pub(crate) last_retention_chunks_dropped: Option<i64>,
    /// Its error, if it failed.
    pub(crate) last_retention_error: Option<String>,
    /// The poller's host.
    pub(crate) poller_host: Option<String>,
    /// The poller's version.
    pub(crate) poller_version: Option<String>,
    /// When the poller started; `None` before any daemon wrote.
    pub(crate) poller_started_at: Option<DateTime<Utc>>,
    /// Legacy: requests in the current hour (the VRM poller's).
    pub(crate) requests_this_hour: Option<i64>,
    /// Legacy: when that hour started.
    pub(crate) hour_window_start: Option<DateTime<Utc>>,
    /// When the row was last written.
    pub(crate) updated_at: Option<DateTime<Utc>>,
    /// When the poller stopped cleanly; `None` while it runs.
    pub(crate) poller_stopped_at: Option<DateTime<Utc>>,
    /// A poller has started and not stopped.
    pub(crate) is_running: Option<bool>,
    /// Sites with a status row.
    #[serde(default)]
    pub(crate) sites: Option<i64>,
    /// Of them, those not healthy or stale.
    #[serde(default)]
    pub(crate) sites_unhealthy: Option<i64>,
    /// Where measurement times come from (the worst site's, in the
    /// singleton): `local`, `gx`, `database`, `carried` or `held`.
    #[serde(default)]
    pub(crate) clock: Option<String>,
    /// The local clock minus its best reference (s; the largest, in the
    /// singleton).
    #[serde(default)]
    pub(crate) clock_offset_s: Option<f64>,
    /// Readings waiting in the local store for their time.
    #[serde(default)]
    pub(crate) held_readings: Option<i64>,
}

/// What `status` reads: the operator's view, one row per site, and the
/// device rows with their sites.
#[derive(Debug, Clone, Default)]
pub(crate) struct StatusRows {
    /// `polling_status_view`, or with a site given that site's row of
    /// `site_status_view`; `None` when missing.
    pub(crate) poller: Option<PollerView>,
    /// Every site's row of `site_status_view` (only the one given).
    pub(crate) sites: Vec<PollerView>,
    /// The device rows, with their site.
    pub(crate) devices: Vec<(String, DeviceStatus)>,
}

/// Reads the status rows: of every site, or of `site` only.
pub(crate) async fn read(
    conn: &mut sqlx::PgConnection,
    site: Option<&str>,
) -> Result<StatusRows, sqlx::Error> {
    let sites: Vec<sqlx::types::Json<PollerView>> = sqlx::query_scalar(
        "SELECT row_to_json(v) FROM victron.site_status_view v
         WHERE $1::text IS NULL OR installation_id = $1 ORDER BY installation_id",
    )
    .bind(site)
    .fetch_all(&mut *conn)
    .await?;
    let sites: Vec<PollerView> = sites.into_iter().map(|v| v.0).collect();
    let poller = match site {
        Some(_) => sites.first().cloned(),
        None => {
            let view: Option<sqlx::types::Json<PollerView>> =
                sqlx::query_scalar("SELECT row_to_json(v) FROM victron.polling_status_view v")
                    .fetch_optional(&mut *conn)
                    .await?;
            view.map(|v| v.0)
        }
    };
    let rows = sqlx::query(
        "SELECT device, source, address, product_id, product_name, serial, firmware,
                last_attempt, last_success, last_error, last_error_class,
                consecutive_failures, backoff_ms, installation_id
         FROM victron.device_status
         WHERE $1::text IS NULL OR installation_id = $1
         ORDER BY installation_id, device",
    )
    .bind(site)
    .fetch_all(&mut *conn)
    .await?;
    let devices = rows
        .iter()
        .map(|row| {
            let text = |name: &str| row.try_get::<Option<String>, _>(name).ok().flatten();
            let status = DeviceStatus {
                device: text("device").unwrap_or_default(),
                source: named(text("source")).unwrap_or(SourceKind::Modbus),
                address: text("address").unwrap_or_default(),
                product_id: row
                    .try_get::<Option<i32>, _>("product_id")
                    .ok()
                    .flatten()
                    .map(i64::from),
                product_name: text("product_name"),
                serial: text("serial"),
                firmware: text("firmware"),
                last_attempt: row.try_get("last_attempt").ok().flatten(),
                last_success: row.try_get("last_success").ok().flatten(),
                last_error: text("last_error"),
                last_error_class: named(text("last_error_class")),
                consecutive_failures: row
                    .try_get::<Option<i32>, _>("consecutive_failures")
                    .ok()
                    .flatten()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                polls: 0,
                failures: 0,
                backoff: Duration::from_millis(
                    row.try_get::<Option<i64>, _>("backoff_ms")
                        .ok()
                        .flatten()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                ),
                corrupt_blocks: 0,
                standby: false,
                progress_at: std::time::Instant::now(),
            };
            (text("installation_id").unwrap_or_default(), status)
        })
        .collect();
    Ok(StatusRows {
        poller,
        sites,
        devices,
    })
}

/// An enum from the name its serde form uses (`modbus`, `timeout`).
fn named<T: serde::de::DeserializeOwned>(text: Option<String>) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(text?)).ok()
}
