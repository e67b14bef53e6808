//! The stage between the sources and where batches go: the [`batcher`]
//! groups readings into batches and hands each to a [`BatchSink`], which
//! this stage defines and the daemon provides (the local store, or
//! PostgreSQL directly while nothing waits in the store). A batch the sink
//! refuses waits in memory, bounded; [`WriteHealth`] says so.

pub(crate) mod batcher;

use chrono::{DateTime, Utc};

pub(crate) use batcher::{BatchSink, Batcher};

/// How the local store takes the batches, for the daemon's status: whether
/// it refuses writes now (a full disk) and since when, how many readings
/// wait in memory, and how many were dropped since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreWrites {
    /// Since when the store refuses writes; `None` while it takes them.
    pub(crate) failing_since: Option<DateTime<Utc>>,
    /// The last error it answered.
    pub(crate) last_error: Option<String>,
    /// Readings waiting in memory for the store.
    pub(crate) readings_in_memory: u64,
    /// Readings dropped since start because the store refused them for
    /// too long (the memory bound), or at the stop.
    pub(crate) readings_dropped: u64,
    /// When readings were last dropped.
    pub(crate) last_dropped_at: Option<DateTime<Utc>>,
}

/// The batcher's [`StoreWrites`], shared with the status writers.
#[derive(Debug, Default)]
pub(crate) struct WriteHealth(std::sync::Mutex<StoreWrites>);

impl WriteHealth {
    /// What it says now.
    pub(crate) fn now(&self) -> StoreWrites {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut StoreWrites)) {
        change(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}
