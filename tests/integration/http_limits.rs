//! The health endpoint under abuse, against the real daemon under a real
//! open-file limit (`prlimit`): clients holding every connection it serves,
//! more it must close at once, headers far too large, clients too slow to
//! finish theirs. The GX connection, the local store and the endpoint itself
//! keep working.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use victron_poller::simulator::gx::SimHandle;

use crate::helpers::http::{health_address, try_http_get};
use crate::helpers::process::{
    Daemon, log_of, sigterm, successful_polls, try_store_status, wait_exit, wait_for,
};
use crate::helpers::simulator::{simulator, site_devices_toml};

/// What the daemon logs each time its Modbus connection to the GX opens.
const GX_CONNECTED: &str = "Connected to the GX.";
/// What the daemon logs when a GX that went away answers again.
const GX_BACK: &str = "The GX is back after";

fn config(dir: &Path, sim: &SimHandle) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[site]\ninstallation_id = \"http-limits\"\n[log]\nlevel = \"info\"\n\
             [health]\nlisten = \"127.0.0.1:0\"\n\
             [[gx]]\nhost = \"127.0.0.1\"\nport = {}\npoll_interval_ms = 200\n\
             request_timeout_ms = 500\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n{}",
            sim.addr().port(),
            site_devices_toml()
        ),
    )
    .unwrap();
    path
}

/// Starts `run` under the open-file limit `nofile` (`soft:hard`), set by
/// util-linux's `prlimit` before it executes the daemon (the daemon is the
/// child itself); the log goes to `state` + `.log`.
fn spawn_limited(config: &Path, state: &Path, nofile: &str) -> Daemon {
    let child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_victron-poller"))
        .args(["--config", config.to_str().unwrap(), "run", "--state-dir"])
        .arg(state)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(state.with_extension("log")).expect("daemon log file"))
        .spawn()
        .expect("prlimit (util-linux) starts the daemon under an open-file limit");
    Daemon(child)
}

/// The open-file limit of process `pid` in force, as the kernel reports it:
/// (soft, hard).
fn open_file_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-file limit in {limits}"));
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

/// How many descriptors process `pid` has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// One `GET path` on a kept-alive connection: the response's status once
/// its whole body has arrived.
async fn exchange(stream: &mut TcpStream, path: &str) -> std::io::Result<u16> {
    use std::io::{Error, ErrorKind};
    let invalid = |what: String| Error::new(ErrorKind::InvalidData, what);
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await?;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let code = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| invalid(format!("no status: {head}")))?;
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse().ok())
                .ok_or_else(|| invalid(format!("no content-length: {head}")))?;
            if buffer.len() >= end + 4 + length {
                return Ok(code);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "no response within 10 s"))??;
        if n == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "closed"));
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the server closes `stream` within `limit` without sending
/// anything (end of stream or a reset).
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(limit, stream.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Connections kept busy, one `GET /healthz` on each every second (well
/// within the endpoint's header read timeout), until `stop`; gives them
/// back with how many rounds every one of them answered, or the first one
/// that failed.
fn keep_busy(
    mut held: Vec<TcpStream>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<(Vec<TcpStream>, u32), String>> {
    tokio::spawn(async move {
        let mut rounds = 0;
        loop {
            for (i, stream) in held.iter_mut().enumerate() {
                match exchange(stream, "/healthz").await {
                    Ok(200 | 503) => {}
                    Ok(code) => return Err(format!("connection {i}: status {code}")),
                    Err(error) => return Err(format!("connection {i} lost: {error}")),
                }
            }
            rounds += 1;
            tokio::select! {
                () = stop.cancelled() => return Ok((held, rounds)),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

/// Under 64 open files, HTTP clients hold every connection the endpoint
/// serves and try 48 more; the GX drops its connection, and the daemon
/// opens a new one and polls on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_clients_cannot_take_the_descriptors_the_gx_needs() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim);
    let state = dir.path().join("state");
    let mut daemon = spawn_limited(&config, &state, "64:64");
    let pid = daemon.0.id();
    let addr = health_address(&state).await;
    assert_eq!(open_file_limit(pid), ("64".into(), "64".into()));
    // 64 files, 48 kept for the daemon itself (README): 16 for HTTP.
    wait_for("the connection limit", Duration::from_secs(5), async || {
        log_of(&state).contains("at most 16 connections at once")
    })
    .await;
    wait_for("the GX connected", Duration::from_secs(10), async || {
        count(&log_of(&state), GX_CONNECTED) == 1
    })
    .await;

    // Every place taken, and kept: each holder has had an answer.
    let mut held = Vec::new();
    for i in 0..16 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let code = exchange(&mut stream, "/healthz")
            .await
            .unwrap_or_else(|e| panic!("connection {i} of 16 refused: {e}"));
        assert!(code == 200 || code == 503, "{code}");
        held.push(stream);
    }
    let stop = CancellationToken::new();
    let holders = keep_busy(held, stop.clone());

    // 48 more (16 + 48 = the whole limit, were they kept): each closed at
    // once, well before the header read timeout (5 s) would close it.
    let mut refused = Vec::new();
    for i in 0..48 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_by_server(&mut stream, Duration::from_secs(2)).await,
            "connection {i} beyond the limit was not closed at once"
        );
        refused.push(stream);
    }
    let in_use = open_descriptors(pid);
    assert!(in_use < 64, "{in_use} descriptors open under a limit of 64");
    eprintln!("daemon descriptors with 16 HTTP connections held: {in_use}");

    // The GX drops the connection: the daemon needs a new descriptor.
    let polls_before = sim.requests();
    sim.drop_connections();
    wait_for("the GX reconnected", Duration::from_secs(20), async || {
        log_of(&state).contains(GX_BACK)
    })
    .await;
    let after_reconnect = sim.requests();
    assert!(after_reconnect > polls_before);
    wait_for(
        "polls on the new connection",
        Duration::from_secs(10),
        async || sim.requests() >= after_reconnect + 20,
    )
    .await;
    // ... and what they read reaches the local store's status.
    let doc = try_store_status(&state).await.expect("a status document");
    let stored = successful_polls(&doc, "bank");
    wait_for(
        "more successful polls stored",
        Duration::from_secs(20),
        async || {
            try_store_status(&state)
                .await
                .is_some_and(|doc| successful_polls(&doc, "bank") > stored)
        },
    )
    .await;

    // The holders were served throughout.
    stop.cancel();
    let (held, rounds) = holders.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert!(rounds >= 1, "{rounds}");
    drop(held);
    drop(refused);
    // Their places free again: the endpoint serves newcomers, and logs the
    // end of the refusals at the first one 5 s after the last refusal.
    wait_for(
        "the end of the refusals",
        Duration::from_secs(20),
        async || {
            let served = tokio::task::spawn_blocking(move || try_http_get(addr, "/healthz"))
                .await
                .unwrap()
                .is_ok_and(|(code, _)| code == 200 || code == 503);
            served && log_of(&state).contains("serving new connections again")
        },
    )
    .await;

    let log = log_of(&state);
    assert!(
        !log.contains("Too many open files") && !log.contains("os error 24"),
        "{log}"
    );
    // The refusals are told once, and their end once with how many.
    assert_eq!(count(&log, "closing new ones until one ends"), 1, "{log}");
    let ended = log
        .lines()
        .find(|l| l.contains("serving new connections again"))
        .unwrap_or_else(|| panic!("no end of the refusals in {log}"));
    let refused_count: u64 = ended
        .split("refused=")
        .nth(1)
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {ended}"));
    // 48, and any newcomer that came before a holder had gone.
    assert!(refused_count >= 48, "{ended}");

    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
}

/// A 64 KB header is refused (431, or the connection closed) and costs
/// nothing lasting; clients that never finish their headers lose their
/// places after the header read timeout, and the endpoint serves again.
/// Started as systemd starts a service (1,024 soft, a higher hard limit),
/// the daemon raises its soft limit to the hard one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_and_slow_clients_do_not_hold_the_endpoint() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim);
    let state = dir.path().join("state");
    let mut daemon = spawn_limited(&config, &state, "1024:4096");
    let pid = daemon.0.id();
    let addr = health_address(&state).await;
    wait_for("the connection limit", Duration::from_secs(5), async || {
        log_of(&state).contains("at most 32 connections at once")
    })
    .await;
    assert_eq!(open_file_limit(pid), ("4096".into(), "4096".into()));

    // 64 KB of header, ten times over.
    for _ in 0..10 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        // The server may close before it has read it all: a failed write
        // is that closing.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("the connection closed within 10 s");
        let text = String::from_utf8_lossy(&response);
        match read {
            Ok(_) if !response.is_empty() => {
                assert!(text.starts_with("HTTP/1.1 431"), "{text}");
            }
            // Closed, or reset over the unread rest: refused either way.
            Ok(_) | Err(_) => {}
        }
    }
    let (code, body) = tokio::task::spawn_blocking(move || try_http_get(addr, "/healthz"))
        .await
        .unwrap()
        .expect("/healthz after the huge headers");
    assert!(code == 200 || code == 503, "{code} {body}");
    assert!(body.contains("\"health\""), "{body}");

    // 32 clients that never finish their headers take every place ...
    let mut slow = Vec::new();
    for _ in 0..32 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // ... a newcomer is closed at once (the endpoint accepts in the order
    // the connections were made: the slow ones first) ...
    let mut newcomer = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_server(&mut newcomer, Duration::from_secs(2)).await);
    wait_for("the refusal logged", Duration::from_secs(5), async || {
        count(&log_of(&state), "closing new ones until one ends") == 1
    })
    .await;
    // ... until the header read timeout (5 s) closes them.
    for (i, stream) in slow.iter_mut().enumerate() {
        assert!(
            closed_by_server(stream, Duration::from_secs(15)).await,
            "slow client {i} still connected"
        );
    }
    wait_for(
        "/healthz after the slow clients",
        Duration::from_secs(10),
        async || {
            tokio::task::spawn_blocking(move || try_http_get(addr, "/healthz"))
                .await
                .unwrap()
                .is_ok_and(|(code, _)| code == 200 || code == 503)
        },
    )
    .await;

    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
}

/// The lowest descriptor number process `pid` does not use: the number its
/// next open file would get.
fn lowest_free_descriptor(pid: u32) -> u64 {
    let used: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

/// Sets the soft open-file limit of the running process `pid` (util-linux's
/// `prlimit --pid`), leaving the hard one.
fn set_soft_open_file_limit(pid: u32, soft: u64) {
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit --pid {pid} --nofile={soft}:");
}

/// Out of descriptors, the endpoint cannot accept: it says so once, retries
/// with a growing pause (not five times a second), and says once, with how
/// many attempts failed, when it accepts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_accepts_back_off_and_are_logged_once() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim);
    let state = dir.path().join("state");
    let mut daemon = spawn_limited(&config, &state, "1024:4096");
    let pid = daemon.0.id();
    let addr = health_address(&state).await;
    wait_for("the GX polled", Duration::from_secs(10), async || {
        log_of(&state).contains("Device answered its first poll")
    })
    .await;

    // No descriptor left: the next one would be past the soft limit.
    set_soft_open_file_limit(pid, lowest_free_descriptor(pid));
    let client = tokio::task::spawn_blocking(move || try_http_get(addr, "/healthz"));
    wait_for(
        "the failed accept logged",
        Duration::from_secs(5),
        async || log_of(&state).contains("cannot accept connections"),
    )
    .await;
    // The stimulus is the length of the shortage, not a state to wait for:
    // 2 s of it is 20 attempts at the first pause, 5 with the backoff.
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_soft_open_file_limit(pid, 4096);
    // The client waiting all along is served once accepting works again.
    let (code, body) = client
        .await
        .unwrap()
        .expect("/healthz once descriptors are back");
    assert!(code == 200 || code == 503, "{code} {body}");

    let log = log_of(&state);
    assert_eq!(count(&log, "cannot accept connections"), 1, "{log}");
    let again = log
        .lines()
        .find(|l| l.contains("accepting connections again"))
        .unwrap_or_else(|| panic!("no end of the failed accepts in {log}"));
    let field = |name: &str| -> f64 {
        again
            .split(&format!("{name}="))
            .nth(1)
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {again}"))
    };
    let (failed, for_s) = (field("failed"), field("for_s"));
    eprintln!("{again}");
    assert!(for_s >= 2.0, "{again}");
    // 0.1 + 0.2 + 0.4 + 0.8 s, then every second: at least 4 attempts in
    // 2 s; at most 4 and one a second after that (and the first).
    assert!(failed >= 4.0, "{again}");
    assert!(failed <= 5.0 + for_s, "{again}");

    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
}
