//! The daemon's local side: the status document saved in the local store
//! every poll interval (what `status` reads without a database, and the
//! systemd status line), and the local store's retention.

use std::sync::atomic::Ordering;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{Shared, report};

/// The local side: status document in the store, and the store's retention.
pub(super) async fn local_loop(shared: Shared, cancel: CancellationToken) {
    let mut status_tick = crate::sources::ticker(shared.poll_interval);
    let mut retention_tick = crate::sources::ticker(shared.config.retention.run_every);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = status_tick.tick() => {
                let depth = write_local_status(&shared).await;
                crate::systemd::status(&report::one_line(&shared, depth));
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

/// Saves the status document in the store; returns the store's depth.
pub(super) async fn write_local_status(shared: &Shared) -> i64 {
    let depth = report::store_depth(shared).await;
    let doc = report::status_document(shared, depth);
    if let Err(error) = shared.store.save_status("daemon", &doc).await {
        tracing::debug!(%error, "Cannot save the status document.");
    }
    depth.0
}
