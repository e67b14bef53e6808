//! Stopping the daemon when its stop cannot finish: a second signal ends it
//! at once (exit 130) with the local store intact; nothing in the process
//! but `main` exits.

use std::time::{Duration, Instant};

use victron_poller::store::LocalStore;

use crate::daemon::{sigterm, simulator, spawn_daemon_with, wait_exit, wait_for, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_and_keeps_the_store() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    // Nothing listens on port 1: the forwarder can never drain, so the
    // ordered stop waits out its 10 s deadline.
    let mut daemon = spawn_daemon_with(
        &config,
        &state,
        &[("DATABASE_URL", "postgres://u@127.0.0.1:1/x")],
    );
    wait_for(
        "readings in the local store",
        Duration::from_secs(20),
        async || match LocalStore::open_read_only(&state).await {
            Ok(store) => {
                let depth = store.depth().await.map(|(n, _)| n).unwrap_or(0);
                store.close().await;
                depth > 8
            }
            Err(_) => false,
        },
    )
    .await;
    sigterm(&daemon);
    wait_for("the stop under way", Duration::from_secs(10), async || {
        std::fs::read_to_string(state.with_extension("log"))
            .is_ok_and(|log| log.contains("Every reading received is in the local store."))
    })
    .await;
    let second = Instant::now();
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(5)), 130);
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "exited {:?} after the second signal",
        second.elapsed()
    );
    let log = std::fs::read_to_string(state.with_extension("log")).unwrap();
    assert!(log.contains("Second signal: exiting now"), "{log}");
    let store = LocalStore::open(&state).await.unwrap();
    let (depth, _) = store.depth().await.unwrap();
    store.close().await;
    assert!(depth > 8, "the store kept its {depth} readings");
}
