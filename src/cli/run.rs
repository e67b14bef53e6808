//! `victron-poller run`: the daemon. SIGTERM or SIGINT stops it in order
//! (sources, then the partial batch into the local store, then the forwarder
//! with a deadline); a second signal exits at once.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::Exit;
use crate::config::Config;
use crate::daemon::{self, RunOptions};

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of the local store (default: $STATE_DIRECTORY as systemd
    /// sets it, else ./victron-poller-state).
    #[arg(long, env = "VICTRON_POLLER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Longest wait for the forwarder to drain at shutdown, in seconds.
    #[arg(long, default_value_t = 10)]
    pub drain_deadline_s: u64,
}

/// The state directory from the flag, systemd's `StateDirectory=`, or the default.
pub fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("STATE_DIRECTORY")
            .map(PathBuf::from)
            .map(|p| {
                p.to_string_lossy()
                    .split(':')
                    .next()
                    .map(PathBuf::from)
                    .unwrap_or(p)
            })
    })
    .unwrap_or_else(|| PathBuf::from("victron-poller-state"))
}

/// Cancels the returned token on the first SIGTERM or SIGINT; exits the
/// process at once on the second, or when a graceful stop takes longer than
/// `limit` (so that a stuck stop never needs a SIGKILL).
pub fn shutdown_on_signals(limit: Duration) -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("Failed to listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("Failed to listen for SIGINT")?;
    let first = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("Signal received: shutting down (a second signal exits at once).");
        first.cancel();
        tokio::select! {
            _ = term.recv() => {
                tracing::warn!("Second signal: exiting now; the local store keeps what it has.");
                crate::logging::flush();
                std::process::exit(130);
            }
            _ = int.recv() => {
                tracing::warn!("Second signal: exiting now; the local store keeps what it has.");
                crate::logging::flush();
                std::process::exit(130);
            }
            () = tokio::time::sleep(limit) => {
                tracing::error!(limit_s = limit.as_secs(), "Stopping took too long: exiting now; the local store keeps what it has.");
                crate::logging::flush();
                std::process::exit(1);
            }
        }
    });
    Ok(token)
}

/// Runs `run`.
pub async fn exec(config: Config, args: RunArgs) -> anyhow::Result<Exit> {
    config.check_runnable()?;
    let drain_deadline = Duration::from_secs(args.drain_deadline_s);
    let shutdown = shutdown_on_signals(drain_deadline + Duration::from_secs(30))?;
    let options = RunOptions {
        state_dir: state_dir(args.state_dir),
        drain_deadline,
        batch_report: None,
    };
    daemon::run(config, options, shutdown).await?;
    Ok(Exit::Ok)
}
