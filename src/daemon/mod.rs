//! The daemon's wiring: sources (`sources.rs`) → batcher → `sink.rs` →
//! local store → forwarder → PostgreSQL (or, while the store has nothing
//! waiting and the database answers, straight to PostgreSQL), beside them
//! the database side (`database.rs`: bring-up, forwarder, status rows,
//! retention), the live rollups (`rollups.rs`), the local status and
//! retention (`local.rs`), the device locks, `/healthz` and `/metrics`
//! (fed by `observe.rs`) and the watchdog; then the ordered stop
//! (`stop.rs`; [`DrainPolicy`] names every limit).
//!
//! Every task is on one tracker, every long-lived one under the
//! [`supervise`]r. Each gets a handle of what it uses (`state.rs` holds
//! what the status is made of); messages between tasks go through typed
//! channels: a wake-up for the forwarder, a `watch` of where the forwarder
//! is, and a `watch` of how far the rollups have come.

mod database;
mod local;
mod observe;
mod rollups;
mod sink;
mod sources;
mod state;
mod status_rows;
mod stop;
pub mod supervise;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::db::locks::LeaseKeeper;
use crate::failover::Leases;
use crate::forward::{DirectPath, ForwarderState};
use crate::pipeline::Batcher;
use crate::reading::Reading;
use crate::store::LocalStore;
pub(crate) use sink::BatchReport;
use sink::StoreSink;
use state::{Observed, device_names};

/// How long each step of an ordered stop may take. Sources stop between
/// polls and the batcher commits the partial batch without a limit (the
/// local store is the durability boundary); the rest is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DrainPolicy {
    /// The forwarder's time to ship what the store holds; the rest waits
    /// for the next start (`--drain-deadline-s`, default 10 s).
    pub(crate) forward: Duration,
    /// The helpers' time to end once cancelled (a database call in flight is
    /// bounded by its own timeouts).
    pub(crate) helpers: Duration,
    /// The local store's time to close (its last commit is safe regardless).
    pub(crate) store_close: Duration,
}

impl DrainPolicy {
    /// The policy with the forwarder's deadline `forward`.
    pub(crate) fn with_forward_deadline(forward: Duration) -> Self {
        Self {
            forward,
            helpers: Duration::from_secs(15),
            store_close: Duration::from_secs(5),
        }
    }

    /// The longest an ordered stop may take before it is forced: every
    /// bounded step, plus 10 s for the sources' last polls and the batch.
    pub(crate) fn hard_limit(&self) -> Duration {
        self.forward + self.helpers + self.store_close + Duration::from_secs(10)
    }
}

/// How the daemon runs, beyond the configuration.
#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    /// Where the local store lives.
    pub(crate) state_dir: PathBuf,
    /// The limits of an ordered stop.
    pub(crate) drain: DrainPolicy,
    /// Receives a line per batch committed (for `demo`).
    pub(crate) batch_report: Option<mpsc::UnboundedSender<BatchReport>>,
}

/// Runs the daemon until `shutdown` fires.
pub(crate) async fn run(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // Held until the daemon ends: one daemon per local store.
    let _state_lock = crate::store::StateLock::take(&options.state_dir)?;
    let store = LocalStore::open_with(&options.state_dir, config.store.sync)
        .await?
        .with_legacy_site(config.site.installation_id.as_deref().unwrap_or_default());
    tracing::info!(store = %store.path().display(), "Local store open.");
    let unstampable = store.park_held_from_earlier_boots().await?;
    if unstampable > 0 {
        tracing::warn!(
            readings = unstampable,
            "Readings held for their time before the machine restarted can no longer be stamped: they are parked in the local store."
        );
    }
    let http_listener = match config.health.listen {
        Some(address) => crate::report::http::bind(address).await?,
        None => None,
    };
    // The database that holds the device locks, when failover is on.
    let lock_database = config.database.as_ref().filter(|_| config.failover.enabled);
    let leases = match lock_database {
        Some(_) => Leases::new(
            device_names(&config),
            config.failover.poll_when_database_unreachable,
        ),
        None => Leases::always(),
    };
    let observed = Observed::starting(&config, &store);

    // One tracker for every task; the ordered stop follows the data:
    // sources end on `shutdown`, the batcher ends when their stream does,
    // then the forwarder drains, then everything else is cancelled.
    let tasks = TaskTracker::new();
    let (readings, received) = mpsc::channel::<Reading>(4096);
    sources::spawn(&tasks, &observed, readings, &leases, &shutdown);

    // Messages between the tasks: "something to forward", where the
    // forwarder is, and how far the rollups have come.
    let wake = Arc::new(Notify::new());
    let (forwarder, forwarder_state) = watch::channel(ForwarderState::NotRunning);
    let (rolled, rolled_through) = watch::channel(None);
    let direct = DirectPath::default();
    let sink = StoreSink::new(
        store.clone(),
        Arc::clone(&observed.counters.rows_stored),
        Arc::clone(&wake),
        Arc::clone(&observed.clock),
    )
    .with_report(options.batch_report.clone())
    .with_latest(observed.latest.clone());
    let sink = if config.database.is_some() {
        sink.with_direct_path(
            direct.clone(),
            Arc::clone(&observed.forward),
            Arc::clone(&observed.link),
        )
    } else {
        sink
    };
    let batcher = tasks.spawn(
        Batcher::new(config.batch, sink)
            .on_grid(
                crate::schedule::Grid::common(),
                crate::schedule::Alarm::kernel(),
            )
            .holding(
                config.store.max_readings_in_memory,
                Arc::clone(&observed.writes),
                options.drain.store_close.max(Duration::from_secs(5)),
            )
            .run(received),
    );

    let background = CancellationToken::new();
    // The helpers too run under the supervisor: a panic in one is logged,
    // counted as a reason in the verdict, and the task started again.
    let helper = supervise::Supervised::helper;
    {
        let (state, stop) = (observed.clone(), background.clone());
        tasks.spawn(observed.supervise(
            helper("local status and retention"),
            background.clone(),
            move || local::local_loop(state.clone(), rolled_through.clone(), stop.clone()),
        ));
    }
    if let Some(db) = lock_database {
        let (session, leases, state, stop) = (
            db.lock_session().clone(),
            leases.clone(),
            observed.clone(),
            background.clone(),
        );
        tasks.spawn(
            observed.supervise(helper("device locks"), background.clone(), move || {
                LeaseKeeper::new(
                    session.clone(),
                    leases.clone(),
                    state.status.clone(),
                    state.poll_interval,
                    Arc::clone(&state.link),
                    Arc::clone(&state.sites),
                )
                .run(stop.clone())
            }),
        );
    }
    if let Some(listener) = http_listener {
        let address = listener.local_addr().ok();
        if let Some(address) = address {
            tracing::info!(%address, "Serving the page at http://{address}/, the API, /healthz and /metrics.");
            if !address.ip().is_loopback() && config.health.password.is_none() {
                tracing::warn!(%address, "The page and the API are open to whoever reaches this address: set health.password on a network you do not trust.");
            }
        }
        let loopback = address.is_some_and(|a| a.ip().is_loopback());
        let access = crate::report::http::Access::new(config.health.password.clone(), loopback);
        // A read-only connection of its own: the page's queries never wait
        // for, nor hold up, the store's writer.
        let reader = crate::store::StoreReader::open(&options.state_dir)
            .await?
            .with_legacy_site(config.site.installation_id.as_deref().unwrap_or_default());
        let site = crate::web::Site::new(&config, reader, observed.latest.clone())?;
        let observer = Arc::new(observe::DaemonObserver::new(observed.clone(), site));
        // Not restartable (it owns the listening socket); each connection
        // is a task of its own, so a panic answering one costs that one.
        tasks.spawn(crate::report::http::serve(
            listener,
            observer,
            access,
            background.clone(),
        ));
    }
    {
        let (status, stall, stop) = (
            observed.status.clone(),
            config.health.stall_timeout,
            background.clone(),
        );
        tasks.spawn(
            observed.supervise(helper("watchdog"), background.clone(), move || {
                crate::systemd::feed_watchdog(status.clone(), stall, stop.clone())
            }),
        );
    }
    let rollups = rollups::RollupTask::new(&observed, rolled);
    if config.database.is_some() {
        let task = database::DatabaseTask {
            observed: observed.clone(),
            direct,
            wake: Arc::clone(&wake),
            forwarder,
            rollups,
            tasks: tasks.clone(),
        };
        let stop = background.clone();
        tasks.spawn(
            observed.supervise(helper("database"), background.clone(), move || {
                database::database_loop(task.clone(), stop.clone())
            }),
        );
    } else {
        let (store, stop) = (store.clone(), background.clone());
        tasks.spawn(
            observed.supervise(helper("rollups"), background.clone(), move || {
                rollups::rollup_loop(
                    rollups.clone(),
                    crate::history::sqlite::LocalRollups(store.clone()),
                    stop.clone(),
                )
            }),
        );
    }
    tasks.close();

    let devices = device_names(&config).len();
    crate::systemd::ready(&format!("polling {devices} device(s)"));

    shutdown.cancelled().await;
    crate::systemd::stopping();
    tracing::info!("Stopping: finishing the current polls.");
    let finished = batcher.await.context("The batcher stopped abnormally")?;
    stop::ordered_stop(stop::Stopping {
        observed: &observed,
        unstored: finished.unstored,
        drain: options.drain,
        wake: &wake,
        forwarder: forwarder_state,
        background: &background,
        tasks: &tasks,
    })
    .await;
    Ok(())
}
