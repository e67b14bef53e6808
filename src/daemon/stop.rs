//! The ordered stop, once the sources have stopped and the batcher has
//! committed its last batch: the forwarder gets a deadline to drain the
//! store (while it runs against a reachable database), then every helper is
//! cancelled and given its time, a last status is written, and the store is
//! closed. What was not shipped stays in the store for the next start.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::DrainPolicy;
use super::state::Observed;
use crate::forward::ForwarderState;

/// What the ordered stop needs.
pub(super) struct Stopping<'a> {
    /// The daemon's state, for the last status.
    pub(super) observed: &'a Observed,
    /// Readings the store never took, even at the stop.
    pub(super) unstored: usize,
    /// The limits of each step.
    pub(super) drain: DrainPolicy,
    /// Tells the forwarder there is something to forward.
    pub(super) wake: &'a Arc<Notify>,
    /// Where the forwarder is.
    pub(super) forwarder: watch::Receiver<ForwarderState>,
    /// Cancels every helper.
    pub(super) background: &'a CancellationToken,
    /// Every task.
    pub(super) tasks: &'a TaskTracker,
}

/// Stops the daemon in order (see the module's doc).
pub(super) async fn ordered_stop(stopping: Stopping<'_>) {
    let Stopping {
        observed,
        unstored,
        drain,
        wake,
        mut forwarder,
        background,
        tasks,
    } = stopping;
    let store = &observed.store;
    let writes = observed.writes.now();
    if writes.readings_dropped == 0 {
        tracing::info!("Every reading received is in the local store.");
    } else {
        tracing::error!(
            lost = writes.readings_dropped,
            lost_at_stop = unstored,
            error = writes.last_error.as_deref().unwrap_or_default(),
            "Not every reading received is in the local store: it refused writes, and the readings it could not take are lost."
        );
    }

    // Only a forwarder that runs against a reachable database can drain;
    // otherwise what the store holds waits for the next start at once.
    let running = matches!(*forwarder.borrow(), ForwarderState::Running { .. });
    if running && observed.link.down_since().is_none() {
        let forwarded = tokio::time::timeout(drain.forward, async {
            loop {
                // Marked seen before the wake-up, so no drain is missed.
                forwarder.borrow_and_update();
                wake.notify_one();
                if forwarder.changed().await.is_err() {
                    break;
                }
                // Empty, or it cannot tell: no use waiting.
                if !store.depth().await.is_ok_and(|b| b.readings > 0) {
                    break;
                }
            }
        })
        .await;
        if forwarded.is_err() {
            let left = store.depth().await.unwrap_or_default().readings;
            tracing::warn!(
                readings = left,
                "Shutdown deadline reached; the rest is forwarded at the next start."
            );
        }
    }
    let _ = observed.stopped_at.set(Utc::now());
    background.cancel();
    if tokio::time::timeout(drain.helpers, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            limit_s = drain.helpers.as_secs(),
            "A database task did not stop in time; leaving it."
        );
    }
    super::local::write_local_status(observed).await;
    if tokio::time::timeout(drain.store_close, store.close())
        .await
        .is_err()
    {
        tracing::warn!("The local store did not close in time; its last commit is safe.");
    }
    tracing::info!("Stopped.");
}
