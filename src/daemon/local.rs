//! The daemon's local side: its [`Snapshot`] saved in the local store every
//! poll interval (what `status` reads without a database) and the systemd
//! status line, and the local store's retention.

use std::sync::atomic::Ordering;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{Shared, observe};
use crate::report::Snapshot;
use crate::store::STATUS_NAME;

/// The local side: status document in the store, and the store's retention.
pub(super) async fn local_loop(shared: Shared, cancel: CancellationToken) {
    let mut status_tick = crate::schedule::ticker(shared.poll_interval);
    let mut retention_tick = crate::schedule::ticker(shared.config.retention.run_every);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = status_tick.tick() => {
                crate::systemd::status(&write_local_status(&shared).await.one_line());
            }
            _ = retention_tick.tick() => {
                let before = Utc::now() - chrono::Duration::from_std(shared.config.retention.window).unwrap_or_default();
                let result = shared.store.expire(before).await;
                shared.counters.count_retention(result.is_ok());
                match result {
                    Ok(0) => {}
                    Ok(n) if shared.config.database.is_some() => {
                        shared.counters.rows_expired_unforwarded.fetch_add(n, Ordering::Relaxed);
                        tracing::error!(
                            readings = n,
                            "The local store hit its bound: readings older than the retention window were never forwarded and are dropped."
                        );
                    }
                    Ok(n) => tracing::info!(readings = n, "Retention removed expired readings from the local store."),
                    Err(error) => tracing::warn!(%error, "Local retention failed."),
                }
            }
        }
    }
}

/// Saves the daemon's snapshot in the store, and returns it.
pub(super) async fn write_local_status(shared: &Shared) -> Snapshot {
    let snapshot = observe::snapshot(shared).await;
    let saved = match serde_json::to_value(&snapshot) {
        Ok(doc) => shared.store.save_status(STATUS_NAME, &doc).await,
        Err(error) => Err(crate::store::StoreError::Encode(error)),
    };
    if let Err(error) = saved {
        tracing::debug!(%error, "Cannot save the status document.");
    }
    snapshot
}
