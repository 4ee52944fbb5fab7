//! Serving the gRPC listener's connections: one task per connection, an
//! HTTP/2 server connection (hyper) with our settings, and the reasons a
//! connection is closed by the server:
//!
//! - the drain (shutdown): GOAWAY, calls in progress finish;
//! - `--max-connection-age`: GOAWAY, then `--max-connection-age-grace`;
//! - `--max-connection-idle`: GOAWAY once no call has been in progress for
//!   that long (gRPC's `MAX_CONNECTION_IDLE`);
//! - the connection table making room for a new client
//!   ([`super::listener::ConnectionTable`]): GOAWAY, then
//!   [`EVICTION_GRACE`].
//!
//! tonic's own serve loop offers the first two only, and no way to close a
//! chosen connection, which is why the server serves its connections here
//! (the routes are still tonic's, and every setting tonic applied is applied
//! here: see [`Http2Settings`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::codegen::tokio_stream::{Stream, StreamExt as _};
use tonic::service::Routes;
use tracing::{debug, trace};

use super::limits::{CallLimits, CallService};
use super::listener::{CloseReason, Connection, ConnectionTable, EVICTION_GRACE};
use crate::config::ConnectionSettings;

/// A connection that has sent nothing for this long gets an HTTP/2 PING...
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// ...and is closed when the PING is not answered within this: a client
/// that vanished (a node lost, a half-open TCP connection) does not keep
/// its connection here for ever.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most streams a connection may make the server reset for its own
/// protocol errors (a flow-control window overflowed, frames on a closed
/// stream) before it gets GOAWAY `ENHANCE_YOUR_CALM`: h2's and hyper's own
/// default, which tonic's server switched off (it passed `None`, "no
/// limit") unless it was set ("MadeYouReset", CVE-2025-8671).
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Flow-control window of each request stream: what a client may send on a
/// stream before the server has read it. A request is at most 64 KiB and a
/// gRPC prefix (`MAX_REQUEST_BYTES` in the services).
pub const STREAM_WINDOW: u32 = 64 * 1024 + 5;
/// Flow-control window of a whole connection: with [`STREAM_WINDOW`], what
/// one connection can make the server buffer before its calls read it
/// (hyper's default is 1 MiB).
pub const CONNECTION_WINDOW: u32 = 256 * 1024;

/// How connections are served, fixed at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Settings {
    /// Most concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// GOAWAY at this age; `None`: no limit.
    pub max_age: Option<Duration>,
    /// Calls' time after that GOAWAY.
    pub max_age_grace: Duration,
    /// GOAWAY after this long without a call; `None`: no limit.
    pub max_idle: Option<Duration>,
}

impl From<&ConnectionSettings> for Http2Settings {
    fn from(c: &ConnectionSettings) -> Self {
        Http2Settings {
            max_concurrent_streams: c.max_streams_per_connection,
            max_age: c.max_age,
            max_age_grace: c.max_age_grace,
            max_idle: c.max_idle,
        }
    }
}

impl Http2Settings {
    fn builder(&self) -> http2::Builder<TokioExecutor> {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS);
        builder
    }
}

/// Serves every connection `incoming` yields until `drain` is cancelled;
/// then stops accepting (dropping `incoming` closes the listener), asks
/// every connection to go away (GOAWAY) and returns once all have closed.
/// Dropping the returned future aborts the connections still open.
pub async fn serve<I, T>(
    incoming: I,
    routes: Routes,
    settings: Http2Settings,
    limits: CallLimits,
    table: ConnectionTable,
    drain: CancellationToken,
) where
    I: Stream<Item = io::Result<Connection<T>>>,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let routes = routes.prepare();
    let builder = Arc::new(settings.builder());
    let mut connections = JoinSet::new();
    {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            tokio::select! {
                () = drain.cancelled() => break,
                next = incoming.next() => match next {
                    Some(Ok(io)) => {
                        let service = CallService::new(routes.clone(), limits.clone(), io.state().clone());
                        connections.spawn(serve_one(io, service, builder.clone(), settings, table.clone(), drain.clone()));
                    }
                    Some(Err(e)) => debug!(error = %e, "a connection failed before it was served"),
                    None => break,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
    while connections.join_next().await.is_some() {}
}

/// One connection, until it closes (see the [module docs](self)).
async fn serve_one<T>(
    io: Connection<T>,
    service: CallService,
    builder: Arc<http2::Builder<TokioExecutor>>,
    settings: Http2Settings,
    table: ConnectionTable,
    drain: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = io.state().clone();
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let far = || Instant::now() + Duration::from_secs(365 * 24 * 60 * 60);
    let max_age = std::pin::pin!(tokio::time::sleep_until(settings.max_age.map_or_else(far, |a| Instant::now() + a)));
    let mut max_age = max_age;
    let idle_check =
        std::pin::pin!(tokio::time::sleep_until(settings.max_idle.map_or_else(far, |i| Instant::now() + i)));
    let mut idle_check = idle_check;
    // Once asked to go away: closed anyway at this time.
    let force = std::pin::pin!(tokio::time::sleep_until(far()));
    let mut force = force;
    let mut going_away = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = drain.cancelled(), if !going_away => {
                // The drain's own grace bounds it (the server aborts the rest).
                connection.as_mut().graceful_shutdown();
                going_away = true;
            }
            () = &mut max_age, if !going_away && settings.max_age.is_some() => {
                connection.as_mut().graceful_shutdown();
                going_away = true;
                force.as_mut().reset(Instant::now() + settings.max_age_grace);
            }
            reason = state.close_requested(), if !going_away => {
                debug!(reason = reason.as_str(), "asking a connection to go away");
                connection.as_mut().graceful_shutdown();
                going_away = true;
                force.as_mut().reset(Instant::now() + EVICTION_GRACE);
            }
            () = &mut idle_check, if !going_away && settings.max_idle.is_some() => {
                let max_idle = settings.max_idle.unwrap_or_default();
                match state.idle_for() {
                    Some(idle) if idle >= max_idle => {
                        if state.request_close(CloseReason::Idle) {
                            table.count_close(CloseReason::Idle);
                        }
                    }
                    Some(idle) => idle_check.as_mut().reset(Instant::now() + (max_idle - idle)),
                    None => idle_check.as_mut().reset(Instant::now() + max_idle),
                }
            }
            () = &mut force, if going_away => {
                debug!("closing a connection that did not close after its GOAWAY in time");
                return;
            }
        }
    }
}
