//! The stage between the sources and the local store: the [`batcher`]
//! groups readings into batches, and [`StoreSink`] commits each to the local
//! store (the durability boundary), wakes the forwarder and counts it — or,
//! while the store has nothing to forward and the database answers, sends
//! it straight to PostgreSQL ([`DirectPath`]).

pub mod batcher;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, mpsc};

use crate::db::link::DatabaseLink;
use crate::forward::{DirectPath, ForwardCounters};
use crate::reading::Reading;
use crate::store::{LocalStore, StoreError};
pub use batcher::{BatchSink, Batcher};

/// One committed batch, for `demo`'s line per reading.
#[derive(Debug, Clone)]
pub struct BatchReport {
    /// Readings in the batch.
    pub readings: Vec<Reading>,
    /// Rows the store took (replays excluded; 0 when the batch went
    /// straight to PostgreSQL).
    pub stored: u64,
}

/// Commits batches to the local store.
#[derive(Debug)]
pub struct StoreSink {
    store: LocalStore,
    /// Readings committed since start.
    rows_stored: Arc<AtomicU64>,
    /// Told after every commit: there is something to forward.
    forwarder: Arc<Notify>,
    /// Receives every committed batch (for `demo`).
    report: Option<mpsc::UnboundedSender<BatchReport>>,
    /// Forward-first, when a database is configured.
    direct: Option<Direct>,
}

/// What the sink needs to send a batch straight to PostgreSQL.
#[derive(Debug)]
struct Direct {
    path: DirectPath,
    counters: Arc<ForwardCounters>,
    link: Arc<DatabaseLink>,
}

impl StoreSink {
    /// A sink into `store` that counts into `rows_stored` and wakes `forwarder`.
    pub fn new(store: LocalStore, rows_stored: Arc<AtomicU64>, forwarder: Arc<Notify>) -> Self {
        Self {
            store,
            rows_stored,
            forwarder,
            report: None,
            direct: None,
        }
    }

    /// Sends batches straight to PostgreSQL while `path` is open (see
    /// [`DirectPath`]), counting them in `counters`.
    pub fn with_direct_path(
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

    /// Also sends every committed batch to `report`.
    pub fn with_report(mut self, report: Option<mpsc::UnboundedSender<BatchReport>>) -> Self {
        self.report = report;
        self
    }
}

impl BatchSink for StoreSink {
    async fn commit(&mut self, batch: &[Reading]) -> Result<(), StoreError> {
        let forwarded = match &self.direct {
            Some(d) => d.path.forward(batch, &d.counters, &d.link).await,
            None => false,
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
        if let Some(report) = &self.report {
            let _ = report.send(BatchReport {
                readings: batch.to_vec(),
                stored,
            });
        }
        Ok(())
    }
}
