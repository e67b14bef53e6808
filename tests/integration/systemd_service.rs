//! The shipped unit under a real systemd (252, Debian 12's), booted by
//! `scripts/systemd-ns.sh` as PID 1 of its own namespace over a throwaway
//! overlay, with the built binary and the GX simulator on this machine's
//! loopback: start → READY and a status line; `status` on the state
//! directory; kill -9 → restarted; the local store kept across restarts
//! under `DynamicUser=`; the journal's priorities; the watchdog killing a
//! hung daemon (and not one whose GX stopped answering); a broken
//! configuration failing once (exit 78), not in a loop; `systemctl stop`
//! draining.
//!
//! Needs root (namespaces, mounts), which `scripts/test` has.

use std::time::Duration;

use victron_poller::simulator::gx;

use crate::helpers::simulator::simulator;
use crate::helpers::systemd::Systemd;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/victron-poller.service"
);
const CONFIG: &str = "/etc/victron-poller/victron-poller.toml";

fn config(port: u16) -> String {
    format!(
        "[log]\nlevel = \"info\"\n\
         [[gx]]\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval_ms = 200\n\
         request_timeout_ms = 300\nreconnect_min_ms = 50\nreconnect_max_ms = 300\n\
         [[gx.devices]]\nname = \"gx\"\nclass = \"system\"\n\
         [[gx.devices]]\nname = \"bank\"\nclass = \"battery\"\nunit_id = 226\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_under_a_real_systemd() {
    let sim = simulator().await;
    let port = sim.addr().port();
    // The simulator runs on this runtime; systemd is driven from a blocking thread.
    tokio::task::spawn_blocking(move || scenario(port, &sim))
        .await
        .unwrap();
}

fn scenario(port: u16, sim: &gx::SimHandle) {
    let systemd = Systemd::boot();
    systemd.write(
        "/usr/local/bin/victron-poller",
        &std::fs::read(env!("CARGO_BIN_EXE_victron-poller")).unwrap(),
        "755",
    );
    systemd.write(
        "/etc/systemd/system/victron-poller.service",
        &std::fs::read(UNIT).unwrap(),
        "644",
    );
    systemd.write(CONFIG, config(port).as_bytes(), "644");
    assert!(systemd.systemctl(&["daemon-reload"]).status.success());

    // Type=notify: `start` returns once the daemon said READY=1.
    let started = systemd.systemctl(&["start", "victron-poller"]);
    assert!(
        started.status.success(),
        "{started:?}\n{}",
        systemd.journal(&[])
    );
    assert_eq!(systemd.property("ActiveState"), "active");
    systemd.wait("a STATUS= line", Duration::from_secs(10), |s| {
        s.property("StatusText")
            .contains("2 of 2 device(s) answering")
    });
    systemd.wait("readings in the store", Duration::from_secs(10), |s| {
        s.readings_stored() >= 5
    });
    let status = systemd.run(&[
        "/usr/local/bin/victron-poller",
        "status",
        "--state-dir",
        "/var/lib/victron-poller",
    ]);
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    // DynamicUser=: the store belongs to a user systemd allocated.
    let owner = systemd.sh("stat -c %U /var/lib/private/victron-poller/victron-poller.sqlite");
    assert!(
        !owner.trim().is_empty() && owner.trim() != "root",
        "{owner}"
    );

    // kill -9: Restart= brings it back, with the store it had.
    let before_kill = systemd.readings_stored();
    let first_pid = systemd.property("MainPID");
    systemd.sh(&format!("kill -9 {first_pid}"));
    systemd.wait("the restart after kill -9", Duration::from_secs(20), |s| {
        s.property("NRestarts") == "1"
            && s.property("ActiveState") == "active"
            && s.property("MainPID") != first_pid
    });
    systemd.wait("the store kept and growing", Duration::from_secs(10), |s| {
        s.readings_stored() > before_kill
    });

    // The journal carries priorities: the device-down warning, not the info lines.
    sim.set_offline(226, true);
    systemd.wait("the device-down warning", Duration::from_secs(10), |s| {
        s.journal(&["-p", "warning"]).contains("Device is down.")
    });
    let warnings = systemd.journal(&["-p", "warning"]);
    assert!(
        !warnings.contains("Device answered its first poll."),
        "{warnings}"
    );
    assert!(
        systemd
            .journal(&[])
            .contains("Device answered its first poll."),
        "the info lines are in the journal at their own priority"
    );
    sim.set_offline(226, false);

    // The watchdog guards the daemon, not the devices. A GX that stops
    // answering is a device down (every poll still completes, as a
    // timeout): the daemon stays up and says so; restarting it would not
    // bring the GX back. A daemon that hangs (frozen here with SIGSTOP)
    // stops feeding the watchdog: systemd kills and restarts it.
    systemd.write(
        "/etc/systemd/system/victron-poller.service.d/watchdog.conf",
        b"[Service]\nWatchdogSec=2s\nTimeoutAbortSec=1s\nEnvironment=VICTRON_POLLER_HEALTH__STALL_TIMEOUT_MS=1500\n",
        "644",
    );
    assert!(systemd.systemctl(&["daemon-reload"]).status.success());
    assert!(
        systemd
            .systemctl(&["restart", "victron-poller"])
            .status
            .success()
    );
    let watched_pid = systemd.property("MainPID");
    let restarts = systemd.property("NRestarts");
    sim.set_delay(Duration::from_secs(3600));
    systemd.wait("the GX reported down", Duration::from_secs(10), |s| {
        s.property("StatusText")
            .contains("0 of 2 device(s) answering")
    });
    // Three watchdog periods with the GX silent: not killed.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(systemd.property("MainPID"), watched_pid);
    assert_eq!(systemd.property("NRestarts"), restarts);
    assert!(!systemd.journal(&[]).contains("Watchdog timeout"));
    sim.set_delay(Duration::ZERO);

    systemd.sh(&format!("kill -STOP {watched_pid}"));
    systemd.wait("the watchdog's kill", Duration::from_secs(20), |s| {
        s.journal(&[]).contains("Watchdog timeout")
    });
    systemd.wait(
        "the restart after the watchdog",
        Duration::from_secs(30),
        |s| s.property("ActiveState") == "active" && s.property("MainPID") != watched_pid,
    );
    systemd.run(&[
        "rm",
        "/etc/systemd/system/victron-poller.service.d/watchdog.conf",
    ]);
    assert!(systemd.systemctl(&["daemon-reload"]).status.success());

    // A broken configuration: exit 78 once, then failed, not a restart loop
    // (RestartSec shortened so that a loop would show at once).
    systemd.write(
        "/etc/systemd/system/victron-poller.service.d/fast.conf",
        b"[Service]\nRestartSec=200ms\n",
        "644",
    );
    systemd.write(
        CONFIG,
        format!("{}[log]\nlevel = \"infoo\"\n", config(port)).as_bytes(),
        "644",
    );
    assert!(systemd.systemctl(&["daemon-reload"]).status.success());
    let refused = systemd.systemctl(&["restart", "victron-poller"]);
    assert!(!refused.status.success());
    systemd.wait("the failed state", Duration::from_secs(10), |s| {
        s.property("ActiveState") == "failed"
    });
    assert_eq!(systemd.property("ExecMainStatus"), "78");
    // Ten restart delays later, still failed and never restarted.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(systemd.property("ActiveState"), "failed");
    assert_eq!(systemd.property("NRestarts"), "0");

    // Fixed: it starts again; `systemctl stop` drains and exits 0.
    systemd.write(CONFIG, config(port).as_bytes(), "644");
    assert!(
        systemd
            .systemctl(&["reset-failed", "victron-poller"])
            .status
            .success()
    );
    assert!(
        systemd
            .systemctl(&["start", "victron-poller"])
            .status
            .success()
    );
    let stopped = systemd.systemctl(&["stop", "victron-poller"]);
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(systemd.property("ActiveState"), "inactive");
    assert_eq!(systemd.property("ExecMainStatus"), "0");
    assert_eq!(systemd.property("Result"), "success");
    let journal = systemd.journal(&[]);
    assert!(
        journal.contains("Every reading received is in the local store."),
        "{journal}"
    );
}
