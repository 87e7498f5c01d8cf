//! The connections to one business upstream: HTTP/1.1, kept alive between requests. Two
//! idle lists: hyper's client connections, for requests `forward.rs` serves, and plain TCP
//! streams, for those `edge/fast_forward.rs` forwards as bytes. Each hyper
//! connection is driven by the request that holds it — its I/O runs in that request's task,
//! not in a task of its own — so a forwarded request costs no hand-offs between tasks (what a
//! general-purpose client pool spends on every request). A connection goes back to the idle
//! list when its answer's body has been read to the end; one the upstream closed while idle is
//! noticed and dropped when it is next taken, and a request it refused unsent is sent again on
//! a new connection.
use std::{
    future::{Future, poll_fn},
    io,
    pin::{Pin, pin},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use axum::body::{Body, Bytes};
use http::{Request, Response, StatusCode, Version, header};
use hyper::{
    body::{Body as _, Frame, Incoming, SizeHint},
    client::conn::http1::{self, Connection, SendRequest},
};
use hyper_util::rt::TokioIo;

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::business::h1::Malformed;

/// Idle connections kept per upstream.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused (upstreams close idle
/// connections on their own clock, commonly after 60 s or more).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type Conn = Connection<TokioIo<ToUpstream>, Body>;

struct Pooled {
    sender: SendRequest<Body>,
    conn: Conn,
    idle_since: Instant,
    /// The upstream stopped reading a body (`ToUpstream`): never reused.
    stopped_reading: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("the connection failed: {0}")]
    Broken(io::Error),
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::ConnectTimeout)
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

pub struct Upstream {
    /// `host:port`.
    authority: String,
    connect_timeout: Duration,
    idle: PerThread<Pooled>,
    idle_streams: PerThread<(TcpStream, Instant)>,
}

impl Upstream {
    pub fn new(authority: String, connect_timeout: Duration) -> Self {
        Self {
            authority,
            connect_timeout,
            idle: PerThread::default(),
            idle_streams: PerThread::default(),
        }
    }

    /// A TCP stream to the upstream for one HTTP/1.1 exchange, and whether it was kept alive
    /// from an earlier one (the upstream may have closed it since: a request on it that gets
    /// no answer at all may be sent again on a new one).
    /// `now` is the caller's reading of the clock.
    pub async fn checkout_stream(&self, now: Instant) -> Result<(TcpStream, bool), UpstreamError> {
        loop {
            let candidate = self.idle_streams.local().pop();
            let Some((stream, since)) = candidate else {
                return Ok((self.connect_stream().await?, false));
            };
            if now.saturating_duration_since(since) <= IDLE_TIMEOUT && quiet(&stream) {
                return Ok((stream, true));
            }
        }
    }

    /// Takes back a stream whose exchange ended exactly at the end of an answer that keeps
    /// the connection open; its idle time counts from `since` (the exchange's start: an
    /// age a little over, never under).
    pub fn checkin_stream(&self, stream: TcpStream, since: Instant) {
        let mut idle = self.idle_streams.local();
        if idle.len() < MAX_IDLE {
            idle.push((stream, since));
        }
    }

    /// A new TCP stream to the upstream.
    pub async fn connect_stream(&self) -> Result<TcpStream, UpstreamError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| UpstreamError::ConnectTimeout)?
        .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Pooled>> {
        self.idle.local()
    }

    /// Sends `request` and answers the upstream's response, whose body keeps driving the
    /// connection until it has been read.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let (mut pooled, mut reused) = self.checkout().await?;
        loop {
            let sending = pooled.sender.try_send_request(request);
            match drive(&mut pooled.conn, sending).await {
                Some(Ok(response)) => {
                    // Dropped with its connection: never reused, never passed on.
                    if let Some(fault) = framing_fault(&response) {
                        return Err(Malformed(fault).into());
                    }
                    let (parts, incoming) = response.into_parts();
                    // No body to read (HEAD, 204, 304): the connection is free already (the
                    // next checkout drives it to ready).
                    if incoming.is_end_stream() {
                        self.checkin(pooled);
                        return Ok(Response::from_parts(parts, Body::empty()));
                    }
                    let body = Driven {
                        incoming,
                        pooled: Some(pooled),
                        upstream: self.clone(),
                    };
                    return Ok(Response::from_parts(parts, Body::new(body)));
                }
                Some(Err(mut refused)) => match (reused, refused.take_message()) {
                    // A kept-alive connection that turned out closed, the request unsent:
                    // once more on a fresh one.
                    (true, Some(unsent)) => {
                        request = unsent;
                        pooled = self.connect().await?;
                        reused = false;
                    }
                    _ => return Err(refused.into_error().into()),
                },
                None => {
                    return Err(UpstreamError::Connect(io::Error::other(
                        "the connection closed before the answer",
                    )));
                }
            }
        }
    }

    /// A connection ready for a request: an idle one that is still open, or a new one.
    async fn checkout(&self) -> Result<(Pooled, bool), UpstreamError> {
        loop {
            let candidate = self.idle().pop();
            let Some(mut pooled) = candidate else {
                return Ok((self.connect().await?, false));
            };
            if pooled.idle_since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            let Pooled { sender, conn, .. } = &mut pooled;
            if let Some(Ok(())) = drive(conn, poll_fn(|cx| sender.poll_ready(cx))).await {
                return Ok((pooled, true));
            }
        }
    }

    async fn connect(&self) -> Result<Pooled, UpstreamError> {
        let tcp = self.connect_stream().await?;
        let stopped_reading = Arc::new(AtomicBool::new(false));
        let io = ToUpstream {
            tcp,
            stopped_reading: stopped_reading.clone(),
        };
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
        Ok(Pooled {
            sender,
            conn,
            idle_since: Instant::now(),
            stopped_reading,
        })
    }

    fn checkin(&self, mut pooled: Pooled) {
        if pooled.stopped_reading.load(Ordering::Relaxed) {
            return;
        }
        pooled.idle_since = Instant::now();
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(pooled);
        }
    }
}

/// What makes an upstream's answer one two readers could frame two ways (RFC 9112 §6.1,
/// §6.3), or not an answer to this request at all (a 101 nobody asked for: the relay and
/// forwarded requests never ask; forwarded WebSockets have their own client).
fn framing_fault<B>(answer: &Response<B>) -> Option<&'static str> {
    let headers = answer.headers();
    let coded = headers.contains_key(header::TRANSFER_ENCODING);
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = lengths.next();
    if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
        Some("an upgrade nobody asked for")
    } else if coded && answer.version() == Version::HTTP_10 {
        Some("a transfer coding in HTTP/1.0")
    } else if coded && first.is_some() {
        Some("both Content-Length and Transfer-Encoding")
    } else if first.is_some_and(|first| lengths.any(|other| other != first)) {
        Some("two Content-Lengths")
    } else {
        None
    }
}

/// The upstream's stream as hyper's client writes to it. An upstream may answer before it has
/// read the whole body (413, 401) and close: a write that then fails is taken as sent and the
/// rest of the body is dropped, so that hyper's client reads the answer already on its way
/// instead of failing the exchange on the write (the fast path reads while it sends, to the
/// same end). Such a connection is never reused; one that answers nothing fails on its read.
struct ToUpstream {
    tcp: TcpStream,
    stopped_reading: Arc<AtomicBool>,
}

impl ToUpstream {
    fn written(&self, written: io::Result<usize>, len: usize) -> io::Result<usize> {
        match written {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.stopped_reading.store(true, Ordering::Relaxed);
                Ok(len)
            }
            _ if self.stopped_reading.load(Ordering::Relaxed) => Ok(len),
            other => other,
        }
    }
}

impl AsyncRead for ToUpstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ToUpstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.stopped_reading.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(buf.len()));
        }
        let written = ready!(Pin::new(&mut this.tcp).poll_write(cx, buf));
        Poll::Ready(this.written(written, buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.stopped_reading.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(len));
        }
        let written = ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs));
        Poll::Ready(this.written(written, len))
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = ready!(Pin::new(&mut this.tcp).poll_flush(cx));
        Poll::Ready(this.written(flushed.map(|()| 0), 0).map(|_| ()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Idle connections kept by the thread that used them last. A connection's socket is
/// registered with the runtime of the thread that opened it (`edge/io_threads.rs`: one per
/// thread); taken up on another thread it would still work, every wake-up of it crossing
/// threads. Threads beyond `SHARDS` share lists (still correct, a little slower).
struct PerThread<T> {
    shards: [Mutex<Vec<T>>; SHARDS],
}

const SHARDS: usize = 16;

impl<T> Default for PerThread<T> {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
        }
    }
}

impl<T> PerThread<T> {
    fn local(&self) -> MutexGuard<'_, Vec<T>> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        let shard = SHARD.with(|shard| *shard);
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether an idle stream has nothing to read: an upstream that closed it (or, against the
/// protocol, sent something unasked) made it readable. `try_read` makes a system call only
/// when the runtime has seen the stream readable since its last read came up empty; a close
/// that has not been seen yet is what the retry in `edge/fast_forward.rs` is for.
fn quiet(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Polls `work` while driving `conn`; `None` when the connection ended first.
async fn drive<F: Future>(conn: &mut Conn, work: F) -> Option<F::Output> {
    let mut work = pin!(work);
    poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match Pin::new(&mut *conn).poll(cx) {
            Poll::Pending => Poll::Pending,
            // Closed (or failed): whatever `work` waited for ends with it.
            Poll::Ready(_) => Poll::Ready(match work.as_mut().poll(cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => None,
            }),
        }
    })
    .await
}

/// An upstream answer's body, which drives its connection as it is read and hands the
/// connection back once the body is complete. Dropped early (the client went away), the
/// connection closes with it.
struct Driven {
    incoming: Incoming,
    pooled: Option<Pooled>,
    upstream: Arc<Upstream>,
}

impl hyper::body::Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(pooled) = &mut this.pooled
            && Pin::new(&mut pooled.conn).poll(cx).is_ready()
        {
            // The connection ended; the body has what it got (or its error).
            this.pooled = None;
        }
        let frame = match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let done = match &frame {
            None => true,
            Some(Ok(_)) => this.incoming.is_end_stream(),
            Some(Err(_)) => {
                this.pooled = None;
                false
            }
        };
        if done && let Some(pooled) = this.pooled.take() {
            this.upstream.checkin(pooled);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// Reads a whole body, for tests.
#[cfg(test)]
async fn text(body: Body) -> String {
    use http_body_util::BodyExt as _;
    String::from_utf8_lossy(
        &body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default(),
    )
    .into_owned()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream that answers every request on a connection, counting connections, and
    /// closes each connection after `per_connection` answers.
    async fn server(per_connection: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_connection {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            let Ok(n) = tcp.read(&mut buf).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            seen.extend_from_slice(&buf[..n]);
                        }
                        // A HEAD answer has the headers of a GET's and no body.
                        let answer: &[u8] = match seen.starts_with(b"HEAD ") {
                            true => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                            false => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                        };
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get() -> Request<Body> {
        request("GET")
    }

    fn request(method: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/x")
            .header("host", "upstream")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn connections_are_reused_once_a_body_is_read() {
        let (addr, accepted) = server(usize::MAX).await;
        let upstream = Arc::new(Upstream::new(addr, Duration::from_secs(1)));
        for _ in 0..10 {
            let response = upstream.send(get()).await.unwrap();
            assert_eq!(text(response.into_body()).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_without_a_body_frees_its_connection_at_once() {
        let (addr, accepted) = server(usize::MAX).await;
        let upstream = Arc::new(Upstream::new(addr, Duration::from_secs(1)));
        for _ in 0..3 {
            let response = upstream.send(request("HEAD")).await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(text(response.into_body()).await, "");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        let (addr, accepted) = server(1).await;
        let upstream = Arc::new(Upstream::new(addr, Duration::from_secs(1)));
        for _ in 0..5 {
            let response = upstream.send(get()).await.unwrap();
            assert_eq!(text(response.into_body()).await, "hello");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let upstream = Arc::new(Upstream::new(addr, Duration::from_secs(1)));
        assert!(upstream.send(get()).await.unwrap_err().is_connect());
    }
}
