//! The forwarder: ships the local store's readings to PostgreSQL in order,
//! one binary `COPY` per reading table per batch, all in one transaction,
//! and removes them from the store only after the commit. When the database
//! refuses a COPY (a row already there after a crash between the commit and
//! the removal, or a value out of range), nothing of it is written and the
//! batch goes as one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT (device,
//! "timestamp") DO NOTHING` per table instead, so a replay inserts nothing
//! twice. The COPY path is the fast one (about twice the rows per second).
//!
//! Transient failures (the network, a restarting server) are retried with
//! capped exponential backoff plus jitter; a row the database refuses for good
//! (a data or constraint error) is found by halving the batch, parked in the
//! store and reported, and the rows around it go through. Every write has its
//! own time limit, so a link that went silent is given up and retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::link::{DatabaseLink, RETRY_MAX, retry_backoff};
use crate::reading::{ColumnKind, ReadingTable, Value};
use crate::store::{LocalStore, StoreError, StoredReading};

/// Counters the forwarder keeps (read by status and metrics).
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// Rows committed to PostgreSQL (including replays it ignored).
    pub rows_forwarded: AtomicU64,
    /// Rows in the last committed batch.
    pub last_batch_rows: AtomicU64,
    /// Failed attempts.
    pub errors: AtomicU64,
    /// Rows parked for a permanent error.
    pub rows_parked: AtomicU64,
}

/// Why a batch did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The database refused data for good (SQLSTATE class 22 or 23).
    #[error("the database refused a row: {0}")]
    Permanent(sqlx::Error),
    /// Worth retrying: the network, the server, the schema not there yet.
    #[error("cannot write to the database: {0}")]
    Transient(sqlx::Error),
    /// No answer within the write timeout: the link may have gone silent.
    #[error("no answer from the database within {0:?}")]
    TimedOut(Duration),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn classify(error: sqlx::Error) -> ForwardError {
    let permanent = match &error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("22") || (code.starts_with("23") && code != "23505")
        }),
        _ => false,
    };
    if permanent {
        ForwardError::Permanent(error)
    } else {
        ForwardError::Transient(error)
    }
}

/// How a COPY of a batch went.
enum Copied {
    /// Every row is in.
    Done,
    /// The database refused the COPY (typically a row already there: a
    /// replay after a crash between the remote commit and the local removal;
    /// or a value out of range): nothing was written.
    Refused,
}

/// Writes `rows` (any tables) with one binary COPY per table in one
/// transaction: the fast path. When the database refuses it, the batch is
/// inserted with `INSERT … ON CONFLICT DO NOTHING` instead, which skips the
/// rows already there and names a row refused for good.
pub async fn copy_rows(
    pool: &PgPool,
    installation_id: Option<&str>,
    rows: &[&StoredReading],
) -> Result<(), ForwardError> {
    match copy_batch(pool, installation_id, rows).await? {
        Copied::Done => Ok(()),
        Copied::Refused => insert_rows(pool, installation_id, rows).await,
    }
}

async fn copy_batch(
    pool: &PgPool,
    installation_id: Option<&str>,
    rows: &[&StoredReading],
) -> Result<Copied, ForwardError> {
    let mut tx = pool.begin().await.map_err(classify)?;
    let mut data = Vec::new();
    for (table, of_table) in by_table(rows) {
        let columns = present_columns(table, &of_table);
        let mut names = String::from("\"timestamp\", device, installation_id, source");
        for (column, _) in &columns {
            names.push_str(", ");
            names.push_str(column);
        }
        data.clear();
        if copy_binary(&mut data, installation_id, &columns, &of_table).is_err() {
            return Ok(Copied::Refused);
        }
        let sql = format!(
            "COPY victron.{} ({names}) FROM STDIN (FORMAT binary)",
            table.name()
        );
        let copied = async {
            let mut copy = tx.copy_in_raw(&sql).await?;
            copy.send(data.as_slice()).await?;
            copy.finish().await
        };
        match copied.await {
            Ok(_) => {}
            // The server answered: the rows, not the link, are the problem.
            Err(sqlx::Error::Database(_)) => return Ok(Copied::Refused),
            Err(error) => return Err(classify(error)),
        }
    }
    tx.commit().await.map_err(classify)?;
    Ok(Copied::Done)
}

/// A value the binary encoding cannot carry (an integer beyond `integer`).
#[derive(Debug)]
struct OutOfRange;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The rows in COPY's binary format, for the schema's column types:
/// `timestamptz`, `text`/`varchar`, `double precision` and `integer`.
fn copy_binary(
    out: &mut Vec<u8>,
    installation_id: Option<&str>,
    columns: &[(&'static str, ColumnKind)],
    rows: &[&StoredReading],
) -> Result<(), OutOfRange> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    const NULL: [u8; 4] = (-1_i32).to_be_bytes();
    out.reserve(19 + rows.len() * (40 + 12 * columns.len()));
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0_i32.to_be_bytes()); // flags
    out.extend_from_slice(&0_i32.to_be_bytes()); // header extension
    let fields = i16::try_from(4 + columns.len()).map_err(|_| OutOfRange)?;
    for row in rows {
        let r = &row.reading;
        out.extend_from_slice(&fields.to_be_bytes());
        let pg_micros = r.measured_at.timestamp_micros() - PG_EPOCH_OFFSET_US;
        field(out, &pg_micros.to_be_bytes());
        field(out, r.device.as_bytes());
        match installation_id {
            Some(id) => field(out, id.as_bytes()),
            None => out.extend_from_slice(&NULL),
        }
        field(out, r.source.as_str().as_bytes());
        for (column, kind) in columns {
            match (r.get(column), kind) {
                (Some(Value::Float(f)), ColumnKind::Float) => field(out, &f.to_be_bytes()),
                (Some(Value::Int(i)), ColumnKind::Float) => {
                    field(out, &(*i as f64).to_be_bytes());
                }
                (Some(Value::Int(i)), ColumnKind::Int) => {
                    let i = i32::try_from(*i).map_err(|_| OutOfRange)?;
                    field(out, &i.to_be_bytes());
                }
                (Some(Value::Text(t)), ColumnKind::Text) => field(out, t.as_bytes()),
                _ => out.extend_from_slice(&NULL),
            }
        }
    }
    out.extend_from_slice(&(-1_i16).to_be_bytes());
    Ok(())
}

/// The batch's rows grouped by reading table, in a fixed table order.
fn by_table<'a>(
    rows: &'a [&'a StoredReading],
) -> impl Iterator<Item = (ReadingTable, Vec<&'a StoredReading>)> + 'a {
    ReadingTable::ALL.into_iter().filter_map(move |table| {
        let of_table: Vec<&StoredReading> = rows
            .iter()
            .copied()
            .filter(|r| r.reading.table == table)
            .collect();
        (!of_table.is_empty()).then_some((table, of_table))
    })
}

/// The columns some row of the batch has: fewer to send and to parse.
fn present_columns(
    table: ReadingTable,
    rows: &[&StoredReading],
) -> Vec<(&'static str, ColumnKind)> {
    table
        .columns()
        .iter()
        .copied()
        .filter(|(column, _)| rows.iter().any(|r| r.reading.get(column).is_some()))
        .collect()
}

/// Inserts `rows` (any tables) in one transaction.
pub async fn insert_rows(
    pool: &PgPool,
    installation_id: Option<&str>,
    rows: &[&StoredReading],
) -> Result<(), ForwardError> {
    let mut tx = pool.begin().await.map_err(classify)?;
    for (table, of_table) in by_table(rows) {
        insert_table(&mut tx, table, installation_id, &of_table).await?;
    }
    tx.commit().await.map_err(classify)?;
    Ok(())
}

async fn insert_table(
    tx: &mut sqlx::PgConnection,
    table: ReadingTable,
    installation_id: Option<&str>,
    rows: &[&StoredReading],
) -> Result<(), ForwardError> {
    let columns = present_columns(table, rows);
    let mut names = vec!["\"timestamp\"", "device", "installation_id", "source"];
    let mut casts = vec![
        "$1::timestamptz[]",
        "$2::text[]",
        "$3::text[]",
        "$4::text[]",
    ];
    let placeholders: Vec<String> = (0..columns.len())
        .map(|i| {
            let ty = match columns[i].1 {
                ColumnKind::Float => "float8",
                // int8 here: a value too large for the int4 column makes
                // the database refuse that row (22003) instead of wrapping.
                ColumnKind::Int => "int8",
                ColumnKind::Text => "text",
            };
            format!("${}::{ty}[]", i + 5)
        })
        .collect();
    names.extend(columns.iter().map(|(c, _)| *c));
    casts.extend(placeholders.iter().map(String::as_str));
    let sql = format!(
        "INSERT INTO victron.{} ({}) SELECT * FROM UNNEST({}) ON CONFLICT (device, \"timestamp\") DO NOTHING",
        table.name(),
        names.join(", "),
        casts.join(", ")
    );
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.reading.measured_at).collect();
    let devices: Vec<&str> = rows.iter().map(|r| r.reading.device.as_str()).collect();
    let installations: Vec<Option<&str>> = rows.iter().map(|_| installation_id).collect();
    let sources: Vec<&str> = rows.iter().map(|r| r.reading.source.as_str()).collect();
    let mut query = sqlx::query(&sql)
        .bind(times)
        .bind(devices)
        .bind(installations)
        .bind(sources);
    for (column, kind) in &columns {
        let values = rows.iter().map(|r| r.reading.get(column));
        query = match kind {
            ColumnKind::Float => query.bind(
                values
                    .map(|v| match v {
                        Some(Value::Float(f)) => Some(*f),
                        Some(Value::Int(i)) => Some(*i as f64),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            ColumnKind::Int => query.bind(
                values
                    .map(|v| match v {
                        Some(Value::Int(i)) => Some(*i),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            ColumnKind::Text => query.bind(
                values
                    .map(|v| match v {
                        Some(Value::Text(t)) => Some(t.as_ref()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
        };
    }
    query.execute(&mut *tx).await.map_err(classify)?;
    Ok(())
}

/// Forwards the store's readings until cancelled.
#[derive(Debug)]
pub struct Forwarder {
    store: LocalStore,
    pool: PgPool,
    installation_id: Option<String>,
    batch_rows: i64,
    counters: Arc<ForwardCounters>,
    wake: Arc<Notify>,
    link: Arc<DatabaseLink>,
    /// Told each time a drain leaves the store empty.
    drained: Option<Arc<Notify>>,
    write_timeout: Duration,
}

impl Forwarder {
    /// A forwarder from `store` to `pool`.
    pub fn new(
        store: LocalStore,
        pool: PgPool,
        installation_id: Option<String>,
        counters: Arc<ForwardCounters>,
        wake: Arc<Notify>,
        link: Arc<DatabaseLink>,
    ) -> Self {
        Self {
            store,
            pool,
            installation_id,
            batch_rows: 5000,
            counters,
            wake,
            link,
            drained: None,
            write_timeout: Duration::from_secs(30),
        }
    }

    /// Tells `drained` each time the store is empty after a drain (a clean
    /// stop waits for it).
    pub fn on_drained(mut self, drained: Arc<Notify>) -> Self {
        self.drained = Some(drained);
        self
    }

    /// Longest wait for one batch to be written (default 30 s).
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Rows per batch (default 5000).
    pub fn with_batch_rows(mut self, rows: i64) -> Self {
        self.batch_rows = rows.max(1);
        self
    }

    /// Inserts one batch (binary COPY); after a permanent error, the refused
    /// rows are found by halving the batch ([`Self::isolate`]).
    async fn insert_batch(&self, rows: &[StoredReading]) -> Result<(), ForwardError> {
        let all: Vec<&StoredReading> = rows.iter().collect();
        let id = self.installation_id.as_deref();
        match self.bounded(copy_rows(&self.pool, id, &all)).await {
            Err(ForwardError::Permanent(_)) => self.isolate(&all).await,
            other => other,
        }
    }

    /// One write, given up after the write timeout (dropping it rolls its
    /// transaction back: the rows stay in the store). Each write of a batch
    /// has its own limit, so a slow link that still works always progresses.
    async fn bounded(
        &self,
        write: impl std::future::Future<Output = Result<(), ForwardError>>,
    ) -> Result<(), ForwardError> {
        tokio::time::timeout(self.write_timeout, write)
            .await
            .unwrap_or(Err(ForwardError::TimedOut(self.write_timeout)))
    }

    /// Rows among which the database refuses some for good: halves are
    /// inserted on their own until each refused row is alone, and parked.
    /// One bad row in 5000 costs about 26 writes, not 5000 — it matters on
    /// a satellite link with a 600 ms round trip. Halves already written are
    /// written again harmlessly if a later error makes the batch retry.
    async fn isolate(&self, rows: &[&StoredReading]) -> Result<(), ForwardError> {
        if let [row] = rows {
            let error = match self
                .bounded(insert_rows(
                    &self.pool,
                    self.installation_id.as_deref(),
                    rows,
                ))
                .await
            {
                Err(ForwardError::Permanent(error)) => error,
                other => return other,
            };
            tracing::error!(
                device = %row.reading.device,
                table = %row.reading.table,
                measured_at = %row.reading.measured_at,
                %error,
                "The database refuses this reading for good; it is parked in the local store."
            );
            self.store.park(row.seq, &error.to_string()).await?;
            self.counters.rows_parked.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let (left, right) = rows.split_at(rows.len() / 2);
        for half in [left, right] {
            let written = self
                .bounded(insert_rows(
                    &self.pool,
                    self.installation_id.as_deref(),
                    half,
                ))
                .await;
            match written {
                Ok(()) => {}
                Err(ForwardError::Permanent(_)) => Box::pin(self.isolate(half)).await?,
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Forwards everything the store holds, batch after batch, reading the
    /// next batch and removing the last committed one while the current one
    /// is inserted. Returns how many rows left the store.
    pub async fn drain(&self) -> Result<usize, ForwardError> {
        let mut total = 0;
        let mut current = self.store.oldest(self.batch_rows).await?;
        let mut committed: Option<i64> = None;
        while let Some(last) = current.last().map(|r| r.seq) {
            let cleanup = async {
                match committed {
                    Some(seq) => self.store.remove_through(seq).await,
                    None => Ok(()),
                }
            };
            let (inserted, next, cleaned) = tokio::join!(
                self.insert_batch(&current),
                self.store.oldest_after(last, self.batch_rows),
                cleanup
            );
            cleaned?;
            inserted?;
            committed = Some(last);
            total += current.len();
            let rows = current.len() as u64;
            self.counters
                .rows_forwarded
                .fetch_add(rows, Ordering::Relaxed);
            self.counters.last_batch_rows.store(rows, Ordering::Relaxed);
            current = next?;
        }
        if let Some(seq) = committed {
            self.store.remove_through(seq).await?;
        }
        Ok(total)
    }

    /// Runs until `cancel`; a batch in flight is abandoned (it stays in the store).
    pub async fn run(self, cancel: CancellationToken) {
        let mut delays = retry_backoff().build();
        let mut failing = false;
        loop {
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                outcome = self.drain() => outcome,
            };
            if outcome.is_ok() {
                if let Some(drained) = &self.drained {
                    drained.notify_waiters();
                }
            }
            match outcome {
                Ok(0) => {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Ok(_) => {
                    self.link.works();
                    if failing {
                        failing = false;
                        tracing::info!("Forwarding to the database works again.");
                    }
                    delays = retry_backoff().build();
                }
                Err(error) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if !matches!(error, ForwardError::Store(_)) {
                        self.link.failed();
                    }
                    let delay = delays.next().unwrap_or(RETRY_MAX);
                    if !failing {
                        failing = true;
                        tracing::warn!(%error, "Forwarding to the database failed; readings wait in the local store.");
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = self.link.retry_after(delay) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;
    use crate::reading::{Reading, SourceKind};

    fn stored(values: Vec<(&'static str, Value)>) -> StoredReading {
        StoredReading {
            seq: 1,
            reading: Reading {
                device: "bank".into(),
                table: ReadingTable::Battery,
                source: SourceKind::Modbus,
                // One second after PostgreSQL's epoch.
                measured_at: Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 1).unwrap(),
                values,
            },
        }
    }

    #[test]
    fn binary_copy_layout() {
        let row = stored(vec![
            ("soc", Value::Float(0.5)),
            ("product_id", Value::Int(7)),
        ]);
        let columns = [
            ("soc", ColumnKind::Float),
            ("state", ColumnKind::Text),
            ("product_id", ColumnKind::Int),
        ];
        let mut out = Vec::new();
        copy_binary(&mut out, None, &columns, &[&row]).unwrap();
        let mut expected = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        expected.extend_from_slice(&7_i16.to_be_bytes());
        expected.extend_from_slice(&8_i32.to_be_bytes());
        expected.extend_from_slice(&1_000_000_i64.to_be_bytes());
        expected.extend_from_slice(&4_i32.to_be_bytes());
        expected.extend_from_slice(b"bank");
        expected.extend_from_slice(&(-1_i32).to_be_bytes()); // installation_id NULL
        expected.extend_from_slice(&6_i32.to_be_bytes());
        expected.extend_from_slice(b"modbus");
        expected.extend_from_slice(&8_i32.to_be_bytes());
        expected.extend_from_slice(&0.5_f64.to_be_bytes());
        expected.extend_from_slice(&(-1_i32).to_be_bytes()); // state NULL
        expected.extend_from_slice(&4_i32.to_be_bytes());
        expected.extend_from_slice(&7_i32.to_be_bytes());
        expected.extend_from_slice(&(-1_i16).to_be_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn an_integer_beyond_the_column_is_left_to_the_checked_path() {
        let row = stored(vec![("product_id", Value::Int(1 << 40))]);
        let mut out = Vec::new();
        assert!(
            copy_binary(
                &mut out,
                Some("x"),
                &[("product_id", ColumnKind::Int)],
                &[&row]
            )
            .is_err()
        );
    }
}
