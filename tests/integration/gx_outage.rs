//! A GX that answered and then went away (a reboot, the network), against
//! the built-in simulator over real loopback sockets: the advice in the
//! error says what happened rather than how to enable Modbus TCP, and the
//! daemon's log has one warning for the GX and one line when it is back,
//! not one per device.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use victron_poller::config::GxConfig;
use victron_poller::simulator::gx::{self, GxSimOptions};
use victron_poller::sources::modbus::GxPoller;
use victron_poller::status::{ErrorClass, StatusBoard};

use crate::helpers::http::http_get;
use crate::helpers::process::{log_of, sigterm, spawn_daemon_with, wait_exit, wait_for};
use crate::helpers::simulator::{
    simulator, site_device_configs, site_device_names, site_devices_toml,
};

fn gx_config(port: u16) -> GxConfig {
    GxConfig {
        site: String::new(),
        host: "127.0.0.1".into(),
        port,
        poll_interval: Duration::from_millis(200),
        request_timeout: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(50),
        devices: site_device_configs(),
    }
}

/// Polls until a poll is not skipped for the reconnect delay (at most 5 s).
async fn poll_when_due(poller: &mut GxPoller) {
    let start = Instant::now();
    while poller.poll_once().await.skipped {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no poll due in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Refused before the GX ever answered: enable Modbus TCP. Refused after it
/// answered: it went away, and the advice about Modbus TCP would mislead.
#[tokio::test]
async fn a_refused_connection_advises_modbus_tcp_only_before_the_gx_answered() {
    // A port nothing listens on, where the simulator starts later.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let status = StatusBoard::new();
    let mut poller = GxPoller::new(&gx_config(addr.port()), status.clone(), tx);
    assert_eq!(poller.poll_once().await.failed, 4);
    let never = status.get("bank").unwrap();
    assert_eq!(never.last_error_class, Some(ErrorClass::Connect));
    assert_eq!(
        never.last_error.as_deref(),
        Some(
            format!(
                "cannot connect to {addr}: connection refused: \
                 enable Modbus TCP on the GX: Settings → Services → Modbus TCP"
            )
            .as_str()
        )
    );

    let listener = TcpListener::bind(addr).await.expect("bind the port");
    let sim = gx::start(listener, GxSimOptions::default()).unwrap();
    poll_when_due(&mut poller).await;
    assert!(status.get("bank").unwrap().is_healthy());

    sim.stop();
    // The connection the GX closes, then reconnects until one is refused
    // (the simulator's listener closes as its task ends).
    let start = Instant::now();
    let gone = loop {
        poll_when_due(&mut poller).await;
        let bank = status.get("bank").unwrap();
        let refused = bank
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("connection refused"));
        if bank.last_error_class == Some(ErrorClass::Connect) && refused {
            break bank;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no refused reconnect in 5 s: {bank:?}"
        );
    };
    assert_eq!(
        gone.last_error.as_deref(),
        Some(
            format!(
                "cannot connect to {addr}: connection refused: \
                 the GX answered before and went away (rebooting, or the network)"
            )
            .as_str()
        )
    );
    while rx.try_recv().is_ok() {}
}

/// The daemon's configuration: the four devices of one GX polled every
/// 200 ms, quick reconnects, and the health endpoint on a free port.
fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[health]\nlisten = \"127.0.0.1:0\"\n\
         [[gx]]\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval_ms = 200\n\
         request_timeout_ms = 500\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n{}",
        site_devices_toml()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Each device's `victron_poller_consecutive_failures` on `/metrics`.
async fn consecutive_failures(addr: SocketAddr) -> Vec<f64> {
    let (_, page) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    site_device_names()
        .map(|name| {
            page.lines()
                .find(|l| {
                    l.starts_with("victron_poller_consecutive_failures{")
                        && l.contains(&format!("device=\"{name}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no consecutive failures of {name}: {page}"))
        })
        .collect()
}

/// Lines of the daemon's log that contain `text`.
fn lines_with(log: &str, text: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}

/// One outage of a GX with four devices is one warning naming the GX and
/// its four devices — through many failed reconnects, and with no
/// per-device "down" lines — and one line when it is back, saying after
/// how long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gx_outage_is_one_warning_and_one_line_when_it_is_back() {
    let sim = simulator().await;
    let addr = sim.addr();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), addr.port());
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon_with(&config, &state, &[]);
    wait_for(
        "every device's first poll",
        Duration::from_secs(20),
        async || lines_with(&log_of(&state), "Device answered its first poll.").len() == 4,
    )
    .await;
    let mut health = None;
    wait_for("the health endpoint", Duration::from_secs(10), async || {
        health = lines_with(&log_of(&state), "Serving the page")
            .first()
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        health.is_some()
    })
    .await;
    let health = health.unwrap();

    let stopped = Instant::now();
    sim.stop();
    wait_for(
        "a failed poll of every device",
        Duration::from_secs(20),
        async || consecutive_failures(health).await.iter().all(|n| *n >= 1.0),
    )
    .await;
    // The outage began before this.
    let down_since_at_least = Instant::now();
    // Several reconnects refused: every device has failed five polls in a row.
    wait_for(
        "five failed polls of every device",
        Duration::from_secs(20),
        async || consecutive_failures(health).await.iter().all(|n| *n >= 5.0),
    )
    .await;
    let log = log_of(&state);
    let went_away = lines_with(&log, "The GX went away");
    assert_eq!(went_away.len(), 1, "one warning for the outage: {log}");
    assert!(went_away[0].contains("WARN"), "{}", went_away[0]);
    assert!(
        went_away[0].contains("its 4 devices are down until it answers again")
            && went_away[0].contains("devices=4")
            && went_away[0].contains(&format!("gx={addr}")),
        "{}",
        went_away[0]
    );
    assert!(lines_with(&log, "Device is down.").is_empty(), "{log}");
    assert!(lines_with(&log, "enable Modbus TCP").is_empty(), "{log}");

    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let restarted = Instant::now();
    let _sim = gx::start(listener, GxSimOptions::default()).unwrap();
    wait_for("the GX back", Duration::from_secs(20), async || {
        !lines_with(&log_of(&state), "The GX is back after").is_empty()
    })
    .await;
    let seen_back = stopped.elapsed();
    let log = log_of(&state);
    let back = lines_with(&log, "The GX is back after");
    assert_eq!(back.len(), 1, "{log}");
    let seconds: f64 = back[0]
        .split("The GX is back after ")
        .nth(1)
        .and_then(|rest| rest.split(" s.").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {}", back[0]));
    // Down from after the stop to after the restart: at least from when the
    // first failures were seen to the restart, at most from the stop to the
    // line.
    let lower = (restarted - down_since_at_least).as_secs_f64();
    assert!(
        seconds >= lower - 0.1 && seconds <= seen_back.as_secs_f64() + 0.1,
        "back after {seconds} s, not within {lower:.2} … {:.2} s",
        seen_back.as_secs_f64()
    );
    assert!(lines_with(&log, "Device is back.").is_empty(), "{log}");
    assert_eq!(lines_with(&log, "The GX went away").len(), 1, "{log}");

    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
}
