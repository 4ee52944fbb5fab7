//! The HTTP listener on `--webhook-listen`: `POST /webhooks/clerk`, fed to
//! [`Endpoint::deliver`] with the [`Record`] the server was given.
//!
//! This port faces the internet (through an Ingress that routes only the
//! webhook path to it), so it carries the admin endpoint's protections and
//! bounds the body as well:
//!
//! - at most [`MAX_CONNECTIONS`] connections at once, in a
//!   [`ConnectionTable`]: with every slot taken, an idle connection
//!   (keep-alive, or still sending its head) is closed to make room;
//! - a request head must arrive within [`HEADER_READ_TIMEOUT`] (hyper's
//!   own limits bound its size);
//! - a body larger than the cap (`--webhook-max-body-bytes`) is answered
//!   413, at once when its `Content-Length` says so, else as soon as the
//!   cap is passed; the whole body must arrive within
//!   [`BODY_READ_TIMEOUT`] (else 408);
//! - any other path is 404, any other method 405 (`Allow: POST`).
//!
//! It speaks HTTP/1.1, what Svix and Ingress controllers send upstream.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::listener::{self, AcceptErrors, ConnectionTable};
use crate::revocation::Record;
use crate::telemetry::metrics::TableMetrics;
use crate::webhook::{Answer, Endpoint, PATH};

/// Most connections served at once. Svix delivers with a few connections
/// per endpoint; an Ingress controller keeps a pool of keep-alive ones.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest time a connection may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time a request's body may take to arrive whole, from its head.
/// Svix waits 15 s for an answer; recording has
/// [`crate::webhook::RECORD_TIMEOUT`] after this.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait, after the gRPC server has stopped, for deliveries in
/// progress.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The listener's limits ([`MAX_CONNECTIONS`], [`HEADER_READ_TIMEOUT`],
/// [`BODY_READ_TIMEOUT`] by default; tests shorten them).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Longest wait for a request head.
    pub header_read_timeout: Duration,
    /// Longest wait for a whole body, from the head.
    pub body_read_timeout: Duration,
    /// Where the connection table counts the connections it closes.
    pub metrics: TableMetrics,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            metrics: TableMetrics::default(),
        }
    }
}

/// What [`super::serve`] needs to serve webhooks: the listener (already
/// bound to `--webhook-listen`) and where accepted events are recorded.
pub struct WebhookListener {
    /// The bound listener.
    pub listener: TcpListener,
    /// Where events go (the revocation service).
    pub record: Arc<dyn Record>,
}

impl std::fmt::Debug for WebhookListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookListener").field("listener", &self.listener.local_addr().ok()).finish_non_exhaustive()
    }
}

/// The listener, running on its own task.
#[derive(Debug)]
pub struct WebhookServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl WebhookServer {
    /// Serves `endpoint` on `listener` (already bound) until
    /// [`WebhookServer::stop`], recording through `record`.
    pub fn spawn(
        listener: TcpListener,
        endpoint: Arc<Endpoint>,
        record: Arc<dyn Record>,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, endpoint, record, limits, stop.clone().cancelled_owned()));
        info!(%addr, path = PATH, "serving Clerk webhooks");
        Ok(Self { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets deliveries in progress finish for at most
    /// [`STOP_GRACE`], then closes what remains.
    pub async fn stop(mut self) {
        self.stop.cancel();
        match tokio::time::timeout(STOP_GRACE, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "the webhook listener failed"),
            Ok(Err(join)) => warn!(error = %join, "the webhook listener task ended abnormally"),
            Err(_) => self.task.abort(),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn from_answer(answer: Answer) -> Response<Full<Bytes>> {
    text(answer.status, answer.text)
}

/// The declared body length, if the request declares one.
fn content_length(request: &Request<hyper::body::Incoming>) -> Option<u64> {
    request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// One request: routing, the body (capped, timed), then the endpoint.
async fn answer(
    request: Request<hyper::body::Incoming>,
    endpoint: &Endpoint,
    record: &dyn Record,
    body_read_timeout: Duration,
) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return text(StatusCode::NOT_FOUND, format!("not found; Clerk's webhooks go to POST {PATH}\n"));
    }
    if request.method() != Method::POST {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, format!("{PATH} takes POST only\n"));
        response.headers_mut().insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        return response;
    }
    let cap = endpoint.max_body_bytes();
    if content_length(&request).is_some_and(|n| n > cap as u64) {
        return from_answer(endpoint.refuse_body(true));
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(body_read_timeout, Limited::new(body, cap).collect()).await {
        Ok(Ok(collected)) => from_answer(endpoint.deliver(&parts.headers, &collected.to_bytes(), record).await),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => from_answer(endpoint.refuse_body(true)),
        // The client broke off, or the body did not arrive in time.
        Ok(Err(_)) | Err(_) => from_answer(endpoint.refuse_body(false)),
    }
}

/// Serves webhooks on `listener` until `shutdown` resolves, then finishes
/// the deliveries in progress.
pub async fn serve(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    record: Arc<dyn Record>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let table = ConnectionTable::new("webhook", limits.max_connections, limits.metrics.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut accept_errors = AcceptErrors::new("webhook");
    let body_read_timeout = limits.body_read_timeout;
    tokio::pin!(shutdown);
    loop {
        // A connection, then its slot (an idle connection makes room when
        // every slot is taken).
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
        let (endpoint, record) = (endpoint.clone(), record.clone());
        // Busy from a request's head to its answer.
        let service = hyper::service::service_fn(move |request| {
            let call = busy.call_started();
            let (endpoint, record) = (endpoint.clone(), record.clone());
            async move {
                let response = answer(request, &endpoint, &*record, body_read_timeout).await;
                drop(call);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a slow head).
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
