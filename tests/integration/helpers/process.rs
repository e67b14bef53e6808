//! The built binary as a process: one-shot commands (`run_cli`), the daemon
//! (`run`) spawned with a clean environment and its log in a file, waiting
//! for a state it reaches, stopping it, and the status document it saves in
//! its local store.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use victron_poller::store::{LocalStore, StoreReader};

#[cfg(feature = "servers")]
use super::database::Route;

/// Runs the built binary with a clean environment plus `env`.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_victron-poller"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run victron-poller")
}

/// Standard output and error of a finished command, as text.
pub fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A daemon process, killed if a failing test leaves it running.
#[derive(Debug)]
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `run`, reaching the database at `database_url` if one is given.
pub fn spawn_daemon(config: &Path, state: &Path, database_url: Option<&str>) -> Daemon {
    let env: Vec<(&str, &str)> = database_url
        .map(|u| ("DATABASE_URL", u))
        .into_iter()
        .collect();
    spawn_daemon_with(config, state, &env)
}

/// Starts `run` with a clean environment plus `env`; its log goes to
/// `state` + `.log`. Like systemd, it names the process in `WATCHDOG_PID`
/// (which matters only when `env` sets `WATCHDOG_USEC`).
pub fn spawn_daemon_with(config: &Path, state: &Path, env: &[(&str, &str)]) -> Daemon {
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            "WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_victron-poller"),
            "--config",
            config.to_str().unwrap(),
            "run",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        // A file, not a pipe nobody reads: a full pipe would block the daemon.
        .stderr(std::fs::File::create(state.with_extension("log")).expect("daemon log file"));
    Daemon(command.spawn().expect("start the daemon"))
}

/// Starts `run` reaching the database at `url` (a URL by `route`).
#[cfg(feature = "servers")]
pub fn spawn_daemon_routed(config: &Path, state: &Path, route: Route, url: &str) -> Daemon {
    let env = route.daemon_env(url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_daemon_with(config, state, &env)
}

/// What a daemon started by [`spawn_daemon_with`] has logged so far.
pub fn log_of(state: &Path) -> String {
    std::fs::read_to_string(state.with_extension("log")).unwrap_or_default()
}

pub fn sigterm(daemon: &Daemon) {
    Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
}

/// The daemon's exit code, once it has exited (at most `limit` from now).
pub fn wait_exit(daemon: &mut Daemon, limit: Duration) -> i32 {
    let child = &mut daemon.0;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < limit,
            "the daemon did not stop within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `check` holds, checking every 100 ms, at most `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `device`'s status on `board` (an in-process source's)
/// satisfies `done` (at most 10 s), and returns that status.
pub async fn wait_for_status(
    board: &victron_poller::status::StatusBoard,
    device: &str,
    what: &str,
    done: impl Fn(&victron_poller::status::DeviceStatus) -> bool,
) -> victron_poller::status::DeviceStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = board.get(device).filter(&done) {
            return status;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting for {what}: {:?}",
            board.get(device)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The status document a stopped daemon saved last in its local store at
/// `state`: what it polled for each device, what its store holds.
pub async fn store_status(state: &Path) -> serde_json::Value {
    let store = LocalStore::open(state).await.unwrap();
    let (doc, _) = store
        .load_status("daemon")
        .await
        .unwrap()
        .expect("status document");
    store.close().await;
    doc
}

/// The daemon's last status document, read (read-only) while it may be
/// running; `None` until it has saved one.
pub async fn try_store_status(state: &Path) -> Option<serde_json::Value> {
    let store = StoreReader::open(state).await.ok()?;
    let doc = store.load_status("daemon").await.ok().flatten();
    store.close().await;
    doc.map(|(doc, _)| doc)
}

/// Polls of `device` the status document `doc` counts as successful.
pub fn successful_polls(doc: &serde_json::Value, device: &str) -> i64 {
    let d = doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device)
        .unwrap_or_else(|| panic!("no device {device} in {doc}"));
    d["polls"].as_i64().unwrap() - d["failures"].as_i64().unwrap()
}
