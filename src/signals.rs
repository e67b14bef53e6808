//! SIGTERM and SIGINT: the first one cancels a token (the daemon stops in
//! order); a second one, or a stop that outlasts its hard limit, is a
//! [`Forced`] outcome the caller returns as its exit, so that only `main`
//! ends the process.

use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Why a stop could not finish in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forced {
    /// A second signal: stop at once.
    SecondSignal,
    /// The ordered stop took longer than its hard limit.
    HardLimit,
}

/// The process's stop signals.
#[derive(Debug)]
pub(crate) struct Signals {
    shutdown: CancellationToken,
    forced: oneshot::Receiver<Forced>,
}

impl Signals {
    /// Listens for SIGTERM and SIGINT; `hard_limit` bounds the ordered stop
    /// that the first one starts.
    pub(crate) fn listen(hard_limit: Duration) -> anyhow::Result<Self> {
        let mut term = signal(SignalKind::terminate()).context("Failed to listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("Failed to listen for SIGINT")?;
        let shutdown = CancellationToken::new();
        let (force, forced) = oneshot::channel();
        let first = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("Signal received: shutting down (a second signal exits at once).");
            first.cancel();
            let outcome = tokio::select! {
                _ = term.recv() => Forced::SecondSignal,
                _ = int.recv() => Forced::SecondSignal,
                () = tokio::time::sleep(hard_limit) => Forced::HardLimit,
            };
            let _ = force.send(outcome);
        });
        Ok(Self { shutdown, forced })
    }

    /// Cancelled by the first signal.
    pub(crate) fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Resolves when the stop is forced; never, if it is not.
    pub(crate) async fn forced(self) -> Forced {
        match self.forced.await {
            Ok(forced) => forced,
            Err(_) => std::future::pending().await,
        }
    }
}
