//! Debian's headless chromium, driven from its command line: a page loaded
//! with its own scripts run (`--virtual-time-budget`), the DOM after them,
//! what the page wrote to its console, every request the page made (from
//! chromium's net log; chromium's own calls home are told apart by their
//! initiator), and a screenshot. `scripts/setup-machine.sh` installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The real binary (Debian's `/usr/bin/chromium` is a wrapper script).
const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// A page as chromium loaded it.
#[derive(Debug)]
pub struct Page {
    /// The DOM after the page's scripts ran.
    pub dom: String,
    /// Every message the page wrote to its console, uncaught errors
    /// included (chromium logs them all at one level: the page writes
    /// none, so any is a failure).
    pub console_errors: Vec<String>,
    /// Every URL the page requested.
    pub requests: Vec<String>,
    /// The screenshot (412 × 915, a phone).
    pub screenshot: PathBuf,
}

/// Loads `url` in a phone-sized window and lets its scripts run for
/// `seconds` of the page's (virtual) time; the screenshot is saved as
/// `<dir>/<name>.png` and, for the test's output, in `target/screenshots/`.
pub fn load(url: &str, dir: &Path, name: &str, seconds: u32) -> Page {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/setup-machine.sh installs Debian's chromium"
    );
    let net_log = dir.join(format!("{name}-net.json"));
    let screenshot = dir.join(format!("{name}.png"));
    let output = chromium(dir, name, seconds, (412, 915))
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--log-net-log={}", net_log.display()))
        .arg(format!("--screenshot={}", screenshot.display()))
        .args(["--dump-dom", url])
        .output()
        .expect("timeout (coreutils) runs chromium");
    let dom = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !dom.is_empty(),
        "chromium failed on {url} ({}): {stderr}",
        output.status
    );
    let console_errors = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE:"))
        .map(str::to_string)
        .collect();
    let saved = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    let _ = std::fs::create_dir_all(&saved);
    let _ = std::fs::copy(&screenshot, saved.join(format!("{name}.png")));
    Page {
        dom,
        console_errors,
        requests: page_requests(&net_log),
        screenshot,
    }
}

/// The URLs the page requested, from chromium's net log: the
/// `URL_REQUEST_START_JOB` events of the page (the navigation, or an
/// initiator that is an origin), not chromium's own.
fn page_requests(net_log: &Path) -> Vec<String> {
    let raw = std::fs::read_to_string(net_log).expect("chromium's net log");
    let log: serde_json::Value = serde_json::from_str(&raw)
        .or_else(|_| serde_json::from_str(&format!("{}]}}", raw.trim_end().trim_end_matches(','))))
        .expect("the net log is JSON");
    let start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].clone();
    log["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == start)
        .filter_map(|e| {
            let params = &e["params"];
            let url = params["url"].as_str()?;
            let page = params["initiator"] != "not an origin"
                || params["request_type"] == "main frame"
                || params["request_type"] == "sub frame";
            page.then(|| url.to_string())
        })
        .collect()
}

/// A screenshot of `url` in a `width` × `height` window, in the dark
/// colour scheme when `dark`, saved as `target/screenshots/<name>.png`.
pub fn screenshot(url: &str, dir: &Path, name: &str, (width, height): (u32, u32), dark: bool) {
    let saved = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&saved).unwrap();
    let path = saved.join(format!("{name}.png"));
    let mut command = chromium(dir, name, 5, (width, height));
    command.arg(format!("--screenshot={}", path.display()));
    if dark {
        command.arg("--blink-settings=preferredColorScheme=0");
    }
    let output = command
        .arg(url)
        .output()
        .expect("timeout (coreutils) runs chromium");
    assert!(
        output.status.success() && path.exists(),
        "chromium's screenshot of {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Headless chromium as root on a throwaway profile under `dir`, with a
/// `width` × `height` window, letting pages run `seconds` of their time;
/// under `timeout` (a request that is never answered hangs chromium).
fn chromium(dir: &Path, name: &str, seconds: u32, (width, height): (u32, u32)) -> Command {
    let mut command = Command::new("timeout");
    command
        .arg("60")
        .arg(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--virtual-time-budget={}", seconds * 1000))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!(
            "--user-data-dir={}",
            dir.join(format!("{name}-profile")).display()
        ))
        .env("XDG_CONFIG_HOME", dir.join(format!("{name}-xdg")));
    command
}
