//! The forwarder: ships the local store's readings to PostgreSQL in order,
//! one binary `COPY` per reading table per batch, all in one transaction,
//! and removes them from the store only after the commit. When the database
//! refuses a COPY (a row already there after a crash between the commit and
//! the removal, or a value out of range), nothing of it is written and the
//! batch goes as one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT
//! (installation_id, device, "timestamp") DO NOTHING` per table instead, so
//! a replay inserts nothing twice. The COPY path is the fast one (about twice the rows per second).
//!
//! While the store holds nothing to forward, new batches may skip it
//! ([`DirectPath`]: forward-first).
//!
//! Transient failures (the network, a restarting server) are retried with
//! capped exponential backoff plus jitter; a row the database refuses for good
//! (a data or constraint error) is found by halving the batch, parked in the
//! store and reported, and the rows around it go through. Every write has its
//! own time limit, so a link that went silent is given up and retried.

mod copy;
mod error;
mod insert;
mod rows;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub use copy::copy_rows;
pub(crate) use error::ForwardError;
pub(crate) use insert::insert_rows;

use crate::config::DatabaseConfig;
use crate::db::link::{DatabaseLink, RETRY_MAX, retry_backoff};
use crate::reading::Reading;
use crate::store::{LocalStore, StoredReading};

/// Counters the forwarder keeps (read by status and metrics).
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// Rows committed to PostgreSQL (including replays it ignored).
    pub(crate) rows_forwarded: AtomicU64,
    /// Failed attempts.
    pub(crate) errors: AtomicU64,
    /// Rows parked for a permanent error.
    pub rows_parked: AtomicU64,
    /// Per site: rows forwarded since start, and in the last batch.
    by_site: std::sync::Mutex<HashMap<String, (u64, u64)>>,
}

impl ForwardCounters {
    /// Counts a committed batch: its rows, and for each site it holds.
    fn count_batch<'a>(&self, rows: impl ExactSizeIterator<Item = &'a Reading>) {
        self.rows_forwarded
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        let mut by_site = self.by_site.lock().unwrap_or_else(|p| p.into_inner());
        for counts in by_site.values_mut() {
            counts.1 = 0;
        }
        for row in rows {
            let counts = match by_site.get_mut(&*row.site) {
                Some(counts) => counts,
                None => by_site.entry(row.site.to_string()).or_default(),
            };
            counts.0 += 1;
            counts.1 += 1;
        }
    }

    /// Rows forwarded for `site` since start, and in the last batch.
    pub(crate) fn site(&self, site: &str) -> (u64, u64) {
        let by_site = self.by_site.lock().unwrap_or_else(|p| p.into_inner());
        by_site.get(site).copied().unwrap_or_default()
    }
}

/// How long a batch sent straight to PostgreSQL may take to be acknowledged
/// before it is committed to the local store instead (its readings then
/// reach PostgreSQL through the forwarder, once: the key ignores a repeat).
pub(crate) const DIRECT_WRITE_LIMIT: Duration = Duration::from_secs(2);

/// Forward-first: while the local store holds nothing to forward and the
/// database answers, a new batch goes straight to PostgreSQL and never
/// touches the store (no local write, no later delete: an SD card's wear).
/// A batch PostgreSQL does not acknowledge within [`DIRECT_WRITE_LIMIT`]
/// (an outage, a refused row, a slow link) is committed to the store as
/// before, and from then on batches go to the store until the forwarder
/// has emptied it, so that nothing overtakes a backlog. A kill -9 or a
/// power cut during the direct write loses that batch, as it would lose a
/// batch still being collected.
#[derive(Debug, Clone, Default)]
pub(crate) struct DirectPath {
    /// The database, once the forwarder runs.
    pool: Arc<std::sync::OnceLock<PgPool>>,
    /// The forwarder found the store empty, and no batch went to it since.
    caught_up: Arc<AtomicBool>,
}

impl DirectPath {
    /// Writes `batch` straight to PostgreSQL when the path is open; true
    /// when PostgreSQL committed it.
    pub(crate) async fn forward(
        &self,
        batch: &[Reading],
        counters: &ForwardCounters,
        link: &DatabaseLink,
    ) -> bool {
        let Some(pool) = self.pool.get() else {
            return false;
        };
        if !self.caught_up.load(Ordering::Relaxed) || link.down_since().is_some() {
            return false;
        }
        let rows: Vec<&Reading> = batch.iter().collect();
        // One statement, one round trip: a live batch is small.
        match tokio::time::timeout(DIRECT_WRITE_LIMIT, insert_rows(pool, &rows)).await {
            Ok(Ok(())) => {
                counters.count_batch(rows.into_iter());
                true
            }
            _ => false,
        }
    }

    /// The batch went to the store: the next ones follow it there.
    pub(crate) fn stored_locally(&self) {
        self.caught_up.store(false, Ordering::Relaxed);
    }
}

/// The readings of stored rows, for the writers.
fn readings<'a>(rows: &[&'a StoredReading]) -> Vec<&'a Reading> {
    rows.iter().map(|row| &row.reading).collect()
}

/// Where the forwarder is, as the ordered stop sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum ForwarderState {
    /// Not forwarding: no database, or not reached yet.
    #[default]
    NotRunning,
    /// Forwarding; `drains` counts the times a drain left the store empty.
    Running {
        /// Drains that left the store empty since it started.
        drains: u64,
    },
}

/// Forwards the store's readings until cancelled.
#[derive(Debug)]
pub struct Forwarder {
    store: LocalStore,
    pool: PgPool,
    batch_rows: i64,
    counters: Arc<ForwardCounters>,
    wake: Arc<Notify>,
    link: Arc<DatabaseLink>,
    /// Where it is, for the ordered stop.
    state: Option<watch::Sender<ForwarderState>>,
    write_timeout: Duration,
    /// Told when the store is empty, so that new batches may skip it.
    direct: DirectPath,
}

impl Forwarder {
    /// A forwarder from `store` to `pool`.
    pub fn new(
        store: LocalStore,
        pool: PgPool,
        counters: Arc<ForwardCounters>,
        wake: Arc<Notify>,
        link: Arc<DatabaseLink>,
    ) -> Self {
        Self {
            store,
            pool,
            batch_rows: 5000,
            counters,
            wake,
            link,
            state: None,
            write_timeout: DatabaseConfig::default_write_timeout(),
            direct: DirectPath::default(),
        }
    }

    /// Opens `direct` to this forwarder's database: batches may go straight
    /// to it while the store holds nothing to forward.
    pub(crate) fn with_direct_path(mut self, direct: DirectPath) -> Self {
        let _ = direct.pool.set(self.pool.clone());
        self.direct = direct;
        self
    }

    /// Reports into `state` that it runs, and each time a drain leaves the
    /// store empty (a clean stop waits for it).
    pub(crate) fn reporting(mut self, state: watch::Sender<ForwarderState>) -> Self {
        self.state = Some(state);
        self
    }

    /// Longest wait for one batch to be written (default 30 s).
    pub(crate) fn with_write_timeout(mut self, timeout: Duration) -> Self {
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
        match self.bounded(copy_rows(&self.pool, &readings(&all))).await {
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
            let error = match self.bounded(insert_rows(&self.pool, &readings(rows))).await {
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
            let written = self.bounded(insert_rows(&self.pool, &readings(half))).await;
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
        // Nothing waits (the usual case while batches go straight to the
        // database): no query at all.
        if self.store.depth().await?.readings == 0 {
            return Ok(0);
        }
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
            self.counters
                .count_batch(current.iter().map(|row| &row.reading));
            current = next?;
        }
        if let Some(seq) = committed {
            self.store.remove_through(seq).await?;
        }
        Ok(total)
    }

    /// Runs until `cancel`; a batch in flight is abandoned (it stays in the store).
    pub(crate) async fn run(self, cancel: CancellationToken) {
        // Idle, it looks again every second (a wake-up it may have missed),
        // on the common grid: with the polls, not a wake-up of its own.
        let mut recheck = crate::schedule::common_ticker(Duration::from_secs(1));
        let mut delays = retry_backoff().build();
        let mut failing = false;
        if let Some(state) = &self.state {
            state.send_replace(ForwarderState::Running { drains: 0 });
        }
        loop {
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                outcome = self.drain() => outcome,
            };
            if outcome.is_ok() {
                self.direct.caught_up.store(true, Ordering::Relaxed);
                if let Some(state) = &self.state {
                    state.send_modify(|state| {
                        if let ForwarderState::Running { drains } = state {
                            *drains += 1;
                        }
                    });
                }
            }
            match outcome {
                Ok(0) => {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = self.wake.notified() => {}
                        _ = recheck.tick() => {}
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
