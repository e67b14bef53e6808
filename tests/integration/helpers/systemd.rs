//! A systemd booted in a namespace of its own (`scripts/systemd-ns.sh`), to
//! run the unit and the Debian package under a real service manager.
//! Built with the `servers` feature only (it needs root, as `scripts/test`
//! runs).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `scripts/systemd-ns.sh`: boots systemd in a namespace of its own.
const SYSTEMD_NS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/systemd-ns.sh");

/// One systemd namespace at a time: they would share this machine's cgroup
/// tree, and two systemds managing the same unit's cgroup break each other.
static ONE_SYSTEMD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A systemd in its own namespace, stopped when dropped.
pub struct Systemd {
    pid: String,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Systemd {
    pub fn boot() -> Systemd {
        // A test that failed while holding it has stopped its systemd.
        let turn = ONE_SYSTEMD.lock().unwrap_or_else(|e| e.into_inner());
        let output = Command::new("bash")
            .args([SYSTEMD_NS, "start", "600"])
            .output()
            .expect("run scripts/systemd-ns.sh");
        assert!(
            output.status.success(),
            "systemd did not boot in its namespace (root and systemd needed: scripts/test): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Systemd {
            pid: String::from_utf8(output.stdout).unwrap().trim().to_string(),
            _turn: turn,
        }
    }

    /// Runs `args` inside, with `stdin` as its input.
    pub fn run_with(&self, args: &[&str], stdin: Stdio) -> Output {
        Command::new("bash")
            .args([SYSTEMD_NS, "run", &self.pid])
            .args(args)
            .stdin(stdin)
            .output()
            .unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, Stdio::null())
    }

    pub fn sh(&self, script: &str) -> String {
        let output = self.run(&["sh", "-c", script]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Writes `contents` to `path` inside.
    pub fn write(&self, path: &str, contents: &[u8], mode: &str) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), contents).unwrap();
        let output = self.run_with(
            &[
                "sh",
                "-c",
                &format!("mkdir -p \"$(dirname {path})\" && cat > {path} && chmod {mode} {path}"),
            ],
            Stdio::from(std::fs::File::open(file.path()).unwrap()),
        );
        assert!(output.status.success(), "write {path}: {output:?}");
    }

    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// One property of the unit (`systemctl show -p NAME --value`).
    pub fn property(&self, name: &str) -> String {
        let output = self.systemctl(&["show", "-p", name, "--value", "victron-poller"]);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn journal(&self, extra: &[&str]) -> String {
        let mut args = vec![
            "journalctl",
            "-u",
            "victron-poller",
            "--no-pager",
            "-o",
            "cat",
        ];
        args.extend_from_slice(extra);
        String::from_utf8_lossy(&self.run(&args).stdout).into_owned()
    }

    /// Waits until `check` holds, showing the unit's state and journal if not.
    pub fn wait(&self, what: &str, limit: Duration, check: impl Fn(&Systemd) -> bool) {
        let start = Instant::now();
        while !check(self) {
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}: {} {} NRestarts={}\n{}",
                self.property("ActiveState"),
                self.property("SubState"),
                self.property("NRestarts"),
                self.journal(&[])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Readings in the service's local store, by `status --json` (-1 when
    /// it cannot tell).
    pub fn readings_stored(&self) -> i64 {
        let out = self.sh("victron-poller status --json --state-dir /var/lib/victron-poller");
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["readings_stored"].as_i64())
            .unwrap_or(-1)
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([SYSTEMD_NS, "stop", &self.pid])
            .status();
    }
}
