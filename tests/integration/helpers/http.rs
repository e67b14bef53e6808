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
        .find(|l| l.contains("Serving /healthz"))
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

/// A blocking HTTP/1.1 GET: (status code, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// [`http_get`], with an error instead of a panic when nothing answers (yet)
/// or the answer is no HTTP response.
pub fn try_http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
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
