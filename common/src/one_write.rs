//! A gRPC connection that sends a call's frames in one write: HEADERS, DATA and trailers for
//! session-svc's answers, DATA and its end of stream for the gateway's calls.
//!
//! h2 copies a DATA payload into its write buffer only below a threshold: 256 bytes on a
//! transport that says it writes vectored, 1,024 on one that does not. A larger payload is
//! chained behind the buffer instead, and h2 must write it out before it may buffer another
//! frame. A unary answer is HEADERS, one DATA, then the trailers: a login's answer (~530
//! bytes) therefore left session-svc in two `writev`s, the trailers alone in the second (10
//! bytes). A call from the gateway is HEADERS, one DATA, then an empty DATA that ends the
//! stream: a login's call (~460 bytes) took three `writev`s, the last of 9 bytes. Measured with
//! `strace` over logins one at a time: every call, both ways.
//!
//! So the transport says it does not write vectored (payloads below 1,024 bytes join the
//! buffer, and the frames after them too), and a write buffer gathers what h2 writes between
//! two flushes into one system call (a larger payload's frame head and the payload itself).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tonic::transport::server::Connected;

/// What h2 writes between two flushes, gathered: more than this goes out as it comes.
const GATHERED: usize = 16 * 1024;

pub struct OneWrite<T> {
    inner: BufWriter<T>,
}

impl<T: AsyncWrite> OneWrite<T> {
    pub fn new(io: T) -> Self {
        Self {
            inner: BufWriter::with_capacity(GATHERED, io),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for OneWrite<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for OneWrite<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// The point of this type (see the module's comment).
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Served by tonic: the peer's address is the socket's.
impl<T: Connected + AsyncWrite> Connected for OneWrite<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.get_ref().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    async fn pair() -> (OneWrite<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (OneWrite::new(server), client)
    }

    #[tokio::test]
    async fn says_it_does_not_write_vectored_so_h2_copies_small_payloads() {
        let (server, _client) = pair().await;
        assert!(!server.is_write_vectored());
    }

    #[tokio::test]
    async fn what_is_written_between_two_flushes_leaves_together() {
        let (mut server, mut client) = pair().await;
        // HEADERS + a DATA head, a chained payload, the trailers: three writes from h2.
        server.write_all(b"head").await.unwrap();
        server.write_all(&[7u8; 600]).await.unwrap();
        server.write_all(b"trailers").await.unwrap();
        let mut got = vec![0u8; 4096];
        let early = tokio::time::timeout(Duration::from_millis(50), client.read(&mut got)).await;
        assert!(early.is_err(), "nothing may leave before the flush");

        server.flush().await.unwrap();
        let mut all = Vec::new();
        while all.len() < 612 {
            let n = client.read(&mut got).await.unwrap();
            assert!(n > 0, "closed early");
            all.extend_from_slice(&got[..n]);
        }
        assert_eq!(&all[..4], b"head");
        assert_eq!(&all[604..], b"trailers");

        // Reads pass through untouched.
        client.write_all(b"ping").await.unwrap();
        let mut ping = [0u8; 4];
        server.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"ping");
    }

    #[tokio::test]
    async fn a_write_larger_than_the_buffer_still_goes_out_whole() {
        let (mut server, mut client) = pair().await;
        let big = vec![1u8; GATHERED * 3];
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        server.write_all(b"x").await.unwrap();
        server.write_all(&big).await.unwrap();
        server.shutdown().await.unwrap();
        let all = reader.await.unwrap();
        assert_eq!(all.len(), 1 + big.len());
        assert_eq!(all[0], b'x');
    }
}
