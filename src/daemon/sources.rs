//! Starting the sources: one task per GX (Modbus-TCP) and per VE.Direct
//! device, each under the supervisor (one that panics is restarted with its
//! own reconnect backoff, its devices failed meanwhile), all sending into
//! the batcher's channel.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::state::Observed;
use super::supervise::Supervised;
use crate::failover::Leases;
use crate::reading::Reading;
use crate::sources::modbus::GxPoller;
use crate::sources::vedirect::VeDirectSource;

/// Spawns every configured source on `tasks`; they stop on `shutdown` and
/// drop their senders.
pub(super) fn spawn(
    tasks: &TaskTracker,
    observed: &Observed,
    readings: mpsc::Sender<Reading>,
    leases: &Leases,
    shutdown: &CancellationToken,
) {
    for gx in &observed.config.gx {
        let what = Supervised {
            task: format!("source gx {}:{}", gx.host, gx.port),
            devices: gx.devices.iter().map(|d| d.name.clone()).collect(),
            backoff: (gx.reconnect_min, gx.reconnect_max),
        };
        let (gx, status, tx, leases, clock, stop) = (
            gx.clone(),
            observed.status.clone(),
            readings.clone(),
            leases.clone(),
            Arc::clone(&observed.clock),
            shutdown.clone(),
        );
        tasks.spawn(observed.supervise(what, shutdown.clone(), move || {
            let poller = GxPoller::new(&gx, status.clone(), tx.clone())
                .with_leases(leases.clone())
                .with_clock(Arc::clone(&clock));
            let stop = stop.clone();
            async move {
                poller.run(stop).await;
            }
        }));
    }
    for device in &observed.config.vedirect {
        let what = Supervised {
            task: format!("source vedirect {}", device.name),
            devices: vec![device.name.clone()],
            backoff: (device.reconnect_min, device.reconnect_max),
        };
        let (device, status, tx, leases, stop) = (
            device.clone(),
            observed.status.clone(),
            readings.clone(),
            leases.clone(),
            shutdown.clone(),
        );
        tasks.spawn(observed.supervise(what, shutdown.clone(), move || {
            let source = VeDirectSource::new(&device, status.clone(), tx.clone())
                .with_leases(leases.clone());
            let stop = stop.clone();
            async move {
                source.run(stop).await;
            }
        }));
    }
}
