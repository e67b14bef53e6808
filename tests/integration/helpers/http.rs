//! The daemon's health endpoint over plain HTTP/1.1: where it listens (the
//! address it logged), and a blocking GET.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::process::{log_of, wait_for};

/// The address the daemon logged for its health endpoint (it listens on
/// port 0: no port picked by a test can be taken by another meanwhile).
pub async fn health_address(state: &Path) -> SocketAddr {
    let mut found = None;
    wait_for("the health endpoint", Duration::from_secs(30), async || {
        found = logged_health_address(state);
        found.is_some()
    })
    .await;
    found.unwrap()
}

/// The health endpoint's address in the daemon's log so far, if any.
pub fn logged_health_address(state: &Path) -> Option<SocketAddr> {
    log_of(state)
        .lines()
        .find(|l| l.contains("Serving the page"))
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

/// A blocking HTTP/1.1 GET: (status code, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, &[])
}

/// [`http_get`] with more request headers.
pub fn http_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    try_http_get_with(addr, path, headers).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// [`http_get`], with an error instead of a panic when nothing answers (yet)
/// or the answer is no HTTP response.
pub fn try_http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    try_http_get_with(addr, path, &[])
}

fn try_http_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{}\r\n",
        headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect::<String>()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid(format!("no HTTP header end: {response:?}")))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| invalid(format!("no status: {head}")))?;
    Ok((code, body.to_string()))
}

/// `/metrics` parsed by Prometheus's own Python parser: (name, labels, value)
/// for every sample.
pub fn parse_metrics(text: &str) -> Vec<(String, serde_json::Value, f64)> {
    use std::io::Write as _;
    let script = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = []\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       out.append([s.name, s.labels, s.value, family.type])\n\
        print(json.dumps(out))\n";
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (scripts/setup-machine.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: Vec<(String, serde_json::Value, f64, String)> =
        serde_json::from_slice(&output.stdout).unwrap();
    samples
        .into_iter()
        .map(|(name, labels, value, _)| (name, labels, value))
        .collect()
}
