//! Where the daemon's batches go ([`StoreSink`], the pipeline's
//! [`BatchSink`]): it settles their measurement times ([`TimeKeeper`]:
//! stamped, or held while nobody knows the time; per series, times never go
//! backwards), commits each batch to the local store (the durability
//! boundary), wakes the forwarder and counts it — or, while the store has
//! nothing to forward and the database answers, sends it straight to
//! PostgreSQL ([`DirectPath`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc};

use crate::clock::{Taken, TimeKeeper, stamp_with};
use crate::db::link::DatabaseLink;
use crate::forward::{DirectPath, ForwardCounters};
use crate::latest::LatestReadings;
use crate::pipeline::BatchSink;
use crate::reading::{Reading, ReadingTable};
use crate::store::{LocalStore, StoreError};

/// One committed batch, for `demo`'s line per reading.
#[derive(Debug, Clone)]
pub(crate) struct BatchReport {
    /// Readings in the batch.
    pub(crate) readings: Vec<Reading>,
    /// Rows the store took (replays excluded; 0 when the batch went
    /// straight to PostgreSQL).
    pub(crate) stored: u64,
}

/// Commits batches to the local store.
#[derive(Debug)]
pub(super) struct StoreSink {
    store: LocalStore,
    /// Readings committed since start.
    rows_stored: Arc<AtomicU64>,
    /// Told after every commit: there is something to forward.
    forwarder: Arc<Notify>,
    /// Receives every committed batch (for `demo`).
    report: Option<mpsc::UnboundedSender<BatchReport>>,
    /// Each device's newest reading (for `/metrics`, the page and the API).
    latest: Option<LatestReadings>,
    /// Forward-first, when a database is configured.
    direct: Option<Direct>,
    /// Decides measurement times.
    clock: Arc<TimeKeeper>,
    /// The last measurement time of each series (site, device, table).
    last_times: HashMap<(Arc<str>, String, ReadingTable), DateTime<Utc>>,
}

/// What the sink needs to send a batch straight to PostgreSQL.
#[derive(Debug)]
struct Direct {
    path: DirectPath,
    counters: Arc<ForwardCounters>,
    link: Arc<DatabaseLink>,
}

impl StoreSink {
    /// A sink into `store` that counts into `rows_stored`, wakes
    /// `forwarder`, and takes measurement times from `clock`.
    pub(super) fn new(
        store: LocalStore,
        rows_stored: Arc<AtomicU64>,
        forwarder: Arc<Notify>,
        clock: Arc<TimeKeeper>,
    ) -> Self {
        Self {
            store,
            rows_stored,
            forwarder,
            report: None,
            latest: None,
            direct: None,
            clock,
            last_times: HashMap::new(),
        }
    }

    /// Stamps the readings whose time is not settled yet; returns whether
    /// some stay held. Once the time is known, readings held earlier are
    /// re-stamped in the store too.
    async fn settle_times(&mut self, batch: &mut [Reading]) -> Result<bool, StoreError> {
        let offset = self.clock.current_offset();
        let mut held = false;
        for reading in batch.iter_mut() {
            let Some(mono) = reading.unconfirmed else {
                continue;
            };
            let Some((basis, offset)) = offset else {
                held = true;
                continue;
            };
            let taken = Taken {
                mono,
                wall: reading.measured_at,
            };
            let mut at = stamp_with(taken, basis, offset);
            // Never before the series' last reading (a correction of the
            // clock's offset, two blocks within one microsecond).
            let key = (
                Arc::clone(&reading.site),
                reading.device.clone(),
                reading.table,
            );
            if let Some(last) = self.last_times.get(&key)
                && at <= *last
            {
                at = *last + chrono::Duration::microseconds(1);
            }
            self.last_times.insert(key, at);
            reading.measured_at = at;
            reading.unconfirmed = None;
        }
        if let Some((basis, offset)) = offset
            && self.store.held() > 0
        {
            let released = self
                .store
                .release_held(|taken| stamp_with(taken, basis, offset))
                .await?;
            if released > 0 {
                tracing::info!(
                    readings = released,
                    "Readings held for their time are stamped now and queued for forwarding."
                );
                self.forwarder.notify_one();
            }
        }
        Ok(held)
    }

    /// Sends batches straight to PostgreSQL while `path` is open (see
    /// [`DirectPath`]), counting them in `counters`.
    pub(super) fn with_direct_path(
        mut self,
        path: DirectPath,
        counters: Arc<ForwardCounters>,
        link: Arc<DatabaseLink>,
    ) -> Self {
        self.direct = Some(Direct {
            path,
            counters,
            link,
        });
        self
    }

    /// Keeps each device's newest committed reading on `board`.
    pub(super) fn with_latest(mut self, board: LatestReadings) -> Self {
        self.latest = Some(board);
        self
    }

    /// Also sends every committed batch to `report`.
    pub(super) fn with_report(
        mut self,
        report: Option<mpsc::UnboundedSender<BatchReport>>,
    ) -> Self {
        self.report = report;
        self
    }
}

impl BatchSink for StoreSink {
    type Error = StoreError;

    async fn commit(&mut self, batch: &mut [Reading]) -> Result<(), StoreError> {
        let held = self.settle_times(batch).await?;
        let batch: &[Reading] = batch;
        let forwarded = match &self.direct {
            Some(d) if !held => d.path.forward(batch, &d.counters, &d.link).await,
            _ => false,
        };
        let stored = if forwarded {
            0
        } else {
            let stored = self.store.append(batch).await?;
            if let Some(d) = &self.direct {
                d.path.stored_locally();
            }
            self.rows_stored.fetch_add(stored, Ordering::Relaxed);
            self.forwarder.notify_one();
            stored
        };
        if let Some(board) = &self.latest {
            board.record(batch);
        }
        if let Some(report) = &self.report {
            let _ = report.send(BatchReport {
                readings: batch.to_vec(),
                stored,
            });
        }
        Ok(())
    }
}
