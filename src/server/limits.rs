//! What one call may make the server hold, and the budget all calls share:
//!
//! - **Calls in flight** (`--max-calls-in-flight`): a call past the cap is
//!   answered `RESOURCE_EXHAUSTED` at once, before its request is read, so
//!   it costs the server a few hundred bytes for a few microseconds.
//!   Health checks (`grpc.health.v1.Health/Check`) have
//!   [`PROBE_RESERVE`] calls of their own on top, so that the kubelet's
//!   probes do not compete with clients for the last place.
//! - **Request bytes buffered** (`--max-request-bytes`): every DATA frame a
//!   call reads is counted against a budget shared by all calls, and held
//!   until the call has been answered; a frame that does not fit ends its
//!   call with `RESOURCE_EXHAUSTED`.
//! - **Request time** (`--request-timeout`): the request must have arrived
//!   whole this long after its headers; a stream that sends headers and
//!   then nothing, or a message in dribs, is answered `DEADLINE_EXCEEDED`
//!   and freed.
//! - **Call time** (`--call-timeout`, or the client's shorter
//!   `grpc-timeout`): answered `CANCELLED` "Timeout expired", as tonic's
//!   own timeout answers.
//!
//! Each call also counts as busy on its connection
//! ([`ConnectionState::call_started`]) until its answer has been sent, so
//! that the connection table knows which connections are idle.
//!
//! [`CallService`] applies all of this around the gRPC routes, once per
//! HTTP/2 stream; the answers of refused calls are built here, in one
//! place ([`Refusal`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tonic::service::Routes;
use tower::Service as _;

use super::listener::{CallOnConnection, ConnectionState};
use crate::config::ConnectionSettings;
use crate::telemetry::metrics::{LimitMetrics, LimitUse, RefusalLabels};

/// Health checks' own calls in flight, beyond `--max-calls-in-flight`.
pub const PROBE_RESERVE: usize = 64;
/// The path of the one RPC the probe reserve serves.
pub const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// Why a call was refused by a limit (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `--max-calls-in-flight` reached.
    Calls,
    /// `--max-request-bytes` reached.
    Bytes,
    /// The request did not arrive whole within `--request-timeout`.
    RequestTimeout,
}

impl Refusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Calls => "calls_in_flight",
            Refusal::Bytes => "request_bytes",
            Refusal::RequestTimeout => "request_timeout",
        }
    }

    /// The status a refused call is answered with.
    fn status(self, limits: &Settings) -> Status {
        match self {
            Refusal::Calls => Status::resource_exhausted(format!(
                "clerk-introspect is answering its limit of {} calls at once (--max-calls-in-flight); retry with backoff",
                limits.max_calls
            )),
            Refusal::Bytes => Status::resource_exhausted(format!(
                "clerk-introspect is holding its limit of {} bytes of requests being received (--max-request-bytes); retry with backoff",
                limits.max_request_bytes
            )),
            Refusal::RequestTimeout => Status::deadline_exceeded(format!(
                "the request did not arrive whole within {} of its headers (--request-timeout)",
                humantime::format_duration(limits.request_timeout)
            )),
        }
    }
}

/// The limits' settings (validated configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Most calls in flight (health checks have [`PROBE_RESERVE`] more).
    pub max_calls: usize,
    /// Most request bytes held across all calls.
    pub max_request_bytes: usize,
    /// Longest from a call's headers to the end of its request.
    pub request_timeout: Duration,
    /// Longest from a call's headers to its answer.
    pub call_timeout: Duration,
}

impl From<&ConnectionSettings> for Settings {
    fn from(c: &ConnectionSettings) -> Self {
        Settings {
            max_calls: c.max_calls,
            max_request_bytes: c.max_request_bytes,
            request_timeout: c.request_timeout,
            call_timeout: c.call_timeout,
        }
    }
}

/// The shared budgets of every call on one server.
#[derive(Clone, Debug)]
pub struct CallLimits {
    inner: Arc<Budgets>,
}

#[derive(Debug)]
struct Budgets {
    settings: Settings,
    calls: Arc<Semaphore>,
    probes: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    metrics: LimitMetrics,
}

impl CallLimits {
    /// Budgets sized by `settings`, counting refusals into `metrics`.
    pub fn new(settings: Settings, metrics: LimitMetrics) -> Self {
        let max = |n: usize| n.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Budgets {
                calls: Arc::new(Semaphore::new(max(settings.max_calls))),
                probes: Arc::new(Semaphore::new(PROBE_RESERVE)),
                bytes: Arc::new(Semaphore::new(max(settings.max_request_bytes))),
                settings,
                metrics,
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Calls in flight now (health checks in the reserve included).
    pub fn calls_in_flight(&self) -> usize {
        let b = &self.inner;
        (b.settings.max_calls - b.calls.available_permits()) + (PROBE_RESERVE - b.probes.available_permits())
    }

    /// Request bytes held now.
    pub fn request_bytes(&self) -> usize {
        let b = &self.inner;
        b.settings.max_request_bytes - b.bytes.available_permits()
    }

    fn admit(&self, path: &str) -> Result<OwnedSemaphorePermit, Refusal> {
        let b = &self.inner;
        if path == HEALTH_CHECK_PATH
            && let Ok(permit) = b.probes.clone().try_acquire_owned()
        {
            return Ok(permit);
        }
        b.calls.clone().try_acquire_owned().map_err(|_| Refusal::Calls)
    }

    fn refuse(&self, refusal: Refusal) -> Status {
        self.inner.metrics.refused.get_or_create(&RefusalLabels { limit: refusal.as_str() }).inc();
        refusal.status(&self.inner.settings)
    }
}

/// The gRPC routes of one connection, with the [`CallLimits`] applied to
/// each call (a hyper service: one call per HTTP/2 stream).
#[derive(Clone, Debug)]
pub struct CallService {
    routes: Routes,
    limits: CallLimits,
    connection: Arc<ConnectionState>,
}

impl CallService {
    /// `routes` for calls on `connection`.
    pub fn new(routes: Routes, limits: CallLimits, connection: Arc<ConnectionState>) -> Self {
        Self { routes, limits, connection }
    }
}

/// What a call holds until its answer has been sent: its place among the
/// calls in flight, the request bytes it read, its mark on its connection.
#[derive(Debug)]
struct CallGuard {
    _on_connection: CallOnConnection,
    _place: Option<OwnedSemaphorePermit>,
    /// Handed over by the request body when it is dropped (usually once the
    /// message has been decoded, before the answer).
    bytes: Mutex<Option<OwnedSemaphorePermit>>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for CallService {
    type Response = http::Response<GuardedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let on_connection = self.connection.call_started();
        let limits = self.limits.clone();
        let place = match limits.admit(request.uri().path()) {
            Ok(place) => place,
            Err(refusal) => {
                let guard =
                    Arc::new(CallGuard { _on_connection: on_connection, _place: None, bytes: Mutex::new(None) });
                let response = limits.refuse(refusal).into_http::<Body>();
                return Box::pin(std::future::ready(Ok(
                    response.map(|body| GuardedBody { inner: body, _guard: guard })
                )));
            }
        };
        let guard = Arc::new(CallGuard { _on_connection: on_connection, _place: Some(place), bytes: Mutex::new(None) });
        let started = Instant::now();
        let settings = *limits.settings();
        let deadline =
            started + grpc_timeout(request.headers()).map_or(settings.call_timeout, |t| t.min(settings.call_timeout));
        let request = request.map(|body| {
            Body::new(LimitedBody {
                inner: body,
                limits: limits.clone(),
                guard: guard.clone(),
                held: None,
                request_deadline: started + settings.request_timeout,
                timer: None,
                ended: false,
            })
        });
        let mut routes = self.routes.clone();
        Box::pin(async move {
            let response = match tokio::time::timeout_at(deadline, routes.call(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                // tonic's words for its own timeout.
                Err(_) => Status::cancelled("Timeout expired").into_http(),
            };
            Ok(response.map(|body| GuardedBody { inner: body, _guard: guard }))
        })
    }
}

/// The `grpc-timeout` a client set (gRPC over HTTP/2: at most 8 digits and
/// a unit); `None` if absent or not well-formed, as tonic reads it.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 60 * 60),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A call's request body: each DATA frame counted against the request-byte
/// budget, and the whole body due by the request deadline.
struct LimitedBody {
    inner: hyper::body::Incoming,
    limits: CallLimits,
    guard: Arc<CallGuard>,
    /// The budget this body has taken so far.
    held: Option<OwnedSemaphorePermit>,
    request_deadline: Instant,
    /// Made only when a read has to wait (a whole request usually arrives
    /// with its headers).
    timer: Option<Pin<Box<Sleep>>>,
    ended: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl LimitedBody {
    fn refuse(&mut self, refusal: Refusal) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        Poll::Ready(Some(Err(Box::new(self.limits.refuse(refusal)))))
    }

    fn take_budget(&mut self, len: usize) -> bool {
        let Ok(n) = u32::try_from(len) else { return false };
        match self.limits.inner.bytes.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                if len > 0 && !this.take_budget(len) {
                    return this.refuse(Refusal::Bytes);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                this.ended = true;
                this.timer = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = this.request_deadline;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.refuse(Refusal::RequestTimeout),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LimitedBody {
    fn drop(&mut self) {
        // The bytes read stay counted until the call is answered: the
        // decoded request lives that long.
        if let Some(held) = self.held.take() {
            let mut bytes = self.guard.bytes.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *bytes {
                Some(b) => b.merge(held),
                None => *bytes = Some(held),
            }
        }
    }
}

/// An answer's body, holding its call's guard (its places in the budgets) until hyper has sent
/// it (or the stream was reset).
pub struct GuardedBody {
    inner: Body,
    _guard: Arc<CallGuard>,
}

impl std::fmt::Debug for GuardedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedBody").finish_non_exhaustive()
    }
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl LimitUse for CallLimits {
    fn calls_in_flight(&self) -> usize {
        CallLimits::calls_in_flight(self)
    }

    fn max_calls(&self) -> usize {
        self.inner.settings.max_calls
    }

    fn request_bytes(&self) -> usize {
        CallLimits::request_bytes(self)
    }

    fn max_request_bytes(&self) -> usize {
        self.inner.settings.max_request_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", timeout.parse().unwrap());
        h
    }

    #[test]
    fn reads_grpc_timeout_as_the_spec_writes_it() {
        assert_eq!(grpc_timeout(&headers("3S")), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout(&headers("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&headers("99999999u")), Some(Duration::from_micros(99_999_999)));
        assert_eq!(grpc_timeout(&headers("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&headers("2M")), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout(&headers("5n")), Some(Duration::from_nanos(5)));
        for bad in ["S", "3", "3s", "-1S", "123456789S", "1.5S", " 3S"] {
            assert_eq!(grpc_timeout(&headers(bad)), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn health_checks_have_their_own_reserve_then_share_the_cap() {
        let settings = Settings {
            max_calls: 2,
            max_request_bytes: 1024,
            request_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(1),
        };
        let limits = CallLimits::new(settings, LimitMetrics::default());
        let calls: Vec<_> = (0..2).map(|_| limits.admit("/introspect.v1.TokenIntrospection/Verify").unwrap()).collect();
        assert_eq!(limits.admit("/introspect.v1.TokenIntrospection/Verify").unwrap_err(), Refusal::Calls);
        let probes: Vec<_> = (0..PROBE_RESERVE).map(|_| limits.admit(HEALTH_CHECK_PATH).unwrap()).collect();
        assert_eq!(limits.admit(HEALTH_CHECK_PATH).unwrap_err(), Refusal::Calls, "reserve and cap both taken");
        assert_eq!(limits.calls_in_flight(), 2 + PROBE_RESERVE);
        drop(calls);
        assert!(limits.admit(HEALTH_CHECK_PATH).is_ok(), "past the reserve, probes share the cap");
        drop(probes);
        assert_eq!(limits.calls_in_flight(), 0);
        let status = limits.refuse(Refusal::Calls);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("limit of 2 calls"), "{}", status.message());
    }
}
