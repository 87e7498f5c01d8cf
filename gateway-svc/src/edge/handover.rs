//! What the fast path does not serve itself, hyper serves: a chunked body, `Expect`, HTTP/1.0,
//! a target that is not a path, an own path with a body, every request when the fast path is
//! off (`request_head::Serve::HyperOne`), a WebSocket upgrade (`HyperRest`), HTTP/2.
//!
//! hyper never reads a head the gateway has not read first (`request_head.rs`): it is given one
//! request at a time — its head and its body to the end of its framing, then the end of the
//! stream ([`OneRequest`]) — and gives the connection back once it has answered
//! (`without_shutdown`), so the next head is the fast path's to read again. An upgrade request
//! gets the rest of the connection: after a 101 the bytes are not HTTP; any other answer says
//! `Connection: close` and the connection ends with it.
use std::{
    borrow::Cow,
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::{
    extract::ConnectInfo,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;
use weapp_common::{otlp::Spans, trace};
use weapp_wire::path;

use weapp_wire::request_head::{Body, RequestHead};

use crate::{
    business::h1,
    config::HttpLimits,
    edge::body_limit,
    edge::destination::{Destination, LiveRouting},
    edge::dispatch::Dispatcher,
    edge::served,
    error::ApiError,
    metrics::GatewayMetrics,
};

/// hyper's side of the gateway: its builders and what its requests are served with.
pub struct Hyper {
    /// One request at a time: kept alive (the fast path decides whether the connection goes
    /// on), and a client that half-closes after its request still gets its answer.
    one: http1::Builder,
    /// The rest of a connection (an upgrade).
    rest: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    shared: Arc<Shared>,
}

struct Shared {
    routing: LiveRouting,
    dispatcher: Arc<Dispatcher>,
    limits: HttpLimits,
    metrics: Arc<GatewayMetrics>,
    spans: Spans,
}

/// hyper's requests' service on one connection: the same routing, paths, limits and metrics
/// as the fast path's.
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// hyper has the rest of the connection (an upgrade request): an answer that does not
    /// switch protocols ends it, so that hyper reads no head the gateway has not.
    rest: bool,
}

/// Boxed: hyper takes the connection back out (`without_shutdown`) only from an `Unpin` one.
type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: hyper::Request<Incoming>) -> Answer {
        let (shared, peer, rest) = (self.shared.clone(), self.peer, self.rest);
        let http1 = request.version() < http::Version::HTTP_2;
        Box::pin(async move {
            let mut response = shared.answer(peer, request).await?;
            let status = response.status();
            // A refusal in the middle of a body (too large, too slow) ends the connection:
            // said, so that a client does not pool it and lose its next request to the close.
            let unread_body = matches!(
                status,
                StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
            );
            if (rest && status != StatusCode::SWITCHING_PROTOCOLS) || (http1 && unread_body) {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}

impl Hyper {
    pub fn new(
        (routing, dispatcher): (LiveRouting, Arc<Dispatcher>),
        limits: HttpLimits,
        (metrics, spans): (Arc<GatewayMetrics>, Spans),
    ) -> Self {
        let mut one = http1::Builder::new();
        one.timer(TokioTimer::new())
            .half_close(true)
            .max_headers(limits.max_headers)
            .max_buf_size(limits.max_header_bytes.max(8192));
        let mut rest = http1::Builder::new();
        rest.timer(TokioTimer::new())
            .max_headers(limits.max_headers)
            .max_buf_size(limits.max_header_bytes.max(8192));
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Self {
            one,
            rest,
            h2,
            shared: Arc::new(Shared {
                routing,
                dispatcher,
                limits,
                metrics,
                spans,
            }),
        }
    }

    pub fn http1_rest(&self) -> &http1::Builder {
        &self.rest
    }

    pub fn http2(&self) -> &http2::Builder<TokioExecutor> {
        &self.h2
    }

    /// Serves the request at the start of `read` (its head is `head`, read there already)
    /// from `client`: `true` when the connection goes on with the next request, whose bytes
    /// (any read so far) are left in `read`.
    pub(crate) async fn serve_one(
        &self,
        (client, read): (&mut TcpStream, &mut Vec<u8>),
        head: &RequestHead,
        peer: SocketAddr,
        shutdown: &CancellationToken,
    ) -> bool {
        let one = OneRequest::new(client, read, head);
        let service = self.service(peer, false);
        let mut connection = self.one.serve_connection(TokioIo::new(one), service);
        let served = tokio::select! {
            served = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => served,
            () = shutdown.cancelled() => {
                Pin::new(&mut connection).graceful_shutdown();
                std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).await
            }
        };
        let parts = connection.into_parts();
        let one = parts.io.into_inner();
        if let Err(e) = &served {
            tracing::debug!(error = %e, "a request hyper served ended with an error");
        }
        served.is_ok() && parts.read_buf.is_empty() && one.went_whole() && !head.close
    }

    /// What serves an HTTP/1 connection from `peer` that hyper has for the rest of its life
    /// (an upgrade request), or an HTTP/2 one (`rest` false: its streams are read by hyper's
    /// HTTP/2, framed, with no connection-wide fields).
    pub fn service(&self, peer: SocketAddr, rest: bool) -> Service {
        Service {
            shared: self.shared.clone(),
            peer,
            rest,
        }
    }
}

impl Shared {
    async fn answer(
        self: Arc<Self>,
        peer: SocketAddr,
        mut request: hyper::Request<Incoming>,
    ) -> Result<Response, Infallible> {
        let started = Instant::now();
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(peer));
        // Every later step — routing, the gateway's own paths, forwarding — sees the
        // normalized path, or the request is refused here (`path.rs`).
        let refused = match path::normalize(request.uri().path()) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(normal)) => match with_path(request.uri(), &normal) {
                Some(uri) => {
                    *request.uri_mut() = uri;
                    None
                }
                None => Some(ApiError::BadRequestTarget),
            },
            Err(refused) => Some(ApiError::BadPath(refused)),
        };
        let destination = match refused {
            Some(_) => Destination::Other,
            None => self.routing.load().decide(request.uri().path()),
        };
        let label = self
            .metrics
            .route_label(destination.label(self.routing.load().business_routes()));
        // The request's trace: the caller's (a traceparent from nginx or a client), or a new
        // one; the gateway's span is a child of it.
        let context = self.spans.serve(
            request
                .headers()
                .get(trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok()),
        );
        request.extensions_mut().insert(context);
        // Only a sampled request with export on pays for describing its span.
        let export = self
            .spans
            .exports(&context)
            .then(|| request.method().clone());
        trace::within(Some(context), async move {
            let response = match (refused, destination) {
                (Some(refused), _) => refused.into_response(),
                // A business route's body is the upstream's business: it streams through
                // under the route's own limit (`forward.rs`) instead of the gateway's.
                (None, business @ Destination::Business(_)) => {
                    let request = request.map(axum::body::Body::new);
                    self.dispatcher.serve(business, peer, request).await
                }
                (None, destination) => match body_limit::check(request, &self.limits).await {
                    Ok(request) => self.dispatcher.serve(destination, peer, request).await,
                    Err(refused) => refused.into_response(),
                },
            };
            let status = response.status().as_u16();
            self.metrics.request(label, status, started.elapsed());
            if let Some(method) = export {
                self.spans.record(served::server_span(
                    context,
                    method,
                    &self.metrics,
                    label,
                    status,
                    started,
                ));
            }
            Ok(response)
        })
        .await
    }
}

/// `uri` with `path` in place of its own, the query kept.
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let mut parts = uri.clone().into_parts();
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// One request's bytes, for hyper: the head, the body to the end of its framing, then the
/// end of the stream. Bytes beyond it stay in the connection's buffer for the next request.
/// hyper's answer passes through, its head looked at: whether it ends the connection.
pub(crate) struct OneRequest<'a> {
    client: &'a mut TcpStream,
    /// Read from the client and not given to hyper yet.
    read: &'a mut Vec<u8>,
    left: Left,
    answer: AnswerHead,
}

/// What of the request hyper has not been given yet.
struct Left {
    head: usize,
    body: BodyLeft,
}

enum BodyLeft {
    Bytes(u64),
    Chunked(h1::Chunked),
    Done,
    /// A chunked body broke its framing: hyper gets what came before the break, then the
    /// end of the stream, and answers the broken body (400); nothing after it is read.
    Cut,
}

/// What of hyper's answer head has been written.
enum AnswerHead {
    Writing(Vec<u8>),
    /// Whole; it keeps the connection open.
    KeepsOpen,
    Closes,
}

/// An answer head longer than this (hyper's own are short) is taken to end the connection.
const MAX_ANSWER_HEAD: usize = 64 * 1024;

impl<'a> OneRequest<'a> {
    fn new(client: &'a mut TcpStream, read: &'a mut Vec<u8>, head: &RequestHead) -> Self {
        let body = match head.body {
            Body::Length(0) => BodyLeft::Done,
            Body::Length(n) => BodyLeft::Bytes(n),
            Body::Chunked => BodyLeft::Chunked(h1::Chunked::default()),
        };
        Self {
            client,
            read,
            left: Left {
                head: head.len,
                body,
            },
            answer: AnswerHead::Writing(Vec::new()),
        }
    }

    /// hyper was given the whole request and answered with a head that keeps the connection.
    fn went_whole(&self) -> bool {
        self.left.head == 0
            && matches!(self.left.body, BodyLeft::Done)
            && matches!(self.answer, AnswerHead::KeepsOpen)
    }
}

impl Left {
    /// How many of `bytes` (the next of the stream) are the request's.
    fn take(&mut self, bytes: &[u8]) -> usize {
        let head = self.head.min(bytes.len());
        self.head -= head;
        let rest = &bytes[head..];
        if self.head > 0 || rest.is_empty() {
            return head;
        }
        let body = match &mut self.body {
            BodyLeft::Done | BodyLeft::Cut => 0,
            BodyLeft::Bytes(left) => {
                let taken = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                *left -= taken as u64;
                if *left == 0 {
                    self.body = BodyLeft::Done;
                }
                taken
            }
            BodyLeft::Chunked(chunked) => {
                let before = chunked.clone();
                match chunked.feed(rest) {
                    Ok(Some(end)) => {
                        self.body = BodyLeft::Done;
                        end
                    }
                    Ok(None) => rest.len(),
                    Err(e) => {
                        tracing::debug!(error = %e, "a chunked request body broke its framing");
                        self.body = BodyLeft::Cut;
                        before.sound_prefix(rest)
                    }
                }
            }
        };
        head + body
    }

    /// Nothing more is hyper's: the stream ends for it.
    fn finished(&self) -> bool {
        self.head == 0 && matches!(self.body, BodyLeft::Done | BodyLeft::Cut)
    }
}

impl OneRequest<'_> {
    /// Follows hyper's answer head as it is written (interim answers skipped).
    fn sniff(&mut self, written: &[u8]) {
        let AnswerHead::Writing(head) = &mut self.answer else {
            return;
        };
        head.extend_from_slice(written);
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 128];
            let mut answer = httparse::Response::new(&mut fields);
            let parsed = answer.parse(head);
            let interim = answer
                .code
                .is_some_and(|code| (100..200).contains(&code) && code != 101);
            match parsed {
                Ok(httparse::Status::Complete(len)) if interim => {
                    head.drain(..len);
                }
                Ok(httparse::Status::Partial) if head.is_empty() => return,
                Ok(httparse::Status::Partial) if head.len() <= MAX_ANSWER_HEAD => return,
                _ => break,
            }
        }
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut answer = httparse::Response::new(&mut fields);
        self.answer = match answer.parse(head) {
            Ok(httparse::Status::Complete(_)) => {
                let closes = answer.version != Some(1)
                    || answer.code.is_none_or(|code| code < 200)
                    || answer.headers.iter().any(|field| {
                        field.name.eq_ignore_ascii_case("connection")
                            && field
                                .value
                                .split(|b| *b == b',')
                                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
                    });
                match closes {
                    true => AnswerHead::Closes,
                    false => AnswerHead::KeepsOpen,
                }
            }
            _ => AnswerHead::Closes,
        };
    }
}

impl AsyncRead for OneRequest<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.left.finished() {
            return Poll::Ready(Ok(()));
        }
        if !this.read.is_empty() {
            let offered = this.read.len().min(buf.remaining());
            let taken = this.left.take(&this.read[..offered]);
            buf.put_slice(&this.read[..taken]);
            this.read.drain(..taken);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut *this.client).poll_read(cx, buf))?;
        let got = buf.filled().len() - before;
        let taken = this.left.take(&buf.filled()[before..]);
        if taken < got {
            // The next request's first bytes.
            this.read.extend_from_slice(&buf.filled()[before + taken..]);
            buf.set_filled(before + taken);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for OneRequest<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut *this.client).poll_write(cx, buf))?;
        this.sniff(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().client).poll_flush(cx)
    }

    /// The connection is the fast path's to close, not hyper's.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
