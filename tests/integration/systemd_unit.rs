//! The shipped systemd unit: `systemd-analyze verify` accepts it, and
//! `systemd-analyze security` rates its exposure 2.0 or lower ("OK") (with
//! the `system-tools` feature); it keeps what the daemon needs and opens no
//! more.

#[cfg(feature = "system-tools")]
use std::process::Command;

/// The unit with its binary path pointed at the binary under test
/// (`verify` checks that the executable exists).
#[cfg(feature = "system-tools")]
fn unit_under_test(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/victron-poller.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/victron-poller run"));
    let path = dir.join("victron-poller.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/victron-poller",
            env!("CARGO_BIN_EXE_victron-poller"),
        ),
    )
    .unwrap();
    path
}

#[cfg(feature = "system-tools")]
fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze (scripts/setup-machine.sh installs systemd)")
}

#[cfg(feature = "system-tools")]
#[test]
fn the_unit_file_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let output = systemd_analyze(&["verify", unit.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // verify prints problems without failing for some of them.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("victron-poller.service"))
        .collect();
    assert!(complaints.is_empty(), "{stderr}");
}

#[cfg(feature = "system-tools")]
#[test]
fn the_unit_is_rated_ok_by_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    // --threshold counts tenths: 20 is an exposure of 2.0.
    let output = systemd_analyze(&[
        "security",
        "--offline=yes",
        "--threshold=20",
        "--no-pager",
        unit.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let overall = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall level: {stdout}"));
    let level: f64 = overall
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unparsable: {overall}"));
    assert!(level <= 2.0, "{overall}\n{stdout}");
    assert!(output.status.success(), "above the threshold: {stdout}");
    eprintln!("{overall}");
}

#[test]
fn the_unit_keeps_what_the_daemon_needs() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/victron-poller.service"
    ))
    .unwrap();
    // A failing ExecStartPre= would restart in a loop: RestartPreventExitStatus=
    // only looks at the main process, which checks the configuration itself.
    assert!(
        !unit.lines().any(|l| l.starts_with("ExecStartPre=")),
        "{unit}"
    );
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=78 73",
        "StateDirectory=victron-poller",
        "EnvironmentFile=-/etc/victron-poller/victron-poller.env",
        "SupplementaryGroups=dialout",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "missing {line}");
    }
    // The daemon's own hard stop (drain deadline 10 s + 30 s) comes first.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .unwrap();
    assert!(stop > 40, "TimeoutStopSec={stop}");
}

#[test]
fn the_environment_file_example_names_real_settings() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/victron-poller.env.example"
    ))
    .unwrap();
    let known: Vec<String> = victron_poller::config::KNOWN_KEYS
        .iter()
        .map(|k| victron_poller::config::env_var_for(k.key))
        .chain(["DATABASE_URL", "PORT", "LOG_FORMAT"].map(String::from))
        .collect();
    let mut named = 0;
    for line in text.lines() {
        let setting = line.trim_start_matches('#').trim();
        let Some((name, _)) = setting.split_once('=') else {
            continue;
        };
        if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !name.is_empty() {
            assert!(known.iter().any(|k| k == name), "unknown variable {name}");
            named += 1;
        }
    }
    assert!(named >= 3, "{text}");
}

/// The sandbox lets the daemon do what it needs and no more: every serial
/// port class a gateway has (DeviceAllow= names drivers as /proc/devices
/// lists them), the kernel's NTP state read (`adjtimex`: no ProtectClock=,
/// whose own seccomp filter denies it whatever SystemCallFilter= says),
/// the clock never set, and room for more open files than the default 1024.
/// (`systemd_sandbox` runs it under a real systemd.)
#[test]
fn the_unit_opens_the_serial_ports_and_the_clock_state_and_no_more() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/victron-poller.service"
    ))
    .unwrap();
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(values("DevicePolicy"), ["closed"]);
    let allowed = values("DeviceAllow");
    // USB adapters, and the onboard UARTs: 8250/16550 (ttyS, major 4) and
    // a Raspberry Pi's PL011 (ttyAMA, major 204).
    for class in ["char-ttyUSB", "char-ttyACM", "char-ttyS", "char-ttyAMA"] {
        assert!(
            allowed.iter().any(|a| a == &format!("{class} rw")),
            "{class} not allowed: {allowed:?}"
        );
    }
    assert_eq!(allowed.len(), 4, "nothing else: {allowed:?}");
    assert!(values("ProtectClock").iter().all(|v| v == "no"), "{unit}");
    let filters = values("SystemCallFilter");
    let allows: Vec<&str> = filters
        .iter()
        .filter(|f| !f.starts_with('~'))
        .flat_map(|f| f.split_whitespace())
        .collect();
    assert!(allows.contains(&"adjtimex"), "{filters:?}");
    for setter in [
        "clock_settime",
        "settimeofday",
        "@clock",
        "@privileged",
        "stime",
    ] {
        assert!(!allows.contains(&setter), "{setter} allowed: {filters:?}");
    }
    // No capability at all, so no CAP_SYS_TIME: adjtimex with modes fails.
    assert_eq!(values("CapabilityBoundingSet"), [""]);
    let nofile: Vec<u64> = values("LimitNOFILE")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(
        matches!(nofile[..], [n] if n > 1024),
        "LimitNOFILE: {nofile:?}"
    );
}
