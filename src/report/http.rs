//! The daemon's HTTP listener (`health.listen`, or `PORT`):
//!
//! - `GET /healthz`: 200 when healthy or degraded, 503 when down, with the
//!   verdict and its reasons as JSON (the same verdict as `status`);
//! - `GET /metrics`: Prometheus text exposition format 0.0.4;
//! - anything else the observer answers (the page at `/`, the API under
//!   `/api/v1/`), with a content security policy that lets a page load
//!   nothing from another host.
//!
//! Everything but `/healthz` is behind HTTP basic authentication when a
//! password is set, and a loopback listener answers only requests
//! addressed to loopback ([`Access`]).
//!
//! HTTP/1.1 on hyper; GET and HEAD only. Whatever clients do, the endpoint
//! cannot take the daemon down:
//!
//! - at most [`MAX_CONNECTIONS`] connections at once, fewer when the
//!   open-file limit is low: [`DESCRIPTOR_RESERVE`] descriptors stay for the
//!   devices, the local store and the database. A connection beyond that is
//!   accepted and closed at once (not left in the kernel's queue);
//! - request headers of at most [`MAX_HEADER_BYTES`] (431 beyond), read
//!   within [`HEADER_READ_TIMEOUT`] (a new connection, or an idle one between
//!   requests, is closed after that), and no connection lives longer than
//!   [`CONNECTION_LIFETIME`]: a connection's memory is bounded, and so is
//!   how long a slow or idle client holds its place;
//! - failed accepts (out of descriptors and the like) back off from 100 ms
//!   to 1 s, logged once when they start and once when accepting works
//!   again; connections closed for want of a place, once when that starts
//!   and once at the first one served 5 s after the last.
//!
//! At start the soft open-file limit is raised to the hard one (systemd
//! starts services with 1,024 soft for the sake of `select()`, which nothing
//! here uses; the hard limit is what the administrator allows).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::health::{Health, Level};

/// The content type of the Prometheus text format.
pub(crate) const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint reports: implemented by the daemon.
pub(crate) trait Observe: Send + Sync + 'static {
    /// The current verdict.
    fn health(&self) -> impl Future<Output = Health> + Send;
    /// The current metrics, in Prometheus text format.
    fn metrics(&self) -> impl Future<Output = String> + Send;
    /// The answer to any other `GET path?query` (the page, the API), or
    /// `None`: not found.
    fn answer(&self, path: &str, query: Option<&str>)
    -> impl Future<Output = Option<Reply>> + Send;
}

/// An answer to a request.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// Its status.
    pub(crate) status: StatusCode,
    /// Its content type.
    pub(crate) content_type: &'static str,
    /// Its body.
    pub(crate) body: Bytes,
}

/// What a page may load: only from the daemon itself, and its own inline
/// style and script (the page must work on a LAN without internet, and
/// must not leak a request elsewhere).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// HTTP basic authentication against one password (any user name):
/// `health.password`. `/healthz` stays open for checks.
///
/// A listener on loopback also answers only requests addressed to
/// loopback (`Host: localhost`, `127.0.0.1`, `[::1]`): a web page elsewhere
/// that points its own host name at 127.0.0.1 (DNS rebinding) cannot read
/// the API through the owner's browser.
#[derive(Debug, Clone, Default)]
pub(crate) struct Access {
    password: Option<String>,
    loopback_only: bool,
}

/// Why a request is refused.
enum Refused {
    /// No password, or the wrong one.
    Password,
    /// Addressed to another host than the loopback listener.
    Host,
}

impl Access {
    /// Open to all, or behind `password`; `loopback_only` for a listener
    /// on a loopback address.
    pub(crate) fn new(password: Option<String>, loopback_only: bool) -> Self {
        Self {
            password,
            loopback_only,
        }
    }

    /// Whether a request with these headers may see `path`.
    fn check(&self, path: &str, headers: &hyper::HeaderMap) -> Result<(), Refused> {
        if path == "/healthz" {
            return Ok(());
        }
        if self.loopback_only {
            let host = headers
                .get(hyper::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            if !is_loopback_host(host) {
                return Err(Refused::Host);
            }
        }
        let Some(password) = &self.password else {
            return Ok(());
        };
        use base64::Engine as _;
        let given = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, credentials) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("basic").then_some(credentials)
            })
            .and_then(|b64| {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .ok()
            })
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| pair.split_once(':').map(|(_, given)| given.to_string()));
        if given.is_some_and(|given| constant_time_eq(given.as_bytes(), password.as_bytes())) {
            Ok(())
        } else {
            Err(Refused::Password)
        }
    }
}

/// Whether a `Host` header names this machine's loopback (with or
/// without a port).
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares without stopping at the first difference (the time a
/// comparison takes says nothing of where a guess went wrong).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The listener's default address: loopback only, so that the page is
/// there on the gateway and nothing is exposed until the operator opens it.
pub(crate) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9480);

/// Binds `address` (port 0 picks a free port). The default address taken
/// by something else (a second daemon on the machine) is a warning and no
/// listener — polling matters more than the page; any other failure, or an
/// address the operator chose, is an error.
pub(crate) async fn bind(address: SocketAddr) -> anyhow::Result<Option<TcpListener>> {
    use anyhow::Context as _;
    match TcpListener::bind(address).await {
        Ok(listener) => Ok(Some(listener)),
        Err(error)
            if address == DEFAULT_LISTEN && error.kind() == std::io::ErrorKind::AddrInUse =>
        {
            tracing::warn!(
                %address,
                "The page, the API, /healthz and /metrics are not served: their default address is taken; set health.listen to another one."
            );
            Ok(None)
        }
        Err(error) => {
            Err(error).with_context(|| format!("Cannot listen on {address} (health.listen)"))
        }
    }
}

/// The most connections served at once. A health check or a Prometheus
/// scrape holds one for milliseconds (a scraper that keeps its connection
/// alive, one each): a handful of monitors never come near it, while 32
/// connections' buffers (about 20 KB each) stay well under a megabyte.
pub(crate) const MAX_CONNECTIONS: usize = 32;

/// Open files kept for everything but HTTP clients: the daemon's own
/// descriptors (about 25 with one database connection: the store and its
/// journal, the state lock, log files, the runtime's epoll, eventfd and
/// timers, one socket per GX and database connection) with room for more
/// database connections, devices and a reconnect's new socket before the
/// old one is closed.
pub(crate) const DESCRIPTOR_RESERVE: u64 = 48;

/// The most bytes of request line and headers (hyper's smallest buffer; its
/// default is about 400 KB). `/healthz` and `/metrics` requests are a few
/// hundred bytes.
pub(crate) const MAX_HEADER_BYTES: usize = 8 * 1024;

/// How long a client has to send its request line and headers, from
/// connecting or from the end of its previous response.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection lives at most, however busy.
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The first pause after a failed accept; it doubles to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How many connections the endpoint serves at once under a soft open-file
/// limit of `soft` (`None`: unlimited): [`MAX_CONNECTIONS`], or what the
/// limit leaves beyond [`DESCRIPTOR_RESERVE`], and at least one.
pub(crate) fn connection_limit(soft: Option<u64>) -> usize {
    let room = soft.map_or(u64::MAX, |soft| soft.saturating_sub(DESCRIPTOR_RESERVE));
    usize::try_from(room)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_CONNECTIONS)
}

/// Raises the soft open-file limit to the hard one, and returns the soft
/// limit in force (`None`: unlimited).
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return limit.current;
    };
    if soft >= hard {
        return Some(soft);
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = hard,
                "Raised the open-file limit to its hard limit."
            );
            Some(hard)
        }
        Err(error) => {
            tracing::warn!(
                %error,
                soft,
                hard,
                "Cannot raise the open-file limit to its hard limit: keeping the soft one."
            );
            Some(soft)
        }
    }
}

/// How long after the last connection closed for want of a place the next
/// one served ends the run of refusals: under a flood the endpoint is at its
/// limit, then not, many times a second, and logs that once.
const REFUSALS_QUIET: Duration = Duration::from_secs(5);

/// A run of failed accepts.
#[derive(Debug)]
struct AcceptTrouble {
    since: Instant,
    failures: u64,
    pause: Duration,
}

/// A run of connections closed for want of a place.
#[derive(Debug)]
struct Refusals {
    since: Instant,
    last: Instant,
    count: u64,
}

/// Serves until `cancel`.
pub(crate) async fn serve<O: Observe>(
    listener: TcpListener,
    observer: Arc<O>,
    access: Access,
    cancel: CancellationToken,
) {
    let access = Arc::new(access);
    let open_files = raise_open_file_limit();
    let limit = connection_limit(open_files);
    tracing::info!(
        connections = limit,
        open_file_limit = open_files.map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
        "Health endpoint: at most {limit} connections at once."
    );
    if open_files.is_some_and(|soft| soft < DESCRIPTOR_RESERVE + 1) {
        tracing::warn!(
            open_file_limit = open_files,
            reserve = DESCRIPTOR_RESERVE,
            "The open-file limit is below what the daemon keeps for its devices, store and database: raise it (LimitNOFILE=)."
        );
    }
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);

    let mut connections = tokio::task::JoinSet::new();
    let mut trouble: Option<AcceptTrouble> = None;
    let mut refusals: Option<Refusals> = None;
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: the connection stays
                // queued and the listener ready, so pause, do not spin.
                let pause = match trouble.as_mut() {
                    Some(run) => {
                        run.failures += 1;
                        run.pause = (run.pause * 2).min(ACCEPT_BACKOFF_MAX);
                        run.pause
                    }
                    None => {
                        tracing::warn!(
                            %error,
                            "Health endpoint: cannot accept connections; retrying from every {} ms to every {} s.",
                            ACCEPT_BACKOFF_MIN.as_millis(),
                            ACCEPT_BACKOFF_MAX.as_secs()
                        );
                        trouble = Some(AcceptTrouble {
                            since: Instant::now(),
                            failures: 1,
                            pause: ACCEPT_BACKOFF_MIN,
                        });
                        ACCEPT_BACKOFF_MIN
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        if let Some(run) = trouble.take() {
            tracing::info!(
                failed = run.failures,
                for_s = run.since.elapsed().as_secs_f64(),
                "Health endpoint: accepting connections again."
            );
        }
        while connections.try_join_next().is_some() {}
        if connections.len() >= limit {
            // Closed now: neither a descriptor nor a place in the kernel's
            // queue for it.
            drop(stream);
            let now = Instant::now();
            match refusals.as_mut() {
                Some(run) => {
                    run.count += 1;
                    run.last = now;
                }
                None => {
                    tracing::warn!(
                        connections = limit,
                        "Health endpoint: {limit} connections open, its most; closing new ones until one ends."
                    );
                    refusals = Some(Refusals {
                        since: now,
                        last: now,
                        count: 1,
                    });
                }
            }
            continue;
        }
        if let Some(run) = refusals.take_if(|run| run.last.elapsed() >= REFUSALS_QUIET) {
            tracing::info!(
                refused = run.count,
                for_s = run.last.duration_since(run.since).as_secs_f64(),
                "Health endpoint: serving new connections again."
            );
        }
        let observer = Arc::clone(&observer);
        let access = Arc::clone(&access);
        let service = service_fn(move |request| {
            let observer = Arc::clone(&observer);
            let access = Arc::clone(&access);
            async move { Ok::<_, Infallible>(respond(request, observer.as_ref(), &access).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        connections.spawn(async move {
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => {}
                // A client's own failing (a header too large or too slow, a
                // reset): its connection ends, nothing else is affected.
                Ok(Err(error)) => tracing::debug!(%error, "Health endpoint: connection failed."),
                Err(_) => tracing::debug!("Health endpoint: connection closed at its time limit."),
            }
        });
    }
    connections.abort_all();
}

async fn respond<O: Observe>(
    request: Request<Incoming>,
    observer: &O,
    access: &Access,
) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
    }
    match access.check(request.uri().path(), request.headers()) {
        Ok(()) => {}
        Err(Refused::Password) => {
            let mut response = plain(StatusCode::UNAUTHORIZED, "a password is needed\n");
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"victron-poller\", charset=\"UTF-8\""),
            );
            return response;
        }
        Err(Refused::Host) => {
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                "this listener is on loopback: address it as localhost or 127.0.0.1\n",
            );
        }
    }
    let mut response = match request.uri().path() {
        "/healthz" => {
            let health = observer.health().await;
            let code = match health.level {
                Level::Healthy | Level::Degraded => StatusCode::OK,
                Level::Down => StatusCode::SERVICE_UNAVAILABLE,
            };
            let body = serde_json::json!({
                "health": health.level.as_str(),
                "reasons": health.reasons,
            });
            let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
            *response.status_mut() = code;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(observer.metrics().await)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            response
        }
        path => match observer.answer(path, request.uri().query()).await {
            Some(reply) => {
                let html = reply.content_type.starts_with("text/html");
                let mut response = Response::new(Full::new(reply.body));
                *response.status_mut() = reply.status;
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
                headers.insert(
                    hyper::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                );
                if html {
                    headers.insert(
                        hyper::header::CONTENT_SECURITY_POLICY,
                        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
                    );
                }
                headers.insert(
                    hyper::header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                response
            }
            None => plain(
                StatusCode::NOT_FOUND,
                "not found: try /, /api/v1/latest, /healthz or /metrics\n",
            ),
        },
    };
    if head {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

fn plain(code: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_the_reserve_to_the_daemon() {
        // systemd's soft default, and unlimited: the fixed most.
        assert_eq!(connection_limit(Some(1024)), 32);
        assert_eq!(connection_limit(None), 32);
        // 64 descriptors: 48 kept, 16 for HTTP.
        assert_eq!(connection_limit(Some(64)), 16);
        assert_eq!(connection_limit(Some(80)), 32);
        // Below the reserve: one connection at a time, never none.
        assert_eq!(connection_limit(Some(49)), 1);
        assert_eq!(connection_limit(Some(10)), 1);
        assert_eq!(connection_limit(Some(0)), 1);
    }

    #[test]
    fn loopback_hosts_are_this_machine_only() {
        for host in [
            "localhost",
            "LOCALHOST:9480",
            "127.0.0.1",
            "127.0.0.1:9480",
            "127.1.2.3",
            "[::1]:9480",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9480",
            "192.168.1.5:9480",
            "localhost.evil.example",
            "[2001:db8::1]:80",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
