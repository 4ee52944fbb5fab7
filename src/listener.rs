//! The gRPC listener's own accept loop and the bounds it puts on client
//! connections, for plaintext and TLS alike:
//!
//! - **At most `--max-connections` open at once** ([`ConnectionSlots`]).
//!   With every slot taken the loop stops accepting; further clients wait
//!   in the kernel's listen backlog and are served as slots free. An idle
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

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::telemetry::throttle::LogThrottle;

/// Default of `--handshake-timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Largest `--max-connections` accepted.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
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

/// The cap on open client connections, shared by the accept loop and the
/// connections (each holds a [`Slot`]).
#[derive(Clone, Debug)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: usize,
    open: Gauge,
}

impl ConnectionSlots {
    /// `max` slots (at least one); `open` follows the connections open.
    pub fn new(max: usize, open: Gauge) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self { slots: Arc::new(Semaphore::new(max)), max, open }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Waits for a free slot.
    async fn acquire(&self) -> Slot {
        // The semaphore is never closed.
        let permit = self.slots.clone().acquire_owned().await.expect("connection slots are never closed");
        self.open.inc();
        Slot { _permit: permit, open: self.open.clone() }
    }
}

/// One connection's place under `--max-connections`, freed on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
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
    /// For the listener named `listener` in the log (`grpc`, `metrics`).
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
/// `slots.max()` open at once, each given `handshake_timeout` from its
/// accept to send the preface. The accept loop stops (and the listener
/// closes) as soon as the stream is dropped, which tonic does when the
/// drain starts.
pub fn plaintext(
    listener: TcpListener,
    slots: ConnectionSlots,
    handshake_timeout: Duration,
) -> ReceiverStream<io::Result<Connection<TcpStream>>> {
    let (tx, rx) = mpsc::channel(HANDOVER_QUEUE);
    tokio::spawn(async move {
        let mut errors = AcceptErrors::new("grpc");
        loop {
            let Some(slot) = slot_unless_closed(&slots, &tx).await else { return };
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = accept(&listener, &mut errors) => accepted,
            };
            let _ = tcp.set_nodelay(true);
            let connection = Connection::new(tcp, Instant::now() + handshake_timeout, Some(peer), slot);
            if tx.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Waits for a free slot under `slots`, or returns `None` once `tx` is
/// closed (the server stopped taking connections): for accept loops.
pub(crate) async fn slot_unless_closed<T>(slots: &ConnectionSlots, tx: &mpsc::Sender<T>) -> Option<Slot> {
    tokio::select! {
        () = tx.closed() => None,
        slot = slots.acquire() => Some(slot),
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

impl<T: Connected> Connected for Connection<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
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
        let slot = ConnectionSlots::new(1, Gauge::default()).acquire().await;
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
        let gauge = Gauge::default();
        let slots = ConnectionSlots::new(2, gauge.clone());
        let a = slots.acquire().await;
        let b = slots.acquire().await;
        assert_eq!((slots.open(), gauge.get()), (2, 2));
        let mut third = std::pin::pin!(slots.acquire());
        let waits = std::future::poll_fn(|cx| Poll::Ready(third.as_mut().poll(cx).is_pending())).await;
        assert!(waits, "a third slot out of two");
        drop(a);
        let c = third.await;
        assert_eq!((slots.open(), gauge.get()), (2, 2));
        drop((b, c));
        assert_eq!((slots.open(), gauge.get()), (0, 0));
        assert_eq!(ConnectionSlots::new(0, Gauge::default()).max(), 1, "never zero slots");
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
