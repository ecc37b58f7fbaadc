//! [`GuardedListener`]: the HTTP listener's bounds on its clients. At most
//! `max_connections` connections are open (one more is answered `503` and
//! closed, as Redis's `maxclients` does), and a connection that neither
//! sends nor takes a byte for `idle_timeout` is closed: an idle client, or
//! one sending its request a byte at a time, cannot hold a descriptor for
//! ever. Together with the RESP listener's own bounds this keeps the
//! descriptors the log needs (rotation, checkpoints) free.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// What a client over the connection limit is told.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 44\r\nConnection: close\r\n\r\ntoo many connections; try again in a moment\n";

/// A TCP listener with a connection limit and an idle timeout.
pub struct GuardedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle_timeout: Option<Duration>,
}

impl GuardedListener {
    /// Wraps `inner`; `max_connections` 0 means no limit.
    pub fn new(inner: TcpListener, max_connections: usize, idle_timeout: Option<Duration>) -> Self {
        let permits = if max_connections == 0 {
            Semaphore::MAX_PERMITS
        } else {
            max_connections
        };
        GuardedListener {
            inner,
            permits: Arc::new(Semaphore::new(permits)),
            idle_timeout,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (mut stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    return (GuardedStream::new(stream, permit, self.idle_timeout), addr);
                }
                Err(_) => {
                    tracing::warn!(%addr, "HTTP: connection limit reached; connection refused");
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            stream.write_all(TOO_MANY),
                        )
                        .await;
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: holds its place under the limit until dropped,
/// and fails with `TimedOut` once idle for too long.
pub struct GuardedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl GuardedStream {
    fn new(inner: TcpStream, permit: OwnedSemaphorePermit, idle: Option<Duration>) -> Self {
        GuardedStream {
            inner,
            _permit: permit,
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }

    /// The next bytes the client sent, left to be read (to tell a TLS
    /// handshake from plain text).
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.peek(buf).await
    }

    /// Bytes moved: the connection is not idle.
    fn touch(&mut self) {
        if let Some((d, sleep)) = &mut self.idle {
            sleep.as_mut().reset(Instant::now() + *d);
        }
    }

    /// Whether the idle timeout has passed (registering for its wake-up).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.idle {
            Some((_, sleep)) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.touch();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
