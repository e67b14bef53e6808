//! Stopping the daemon: with its database out of reach the stop does not
//! wait for a drain that cannot happen; when a stop cannot finish (a frozen
//! link), a second signal ends it at once (exit 130) with the local store
//! intact. Nothing in the process but `main` exits.

use std::path::Path;
use std::time::{Duration, Instant};

use victron_poller::store::StoreReader;

use crate::helpers::process::{log_of, sigterm, spawn_daemon_with, wait_exit, wait_for};
use crate::helpers::simulator::{simulator, write_config};

/// Readings waiting in the local store at `state`.
async fn stored(state: &Path) -> i64 {
    match StoreReader::open(state).await {
        Ok(store) => {
            let depth = store.depth().await.map(|b| b.readings).unwrap_or(0);
            store.close().await;
            depth
        }
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_out_of_reach_a_stop_does_not_wait_to_drain() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    // Nothing listens on port 1.
    let mut daemon = spawn_daemon_with(
        &config,
        &state,
        &[("DATABASE_URL", "postgres://u@127.0.0.1:1/x")],
    );
    wait_for(
        "readings in the local store",
        Duration::from_secs(20),
        async || stored(&state).await > 8,
    )
    .await;
    let stop = Instant::now();
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    // It did not wait for the drain deadline (10 s): the log says so, and
    // the time, with room for a busy machine, agrees.
    assert!(
        stop.elapsed() < Duration::from_secs(10),
        "the stop took {:?} (the drain deadline is 10 s)",
        stop.elapsed()
    );
    assert!(!log_of(&state).contains("Shutdown deadline reached"));
    assert!(
        stored(&state).await > 8,
        "the readings wait for the next start"
    );
}

#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_and_keeps_the_store() {
    use crate::helpers::database::{Flavour, TcpProxy, TestDb, server_address, url_via};
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let proxy = TcpProxy::start(server_address(&db.url)).await;
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.addr().port(), 100);
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon_with(
        &config,
        &state,
        &[("DATABASE_URL", &url_via(&db.url, proxy.addr()))],
    );
    wait_for("rows forwarded", Duration::from_secs(30), async || {
        db.scalar_i64("SELECT count(*) FROM victron.battery_readings")
            .await
            > 3
    })
    .await;
    // The link goes silent: the forwarder's write waits, the drain cannot end.
    proxy.freeze();
    wait_for("readings waiting", Duration::from_secs(20), async || {
        stored(&state).await > 8
    })
    .await;
    sigterm(&daemon);
    wait_for("the stop under way", Duration::from_secs(10), async || {
        log_of(&state).contains("Every reading received is in the local store.")
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
    assert!(
        log_of(&state).contains("Second signal: exiting now"),
        "{}",
        log_of(&state)
    );
    assert!(stored(&state).await > 8, "the store kept its readings");
}
