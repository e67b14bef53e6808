//! The daemon without a database: the local store is the database. One
//! daemon per state directory; a SIGTERM mid-batch loses no reading.

use std::time::Duration;

use victron_poller::config::ModbusClass;
use victron_poller::store::LocalStore;

use crate::helpers::process::{
    run_cli, sigterm, spawn_daemon, store_status, successful_polls, texts, try_store_status,
    wait_exit, wait_for,
};
use crate::helpers::simulator::{simulator, site_device_names, write_config};

/// One daemon per state directory: a second one started on it refuses,
/// naming the directory, and the first goes on polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_directory_refuses() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    let mut first = spawn_daemon(&config, &state, None);
    wait_for(
        "the first daemon's readings",
        Duration::from_secs(20),
        async || {
            try_store_status(&state)
                .await
                .is_some_and(|doc| doc["rows_stored"].as_i64().unwrap_or(0) > 0)
        },
    )
    .await;
    let second = run_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    );
    let (stdout, stderr) = texts(&second);
    assert_ne!(second.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("another victron-poller daemon runs on the state directory")
            && stderr.contains(state.to_str().unwrap()),
        "{stderr}"
    );
    let before = store_status(&state).await["rows_stored"].as_i64().unwrap();
    wait_for(
        "the first daemon still storing",
        Duration::from_secs(20),
        async || {
            try_store_status(&state)
                .await
                .is_some_and(|doc| doc["rows_stored"].as_i64().unwrap_or(0) > before)
        },
    )
    .await;
    sigterm(&first);
    assert_eq!(wait_exit(&mut first, Duration::from_secs(20)), 0);
}

/// No database: the local store is the database, and `status` reads it.
/// SIGTERM mid-batch: every reading the sources produced is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_and_sigterm_during_a_batch() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon(&config, &state, None);
    // 100 ms polls, 2 s batches (no database): SIGTERM once 40 readings are stored and
    // a batch is open (the daemon's last status document counts more
    // readings polled than its store held).
    wait_for(
        "40 readings stored and a batch open",
        Duration::from_secs(20),
        async || {
            try_store_status(&state).await.is_some_and(|doc| {
                let stored = doc["spool_depth"].as_i64().unwrap_or(0);
                let polled: i64 = site_device_names().map(|d| successful_polls(&doc, d)).sum();
                stored >= 40 && polled > stored
            })
        },
    )
    .await;
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(10)), 0);

    let doc = store_status(&state).await;
    let store = LocalStore::open(&state).await.unwrap();
    let stored = store.depth().await.unwrap().readings;
    let produced: i64 = site_device_names().map(|d| successful_polls(&doc, d)).sum();
    assert!(produced >= 40, "{produced} readings before the SIGTERM");
    assert_eq!(stored, produced, "every reading produced is in the store");
    let latest = store.latest("bank").await.unwrap().unwrap();
    assert_eq!(
        latest.reading.float("soc"),
        sim.served(ModbusClass::Battery, "/Soc")
    );
    store.close().await;

    // Stopped cleanly: down at once, and says why.
    let output = run_cli(&["status", "--state-dir", state.to_str().unwrap()], &[]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("health       down"), "{stdout}");
    assert!(stdout.contains("because    the daemon stopped"), "{stdout}");
    for device in site_device_names() {
        assert!(stdout.contains(device), "{stdout}");
    }
    let json = run_cli(
        &["status", "--json", "--state-dir", state.to_str().unwrap()],
        &[],
    );
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["readings_stored"].as_i64(), Some(stored));
}
