//! The handshake deadline of the gRPC listener: a new connection must send
//! the HTTP/2 client preface (and, with TLS, complete the TLS handshake
//! first) within `--handshake-timeout` of being accepted, or it is closed.
//!
//! Without it, a TCP connection that never sends a byte, or stops halfway
//! through the preface, is held for ever: hyper's HTTP/2 keepalive only
//! starts once the connection is established, and `--max-connection-age`
//! is off by default. Enough of them exhaust the process's file
//! descriptors. gRPC-Go bounds the same phase with its `ConnectionTimeout`
//! server option (120 s by default); a verifier that answers in
//! microseconds needs far less, hence 10 s by default.
//!
//! [`PrefaceDeadline`] wraps the connection's stream: until the preface
//! (its 24 fixed octets and the header of the client's first SETTINGS
//! frame) has been read, a read that would wait past the deadline
//! fails with [`io::ErrorKind::TimedOut`], which ends the connection. After
//! the preface it only forwards (one branch per read), so established
//! connections pay nothing for it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpIncoming};
use tracing::debug;

/// Default of `--handshake-timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Length of the HTTP/2 client connection preface as the deadline counts
/// it: the 24 octets `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` and the 9-octet
/// header of the SETTINGS frame that must follow them (RFC 9113, section
/// 3.4). hyper checks their contents; the deadline only needs to know when
/// they have arrived.
pub const PREFACE_LEN: usize = 24 + 9;

/// A client's stream, closed if the HTTP/2 preface has not been read by a
/// deadline (see the [module docs](self)).
#[derive(Debug)]
pub struct PrefaceDeadline<T> {
    inner: T,
    /// `None` once the preface has arrived (or the stream ended).
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
    peer: Option<SocketAddr>,
}

impl<T> PrefaceDeadline<T> {
    /// Wraps `inner`, which must have sent the preface by `deadline`.
    pub fn new(inner: T, deadline: Instant, peer: Option<SocketAddr>) -> Self {
        Self { inner, deadline: Some(Box::pin(tokio::time::sleep_until(deadline))), received: 0, peer }
    }

    /// Whether the deadline still applies (the preface has not all arrived).
    pub fn is_armed(&self) -> bool {
        self.deadline.is_some()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<T> {
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

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<T> {
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

impl<T: Connected> Connected for PrefaceDeadline<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The plaintext listener's connections (`TCP_NODELAY` set), each given
/// `timeout` from its accept to send the preface.
pub fn plaintext(
    incoming: TcpIncoming,
    timeout: Duration,
) -> impl Stream<Item = io::Result<PrefaceDeadline<TcpStream>>> {
    incoming.map(move |accepted| {
        accepted.map(|tcp| {
            let peer = tcp.peer_addr().ok();
            PrefaceDeadline::new(tcp, Instant::now() + timeout, peer)
        })
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// The fixed octets, then an empty SETTINGS frame.
    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    const TIMEOUT: Duration = Duration::from_secs(10);

    fn pair() -> (DuplexStream, PrefaceDeadline<DuplexStream>) {
        let (client, server) = tokio::io::duplex(1024);
        (client, PrefaceDeadline::new(server, Instant::now() + TIMEOUT, None))
    }

    /// Reads until `buf` is full, the stream ends, or a read fails.
    async fn read_some(server: &mut PrefaceDeadline<DuplexStream>, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        let read = server.read(&mut buf).await?;
        buf.truncate(read);
        Ok(buf)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_fails_at_the_deadline_not_before() {
        let (_client, mut server) = pair();
        let started = Instant::now();
        let err = read_some(&mut server, 64).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_preface_does_not_disarm_it() {
        let (mut client, mut server) = pair();
        client.write_all(&PREFACE[..PREFACE_LEN - 1]).await.unwrap();
        assert_eq!(read_some(&mut server, 64).await.unwrap(), &PREFACE[..PREFACE_LEN - 1]);
        assert!(server.is_armed());
        let err = read_some(&mut server, 64).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_preface_disarms_it_even_in_pieces() {
        let (mut client, mut server) = pair();
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
        let (mut client, mut server) = pair();
        server.write_all(b"settings").await.unwrap();
        let mut got = [0; 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"settings");
        drop(client);
        assert_eq!(read_some(&mut server, 64).await.unwrap(), b"");
        assert!(!server.is_armed());
    }
}
