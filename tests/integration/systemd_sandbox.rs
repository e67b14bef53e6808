//! What the shipped unit's sandbox lets the daemon do, under a real systemd
//! (252, booted by `scripts/systemd-ns.sh` as in `systemd_service`): read
//! the kernel's clock synchronisation state (`adjtimex`), open an onboard
//! UART (`ttyS`), more open files than 1024, and not set the clock; with
//! the settings it replaced (`ProtectClock=yes`, USB serial classes only)
//! the same daemon is refused both, which shows the test can tell. And the
//! package's reading of the environment file (debian/environment-file.sh)
//! against systemd's own, and its post-install script with a password that
//! a shell would run.
//!
//! Needs root (namespaces, mounts), which `scripts/test` has.

use std::time::Duration;

use crate::helpers::env_file::{ENV_FILE, t_variables};
use crate::helpers::systemd::Systemd;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/victron-poller.service"
);
const CONFIG: &str = "/etc/victron-poller/victron-poller.toml";
/// A node of the 8250/16550 driver (`ttyS`, major 4) with a minor no UART
/// answers to: opening it reaches the driver (ENXIO), unless the device
/// cgroup refuses first (EPERM). In /run of the namespace, not the host's /dev.
const UART: &str = "/run/victron-poller-test/ttyS-none";

fn install(systemd: &Systemd) {
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
    systemd.write(
        CONFIG,
        format!(
            "[log]\nlevel = \"info\"\n\
             [[vedirect]]\nname = \"uart\"\npath = \"{UART}\"\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 300\n"
        )
        .as_bytes(),
        "644",
    );
    let made = systemd.run(&[
        "sh",
        "-c",
        &format!(
            "mkdir -p \"$(dirname {UART})\" && mknod {UART} c 4 95 && chgrp dialout {UART} \
             && chmod 660 {UART}"
        ),
    ]);
    assert!(made.status.success(), "{made:?}");
    assert!(systemd.systemctl(&["daemon-reload"]).status.success());
}

/// Starts the service on an empty state directory and waits for the status
/// document of a daemon that has tried the UART; gives it.
fn fresh_status(systemd: &Systemd) -> serde_json::Value {
    systemd.systemctl(&["stop", "victron-poller"]);
    systemd.sh("rm -rf /var/lib/private/victron-poller /var/lib/victron-poller");
    let started = systemd.systemctl(&["start", "victron-poller"]);
    assert!(
        started.status.success(),
        "{started:?}\n{}",
        systemd.journal(&[])
    );
    let status = || -> Option<serde_json::Value> {
        let out = systemd.sh("victron-poller status --json --state-dir /var/lib/victron-poller");
        let report: serde_json::Value = serde_json::from_str(&out).ok()?;
        let tried = report["devices"]
            .as_array()?
            .iter()
            .any(|d| d["last_error"].is_string());
        tried.then_some(report)
    };
    systemd.wait(
        "a status document with the UART tried",
        Duration::from_secs(20),
        |_| status().is_some(),
    );
    status().unwrap()
}

fn uart_error(report: &serde_json::Value) -> String {
    report["devices"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_sandbox_lets_the_daemon_read_the_clock_state_and_open_a_uart() {
    // What the kernel says to a process outside any sandbox (the namespace
    // shares this machine's kernel).
    let kernel = victron_poller::clock::kernel_synchronised();
    assert!(kernel.is_some(), "adjtimex fails outside the sandbox too");
    let systemd = Systemd::boot();
    install(&systemd);

    let report = fresh_status(&systemd);
    assert_eq!(
        report["daemon"]["status"]["clock"]["synchronised"].as_bool(),
        kernel,
        "{report:#}"
    );
    let error = uart_error(&report);
    assert!(error.contains(UART), "{report:#}");
    assert!(!error.contains("Operation not permitted"), "{error}");
    let pid = systemd.property("MainPID");
    let limits = systemd.sh(&format!("cat /proc/{pid}/limits"));
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"))
        .split_whitespace()
        .collect();
    assert_eq!(files[3..5], ["4096", "4096"], "{limits}");
    // The clock is read, never set: no capability at all (so no
    // CAP_SYS_TIME), and no system call that sets it.
    assert_eq!(systemd.property("CapabilityBoundingSet"), "");
    let filter = systemd.property("SystemCallFilter");
    let calls: Vec<&str> = filter.split_whitespace().collect();
    assert!(calls.contains(&"adjtimex"), "{filter}");
    for setter in ["clock_settime", "settimeofday", "stime"] {
        assert!(!calls.contains(&setter), "{setter}: {filter}");
    }

    // The settings this unit replaced: the kernel cannot be asked, and the
    // device cgroup refuses the UART.
    systemd.write(
        "/etc/systemd/system/victron-poller.service.d/before.conf",
        b"[Service]\nProtectClock=yes\nDeviceAllow=\nDeviceAllow=char-ttyUSB rw\nDeviceAllow=char-ttyACM rw\n",
        "644",
    );
    assert!(systemd.systemctl(&["daemon-reload"]).status.success());
    let before = fresh_status(&systemd);
    assert!(
        before["daemon"]["status"]["clock"]["synchronised"].is_null(),
        "{before:#}"
    );
    assert!(
        uart_error(&before).contains("Operation not permitted"),
        "{before:#}"
    );
}

#[test]
fn the_package_reads_the_environment_file_as_systemd_does() {
    let systemd = Systemd::boot();
    systemd.write("/etc/test.env", ENV_FILE.as_bytes(), "600");
    systemd.write(
        "/etc/systemd/system/show-env.service",
        b"[Service]\nType=oneshot\nEnvironmentFile=/etc/test.env\n\
          ExecStart=/usr/bin/env -0\nStandardOutput=file:/run/env.systemd\n",
        "644",
    );
    systemd.write(
        "/usr/share/victron-poller/environment-file.sh",
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/debian/environment-file.sh"
        ))
        .unwrap(),
        "644",
    );
    assert!(systemd.systemctl(&["daemon-reload"]).status.success());
    assert!(systemd.systemctl(&["start", "show-env"]).status.success());
    let by_systemd = systemd.run(&["cat", "/run/env.systemd"]).stdout;
    let ours = systemd.run(&[
        "sh",
        "-c",
        ". /usr/share/victron-poller/environment-file.sh && envfile_exec /etc/test.env /usr/bin/env -0",
    ]);
    assert!(ours.status.success(), "{ours:?}");
    let by_systemd = t_variables(&by_systemd);
    assert!(by_systemd.len() > 10, "{by_systemd:?}");
    assert_eq!(t_variables(&ours.stdout), by_systemd);
    assert!(
        by_systemd.contains(&("T_PASSWORD".into(), "a;touch /tmp/pwned;b".into())),
        "{by_systemd:?}"
    );
    assert_eq!(
        systemd
            .sh("test -e /tmp/pwned && echo run || echo never")
            .trim(),
        "never"
    );
}

#[test]
fn the_post_install_script_never_runs_the_environment_file() {
    let systemd = Systemd::boot();
    // The package's files, as dpkg would have unpacked them.
    systemd.sh("rm -f /usr/sbin/policy-rc.d");
    systemd.write(
        "/usr/bin/victron-poller",
        &std::fs::read(env!("CARGO_BIN_EXE_victron-poller")).unwrap(),
        "755",
    );
    let unit = std::fs::read_to_string(UNIT)
        .unwrap()
        .replace("/usr/local/bin/victron-poller", "/usr/bin/victron-poller");
    systemd.write(
        "/lib/systemd/system/victron-poller.service",
        unit.as_bytes(),
        "644",
    );
    for (from, to, mode) in [
        (
            "debian/environment-file.sh",
            "/usr/share/victron-poller/environment-file.sh",
            "644",
        ),
        ("debian/postinst", "/root/postinst", "755"),
    ] {
        let path = format!("{}/{from}", env!("CARGO_MANIFEST_DIR"));
        systemd.write(to, &std::fs::read(path).unwrap(), mode);
    }
    systemd.write(
        CONFIG,
        b"[[gx]]\nhost = \"127.0.0.1\"\nport = 1\n[[gx.devices]]\nname = \"gx\"\nclass = \"system\"\n",
        "644",
    );
    let env_file = "/etc/victron-poller/victron-poller.env";
    let configure = |env: &str| {
        systemd.write(env_file, env.as_bytes(), "600");
        // As dpkg runs it (deb-systemd-helper insists).
        let output = systemd.run(&[
            "env",
            "DPKG_MAINTSCRIPT_PACKAGE=victron-poller",
            "DPKG_MAINTSCRIPT_NAME=postinst",
            "/root/postinst",
            "configure",
            "",
        ]);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // A password without a URL is a configuration check-config refuses: the
    // file's values reach it.
    let said = configure("VICTRON_POLLER_DATABASE__PASSWORD=a;touch /tmp/pwned;b\n");
    assert!(said.contains("enabled but not started"), "{said}");
    assert_eq!(systemd.property("ActiveState"), "inactive");
    // With the URL too, it is accepted, and the service started.
    let said = configure(
        "VICTRON_POLLER_DATABASE__PASSWORD=\"a;touch /tmp/pwned;b\"\n\
         DATABASE_URL=postgres://victron@localhost/ranch\n",
    );
    assert!(!said.contains("not started"), "{said}");
    systemd.wait("the service started", Duration::from_secs(20), |s| {
        s.property("ActiveState") == "active"
    });
    // Never run: no file, in either form.
    assert_eq!(
        systemd
            .sh("test -e /tmp/pwned && echo run || echo never")
            .trim(),
        "never"
    );
}
