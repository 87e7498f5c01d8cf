//! Forwarding as bytes: the business requests that make up most of a gateway's traffic — a
//! bodiless HTTP/1.1 request to a business route — are forwarded without building them as
//! HTTP objects twice (hyper's server, then its client): the request head is read once
//! (`business/h1.rs`), its fields go through the same rules as every forwarded request
//! (`forward::request_headers`: no credentials, no client-made identity, the session's
//! identity, the forwarding fields), the upstream's head is written straight from them, and
//! the answer is passed back as the upstream sent it with only its head looked at — as nginx
//! does. It saves more than half of the gateway's CPU time per forwarded request (bench/README.md).
//!
//! A connection starts here. The first request this path does not take (a body, an own path,
//! a WebSocket, HTTP/1.0, anything unusual) is handed to hyper with every byte read so far,
//! and hyper serves the rest of that connection.
use std::{
    borrow::Cow,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::Arc,
    time::Instant,
};

use axum::{
    http::{HeaderMap, Method, header},
    response::IntoResponse as _,
};
use http_body_util::BodyExt as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;
use weapp_common::{otlp::Spans, trace};
use weapp_wire::path;

use crate::{
    business::forward::{self, ClientAddress},
    business::h1::{self, Answer, AnswerHead, Framing, Parsed, RequestHead},
    business::route_table::Business,
    business::upstream::{Upstream, UpstreamError},
    config::HttpLimits,
    edge::destination::{Destination, Routing},
    edge::dispatch::Dispatcher,
    edge::served,
    error::ApiError,
    metrics::GatewayMetrics,
    stream::{ClientStream, Prefixed},
};

/// An upstream answer's head longer than this is refused (502).
const MAX_ANSWER_HEAD: usize = 64 * 1024;

pub struct FastPath {
    pub routing: Arc<Routing>,
    pub dispatcher: Arc<Dispatcher>,
    pub limits: HttpLimits,
    pub metrics: Arc<GatewayMetrics>,
    pub spans: Spans,
}

/// How a connection left this path.
pub enum Served {
    Closed,
    /// For hyper, its unserved bytes first.
    ToHyper(ClientStream),
}

/// Where a request came from, and when.
#[derive(Clone, Copy)]
struct Origin {
    peer: SocketAddr,
    context: trace::TraceContext,
    started: Instant,
}

/// One request's outcome.
struct Done {
    status: u16,
    keep_open: bool,
}

/// A connection's buffers, reused by its requests: the upstream's request head, what the
/// upstream sent, what the client gets.
#[derive(Default)]
struct Buffers {
    /// The request's fields, as `forward::request_headers` works on them.
    fields: HeaderMap,
    request: Vec<u8>,
    upstream: Vec<u8>,
    answer: Vec<u8>,
}

impl FastPath {
    /// Serves `stream`'s requests while they are this path's, with hyper's limits: the head's
    /// deadline (which is the idle timeout too), its size and field count (past them, hyper
    /// answers 431), and a graceful stop between requests.
    pub async fn serve(
        &self,
        stream: ClientStream,
        peer: SocketAddr,
        shutdown: &CancellationToken,
    ) -> Served {
        let (mut read, mut client, keep) = stream.into_parts();
        let mut stop = pin!(shutdown.cancelled());
        let mut alarm = Alarm::new(self.limits.header_timeout);
        let mut buffers = Buffers::default();
        // The clock is read twice a request (when it starts, when it ends); every deadline
        // and age is counted from those readings.
        let mut now = Instant::now();
        loop {
            let head_deadline = now + self.limits.header_timeout;
            alarm.arm(head_deadline);
            let head = loop {
                match h1::parse_request(&read, self.limits.max_headers, &mut buffers.fields) {
                    Parsed::Head(head) => break head,
                    Parsed::NotMine => return Served::ToHyper(Prefixed::new(read, client, keep)),
                    Parsed::Partial if read.len() >= self.limits.max_header_bytes => {
                        return Served::ToHyper(Prefixed::new(read, client, keep));
                    }
                    Parsed::Partial => {}
                }
                read.reserve(4096);
                let got = tokio::select! {
                    biased;
                    got = client.read_buf(&mut read) => got,
                    passed = alarm.passed(head_deadline) => match passed {
                        true => return Served::Closed,
                        false => continue,
                    },
                    () = &mut stop, if read.is_empty() => return Served::Closed,
                };
                if !matches!(got, Ok(n) if n > 0) {
                    return Served::Closed;
                }
            };
            // Only a normalized path is routed here; hyper's path rewrites or refuses others.
            let destination = match path::normalize(head.path()) {
                Ok(Cow::Borrowed(_)) => self.routing.decide(head.path()),
                _ => Destination::Other,
            };
            let Destination::Business(business) = &destination else {
                return Served::ToHyper(Prefixed::new(read, client, keep));
            };
            read.drain(..head.len);
            let started = Instant::now();
            let label = self
                .metrics
                .route_label(destination.label(self.routing.business_routes()));
            let context = self.spans.serve(
                buffers
                    .fields
                    .get(trace::TRACEPARENT)
                    .and_then(|v| v.to_str().ok()),
            );
            let method = head.method.clone();
            let done = self
                .exchange(
                    business,
                    head,
                    Origin {
                        peer,
                        context,
                        started,
                    },
                    &mut client,
                    &mut buffers,
                    &mut alarm,
                )
                .await;
            now = Instant::now();
            let took = now.saturating_duration_since(started);
            self.metrics.request(label, done.status, took);
            tracing::debug!(
                %method,
                route = %business.route.prefix,
                trace_id = %context.trace_id(),
                status = done.status,
                latency_ms = took.as_millis() as u64,
                "finished processing request"
            );
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
            if !done.keep_open || shutdown.is_cancelled() {
                return Served::Closed;
            }
        }
    }

    /// Forwards one request and passes its answer back.
    async fn exchange(
        &self,
        business: &Business,
        head: RequestHead,
        origin: Origin,
        client: &mut TcpStream,
        buffers: &mut Buffers,
        alarm: &mut Alarm,
    ) -> Done {
        let flags = (head.method == Method::HEAD, head.close);
        let answered = self.answer_head(business, head, origin, buffers, alarm);
        let (mut upstream, answer) = match answered.await {
            Ok(answered) => answered,
            Err(refused) => return refuse(refused, client, &mut buffers.answer, flags).await,
        };
        let AnswerHead {
            status,
            len,
            mut framing,
            upstream_keeps_open,
            client_keeps_open,
        } = answer;
        let Buffers {
            upstream: from_upstream,
            answer: to_client,
            ..
        } = buffers;
        let body = from_upstream.get(len..).unwrap_or_default();
        let (taken, mut ended) = match pass(&mut framing, body) {
            Ok(passed) => passed,
            Err(e) => {
                tracing::warn!(route = %business.route.prefix, error = %e, "upstream answer refused");
                let refused = ApiError::UpstreamFailed(business.route.prefix.clone());
                return refuse(refused, client, to_client, flags).await;
            }
        };
        // Anything after the answer: the connection is out of step, not reused.
        let mut clean = taken == body.len();
        to_client.extend_from_slice(&body[..taken]);
        if client.write_all(to_client).await.is_err() {
            return Done {
                status,
                keep_open: false,
            };
        }
        while !ended {
            from_upstream.clear();
            from_upstream.reserve(16 * 1024);
            let n = match upstream.read_buf(from_upstream).await {
                Ok(0) => {
                    // The end of a body that ends with the connection; a cut one otherwise.
                    ended = framing == Framing::UntilClose;
                    clean = false;
                    break;
                }
                Ok(n) => n,
                Err(_) => break,
            };
            let (taken, end) = match pass(&mut framing, &from_upstream[..n]) {
                Ok(passed) => passed,
                Err(e) => {
                    tracing::warn!(route = %business.route.prefix, error = %e, "upstream answer cut");
                    break;
                }
            };
            if client.write_all(&from_upstream[..taken]).await.is_err() {
                return Done {
                    status,
                    keep_open: false,
                };
            }
            if end {
                clean = taken == n;
                ended = true;
            }
        }
        if ended && clean && upstream_keeps_open {
            business.upstream.checkin_stream(upstream, origin.started);
        }
        // A cut answer can only be told by closing the connection.
        Done {
            status,
            keep_open: client_keeps_open && ended,
        }
    }

    /// Resolves the session, sends the request and reads the answer's head (the head the
    /// client gets is in `buffers.answer`, the upstream's bytes in `buffers.upstream`).
    async fn answer_head(
        &self,
        business: &Business,
        head: RequestHead,
        Origin {
            peer,
            context,
            started,
        }: Origin,
        buffers: &mut Buffers,
        alarm: &mut Alarm,
    ) -> Result<(TcpStream, AnswerHead), ApiError> {
        let route = &*business.route;
        let deadline = started + route.timeout;
        // The trace reaches session-svc with a Validate the cache cannot answer.
        let resolving = self
            .dispatcher
            .business_session(business, &buffers.fields, head.query());
        let session = trace::within(Some(context), resolving).await?;
        let mut target = String::with_capacity(route.base_path.len() + head.target.len() + 1);
        route.push_upstream_path(&mut target, head.path());
        forward::push_query_without_session(&mut target, head.query());
        let flags = (head.method == Method::HEAD, head.close);
        let retry = head.method.is_idempotent();
        let client_address = ClientAddress {
            peer,
            trusted_proxies: self.dispatcher.trusted_proxies(),
        };
        // The session's identity is written as it was rendered, after the client's fields
        // (from which every identity a client sent is gone); a session without one rendered
        // (not one resolved for forwarding) has it inserted the usual way.
        let identity = session.as_ref().and_then(|s| s.identity.clone());
        let insert = session.as_ref().filter(|_| identity.is_none());
        let Buffers {
            request, fields, ..
        } = buffers;
        forward::request_headers(fields, (insert, route.identity_headers), client_address);
        fields.insert(header::HOST, route.host.clone());
        request.clear();
        let identity_fields = identity
            .iter()
            .flat_map(|i| i.fields(route.identity_headers));
        h1::write_request_head(request, (&head.method, &target), fields, identity_fields);
        let mut sent = pin!(send(&business.upstream, buffers, flags, retry, started));
        alarm.arm(deadline);
        let answered = loop {
            tokio::select! {
                biased;
                answered = &mut sent => break Some(answered),
                passed = alarm.passed(deadline) => if passed {
                    break None;
                },
            }
        };
        match answered {
            None => Err(ApiError::UpstreamTimeout(route.prefix.clone())),
            Some(Ok(answered)) => Ok(answered),
            Some(Err(e)) => {
                tracing::warn!(route = %route.prefix, error = %e, "upstream request failed");
                Err(match e.is_connect() {
                    true => ApiError::UpstreamUnreachable(route.prefix.clone()),
                    false => ApiError::UpstreamFailed(route.prefix.clone()),
                })
            }
        }
    }
}

/// A connection's one timer, for both of its deadlines (the next request's head, the
/// upstream's answer). Moving a timer costs more than the request that moves it, so a later
/// deadline does not move it: when it fires early, it is set again then (in the default
/// settings, once in 10 s rather than twice a request). An earlier deadline moves it at once.
struct Alarm {
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
}

/// Sends the request in `buffers` on a kept-alive stream, or a new one, and reads the
/// answer's head. A kept-alive stream the upstream closed before answering anything is
/// replaced once, for a request that may be sent twice (RFC 9110 §9.2.2).
async fn send(
    upstream: &Upstream,
    buffers: &mut Buffers,
    flags: (bool, bool),
    retry: bool,
    started: Instant,
) -> Result<(TcpStream, AnswerHead), UpstreamError> {
    let (mut stream, mut reused) = upstream.checkout_stream(started).await?;
    loop {
        match answer_on(&mut stream, buffers, flags).await {
            Ok(head) => return Ok((stream, head)),
            Err(Unanswered::Nothing(_)) if reused && retry => {
                stream = upstream.connect_stream().await?;
                reused = false;
            }
            Err(Unanswered::Nothing(e) | Unanswered::Broken(e)) => {
                return Err(UpstreamError::Broken(e));
            }
            Err(Unanswered::Malformed(e)) => return Err(e.into()),
        }
    }
}

enum Unanswered {
    /// Not one byte of an answer came.
    Nothing(std::io::Error),
    Broken(std::io::Error),
    Malformed(h1::Malformed),
}

async fn answer_on(
    stream: &mut TcpStream,
    buffers: &mut Buffers,
    flags: (bool, bool),
) -> Result<AnswerHead, Unanswered> {
    let Buffers {
        request,
        upstream: from_upstream,
        answer,
        ..
    } = buffers;
    from_upstream.clear();
    stream
        .write_all(request)
        .await
        .map_err(Unanswered::Nothing)?;
    loop {
        from_upstream.reserve(4096);
        match stream.read_buf(from_upstream).await {
            Ok(n) if n > 0 => {}
            Ok(_) if from_upstream.is_empty() => {
                return Err(Unanswered::Nothing(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            Ok(_) => return Err(Unanswered::Broken(std::io::ErrorKind::UnexpectedEof.into())),
            Err(e) if from_upstream.is_empty() => return Err(Unanswered::Nothing(e)),
            Err(e) => return Err(Unanswered::Broken(e)),
        }
        loop {
            answer.clear();
            match h1::parse_answer(from_upstream, flags, answer).map_err(Unanswered::Malformed)? {
                Answer::Final(head) => return Ok(head),
                Answer::Interim(len) => {
                    from_upstream.drain(..len);
                }
                Answer::Partial if from_upstream.len() > MAX_ANSWER_HEAD => {
                    return Err(Unanswered::Malformed(h1::Malformed::TOO_LONG));
                }
                Answer::Partial => break,
            }
        }
    }
}

/// How much of `bytes` is the answer's body, and whether the body ends there.
fn pass(framing: &mut Framing, bytes: &[u8]) -> Result<(usize, bool), h1::Malformed> {
    Ok(match framing {
        Framing::Empty => (0, true),
        Framing::Length(left) => {
            let taken = usize::try_from(*left)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            *left -= taken as u64;
            (taken, *left == 0)
        }
        Framing::Chunked(chunked) => match chunked.feed(bytes)? {
            Some(end) => (end, true),
            None => (bytes.len(), false),
        },
        Framing::UntilClose => (bytes.len(), false),
    })
}

/// Answers with one of the gateway's own errors, through its one mapping (`error.rs`).
async fn refuse(
    error: ApiError,
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    (head_request, close): (bool, bool),
) -> Done {
    let (parts, body) = error.into_response().into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    out.clear();
    h1::write_response(
        out,
        parts.status,
        &parts.headers,
        &body,
        (head_request, close),
    );
    let written = client.write_all(out).await.is_ok();
    Done {
        status: parts.status.as_u16(),
        keep_open: written && !close,
    }
}
