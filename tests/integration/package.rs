//! The Debian package, under a real systemd in its own namespace: `dpkg -i`
//! enables the service without starting it and says so; once the
//! configuration names a device it starts and polls; installing a newer
//! version keeps the edited configuration and the local store and restarts
//! the service; `dpkg --purge` leaves nothing behind.
//!
//! `scripts/test` builds the two packages with `scripts/package` (the same
//! binary under two versions) and names them in `TEST_DEB_OLD` and
//! `TEST_DEB_NEW`.

use std::time::Duration;

use crate::helpers::simulator::simulator;
use crate::helpers::systemd::Systemd;

const CONFIG: &str = "/etc/victron-poller/victron-poller.toml";

fn package(var: &str) -> Vec<u8> {
    let path = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suite with scripts/test, which builds the packages")
    });
    std::fs::read(&path).unwrap_or_else(|e| panic!("{var}={path}: {e}"))
}

/// The package's version, as dpkg reads it.
fn version_of(deb: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), deb).unwrap();
    let output = std::process::Command::new("dpkg-deb")
        .args(["-f", file.path().to_str().unwrap(), "Version"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_upgrades_and_purges() {
    let sim = simulator().await;
    let port = sim.addr().port();
    tokio::task::spawn_blocking(move || scenario(port))
        .await
        .unwrap();
    drop(sim);
}

fn scenario(port: u16) {
    let (old, new) = (package("TEST_DEB_OLD"), package("TEST_DEB_NEW"));
    let new_version = version_of(&new);
    assert_ne!(version_of(&old), new_version);
    let systemd = Systemd::boot();
    // This machine's image forbids maintainer scripts to start services
    // (Docker's policy-rc.d, exit 101); a real gateway has none. The overlay
    // lets it go without touching the host.
    systemd.sh("rm -f /usr/sbin/policy-rc.d");
    systemd.write("/root/old.deb", &old, "644");
    systemd.write("/root/new.deb", &new, "644");

    // Installed: enabled, not started, and the terminal says why.
    let installed = systemd.run(&["dpkg", "-i", "/root/old.deb"]);
    let said = String::from_utf8_lossy(&installed.stdout);
    assert!(installed.status.success(), "{installed:?}");
    assert!(
        said.contains("the service is enabled but not started")
            && said.contains("names no device yet"),
        "{said}"
    );
    assert_eq!(
        systemd.sh("systemctl is-enabled victron-poller").trim(),
        "enabled"
    );
    assert_eq!(systemd.property("ActiveState"), "inactive");
    assert_eq!(
        systemd
            .sh("stat -c %a /etc/victron-poller/victron-poller.env")
            .trim(),
        "600",
        "the file for secrets is root-only"
    );
    let conffiles = systemd.sh("dpkg-query -W -f='${Conffiles}' victron-poller");
    for file in [CONFIG, "/etc/victron-poller/victron-poller.env"] {
        assert!(
            conffiles.contains(file),
            "{file} is a conffile: {conffiles}"
        );
    }
    assert!(
        systemd
            .sh("grep '^ExecStart=' /lib/systemd/system/victron-poller.service")
            .contains("ExecStart=/usr/bin/victron-poller run")
    );

    // The operator names a GX: it starts and polls.
    let edit = format!(
        "\n[[gx]]\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval_ms = 200\n\
         [[gx.devices]]\nname = \"gx\"\nclass = \"system\"\n"
    );
    systemd.sh(&format!("printf '%s' '{edit}' >> {CONFIG}"));
    let check = systemd.run(&["victron-poller", "--config", CONFIG, "check-config"]);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(
        systemd
            .systemctl(&["start", "victron-poller"])
            .status
            .success()
    );
    systemd.wait("readings stored", Duration::from_secs(15), |s| {
        s.readings_stored() >= 5
    });

    // A newer version over it: the edit and the store stay, the service restarts.
    let before_pid = systemd.property("MainPID");
    let before_readings = systemd.readings_stored();
    let upgraded = systemd.run(&["dpkg", "-i", "/root/new.deb"]);
    assert!(upgraded.status.success(), "{upgraded:?}");
    assert_eq!(
        systemd
            .sh("dpkg-query -W -f='${Version}' victron-poller")
            .trim(),
        new_version
    );
    systemd.wait("the restart on upgrade", Duration::from_secs(15), |s| {
        s.property("ActiveState") == "active" && s.property("MainPID") != before_pid
    });
    assert!(
        systemd
            .sh(&format!("cat {CONFIG}"))
            .contains(&format!("port = {port}")),
        "the edited configuration was kept"
    );
    systemd.wait("the store kept and growing", Duration::from_secs(15), |s| {
        s.readings_stored() > before_readings
    });

    // Purged: stopped, and nothing of it is left.
    let purged = systemd.run(&["dpkg", "--purge", "victron-poller"]);
    assert!(purged.status.success(), "{purged:?}");
    assert_ne!(systemd.property("ActiveState"), "active");
    for path in [
        "/usr/bin/victron-poller",
        "/lib/systemd/system/victron-poller.service",
        "/etc/systemd/system/multi-user.target.wants/victron-poller.service",
        "/etc/victron-poller",
        "/var/lib/victron-poller",
        "/var/lib/private/victron-poller",
        "/usr/share/doc/victron-poller",
    ] {
        assert_eq!(
            systemd.sh(&format!("test -e {path} && echo left")).trim(),
            "",
            "{path} is left after the purge"
        );
    }
    let leftovers = systemd.sh(
        "find /etc /lib /usr /var -name '*victron-poller*' 2>/dev/null | grep -v '^/var/log/journal'",
    );
    assert_eq!(leftovers.trim(), "", "left after the purge: {leftovers}");
}
