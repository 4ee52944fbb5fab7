//! The HTTP endpoint on `--metrics-listen`, for Prometheus and for
//! platforms that probe over HTTP:
//!
//! - `GET /metrics`: the [`Metrics`] registry, in the OpenMetrics text
//!   format when the scraper asks for it (`Accept:
//!   application/openmetrics-text`, as Prometheus does), else in the
//!   Prometheus text format 0.0.4.
//! - `GET /healthz`: 200 while the process is up (liveness).
//! - `GET /readyz`: 200 when ready, 503 otherwise, by the same rule as gRPC
//!   health ([`Readiness::is_ready`]); the body lists each issuer's state.
//!
//! Requests carry no body we read; hyper bounds the request head.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Metrics;
use crate::health::Readiness;
use crate::keys::KeyStatus;
use crate::verify::Verifier;

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Longest wait, after the gRPC server has stopped, for scrapes and probes
/// in progress.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// What the endpoint reads.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The registry to serve.
    pub metrics: Arc<Metrics>,
    /// Readiness for `/readyz`.
    pub readiness: Arc<Readiness>,
    /// The verifier, for the per-issuer lines of `/readyz`.
    pub verifier: Arc<Verifier>,
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
}

/// Whether the `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let refused = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0)));
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if wants_openmetrics(&headers) {
        text(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, state.metrics.encode_openmetrics())
    } else {
        text(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, state.metrics.encode_prometheus())
    }
}

async fn healthz() -> Response {
    text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".to_owned())
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let ready = state.readiness.is_ready();
    let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
    let trust = state.verifier.trust();
    let mut issuers: Vec<_> = trust.issuers().collect();
    issuers.sort_by(|a, b| a.keys.issuer().cmp(b.keys.issuer()));
    let mut all_loaded = true;
    for i in issuers {
        let status = i.keys.status();
        all_loaded &= status == KeyStatus::Ready;
        let word = match status {
            KeyStatus::Loading => "loading (keys not fetched yet)",
            KeyStatus::Ready => "ready",
            KeyStatus::Stale => "stale (keys older than --max-key-staleness)",
        };
        let _ = writeln!(body, "issuer {}: {word}", i.keys.issuer());
    }
    if !ready && all_loaded {
        body.push_str("draining (shutting down)\n");
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, "text/plain; charset=utf-8", body)
}

/// The endpoint, running on its own task.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Serves `state` on `listener` (already bound) until [`HttpServer::stop`].
    pub fn spawn(listener: TcpListener, state: HttpState) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, state, stop.clone().cancelled_owned()));
        info!(%addr, "serving HTTP /metrics, /healthz, /readyz");
        Ok(Self { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish for at most
    /// [`STOP_GRACE`], then closes what remains.
    pub async fn stop(mut self) {
        self.stop.cancel();
        match tokio::time::timeout(STOP_GRACE, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "the metrics endpoint failed"),
            Ok(Err(join)) => warn!(error = %join, "the metrics endpoint task ended abnormally"),
            Err(_) => self.task.abort(),
        }
    }
}

/// Serves the routes on `listener` until `shutdown` resolves, then finishes
/// the requests in progress.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn negotiates_openmetrics_like_prometheus_asks() {
        // What Prometheus 2.x/3.x sends.
        assert!(wants_openmetrics(&accept(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(&accept("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(&accept("*/*")));
        assert!(!wants_openmetrics(&accept("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(&HeaderMap::new()));
    }
}
