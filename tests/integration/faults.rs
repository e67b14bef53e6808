//! The faults a gateway really meets, made for real: a full filesystem (a
//! small tmpfs the test mounts, so root), a store file damaged three ways, a
//! store deleted under the running daemon, a state directory the daemon
//! cannot use. In each, nothing the daemon could keep is lost, and it says
//! what happened.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use victron_poller::store::{LocalStore, StoreReader};

use crate::helpers::http::try_http_get;
use crate::helpers::http::{health_address, logged_health_address};
use crate::helpers::process::{
    log_of, sigterm, spawn_daemon_with, successful_polls, try_store_status, wait_exit, wait_for,
};
use crate::helpers::process::{run_cli, texts};
use crate::helpers::simulator::{simulator, site_device_names, write_config};

/// `write_config` with the health endpoint on, on a port the kernel
/// picks (see [`health_address`]).
fn config_with_health(dir: &Path, gx_port: u16, poll_ms: u64) -> PathBuf {
    let config = write_config(dir, gx_port, poll_ms);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&config)
        .unwrap();
    writeln!(file, "[health]\nlisten = \"127.0.0.1:0\"").unwrap();
    config
}

/// The `/healthz` answer's text (empty while nothing answers).
fn healthz(addr: SocketAddr) -> String {
    try_http_get(addr, "/healthz")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Readings in the store at `state`, read by a reader of its own.
async fn stored(state: &Path) -> i64 {
    let store = StoreReader::open(state).await.unwrap();
    let depth = store.depth().await.unwrap().readings;
    store.close().await;
    depth
}

/// [`stored`], or 0 while the store is not there (yet): for waits.
async fn try_stored(state: &Path) -> i64 {
    let Ok(store) = StoreReader::open(state).await else {
        return 0;
    };
    let depth = store.depth().await.map_or(0, |b| b.readings);
    store.close().await;
    depth
}

/// Every successful poll the daemon's last status document counts.
fn polls_made(doc: &serde_json::Value) -> i64 {
    site_device_names().map(|d| successful_polls(doc, d)).sum()
}

/// A tmpfs of `size` mounted at `at`, unmounted when dropped.
#[cfg(feature = "servers")]
struct Tmpfs(PathBuf);

#[cfg(feature = "servers")]
impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        assert!(
            rustix_is_root(),
            "mounting a tmpfs needs root: run the suite as scripts/test does"
        );
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

#[cfg(feature = "servers")]
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[cfg(feature = "servers")]
fn rustix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Fills the filesystem of `file`'s directory until it refuses more.
#[cfg(feature = "servers")]
fn fill(file: &Path) {
    let mut out = std::fs::File::create(file).unwrap();
    let block = vec![0x5a_u8; 16 * 1024];
    loop {
        if let Err(e) = out.write_all(&block).and_then(|()| out.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "ENOSPC, not {e}");
            break;
        }
    }
}

/// A full disk: the store refuses writes for a while; the readings wait in
/// memory, the daemon says it is degraded and why, writing resumes by
/// itself within seconds of space returning, and at a clean stop every
/// successful poll is in the store.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_no_reading_and_says_so() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_health(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    let _tmpfs = Tmpfs::mount(&state, "4m");
    let mut daemon = spawn_daemon_with(&config, &state, &[]);
    let health = health_address(&state).await;
    wait_for("40 readings stored", Duration::from_secs(20), async || {
        try_stored(&state).await >= 40
    })
    .await;

    let filler = state.join("filler");
    fill(&filler);
    wait_for(
        "the daemon degraded: the store refuses writes",
        Duration::from_secs(20),
        async || healthz(health).contains("the local store refuses writes"),
    )
    .await;
    // Three seconds of refused writes, by the daemon's own account.
    wait_for(
        "writes refused for 3 s",
        Duration::from_secs(20),
        async || {
            let body = healthz(health);
            body.split("refuses writes since ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s >= 3)
        },
    )
    .await;
    // `status`, reading the store it cannot write: degraded, not down (the
    // daemon holds its lock).
    wait_for(
        "status: degraded, the status not saved",
        Duration::from_secs(30),
        async || {
            let output = run_cli(
                &[
                    "--config",
                    config.to_str().unwrap(),
                    "status",
                    "--state-dir",
                    state.to_str().unwrap(),
                ],
                &[],
            );
            let (out, _) = texts(&output);
            output.status.code() == Some(1) && out.contains("has not saved its status")
        },
    )
    .await;
    std::fs::remove_file(&filler).unwrap();
    let freed = std::time::Instant::now();
    wait_for("writes resumed", Duration::from_secs(10), async || {
        let body = healthz(health);
        !body.is_empty() && !body.contains("refuses writes")
    })
    .await;
    let resumed_after = freed.elapsed();
    assert!(
        healthz(health).contains("\"healthy\""),
        "nothing was lost, so nothing else is wrong: {}",
        healthz(health)
    );

    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    let log = log_of(&state);
    assert!(log.contains("Cannot write to the local store"), "{log}");
    assert!(
        log.contains("The local store takes readings again"),
        "{log}"
    );
    assert!(
        log.contains("Every reading received is in the local store."),
        "{log}"
    );
    let doc = try_store_status(&state).await.expect("the last status");
    let polls = polls_made(&doc);
    let kept = stored(&state).await;
    eprintln!(
        "full disk: {polls} polls made, {kept} readings kept, resumed {resumed_after:?} after the space returned"
    );
    assert_eq!(kept, polls, "every successful poll is in the store");
}

/// Damages the store at `file` one way.
fn damage(file: &Path, how: &str) {
    let mut bytes = std::fs::read(file).unwrap();
    let len = bytes.len();
    assert!(
        len > 16 * 1024,
        "a store of {len} bytes is too small to damage"
    );
    match how {
        "header" => bytes[..100].fill(0xA5),
        // Cut in the middle of a page, half-way: what is cut off must hold
        // pages in use, not only free ones.
        "truncated" => bytes.truncate(len / 2 / 1024 * 1024 + 512),
        // The middle third overwritten with noise: wide enough that it
        // always hits pages in use, not only free ones.
        "scribbled" => {
            let mut x = 0x2545_f491_u32;
            for b in &mut bytes[len / 3..len * 2 / 3] {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x.to_le_bytes()[0];
            }
        }
        _ => unreachable!(),
    }
    std::fs::write(file, bytes).unwrap();
}

/// A power cut that damages the store no longer stops the gateway: the
/// damaged file is moved aside, a new store started, what can be read is
/// copied over, and the daemon polls on, degraded with the reason, until
/// the operator removes the moved-aside file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_moved_aside_and_polling_goes_on() {
    let sim = simulator().await;
    for how in ["header", "truncated", "scribbled"] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), sim.addr().port(), 100);
        let state = dir.path().join("state");
        let mut daemon = spawn_daemon_with(&config, &state, &[]);
        wait_for("readings stored", Duration::from_secs(30), async || {
            try_stored(&state).await >= 150
        })
        .await;
        sigterm(&daemon);
        assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
        // Everything into the main file (a reader may have kept the WAL).
        LocalStore::open(&state).await.unwrap().close().await;
        let before = stored(&state).await;
        damage(&state.join("victron-poller.sqlite"), how);

        let config = config_with_health(dir.path(), sim.addr().port(), 100);
        let mut daemon = spawn_daemon_with(&config, &state, &[]);
        // The address it logs, or what it logged instead.
        let since = std::time::Instant::now();
        let health: SocketAddr = loop {
            if let Some(addr) = logged_health_address(&state) {
                break addr;
            }
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "{how}: no health endpoint; exited: {:?}; log: {}",
                daemon.0.try_wait(),
                log_of(&state)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        wait_for(
            "degraded: the store was moved aside",
            Duration::from_secs(60),
            async || healthz(health).contains("was damaged and moved aside"),
        )
        .await;
        let aside: Vec<PathBuf> = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("victron-poller.sqlite.corrupt-")
                    && p.extension().is_none_or(|e| e != "log")
                    && !p.to_string_lossy().ends_with("-wal")
                    && !p.to_string_lossy().ends_with("-shm")
            })
            .collect();
        assert_eq!(aside.len(), 1, "{how}: {aside:?}");
        let log = log_of(&state);
        let saved: i64 = log
            .lines()
            .find(|l| l.contains("Readings copied from the damaged local store"))
            .and_then(|l| l.split("readings=").nth(1))
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{how}: no count of readings saved: {log}"));
        // Even without a header (SQLite cannot read the file at all), the
        // pages still yield their rows.
        assert!(
            saved > 0 && saved <= before,
            "{how}: {saved} of {before} readings saved"
        );
        eprintln!("damaged store ({how}): {saved} of {before} readings saved");
        // Polling goes on into the new store.
        wait_for("new readings", Duration::from_secs(20), async || {
            try_stored(&state).await > saved + 20
        })
        .await;
        // `status` says the same as /healthz.
        let output = run_cli(
            &[
                "--config",
                config.to_str().unwrap(),
                "status",
                "--state-dir",
                state.to_str().unwrap(),
            ],
            &[],
        );
        let (out, err) = texts(&output);
        assert_eq!(output.status.code(), Some(1), "{how}: {out}{err}");
        assert!(out.contains("was damaged and moved aside"), "{out}");

        // Removing the moved-aside file ends it.
        std::fs::remove_file(&aside[0]).unwrap();
        wait_for("healthy again", Duration::from_secs(20), async || {
            healthz(health).contains("\"healthy\"")
        })
        .await;
        sigterm(&daemon);
        assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    }
}

/// A store deleted while the daemon runs is noticed within seconds,
/// rebuilt from the open file and reopened: every successful poll is in
/// the new file at the stop, and the daemon said what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_deleted_under_the_daemon_is_rebuilt() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_health(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon_with(&config, &state, &[]);
    let health = health_address(&state).await;
    wait_for("readings stored", Duration::from_secs(20), async || {
        try_stored(&state).await >= 40
    })
    .await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(state.join(format!("victron-poller.sqlite{suffix}")));
    }
    wait_for(
        "degraded: the store was deleted",
        Duration::from_secs(30),
        async || healthz(health).contains("was deleted while the daemon ran"),
    )
    .await;
    assert!(
        healthz(health).contains("nothing lost"),
        "{}",
        healthz(health)
    );
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    let log = log_of(&state);
    assert!(
        log.contains("Every reading received is in the local store."),
        "{log}"
    );
    let doc = try_store_status(&state).await.expect("the last status");
    assert_eq!(stored(&state).await, polls_made(&doc));
}

/// A state directory the daemon cannot use is one line naming it and the
/// cause once, and exit 73, which the unit does not restart on.
#[test]
fn a_state_directory_the_daemon_cannot_use_exits_73_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[[vedirect]]\nname = \"bank\"\npath = \"/dev/null\"\n",
    )
    .unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let state = file.join("state");
    let output = run_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    );
    let (_, err) = texts(&output);
    assert_eq!(output.status.code(), Some(73), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&state.display().to_string()), "{line}");
    assert_eq!(line.matches("Not a directory").count(), 1, "{line}");
    assert!(
        !line.contains("error communicating with database"),
        "{line}"
    );
}
