//! HTTP/1.1 connections served without hyper's machinery for each request. Most of a
//! gateway's traffic is HTTP/1.1 from nginx or a mini-program: a business request with no
//! body or a `Content-Length` one, and the gateway's own bodiless paths (`/me`, `/login`).
//! Their heads are read once (`business/h1.rs`); a business request is forwarded as bytes
//! (`fast_forward.rs`), an own path goes to the same dispatcher hyper's requests go to
//! (`dispatch.rs`) and its answer is written here. Routing, the metrics, the spans, the
//! limits (the head's deadline, which is the idle timeout too; its size and field count) are
//! hyper's path's, so a request is answered the same either way; the e2e suite runs through
//! here.
//!
//! A connection starts here. The first request this path does not take — a WebSocket, a
//! chunked body, an own path with a body, `Expect`, HTTP/1.0, a head over the limits,
//! anything httparse refuses — is handed to hyper with every byte read so far, and hyper
//! serves the rest of that connection.
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

use crate::{
    business::h1::{self, Parsed, RequestHead},
    config::HttpLimits,
    edge::destination::{Destination, Routing},
    edge::dispatch::Dispatcher,
    edge::served,
    error::ApiError,
    metrics::GatewayMetrics,
    stream::{ClientStream, Prefixed},
};

pub struct FastPath {
    pub routing: Arc<Routing>,
    pub dispatcher: Arc<Dispatcher>,
    pub limits: HttpLimits,
    pub metrics: Arc<GatewayMetrics>,
    pub spans: Spans,
    /// The gateway is stopping: each answer says `Connection: close`, and the connection
    /// closes after it (the shutdown token itself is a lock to read).
    pub stopping: AtomicBool,
}

/// How a connection left this path.
pub enum Served {
    Closed,
    /// For hyper, its unserved bytes first.
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
}

impl Buffers {
    /// An idle kept-alive connection holds a few KiB, not the largest head it ever saw.
    fn trim(&mut self) {
        for buffer in [&mut self.request, &mut self.upstream, &mut self.answer] {
            if buffer.capacity() > KEPT_CAPACITY {
                *buffer = Vec::new();
            }
        }
    }
}

impl FastPath {
    /// Serves `stream`'s requests while they are this path's, and a graceful stop between
    /// requests.
    pub async fn serve(
        &self,
        stream: ClientStream,
        peer: SocketAddr,
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
        // The clock is read twice a request (when it starts, when it ends); every deadline
        // and age is counted from those readings.
        let mut now = Instant::now();
        loop {
            let head_deadline = now + self.limits.header_timeout;
            conn.alarm.arm(head_deadline);
            let mut head = loop {
                let fields = &mut conn.buffers.fields;
                let parsed = h1::parse_request(&conn.read, self.limits.max_headers, fields);
                match parsed {
                    Parsed::Head(head) => break head,
                    Parsed::NotMine => {
                        return Served::ToHyper(Prefixed::new(conn.read, conn.client, keep));
                    }
                    Parsed::Partial if conn.read.len() >= self.limits.max_header_bytes => {
                        return Served::ToHyper(Prefixed::new(conn.read, conn.client, keep));
                    }
                    Parsed::Partial => {}
                }
                conn.read.reserve(4096);
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
            // Routed on the normalized path, as in `server.rs`.
            let refused = match path::normalize(head.path()) {
                Ok(Cow::Borrowed(_)) => None,
                Ok(Cow::Owned(normal)) => {
                    (!head.set_path(&normal)).then_some(ApiError::BadRequestTarget)
                }
                Err(refused) => Some(ApiError::BadPath(refused)),
            };
            let destination = match refused {
                Some(_) => Destination::Other,
                None => self.routing.decide(head.path()),
            };
            // The gateway's own paths read a body with hyper (`body_limit.rs`).
            if head.body > 0 && !matches!(destination, Destination::Business(_)) {
                return Served::ToHyper(Prefixed::new(conn.read, conn.client, keep));
            }
            conn.read.drain(..head.len);
            let label = self
                .metrics
                .route_label(destination.label(self.routing.business_routes()));
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
                (Some(refused), _) => (refuse(refused, &mut conn, flags).await, None),
                (None, Destination::Business(business)) => {
                    let done = self.forward(&business, head, origin, &mut conn).await;
                    (done, Some(business))
                }
                (None, destination) => {
                    let done = self.own(destination, head, origin, &mut conn).await;
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
                return Served::Closed;
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
    h1::write_answer_head(out, status, &parts.headers, framing, close);
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
