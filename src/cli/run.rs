//! `victron-poller run`: the daemon. SIGTERM or SIGINT stops it in order
//! (sources, then the partial batch into the local store, then the forwarder
//! with a deadline); a second signal, or a stop past its hard limit, ends it
//! at once (exit 130, 70). A database server the connection does not
//! verify is warned about once, at start.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Exit;
use crate::config::Config;
use crate::daemon::{self, DrainPolicy, RunOptions};
use crate::signals::{Forced, Signals};

/// Options of `run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Directory of the local store (default: $STATE_DIRECTORY as systemd
    /// sets it, else ./victron-poller-state).
    #[arg(long, env = crate::config::STATE_DIR_ENV, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Longest wait for the forwarder to drain at shutdown, in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) drain_deadline_s: u64,
}

/// The state directory when neither `--state-dir` nor systemd names one.
pub(crate) const DEFAULT_STATE_DIR: &str = "victron-poller-state";

/// The state directory from the flag, systemd's `StateDirectory=`, or the default.
pub(crate) fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    state_dir_or(flag, PathBuf::from(DEFAULT_STATE_DIR))
}

/// The state directory from the flag, systemd's `StateDirectory=` (its
/// first directory), or `fallback`.
pub(crate) fn state_dir_or(flag: Option<PathBuf>, fallback: PathBuf) -> PathBuf {
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
    .unwrap_or(fallback)
}

/// Runs `run`.
pub(crate) async fn exec(config: Config, args: RunArgs) -> anyhow::Result<Exit> {
    config.check_runnable()?;
    for server in config.unverified_servers() {
        tracing::warn!(key = server.key, host = %server.host, "{server}");
    }
    let drain = DrainPolicy::with_forward_deadline(Duration::from_secs(args.drain_deadline_s));
    let signals = Signals::listen(drain.hard_limit())?;
    let options = RunOptions {
        state_dir: state_dir(args.state_dir),
        drain,
        batch_report: None,
    };
    until_stopped(daemon::run(config, options, signals.shutdown()), signals).await
}

/// Runs the daemon future until it ends, or until the stop is forced.
pub(crate) async fn until_stopped(
    daemon: impl std::future::Future<Output = anyhow::Result<()>>,
    signals: Signals,
) -> anyhow::Result<Exit> {
    tokio::select! {
        outcome = daemon => outcome.map(|()| Exit::Ok),
        forced = signals.forced() => Ok(match forced {
            Forced::SecondSignal => {
                tracing::warn!("Second signal: exiting now; the local store keeps what it has.");
                Exit::Interrupted
            }
            Forced::HardLimit => {
                tracing::error!("Stopping took too long: exiting now; the local store keeps what it has.");
                Exit::Internal
            }
        }),
    }
}
