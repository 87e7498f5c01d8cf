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
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
        time::Duration,
    };

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

    /// Records every write that reaches the socket.
    struct Counting {
        tcp: TcpStream,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut self.tcp).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = written {
                self.writes.lock().unwrap().push(buf[..n].to_vec());
            }
            written
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_shutdown(cx)
        }
    }

    /// (type, flags, stream, the write it starts in) of each HTTP/2 frame the server sent.
    fn frames(writes: &[Vec<u8>]) -> Vec<(u8, u8, u32, usize)> {
        let mut starts = Vec::new();
        let all: Vec<u8> = writes.concat();
        let mut ends = writes.iter().scan(0, |end, w| {
            *end += w.len();
            Some(*end)
        });
        let mut write_end = ends.next().unwrap();
        let mut write = 0;
        let mut at = 0;
        while at + 9 <= all.len() {
            while at >= write_end {
                write_end = ends.next().unwrap();
                write += 1;
            }
            let len = u32::from_be_bytes([0, all[at], all[at + 1], all[at + 2]]) as usize;
            let stream = u32::from_be_bytes([all[at + 5], all[at + 6], all[at + 7], all[at + 8]]);
            starts.push((all[at + 3], all[at + 4], stream & 0x7fff_ffff, write));
            at += 9 + len;
        }
        starts
    }

    #[tokio::test]
    async fn an_h2_answer_of_headers_data_and_trailers_leaves_in_one_write() {
        use bytes::Bytes;
        use http_body_util::{BodyExt as _, Empty, StreamBody};
        use hyper::body::Frame;
        use hyper_util::rt::{TokioExecutor, TokioIo};

        const DATA: u8 = 0;
        const HEADERS: u8 = 1;
        const END_STREAM: u8 = 1;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writes = Arc::new(Mutex::new(Vec::new()));
        let recorded = writes.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let io = TokioIo::new(OneWrite::new(Counting {
                tcp,
                writes: recorded,
            }));
            // A unary gRPC answer's shape: HEADERS, one DATA over h2's 256-byte copy limit
            // (a login's is ~530 bytes), then the trailers.
            let answer = hyper::service::service_fn(|_| async {
                let mut trailers = hyper::HeaderMap::new();
                trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                let frames = [
                    Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'z'; 600]))),
                    Ok(Frame::trailers(trailers)),
                ];
                Ok::<_, Infallible>(hyper::Response::new(StreamBody::new(
                    futures::stream::iter(frames),
                )))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, answer)
                .await;
        });

        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::get("http://one-write.test/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = send
            .send_request(request)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
        assert!(
            body.trailers()
                .is_some_and(|t| t.contains_key("grpc-status"))
        );
        assert_eq!(body.to_bytes().len(), 600);

        let sent = frames(&writes.lock().unwrap());
        let of_the_answer: Vec<_> = sent.iter().filter(|f| f.2 == 1).collect();
        assert_eq!(
            of_the_answer
                .iter()
                .map(|f| (f.0, f.1 & END_STREAM))
                .collect::<Vec<_>>(),
            [(HEADERS, 0), (DATA, 0), (HEADERS, END_STREAM)],
            "the answer's frames: {sent:?}"
        );
        assert!(
            of_the_answer.iter().all(|f| f.3 == of_the_answer[0].3),
            "the answer's frames left in more than one write: {sent:?}"
        );
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
