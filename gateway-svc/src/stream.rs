//! A client connection's stream as the HTTP server and the WebSockets see it: the TCP stream,
//! the bytes of its first request that were read ahead to look at it (`legacy_upgrade.rs`),
//! and what must live exactly as long as the connection. One concrete type, so that an
//! upgraded connection comes back from hyper as itself (`sockets/upgrade.rs`), not boxed.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
};

/// A client's connection: its slot under the gateway's connection cap travels with it, into
/// an upgraded WebSocket too.
pub type ClientStream = Prefixed<TcpStream, OwnedSemaphorePermit>;

/// A connection whose first bytes were read ahead: hyper is given those first, then the rest.
/// It also carries what must live exactly as long as the connection (`keep`: the server's
/// connection permit), an upgraded WebSocket included, since hyper moves the IO into it.
pub struct Prefixed<IO, K> {
    /// None once read: a pointer, not a `Vec` and a position, in every open WebSocket.
    prefix: Option<Box<Unread>>,
    io: IO,
    keep: K,
}

struct Unread {
    bytes: Vec<u8>,
    read: usize,
}

impl<IO, K> Prefixed<IO, K> {
    /// `io`, with `prefix` to be read before anything more of it.
    pub fn new(prefix: Vec<u8>, io: IO, keep: K) -> Self {
        let prefix = (!prefix.is_empty()).then(|| {
            Box::new(Unread {
                bytes: prefix,
                read: 0,
            })
        });
        Self { prefix, io, keep }
    }

    /// The bytes read ahead and not yet read, the stream, and what it keeps.
    pub fn into_parts(self) -> (Vec<u8>, IO, K) {
        let unread = match self.prefix {
            Some(mut unread) => {
                unread.bytes.drain(..unread.read);
                unread.bytes
            }
            None => Vec::new(),
        };
        (unread, self.io, self.keep)
    }
}

impl<IO: AsyncRead + Unpin, K: Unpin> AsyncRead for Prefixed<IO, K> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(unread) = self.prefix.as_mut() {
            let n = (unread.bytes.len() - unread.read).min(buf.remaining());
            buf.put_slice(&unread.bytes[unread.read..unread.read + n]);
            unread.read += n;
            if unread.read == unread.bytes.len() {
                // Freed, not kept for the connection's life (a WebSocket may live for hours).
                self.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin, K: Unpin> AsyncWrite for Prefixed<IO, K> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Room for the next read from a peer: 512 bytes first (a request line and a few fields, an
/// answer's head), then twice what is there. A connection that has sent little holds little.
pub fn grow(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < 256 {
        buf.reserve(buf.len().max(512));
    }
}
