//! The HTTP health and metrics endpoint (`health.listen`, or `PORT`):
//!
//! - `GET /healthz`: 200 when healthy or degraded, 503 when down, with the
//!   verdict and its reasons as JSON (the same verdict as `status`);
//! - `GET /metrics`: Prometheus text exposition format 0.0.4.
//!
//! HTTP/1.1 on hyper; GET and HEAD only; every connection is bounded in
//! time so a slow or idle client cannot hold resources.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint reports: implemented by the daemon.
pub trait Observe: Send + Sync + 'static {
    /// The current verdict.
    fn health(&self) -> impl Future<Output = Health> + Send;
    /// The current metrics, in Prometheus text format.
    fn metrics(&self) -> impl Future<Output = String> + Send;
}

/// Binds `address` (port 0 picks a free port).
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("Cannot listen on {address} (health.listen)"))
}

/// Serves until `cancel`.
pub async fn serve<O: Observe>(listener: TcpListener, observer: Arc<O>, cancel: CancellationToken) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!(%error, "Health endpoint: accept failed.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let observer = Arc::clone(&observer);
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let observer = Arc::clone(&observer);
                async move { Ok::<_, Infallible>(respond(request, observer.as_ref()).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
        });
    }
    connections.abort_all();
}

async fn respond<O: Observe>(request: Request<Incoming>, observer: &O) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
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
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: try /healthz or /metrics\n",
        ),
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
