//! The HTTP endpoint on `--metrics-listen`, for Prometheus and for
//! platforms that probe over HTTP:
//!
//! - `GET /metrics`: the [`Metrics`] registry, in the OpenMetrics text
//!   format when the scraper asks for it (`Accept:
//!   application/openmetrics-text`, as Prometheus does), else in the
//!   Prometheus text format 0.0.4.
//! - `GET /healthz`: 200 while the process is up (liveness).
//! - `GET /readyz`: 200 when ready, 503 otherwise, by the same rule as gRPC
//!   health ([`HealthSource`]); the body lists each issuer's state.
//!
//! Requests carry no body we read; hyper bounds the request head. The
//! endpoint speaks HTTP/1.1 (what Prometheus and the kubelet use), serves at
//! most [`MAX_CONNECTIONS`] connections at once, closes a connection that
//! takes longer than [`HEADER_READ_TIMEOUT`] to send a request head, and,
//! with every slot taken, closes an idle one (keep-alive, or still sending
//! its head; the one idle the longest) to make room for a new client, so
//! idle or slow clients cannot hold the port (see
//! [`ConnectionTable`]).

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

use super::listener::{self, AcceptErrors, ConnectionTable};
use crate::app::App;
use crate::health::HealthSource;
use crate::telemetry::metrics::{Metrics, TableMetrics};

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Longest wait, after the gRPC server has stopped, for scrapes and probes
/// in progress.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Most connections served at once. Prometheus keeps one per scraper and the
/// kubelet opens one per probe; a connection beyond the cap waits in the
/// listen backlog until one closes.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest time a connection may take to send a request head, counted from
/// the moment the server starts waiting for it; past it the connection is
/// closed. Prometheus' default scrape timeout is 10 s.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint's connection limits ([`MAX_CONNECTIONS`] and
/// [`HEADER_READ_TIMEOUT`] by default; tests shorten them).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Longest wait for a request head.
    pub header_read_timeout: Duration,
    /// Where the connection table counts the connections it closes.
    pub metrics: TableMetrics,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            metrics: TableMetrics::default(),
        }
    }
}

/// What the endpoint reads: the metrics to encode and, through a narrow
/// interface, health.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// The registry to serve.
    pub metrics: Arc<Metrics>,
    /// Readiness and each issuer's key state, for `/readyz`.
    pub health: Arc<dyn HealthSource>,
}

impl AdminState {
    /// What `app`'s endpoint reads.
    pub fn of(app: &App) -> Self {
        Self { metrics: app.telemetry.metrics().clone(), health: app.readiness.clone() }
    }
}

/// The routes.
pub fn router(state: AdminState) -> Router {
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

async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if wants_openmetrics(&headers) {
        text(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, state.metrics.encode_openmetrics())
    } else {
        text(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, state.metrics.encode_prometheus())
    }
}

async fn healthz() -> Response {
    text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".to_owned())
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let report = state.health.report();
    let mut body = String::from(if report.ready { "ready\n" } else { "not ready\n" });
    for issuer in &report.issuers {
        let _ = writeln!(body, "issuer {}: {}", issuer.issuer, issuer.state);
    }
    for condition in &report.conditions {
        let _ = writeln!(body, "{}: {}", condition.name, condition.state);
    }
    if report.draining {
        body.push_str("draining (shutting down)\n");
    }
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, "text/plain; charset=utf-8", body)
}

/// The endpoint, running on its own task.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl AdminServer {
    /// Serves `state` on `listener` (already bound) until [`AdminServer::stop`].
    pub fn spawn(listener: TcpListener, state: AdminState) -> std::io::Result<Self> {
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
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = Limits { metrics: state.metrics.admin_connections(), ..Limits::default() };
    serve_with(listener, state, limits, shutdown).await
}

/// [`serve`] with explicit [`Limits`].
pub async fn serve_with(
    listener: TcpListener,
    state: AdminState,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let service = hyper_util::service::TowerToHyperService::new(
        router(state).map_request(|r: axum::http::Request<hyper::body::Incoming>| r.map(axum::body::Body::new)),
    );
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let table = ConnectionTable::new("metrics", limits.max_connections, limits.metrics.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut accept_errors = AcceptErrors::new("metrics");
    tokio::pin!(shutdown);
    loop {
        // A connection, then its slot: with every slot taken, an idle
        // connection (keep-alive, or still sending its request head) is
        // closed to make room, so slow clients cannot hold the port.
        let (stream, _) = tokio::select! {
            accepted = listener::accept(&listener, &mut accept_errors) => accepted,
            () = &mut shutdown => break,
        };
        let slot = tokio::select! {
            slot = table.acquire() => slot,
            () = &mut shutdown => break,
        };
        let state = slot.state().clone();
        let busy = state.clone();
        let service = service.clone();
        // Busy from a request's head to its answer; the answers are small
        // and written at once.
        let service = hyper::service::service_fn(move |request| {
            let call = busy.call_started();
            let answer = hyper::service::Service::call(&service, request);
            async move {
                let answer = answer.await;
                drop(call);
                answer
            }
        });
        let connection = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a slow head): nothing to report.
            tokio::select! {
                _ = connection => {}
                // Asked to make room: HTTP/1 has no GOAWAY; close it.
                _ = state.close_requested() => {}
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    /// The endpoint with no issuer, on a loopback port, with `limits`.
    async fn endpoint(limits: Limits) -> (SocketAddr, CancellationToken, JoinHandle<std::io::Result<()>>) {
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
        let verifier = Arc::new(crate::verify::Verifier::new(crate::verify::Trust::default(), clock.clone()));
        let readiness = Arc::new(crate::health::Readiness::new(verifier, Arc::new(tokio::sync::Notify::new())));
        let state = AdminState { metrics: Arc::new(Metrics::new(clock, None)), health: readiness };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_with(listener, state, limits, stop.clone().cancelled_owned()));
        (addr, stop, task)
    }

    /// Sends `GET /healthz` and reads the answer to its end (the request
    /// asks the server to close).
    async fn healthz(conn: &mut TcpStream) -> String {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Reads until the server closes the connection (EOF or reset).
    async fn closed_by_server(conn: &mut TcpStream) {
        let mut buf = [0u8; 512];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    #[tokio::test]
    async fn a_full_table_closes_an_idle_connection_for_a_new_client() {
        let metrics = TableMetrics::default();
        let limits =
            Limits { max_connections: 2, header_read_timeout: Duration::from_secs(60), metrics: metrics.clone() };
        let (addr, stop, task) = endpoint(limits).await;
        // A connection that sends nothing, and one that made a request and
        // stays open (keep-alive), hold both slots.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut kept_alive = TcpStream::connect(addr).await.unwrap();
        kept_alive.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut first = [0u8; 15];
        kept_alive.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200 OK");

        // A probe is served at once: the silent one (never made a request) makes room.
        let mut probe = TcpStream::connect(addr).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), healthz(&mut probe)).await.expect("served at once");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("ok\n"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), closed_by_server(&mut silent))
            .await
            .expect("closed by the server");
        let closed = metrics
            .closed_by_server
            .get_or_create(&crate::telemetry::metrics::CloseLabels { listener: "metrics", reason: "make_room" })
            .get();
        assert_eq!(closed, 1);
        // The kept-alive one still answers.
        kept_alive.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut rest = String::new();
        kept_alive.read_to_string(&mut rest).await.unwrap();
        assert!(rest.contains("HTTP/1.1 200 OK"), "{rest}");
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_request_head_in_time_is_closed() {
        let limits =
            Limits { max_connections: 4, header_read_timeout: Duration::from_millis(200), ..Limits::default() };
        let (addr, stop, task) = endpoint(limits).await;
        // Nothing at all, and half a request head (slowloris).
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        for conn in [&mut silent, &mut partial] {
            tokio::time::timeout(Duration::from_secs(10), closed_by_server(conn)).await.expect("closed by the server");
        }
        // The endpoint still answers.
        let mut fresh = TcpStream::connect(addr).await.unwrap();
        assert!(healthz(&mut fresh).await.starts_with("HTTP/1.1 200 OK"));
        stop.cancel();
        task.await.unwrap().unwrap();
    }

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
