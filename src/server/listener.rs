//! The gRPC listener's own accept loops ([`plaintext`], [`tls()`]) and the
//! bounds they put on client connections:
//!
//! - **At most `--max-connections` open at once** ([`ConnectionTable`]).
//!   With every slot taken, a new client makes room: the table asks an
//!   idle connection to go away (one that never made a call first, then
//!   the one idle the longest); only when every connection has a call in
//!   progress do new clients wait in the kernel's listen backlog. An idle
//!   HTTP/2 connection costs about 22 KiB here (2,000 of them: +43 MiB RSS),
//!   so the default, 4,096, stays under 100 MiB. The binary also raises the
//!   soft open-files limit to the hard one, as Go's runtime does (containers
//!   often start with 1,024), and lowers the cap to what the limit can hold
//!   ([`fit_to_file_limit`]).
//! - **A handshake deadline** (`--handshake-timeout`): a new connection must
//!   send the HTTP/2 client preface (with TLS, after completing the TLS
//!   handshake) within it of its accept, or it is closed. Without it, a TCP
//!   connection that never sends a byte, or stops halfway through the
//!   preface, is held for ever: hyper's HTTP/2 keepalive only starts once
//!   the connection is established, and `--max-connection-age` is off by
//!   default. gRPC-Go bounds the same phase with its `ConnectionTimeout`
//!   server option (120 s by default); a verifier that answers in
//!   microseconds needs far less, hence 10 s by default.
//! - **Accept errors back off** ([`ACCEPT_ERROR_BACKOFF`]) and are logged,
//!   at most once per [`ACCEPT_ERROR_LOG_INTERVAL`]. tonic's own loop
//!   retries at once and logs at trace level: measured with the open-files
//!   limit reached, the server spent 1.1 CPUs retrying and said nothing.
//!
//! [`Connection`] wraps each accepted stream: it holds the connection's
//! slot until it is dropped, and until the preface (its 24 fixed octets and
//! the header of the client's first SETTINGS frame) has been read, a read
//! that would wait past the deadline fails with
//! [`io::ErrorKind::TimedOut`], which ends the connection. After the
//! preface it only forwards (one branch per read), so established
//! connections pay nothing for it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use crate::telemetry::metrics::{CloseLabels, TableMetrics};
use crate::telemetry::throttle::LogThrottle;
use crate::tls::TlsState;

/// File descriptors kept for everything but gRPC client connections: the
/// listeners, up to 64 metrics-port connections, key fetches, config and
/// certificate files, the runtime's own.
pub const RESERVED_FILE_DESCRIPTORS: u64 = 256;
/// Wait after an accept error that is not the client's (out of file
/// descriptors or memory) before accepting again.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// At most one log line per this while accepts keep failing.
pub const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Accepted connections handed over but not yet taken by the server.
const HANDOVER_QUEUE: usize = 64;

/// Length of the HTTP/2 client connection preface as the deadline counts
/// it: the 24 octets `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` and the 9-octet
/// header of the SETTINGS frame that must follow them (RFC 9113, section
/// 3.4). hyper checks their contents; the deadline only needs to know when
/// they have arrived.
pub const PREFACE_LEN: usize = 24 + 9;

/// Wait, with every slot taken, before asking one more idle connection to
/// close when the last one asked has not closed yet (a client that does
/// not answer the GOAWAY's PING is closed after [`EVICTION_GRACE`]).
pub const EVICTION_RETRY: Duration = Duration::from_millis(50);
/// How long a connection asked to make room has to close after its GOAWAY
/// before it is closed anyway. It had no call in progress when asked; a
/// call it starts after the GOAWAY is refused with `REFUSED_STREAM`, which
/// clients retry on a new connection.
pub const EVICTION_GRACE: Duration = Duration::from_secs(1);
/// Least time a connection must have been idle to be asked to make room:
/// a new client gets this long, after its accept, to make its first call
/// (measured: with 136 clients that reconnect as soon as they are closed
/// churning a 64-slot table, a new client was closed before its request was
/// read, 3,400 times a second, until this was added).
pub const EVICTION_MIN_IDLE: Duration = Duration::from_millis(100);
/// Most connections asked to make room that have not closed yet.
pub const MAX_PENDING_EVICTIONS: usize = 8;

/// Why a connection was asked to close by the server (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The table was full and it was the connection idle the longest.
    MakeRoom,
    /// It had no call in progress for `--max-connection-idle`.
    Idle,
}

impl CloseReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::MakeRoom => "make_room",
            CloseReason::Idle => "idle",
        }
    }
}

/// The connections open on one listener, at most `max` at once.
///
/// With every slot taken a new connection is not simply left waiting: an
/// idle connection (no call in progress for at least [`EVICTION_MIN_IDLE`])
/// is asked to close, one that never made a call first, then the one idle
/// the longest (HTTP/2 GOAWAY; the metrics port closes it at once), and the new
/// one takes its slot. So connections that only hold their place, however
/// many, cannot lock out new clients or health probes, as long as some
/// connection is idle; the cap on calls in flight
/// (`--max-calls-in-flight`, below the connection cap) keeps it so. Only
/// when every connection has a call in progress do new clients wait in the
/// kernel's listen backlog.
#[derive(Clone, Debug)]
pub struct ConnectionTable {
    inner: Arc<Table>,
}

#[derive(Debug)]
struct Table {
    listener: &'static str,
    slots: Arc<Semaphore>,
    max: usize,
    metrics: TableMetrics,
    /// The open connections, for the search of the one idle the longest.
    connections: Mutex<HashMap<u64, Arc<ConnectionState>>>,
    next_id: AtomicU64,
    /// Asked to make room and not closed yet.
    pending_evictions: AtomicUsize,
    epoch: Instant,
}

impl ConnectionTable {
    /// At most `max` connections (at least one) on the listener named
    /// `listener` in metrics and logs.
    pub fn new(listener: &'static str, max: usize, metrics: TableMetrics) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Table {
                listener,
                slots: Arc::new(Semaphore::new(max)),
                max,
                metrics,
                connections: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                pending_evictions: AtomicUsize::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.max - self.inner.slots.available_permits()
    }

    /// A slot for a new connection: a free one, or one made by asking the
    /// connection idle the longest to close (see the type's docs).
    pub async fn acquire(&self) -> Slot {
        let table = &self.inner;
        loop {
            if let Ok(permit) = table.slots.clone().try_acquire_owned() {
                return self.register(permit);
            }
            if table.pending_evictions.load(Ordering::Acquire) < MAX_PENDING_EVICTIONS {
                self.evict_idlest();
            }
            tokio::select! {
                permit = table.slots.clone().acquire_owned() => {
                    return self.register(permit.expect("connection slots are never closed"));
                }
                () = tokio::time::sleep(EVICTION_RETRY) => {}
            }
        }
    }

    fn register(&self, permit: OwnedSemaphorePermit) -> Slot {
        let table = &self.inner;
        let id = table.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnectionState::new(id, table.epoch));
        table.connections.lock().unwrap_or_else(|e| e.into_inner()).insert(id, state.clone());
        table.metrics.open.inc();
        Slot { _permit: permit, state, table: self.inner.clone() }
    }

    /// Asks the connection idle the longest to close; false when none is idle.
    fn evict_idlest(&self) -> bool {
        let table = &self.inner;
        let victim = {
            let connections = table.connections.lock().unwrap_or_else(|e| e.into_inner());
            connections
                .values()
                .filter(|c| !c.is_closing())
                .filter_map(|c| c.idle_since_ms().map(|since| ((c.has_served(), since, c.id), c)))
                .filter(|(_, c)| c.idle_for().is_some_and(|idle| idle >= EVICTION_MIN_IDLE))
                .min_by_key(|(key, _)| *key)
                .map(|(_, c)| c.clone())
        };
        let Some(victim) = victim else { return false };
        if !victim.request_close(CloseReason::MakeRoom) {
            return false;
        }
        table.pending_evictions.fetch_add(1, Ordering::AcqRel);
        table
            .metrics
            .closed_by_server
            .get_or_create(&CloseLabels { listener: table.listener, reason: CloseReason::MakeRoom.as_str() })
            .inc();
        debug!(
            listener = table.listener,
            connection = victim.id,
            "every connection slot taken; asking the connection idle the longest to close"
        );
        true
    }

    /// Counts a connection closed for `reason` by its own serving task.
    pub fn count_close(&self, reason: CloseReason) {
        let table = &self.inner;
        table
            .metrics
            .closed_by_server
            .get_or_create(&CloseLabels { listener: table.listener, reason: reason.as_str() })
            .inc();
    }
}

/// One connection's place in its [`ConnectionTable`], freed on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    state: Arc<ConnectionState>,
    table: Arc<Table>,
}

impl Slot {
    /// The connection's state, shared with its serving task and calls.
    pub fn state(&self) -> &Arc<ConnectionState> {
        &self.state
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let table = &self.table;
        table.connections.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.state.id);
        if self.state.close_reason() == Some(CloseReason::MakeRoom) {
            table.pending_evictions.fetch_sub(1, Ordering::AcqRel);
        }
        table.metrics.open.dec();
    }
}

/// What the server knows of one open connection: how many of its calls are
/// in progress, since when it has had none, and whether it was asked to
/// close. Calls update it with two atomic operations each.
#[derive(Debug)]
pub struct ConnectionState {
    id: u64,
    /// Calls (HTTP/2 streams, HTTP/1 requests) in progress.
    active: AtomicUsize,
    /// Whether a call was ever made on it.
    served: AtomicBool,
    /// When the connection last had no call in progress, in milliseconds
    /// since the table's epoch (its accept, to begin with).
    idle_since: AtomicU64,
    /// 0: not asked to close; else 1 + the [`CloseReason`]'s index.
    close: AtomicU8,
    asked: Notify,
    epoch: Instant,
}

impl ConnectionState {
    fn new(id: u64, epoch: Instant) -> Self {
        let state = Self {
            id,
            active: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            close: AtomicU8::new(0),
            asked: Notify::new(),
            epoch,
        };
        state.idle_since.store(state.now_ms(), Ordering::Relaxed);
        state
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A call began on this connection; it is busy until the guard drops.
    pub fn call_started(self: &Arc<Self>) -> CallOnConnection {
        self.active.fetch_add(1, Ordering::AcqRel);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        CallOnConnection(self.clone())
    }

    /// Whether a call was ever made on it.
    pub fn has_served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Whether no call is in progress.
    pub fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// Since when (ms after the table's epoch) no call has been in
    /// progress; `None` while one is.
    fn idle_since_ms(&self) -> Option<u64> {
        self.is_idle().then(|| self.idle_since.load(Ordering::Acquire))
    }

    /// How long no call has been in progress; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        self.idle_since_ms().map(|since| Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Asks the connection to close; false if it already was.
    pub fn request_close(&self, reason: CloseReason) -> bool {
        let code = 1 + reason as u8;
        let asked = self.close.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if asked {
            self.asked.notify_one();
        }
        asked
    }

    /// Why it was asked to close, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.close.load(Ordering::Acquire) {
            0 => None,
            1 => Some(CloseReason::MakeRoom),
            _ => Some(CloseReason::Idle),
        }
    }

    fn is_closing(&self) -> bool {
        self.close.load(Ordering::Acquire) != 0
    }

    /// Resolves once the connection has been asked to close.
    pub async fn close_requested(&self) -> CloseReason {
        loop {
            if let Some(reason) = self.close_reason() {
                return reason;
            }
            self.asked.notified().await;
        }
    }
}

/// A call in progress on a connection ([`ConnectionState::call_started`]).
#[derive(Debug)]
pub struct CallOnConnection(Arc<ConnectionState>);

impl Drop for CallOnConnection {
    fn drop(&mut self) {
        let state = &self.0;
        // The last call out stamps the start of the idle time. A call
        // starting in between makes the stamp early, never late: at worst
        // the connection looks idle a little longer than it was.
        if state.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            state.idle_since.store(state.now_ms(), Ordering::Release);
        }
    }
}

/// Raises the process's soft open-files limit to its hard limit (as Go's
/// runtime does at start) and returns `max_connections`, lowered (with a
/// warning) to what the limit can hold beside
/// [`RESERVED_FILE_DESCRIPTORS`]. Beyond the limit an accept would fail
/// instead of waiting for a slot.
pub fn fit_to_file_limit(max_connections: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-files limit; --max-connections is used as given");
            return max_connections;
        }
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_FILE_DESCRIPTORS).max(1)).unwrap_or(usize::MAX);
    if max_connections > room {
        warn!(
            max_connections,
            open_files_limit = limit,
            lowered_to = room,
            "--max-connections is more than the open-files limit allows; lowered (raise the container's nofile limit to keep it)"
        );
        room
    } else {
        max_connections
    }
}

/// Accepts the next TCP connection. A failed accept that is the client's
/// doing (reset or aborted before it was taken) is skipped at once; any
/// other failure (out of file descriptors, out of memory) is logged, at
/// most once per [`ACCEPT_ERROR_LOG_INTERVAL`], and retried after
/// [`ACCEPT_ERROR_BACKOFF`] instead of at once.
pub async fn accept(listener: &TcpListener, errors: &mut AcceptErrors) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(pair) => return pair,
            Err(e) if is_client_error(&e) => debug!(error = %e, "a client left before its connection was accepted"),
            Err(e) => {
                errors.report(&e);
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

fn is_client_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

/// Rate limit of one listener's accept-error log line.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: &'static str,
    log: LogThrottle,
}

impl AcceptErrors {
    /// For the listener named `listener` in the log (`grpc`, `metrics`, `webhook`).
    pub fn new(listener: &'static str) -> Self {
        Self { listener, log: LogThrottle::new(ACCEPT_ERROR_LOG_INTERVAL) }
    }

    fn report(&mut self, e: &io::Error) {
        let Some(since) = self.log.admit() else { return };
        warn!(
            listener = self.listener,
            error = %e,
            failed_since_last_report = since,
            retry_every = ?ACCEPT_ERROR_BACKOFF,
            "accepting a connection failed (out of file descriptors?)"
        );
    }
}

/// The plaintext listener's connections (`TCP_NODELAY` set), at most
/// `table.max()` open at once, each given `handshake_timeout` from the
/// moment it has a slot to send the preface. The accept loop stops (and
/// the listener closes) as soon as the stream is dropped, which the server
/// does when the drain starts.
pub fn plaintext(
    listener: TcpListener,
    table: ConnectionTable,
    handshake_timeout: Duration,
) -> ReceiverStream<io::Result<Connection<TcpStream>>> {
    let (tx, rx) = mpsc::channel(HANDOVER_QUEUE);
    tokio::spawn(async move {
        let mut errors = AcceptErrors::new("grpc");
        loop {
            let Some((tcp, peer, slot)) = accept_into(&listener, &table, &mut errors, &tx).await else { return };
            let _ = tcp.set_nodelay(true);
            let connection = Connection::new(tcp, Instant::now() + handshake_timeout, Some(peer), slot);
            if tx.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Accepts the next connection, then waits for its slot in `table` (a
/// full table makes room only for a client that is really there); `None`
/// once `tx` is closed (the server stopped taking connections).
pub(crate) async fn accept_into<T>(
    listener: &TcpListener,
    table: &ConnectionTable,
    errors: &mut AcceptErrors,
    tx: &mpsc::Sender<T>,
) -> Option<(TcpStream, SocketAddr, Slot)> {
    let (tcp, peer) = tokio::select! {
        () = tx.closed() => return None,
        accepted = accept(listener, errors) => accepted,
    };
    tokio::select! {
        () = tx.closed() => None,
        slot = table.acquire() => Some((tcp, peer, slot)),
    }
}

/// Most TLS handshakes in progress at once; further connections wait in the
/// kernel's accept queue.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// An accepted TLS connection (its slot under `--max-connections`, its
/// preface deadline).
pub type TlsConnection = Connection<TlsStream<TcpStream>>;

/// The TLS listener's connections: TCP connections accepted on
/// `listener` (at most `slots.max()` open at once), each handshaken in its
/// own task; `timeout`, from the accept, bounds the TLS handshake and then
/// the HTTP/2 preface. The accept loop stops (and the listener closes) as
/// soon as the stream is dropped, which tonic does when the drain starts.
pub fn tls(
    listener: TcpListener,
    tls: Arc<TlsState>,
    table: ConnectionTable,
    timeout: Duration,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, table, timeout, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<TlsState>,
    table: ConnectionTable,
    timeout: Duration,
    tx: mpsc::Sender<io::Result<TlsConnection>>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let mut errors = AcceptErrors::new("grpc");
    loop {
        let permit = tokio::select! {
            () = tx.closed() => return,
            permit = pending.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let Some((tcp, peer, slot)) = accept_into(&listener, &table, &mut errors, &tx).await else { return };
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + timeout;
        let acceptor = tls.acceptor();
        let tx = tx.clone();
        tokio::spawn(async move {
            let handshaken = handshake(acceptor, tcp, peer, deadline).await;
            drop(permit);
            if let Some(stream) = handshaken {
                let _ = tx.send(Ok(Connection::new(stream, deadline, Some(peer), slot))).await;
            }
        });
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// An accepted client connection: its slot under `--max-connections`,
/// and a deadline for the HTTP/2 preface (see the [module docs](self)).
#[derive(Debug)]
pub struct Connection<T> {
    inner: T,
    /// `None` once the preface has arrived (or the stream ended).
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
    peer: Option<SocketAddr>,
    _slot: Slot,
}

impl<T> Connection<T> {
    /// Wraps `inner`, which must have sent the preface by `deadline`.
    pub fn new(inner: T, deadline: Instant, peer: Option<SocketAddr>, slot: Slot) -> Self {
        Self { inner, deadline: Some(Box::pin(tokio::time::sleep_until(deadline))), received: 0, peer, _slot: slot }
    }

    /// The connection's state in its table.
    pub fn state(&self) -> &Arc<ConnectionState> {
        self._slot.state()
    }

    /// Whether the deadline still applies (the preface has not all arrived).
    pub fn is_armed(&self) -> bool {
        self.deadline.is_some()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Connection<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(deadline) = this.deadline.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.received += read;
                // Disarmed by the whole preface, or by the end of the stream
                // (hyper closes the connection on that anyway).
                if this.received >= PREFACE_LEN || read == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    debug!(peer = ?this.peer, received = this.received, "closing a connection that did not send the HTTP/2 preface in time");
                    this.deadline = None;
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the HTTP/2 connection preface did not arrive in time",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Connection<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// The fixed octets, then an empty SETTINGS frame.
    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    const TIMEOUT: Duration = Duration::from_secs(10);

    async fn pair() -> (DuplexStream, Connection<DuplexStream>) {
        let (client, server) = tokio::io::duplex(1024);
        let slot = ConnectionTable::new("test", 1, TableMetrics::default()).acquire().await;
        (client, Connection::new(server, Instant::now() + TIMEOUT, None, slot))
    }

    /// Reads until `buf` is full, the stream ends, or a read fails.
    async fn read_some(server: &mut Connection<DuplexStream>, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        let read = server.read(&mut buf).await?;
        buf.truncate(read);
        Ok(buf)
    }

    #[tokio::test]
    async fn slots_count_open_connections_and_free_on_drop() {
        let metrics = TableMetrics::default();
        let table = ConnectionTable::new("test", 2, metrics.clone());
        let a = table.acquire().await;
        let b = table.acquire().await;
        assert_eq!((table.open(), metrics.open.get()), (2, 2));
        // Both busy: nothing to make room from, so a third waits.
        let (_call_a, _call_b) = (a.state().call_started(), b.state().call_started());
        let mut third = std::pin::pin!(table.acquire());
        let waits = std::future::poll_fn(|cx| Poll::Ready(third.as_mut().poll(cx).is_pending())).await;
        assert!(waits, "a third slot out of two");
        assert_eq!(a.state().close_reason(), None, "a busy connection is never asked to close");
        drop(a);
        let c = third.await;
        assert_eq!((table.open(), metrics.open.get()), (2, 2));
        drop((b, c));
        assert_eq!((table.open(), metrics.open.get()), (0, 0));
        assert_eq!(ConnectionTable::new("test", 0, TableMetrics::default()).max(), 1, "never zero slots");
    }

    /// The close reason a slot's connection was asked for, once asked.
    async fn asked(slot: &Slot) -> CloseReason {
        tokio::time::timeout(Duration::from_secs(5), slot.state().close_requested()).await.expect("asked to close")
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_makes_room_from_an_idle_connection_never_served_first_then_idle_longest() {
        let metrics = TableMetrics::default();
        let table = ConnectionTable::new("test", 3, metrics.clone());
        let served_long_ago = table.acquire().await;
        drop(served_long_ago.state().call_started());
        tokio::time::advance(Duration::from_secs(60)).await;
        let busy = table.acquire().await;
        let _call = busy.state().call_started();
        tokio::time::advance(Duration::from_secs(1)).await;
        let never_served = table.acquire().await;
        tokio::time::advance(EVICTION_MIN_IDLE).await;

        // Full: the fourth asks the connection that never made a call, even
        // though the served one has been idle longer.
        let table2 = table.clone();
        let fourth = tokio::spawn(async move { table2.acquire().await });
        assert_eq!(asked(&never_served).await, CloseReason::MakeRoom);
        assert_eq!(served_long_ago.state().close_reason(), None);
        assert_eq!(busy.state().close_reason(), None);
        drop(never_served); // its serving task closes it
        let fourth = fourth.await.unwrap();
        let count = |reason: CloseReason| {
            metrics.closed_by_server.get_or_create(&CloseLabels { listener: "test", reason: reason.as_str() }).get()
        };
        assert_eq!(count(CloseReason::MakeRoom), 1);

        // Full again, and every idle connection has made a call: the one
        // idle the longest is asked.
        drop(fourth.state().call_started());
        let table3 = table.clone();
        let fifth = tokio::spawn(async move { table3.acquire().await });
        assert_eq!(asked(&served_long_ago).await, CloseReason::MakeRoom);
        assert_eq!(fourth.state().close_reason(), None, "idle for less time");
        drop(served_long_ago);
        let _fifth = fifth.await.unwrap();
        assert_eq!(count(CloseReason::MakeRoom), 2);
        assert_eq!(busy.state().close_reason(), None, "a busy connection is never asked to close");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_gets_time_to_make_its_first_call() {
        let table = ConnectionTable::new("test", 1, TableMetrics::default());
        let new = table.acquire().await;
        let table2 = table.clone();
        let next = tokio::spawn(async move { table2.acquire().await });
        let started = Instant::now();
        assert_eq!(asked(&new).await, CloseReason::MakeRoom);
        assert!(started.elapsed() >= EVICTION_MIN_IDLE, "asked after {:?}", started.elapsed());
        drop(new);
        let _next = next.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_does_not_close_is_not_waited_for_alone() {
        let table = ConnectionTable::new("test", 2, TableMetrics::default());
        let a = table.acquire().await;
        tokio::time::advance(Duration::from_millis(10)).await;
        let b = table.acquire().await;
        let table2 = table.clone();
        let third = tokio::spawn(async move { table2.acquire().await });
        assert_eq!(asked(&a).await, CloseReason::MakeRoom);
        // a ignores its GOAWAY; after EVICTION_RETRY the next idlest is asked.
        assert_eq!(asked(&b).await, CloseReason::MakeRoom);
        drop(b);
        let _third = third.await.unwrap();
        drop(a);
        assert_eq!(table.open(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_last_call_out() {
        let table = ConnectionTable::new("test", 1, TableMetrics::default());
        let slot = table.acquire().await;
        let state = slot.state();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(state.idle_for(), Some(Duration::from_secs(5)), "idle since accept");
        let one = state.call_started();
        let two = state.call_started();
        assert_eq!(state.idle_for(), None);
        drop(one);
        assert_eq!(state.idle_for(), None, "one call still in progress");
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(two);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(state.idle_for(), Some(Duration::from_secs(3)));
        assert!(state.has_served());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_fails_at_the_deadline_not_before() {
        let (_client, mut server) = pair().await;
        let started = Instant::now();
        let err = read_some(&mut server, 64).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_preface_does_not_disarm_it() {
        let (mut client, mut server) = pair().await;
        client.write_all(&PREFACE[..PREFACE_LEN - 1]).await.unwrap();
        assert_eq!(read_some(&mut server, 64).await.unwrap(), &PREFACE[..PREFACE_LEN - 1]);
        assert!(server.is_armed());
        let err = read_some(&mut server, 64).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_preface_disarms_it_even_in_pieces() {
        let (mut client, mut server) = pair().await;
        client.write_all(&PREFACE[..10]).await.unwrap();
        assert_eq!(read_some(&mut server, 64).await.unwrap(), &PREFACE[..10]);
        client.write_all(&PREFACE[10..]).await.unwrap();
        assert_eq!(read_some(&mut server, 64).await.unwrap(), &PREFACE[10..]);
        assert!(!server.is_armed());
        // Idle far past the deadline, then more data: still served.
        let reader = tokio::spawn(async move { read_some(&mut server, 64).await });
        tokio::time::sleep(TIMEOUT * 10).await;
        client.write_all(b"frames").await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), b"frames");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_and_the_end_of_the_stream_pass_through() {
        let (mut client, mut server) = pair().await;
        server.write_all(b"settings").await.unwrap();
        let mut got = [0; 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"settings");
        drop(client);
        assert_eq!(read_some(&mut server, 64).await.unwrap(), b"");
        assert!(!server.is_armed());
    }
}
