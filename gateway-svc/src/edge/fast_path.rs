//! HTTP/1.1 connections served without hyper's machinery for each request. Most of a
//! gateway's traffic is HTTP/1.1 from nginx or a mini-program: a business request with no
//! body or a `Content-Length` one, and the gateway's own bodiless paths (`/me`, `/login`).
//! Their heads are read once (`weapp_wire::request_head`); a business request is forwarded as
//! bytes (`fast_forward.rs`), an own path goes to the same dispatcher hyper's requests go to
//! (`dispatch.rs`) and its answer is written here. Routing, the metrics and the spans are the
//! same as for the requests hyper serves (`handover.rs`), so a request is answered the same
//! either way; the head's deadline (from accept, then from the last answer: the idle timeout
//! too) and its size and field limits are this path's alone, since it reads every head.
//!
//! Every HTTP/1 connection is served here, and every head on it is read here first
//! (`request_head.rs`: one strict reading; what it refuses gets 400 or 431 and the connection
//! closes). A request this path does not take — a chunked body, an own path with a body,
//! `Expect`, HTTP/1.0, a target that is not a path — is handed to hyper alone
//! (`handover.rs`), and the connection comes back here for its next request; a WebSocket
//! upgrade hands hyper the rest of the connection.
use std::{
    borrow::Cow,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    http::{HeaderMap, Method, Uri},
    response::{IntoResponse as _, Response},
};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;
use weapp_common::{otlp::Spans, trace};
use weapp_wire::path;

use weapp_wire::request_head::{self, Parsed, RequestHead, Serve};

use crate::{
    business::h1,
    config::HttpLimits,
    edge::destination::{Destination, LiveRouting},
    edge::dispatch::Dispatcher,
    edge::handover::Hyper,
    edge::served,
    error::ApiError,
    metrics::GatewayMetrics,
    stream::{self, ClientStream, Prefixed},
};

pub struct FastPath {
    pub routing: LiveRouting,
    pub dispatcher: Arc<Dispatcher>,
    pub limits: HttpLimits,
    pub metrics: Arc<GatewayMetrics>,
    pub spans: Spans,
    /// What serves the requests this path does not.
    pub hyper: Hyper,
    /// The gateway is stopping: each answer says `Connection: close`, and the connection
    /// closes after it (the shutdown token itself is a lock to read).
    pub stopping: AtomicBool,
}

/// How a connection left this path.
pub enum Served {
    Closed,
    /// For hyper, its unserved bytes first: an upgrade request, for the rest of the
    /// connection.
    ToHyper(ClientStream),
}

/// Where a request came from, and when.
#[derive(Clone, Copy)]
pub(crate) struct Origin {
    pub peer: SocketAddr,
    pub context: trace::TraceContext,
    pub started: Instant,
}

/// One request's outcome.
pub(crate) struct Done {
    pub status: u16,
    pub keep_open: bool,
}

/// A client connection on this path.
pub(crate) struct Conn {
    pub client: TcpStream,
    /// Read from the client and not used yet.
    pub read: Vec<u8>,
    pub buffers: Buffers,
    pub alarm: Alarm,
}

/// A buffer that grew past this for one large message is let go once it is done with.
const KEPT_CAPACITY: usize = 64 * 1024;
/// The same for what an upstream sent: an answer's head fits, a streamed body does not.
const UPSTREAM_KEPT: usize = 4 * 1024;

/// A connection's buffers, reused by its requests.
#[derive(Default)]
pub(crate) struct Buffers {
    /// The request's fields, as `forward::request_headers` works on them.
    pub fields: HeaderMap,
    /// The upstream's request head.
    pub request: Vec<u8>,
    /// What the upstream sent.
    pub upstream: Vec<u8>,
    /// What the client gets.
    pub answer: Vec<u8>,
    pub date: h1::Date,
}

impl Buffers {
    /// An idle kept-alive connection holds a few KiB, not the largest head it ever saw. What
    /// the upstream sent is read into a buffer that starts small and grows with the answer
    /// (`fast_forward.rs`); one that grew to stream a body is let go (bench/README.md: an idle
    /// kept-alive connection after a forwarded request held 8.5 KiB with a 4 KiB one kept).
    fn trim(&mut self) {
        if self.upstream.capacity() > UPSTREAM_KEPT {
            self.upstream = Vec::new();
        }
        for buffer in [&mut self.request, &mut self.answer] {
            if buffer.capacity() > KEPT_CAPACITY {
                *buffer = Vec::new();
            }
        }
    }
}

impl FastPath {
    /// Serves `stream`'s requests (accepted at `accepted`: the first head's deadline counts
    /// from then), and a graceful stop between requests.
    pub async fn serve(
        &self,
        stream: ClientStream,
        (peer, accepted): (SocketAddr, Instant),
        shutdown: &CancellationToken,
    ) -> Served {
        let (read, client, keep) = stream.into_parts();
        let mut conn = Conn {
            client,
            read,
            buffers: Buffers::default(),
            alarm: Alarm::new(self.limits.header_timeout),
        };
        let mut stop = pin!(shutdown.cancelled());
        // Every await below that serves a request is boxed: this future is what a connection
        // holds while it waits for its next head, and it stays small (bench/README.md,
        // "Connections without a whole head").
        let limits = request_head::Limits {
            max_headers: self.limits.max_headers,
            max_bytes: self.limits.max_header_bytes,
        };
        // The clock is read twice a request (when it starts, when it ends); every deadline
        // and age is counted from those readings.
        let mut now = accepted;
        loop {
            let head_deadline = now + self.limits.header_timeout;
            conn.alarm.arm(head_deadline);
            let mut head = loop {
                let fields = &mut conn.buffers.fields;
                match request_head::parse(&conn.read, limits, fields, self.limits.fast_path) {
                    Parsed::Head(head) => break head,
                    Parsed::Refused(refused) => {
                        let started = Instant::now();
                        tracing::debug!(%peer, error = %refused, "request head refused");
                        let done =
                            Box::pin(refuse(ApiError::Head(refused), &mut conn, (false, true)))
                                .await;
                        let label = self.metrics.route_label(
                            Destination::Other.label(self.routing.load().business_routes()),
                        );
                        self.metrics.request(label, done.status, started.elapsed());
                        return Box::pin(linger(conn.client, conn.read, shutdown)).await;
                    }
                    Parsed::Partial => {}
                }
                stream::grow(&mut conn.read);
                let got = tokio::select! {
                    biased;
                    got = conn.client.read_buf(&mut conn.read) => got,
                    passed = conn.alarm.passed(head_deadline) => match passed {
                        true => return Served::Closed,
                        false => continue,
                    },
                    () = &mut stop, if conn.read.is_empty() => return Served::Closed,
                };
                if !matches!(got, Ok(n) if n > 0) {
                    return Served::Closed;
                }
            };
            let started = Instant::now();
            head.close |= self.stopping.load(Ordering::Relaxed);
            // Routed on the normalized path, as hyper's requests are (`handover.rs`).
            let (refused, destination) = match head.serve {
                Serve::HyperRest => {
                    return Served::ToHyper(Prefixed::new(conn.read, conn.client, keep));
                }
                Serve::HyperOne => (None, Destination::Other),
                Serve::Fast => {
                    let refused = match path::normalize(head.path()) {
                        Ok(Cow::Borrowed(_)) => None,
                        Ok(Cow::Owned(normal)) => {
                            (!head.set_path(&normal)).then_some(ApiError::BadRequestTarget)
                        }
                        Err(refused) => Some(ApiError::BadPath(refused)),
                    };
                    let destination = match refused {
                        Some(_) => Destination::Other,
                        None => self.routing.load().decide(head.path()),
                    };
                    (refused, destination)
                }
            };
            // hyper serves this one request; the gateway's own paths read a body with it too
            // (`body_limit.rs`).
            let own_with_body =
                head.length().unwrap_or(0) > 0 && !matches!(destination, Destination::Business(_));
            if head.serve == Serve::HyperOne || own_with_body {
                let served = (&mut conn.client, &mut conn.read);
                if !Box::pin(self.hyper.serve_one(served, &head, peer, shutdown)).await {
                    return Box::pin(linger(conn.client, conn.read, shutdown)).await;
                }
                now = Instant::now();
                conn.buffers.trim();
                continue;
            }
            conn.read.drain(..head.len);
            let label = self
                .metrics
                .route_label(destination.label(self.routing.load().business_routes()));
            let context = self.spans.serve(
                conn.buffers
                    .fields
                    .get(trace::TRACEPARENT)
                    .and_then(|v| v.to_str().ok()),
            );
            let method = head.method.clone();
            let origin = Origin {
                peer,
                context,
                started,
            };
            let flags = (head.method == Method::HEAD, head.close);
            // The dispatcher logs the requests it serves; the others are logged here alike.
            let (done, logged) = match (refused, destination) {
                (Some(refused), _) => (Box::pin(refuse(refused, &mut conn, flags)).await, None),
                (None, Destination::Business(business)) => {
                    let done = Box::pin(self.forward(&business, head, origin, &mut conn)).await;
                    (done, Some(business))
                }
                (None, destination) => {
                    let done = Box::pin(self.own(destination, head, origin, &mut conn)).await;
                    (done, None)
                }
            };
            now = Instant::now();
            let took = now.saturating_duration_since(started);
            self.metrics.request(label, done.status, took);
            if let Some(business) = logged {
                tracing::debug!(
                    %method,
                    route = %business.route.prefix,
                    trace_id = %context.trace_id(),
                    status = done.status,
                    latency_ms = took.as_millis() as u64,
                    "finished processing request"
                );
            }
            if self.spans.exports(&context) {
                self.spans.record(served::server_span(
                    context,
                    method,
                    &self.metrics,
                    label,
                    done.status,
                    started,
                ));
            }
            if !done.keep_open {
                return Box::pin(linger(conn.client, conn.read, shutdown)).await;
            }
            conn.buffers.trim();
            if conn.read.is_empty() && conn.read.capacity() > KEPT_CAPACITY {
                conn.read = Vec::new();
            }
        }
    }

    /// A bodiless request to one of the gateway's own paths (or none): the dispatcher
    /// answers it as it answers hyper's.
    async fn own(
        &self,
        destination: Destination,
        head: RequestHead,
        origin: Origin,
        conn: &mut Conn,
    ) -> Done {
        let flags = (head.method == Method::HEAD, head.close);
        let Ok(uri) = Uri::try_from(head.target) else {
            return refuse(ApiError::BadRequestTarget, conn, flags).await;
        };
        let mut request = Request::new(Body::empty());
        *request.method_mut() = head.method;
        *request.uri_mut() = uri;
        // The handler keeps the fields: the next request reads into a new map.
        *request.headers_mut() = std::mem::take(&mut conn.buffers.fields);
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(origin.peer));
        request.extensions_mut().insert(origin.context);
        let serving = self.dispatcher.serve(destination, origin.peer, request);
        let response = trace::within(Some(origin.context), serving).await;
        let (head_request, close) = flags;
        let close = close || self.stopping.load(Ordering::Relaxed);
        answer(response, conn, (head_request, close)).await
    }
}

/// How long a closed connection's unread bytes are read and dropped, at most, after the
/// last answer (nginx's `lingering_timeout` is 5 s).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Closes a connection after its last answer: the write side first, then what the client
/// still sends (the rest of a body the answer did not wait for) is read and dropped for a
/// little while. Closing a socket with unread bytes resets it, and a reset can destroy the
/// answer before the client has read it (RFC 9112 §9.6: a server closes in stages).
async fn linger(mut client: TcpStream, mut sink: Vec<u8>, shutdown: &CancellationToken) -> Served {
    if client.shutdown().await.is_err() {
        return Served::Closed;
    }
    let draining = async {
        loop {
            sink.clear();
            sink.reserve(4096);
            if !matches!(client.read_buf(&mut sink).await, Ok(n) if n > 0) {
                break;
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(LINGER, draining) => {}
        () = shutdown.cancelled() => {}
    }
    Served::Closed
}

/// Answers with one of the gateway's own errors, through its one mapping (`error.rs`).
pub(crate) async fn refuse(error: ApiError, conn: &mut Conn, flags: (bool, bool)) -> Done {
    answer(error.into_response(), conn, flags).await
}

/// Writes one of the gateway's own answers: its head, then its body as it comes (with its
/// length when it is known, else chunked), nothing of it to a HEAD request.
async fn answer(response: Response, conn: &mut Conn, (head_request, close): (bool, bool)) -> Done {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let bodiless = head_request
        || status.is_informational()
        || status.as_u16() == 204
        || status.as_u16() == 304;
    let length = body.size_hint().exact();
    // A HEAD answer says the length its GET would have, when it is known.
    let framing = match (length, bodiless) {
        (Some(n), _) if head_request || !bodiless => h1::Length::Known(n),
        (None, false) => h1::Length::Chunked,
        _ => h1::Length::None,
    };
    let out = &mut conn.buffers.answer;
    out.clear();
    let date = &mut conn.buffers.date;
    h1::write_answer_head(out, (status, &parts.headers), (framing, close), date);
    let done = |written: bool| Done {
        status: status.as_u16(),
        keep_open: written && !close,
    };
    if bodiless {
        return done(conn.client.write_all(out).await.is_ok());
    }
    let mut body = pin!(body);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // Mid-answer: only closing the connection tells the client.
            let _ = conn.client.write_all(out).await;
            return done(false);
        };
        if let Ok(data) = frame.into_data() {
            h1::write_body_part(out, &data, framing);
        }
        // A whole body is one frame: one write. A streamed one goes as it comes.
        if !body.is_end_stream() {
            if conn.client.write_all(out).await.is_err() {
                return done(false);
            }
            out.clear();
        }
    }
    h1::write_body_end(out, framing);
    done(conn.client.write_all(out).await.is_ok())
}

/// A connection's one timer, for both of its deadlines (the next request's head, the
/// upstream's answer). Moving a timer costs more than the request that moves it, so a later
/// deadline does not move it: when it fires early, it is set again then (in the default
/// settings, once in 10 s rather than twice a request). An earlier deadline moves it at once.
pub(crate) struct Alarm {
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Alarm {
    fn new(after: std::time::Duration) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(after)),
        }
    }

    /// Makes sure the alarm goes off no later than `deadline`.
    fn arm(&mut self, deadline: Instant) {
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Waits for the alarm: `true` once `deadline` has passed; `false` when it went off for
    /// an earlier deadline (it is then set for this one).
    async fn passed(&mut self, deadline: Instant) -> bool {
        self.sleep.as_mut().await;
        if Instant::now() >= deadline {
            return true;
        }
        self.sleep
            .as_mut()
            .reset(tokio::time::Instant::from_std(deadline));
        false
    }

    /// `work`, unless `deadline` passes first (`None`).
    pub(crate) async fn until<F: Future>(
        &mut self,
        deadline: Instant,
        work: F,
    ) -> Option<F::Output> {
        let mut work = pin!(work);
        self.arm(deadline);
        loop {
            tokio::select! {
                biased;
                done = &mut work => return Some(done),
                passed = self.passed(deadline) => if passed {
                    return None;
                },
            }
        }
    }
}
