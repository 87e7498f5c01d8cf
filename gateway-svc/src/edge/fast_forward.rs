//! Forwarding as bytes (`fast_path.rs` serves the connection): a request to a business route
//! is forwarded without building it as an HTTP object twice (hyper's server, then its
//! client). Its head was read once (`business/h1.rs`); its fields go through the same rules
//! as every forwarded request (`forward::request_headers`: no credentials, no client-made
//! identity, the forwarding fields) and the session's identity is written as it was rendered;
//! a body with a `Content-Length` follows as it arrives; the upstream's answer is passed back
//! as the upstream sent it, only its head looked at — as nginx does. Each upstream's idle
//! TCP streams are kept per thread (`upstream.rs`). The body is sent while the answer is
//! awaited: an upstream that answers early (413, 401) and stops reading has its answer passed
//! on, and the client's connection closes after it (the rest of its body was never read).
use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use axum::http::{Method, header};
use tokio::{
    io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::SemaphorePermit,
};
use weapp_common::trace;

use weapp_wire::request_head::RequestHead;

use crate::{
    business::forward::{self, ClientAddress},
    business::h1::{self, Answer, AnswerHead, Framing},
    business::route_table::Business,
    business::upstream::{Upstream, UpstreamError},
    edge::fast_path::{Buffers, Conn, Done, FastPath, Origin, refuse},
    error::ApiError,
    sessions::resolver::AuthSession,
};

/// An upstream answer's head longer than this is refused (502).
const MAX_ANSWER_HEAD: usize = 64 * 1024;

impl FastPath {
    /// Forwards one request and passes its answer back.
    pub(crate) async fn forward(
        &self,
        business: &Business,
        head: RequestHead,
        origin: Origin,
        conn: &mut Conn,
    ) -> Done {
        let flags = (head.method == Method::HEAD, head.close);
        let body = head.length().unwrap_or(0);
        let route = &*business.route;
        // In hyper's order (`dispatch.rs`, `forward.rs`): the session, the body's size, then
        // the body. A refusal before the body was read ends the connection (what follows
        // would be read as the next request), unless all of it is here already.
        let here = usize::try_from(body).ok().filter(|&n| n <= conn.read.len());
        // The trace reaches session-svc with a Validate the cache cannot answer.
        let resolving =
            self.dispatcher
                .business_session(business, &conn.buffers.fields, head.query());
        let refused = match trace::within(Some(origin.context), resolving).await {
            Ok(_) if body > route.max_body_bytes => {
                let max = usize::try_from(route.max_body_bytes).unwrap_or(usize::MAX);
                Err(ApiError::BodyTooLarge(max))
            }
            resolved => resolved,
        };
        let session = match refused {
            Ok(session) => session,
            Err(refused) => {
                // The body is taken off the connection when it is all here; else the
                // connection ends with the answer.
                if let Some(n) = here {
                    conn.read.drain(..n);
                }
                return refuse(refused, conn, (flags.0, flags.1 || here.is_none())).await;
            }
        };
        // A small body is read whole before the upstream is asked (nginx buffers bodies):
        // one that trickles in holds no place among the upstream's requests in flight.
        if body <= route.buffer_body_bytes {
            let wanted = usize::try_from(body).unwrap_or(usize::MAX);
            if let Err(e) = read_at_least(conn, wanted, route.body_timeout).await {
                // A client that stopped sending may still read (it shut its side only).
                let refused = match e.kind() {
                    std::io::ErrorKind::TimedOut => ApiError::BodyTimeout,
                    _ => ApiError::BadBody,
                };
                return refuse(refused, conn, (flags.0, true)).await;
            }
        }
        // A body that is all here already can be sent again; it is taken off the connection
        // whatever happens, so the next request starts where it should.
        let whole = usize::try_from(body).ok().filter(|&n| n <= conn.read.len());
        let answered = self
            .answer_head(business, (head, session), origin, conn, whole)
            .await;
        if let Some(n) = whole {
            conn.read.drain(..n);
        }
        // Held until the answer has been passed on: the upstream connection is busy till then.
        let (mut upstream, answer, sent_whole, _in_flight) = match answered {
            Ok(answered) => answered,
            Err(refused) => {
                // A body not read to its end leaves the connection out of step: it ends.
                let (head_request, close) = flags;
                return refuse(refused, conn, (head_request, close || whole.is_none())).await;
            }
        };
        let AnswerHead {
            status,
            len,
            mut framing,
            upstream_keeps_open,
            mut client_keeps_open,
        } = answer;
        // The gateway began to stop while the upstream worked, or the upstream answered
        // before the body was all sent (what is left of it was never read): the answer says
        // the connection ends.
        if client_keeps_open && (self.stopping.load(Ordering::Relaxed) || !sent_whole) {
            let head = &mut conn.buffers.answer;
            head.truncate(head.len().saturating_sub(2));
            head.extend_from_slice(b"connection: close\r\n\r\n");
            client_keeps_open = false;
        }
        let rest = conn.buffers.upstream.get(len..).unwrap_or_default();
        let (taken, mut ended) = match framing.pass(rest) {
            Ok(passed) => passed,
            Err(e) => {
                tracing::warn!(route = %business.route.prefix, error = %e, "upstream answer refused");
                let refused = ApiError::UpstreamFailed(business.route.prefix.clone());
                return refuse(refused, conn, flags).await;
            }
        };
        let Conn {
            client, buffers, ..
        } = conn;
        let Buffers {
            upstream: from_upstream,
            answer: to_client,
            ..
        } = buffers;
        let rest = from_upstream.get(len..).unwrap_or_default();
        // Anything after the answer: the connection is out of step, not reused.
        let mut clean = taken == rest.len();
        to_client.extend_from_slice(&rest[..taken]);
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
            let (taken, end) = match framing.pass(&from_upstream[..n]) {
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
        if ended && clean && upstream_keeps_open && sent_whole {
            business.upstream.checkin_stream(upstream, origin.started);
        }
        // A cut answer can only be told by closing the connection.
        Done {
            status,
            keep_open: client_keeps_open && ended,
        }
    }

    /// Sends the request with `session`'s identity and reads the answer's head (the head the
    /// client gets is in `buffers.answer`, the upstream's bytes in `buffers.upstream`).
    /// `whole`: the body's length when all of it is in `conn.read` already.
    async fn answer_head<'b>(
        &self,
        business: &'b Business,
        (head, session): (RequestHead, Option<AuthSession>),
        Origin { peer, started, .. }: Origin,
        conn: &mut Conn,
        whole: Option<usize>,
    ) -> Result<(TcpStream, AnswerHead, bool, SemaphorePermit<'b>), ApiError> {
        let route = &*business.route;
        let length = head.length().unwrap_or(0);
        let Conn {
            client,
            read,
            buffers,
            alarm,
        } = conn;
        let mut target = String::with_capacity(route.base_path.len() + head.target.len() + 1);
        route.push_upstream_path(&mut target, head.path());
        forward::push_query_without_session(&mut target, head.query());
        let flags = (head.method == Method::HEAD, head.close);
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
        } = &mut *buffers;
        let resource = route.resource_appid.as_ref();
        forward::request_headers(
            fields,
            (insert, route.identity_headers, resource),
            client_address,
        );
        fields.insert(header::HOST, route.host.clone());
        request.clear();
        // Cloud Run's resource sharing renders another app's user per request; every other
        // request sends the fields rendered with the session.
        let shared = identity
            .as_ref()
            .zip(resource)
            .and_then(|(i, resource)| i.shared(route.identity_headers, resource));
        let identity_fields = identity
            .iter()
            .filter(|_| shared.is_none())
            .flat_map(|i| i.fields(route.identity_headers))
            .chain(shared.iter().flatten().map(|(n, v)| (n, v)));
        h1::write_request_head(request, (&head.method, &target), fields, identity_fields);
        let in_flight = business.admit(&self.metrics).await?;
        let upload = Upload {
            client,
            read,
            len: length,
            whole,
            timeout: route.body_timeout,
        };
        // Sent again on a new connection only when it may be (RFC 9110 §9.2.2) and can be.
        let retry = head.method.is_idempotent() && (length == 0 || whole.is_some());
        let deadline = started + route.timeout;
        let sent = send(&business.upstream, buffers, upload, (flags, retry), started);
        let answered = alarm.until(deadline, sent).await;
        match answered {
            None => Err(ApiError::UpstreamTimeout(route.prefix.clone())),
            Some(Ok((stream, head, sent_whole))) => Ok((stream, head, sent_whole, in_flight)),
            Some(Err(Unsent::Client(e))) if e.kind() == std::io::ErrorKind::TimedOut => {
                tracing::debug!("the client's body stalled");
                Err(ApiError::BodyTimeout)
            }
            Some(Err(Unsent::Client(e))) => {
                tracing::debug!(error = %e, "the client's body did not arrive whole");
                Err(ApiError::BadBody)
            }
            Some(Err(Unsent::Upstream(e))) => {
                tracing::warn!(route = %route.prefix, error = %e, "upstream request failed");
                Err(match e.is_connect() {
                    true => ApiError::UpstreamUnreachable(route.prefix.clone()),
                    false => ApiError::UpstreamFailed(route.prefix.clone()),
                })
            }
        }
    }
}

/// Reads from the client until `conn.read` holds `wanted` bytes, each read within `timeout`
/// (`TimedOut` past it, `UnexpectedEof` when the client stops).
async fn read_at_least(conn: &mut Conn, wanted: usize, timeout: Duration) -> std::io::Result<()> {
    while conn.read.len() < wanted {
        conn.read.reserve(wanted - conn.read.len());
        match tokio::time::timeout(timeout, conn.client.read_buf(&mut conn.read)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    Ok(())
}

/// The request's body on its way from the client.
struct Upload<'a> {
    client: &'a mut TcpStream,
    read: &'a mut Vec<u8>,
    len: u64,
    /// All of it is in `read` (and stays there to be sent again).
    whole: Option<usize>,
    /// Most time between two reads of it.
    timeout: Duration,
}

enum Unsent {
    Client(std::io::Error),
    Upstream(UpstreamError),
}

/// Sends the request in `buffers` and its body on a kept-alive stream, or a new one, and
/// reads the answer's head (and whether the body was all sent before it came). A kept-alive
/// stream the upstream closed before answering anything is replaced once, when `retry`
/// allows.
async fn send(
    upstream: &Upstream,
    buffers: &mut Buffers,
    mut upload: Upload<'_>,
    (flags, retry): ((bool, bool), bool),
    started: Instant,
) -> Result<(TcpStream, AnswerHead, bool), Unsent> {
    let (mut stream, mut reused) = upstream
        .checkout_stream(started)
        .await
        .map_err(Unsent::Upstream)?;
    loop {
        match answer_on(&mut stream, buffers, &mut upload, flags).await {
            Ok((head, sent_whole)) => return Ok((stream, head, sent_whole)),
            Err(Failed::Nothing(_)) if reused && retry => {
                stream = upstream.connect_stream().await.map_err(Unsent::Upstream)?;
                reused = false;
            }
            Err(Failed::Nothing(e) | Failed::Broken(e)) => {
                return Err(Unsent::Upstream(UpstreamError::Broken(e)));
            }
            Err(Failed::Malformed(e)) => return Err(Unsent::Upstream(e.into())),
            Err(Failed::Client(e)) => return Err(Unsent::Client(e)),
        }
    }
}

enum Failed {
    /// Not one byte of an answer came.
    Nothing(std::io::Error),
    Broken(std::io::Error),
    Malformed(h1::Malformed),
    /// The client's body stopped short.
    Client(std::io::Error),
}

async fn answer_on(
    stream: &mut TcpStream,
    buffers: &mut Buffers,
    upload: &mut Upload<'_>,
    flags: (bool, bool),
) -> Result<(AnswerHead, bool), Failed> {
    let Buffers {
        request,
        upstream: from_upstream,
        answer,
        date,
        ..
    } = buffers;
    from_upstream.clear();
    stream.write_all(request).await.map_err(Failed::Nothing)?;
    // The body goes while the answer is awaited: an upstream may answer before reading it
    // all (and close), and that answer is the client's.
    let mut sent_whole = upload.len == 0;
    let mut ended = false;
    if !sent_whole {
        let (mut reader, mut writer) = stream.split();
        let mut sending = std::pin::pin!(send_body(&mut writer, upload));
        loop {
            crate::stream::grow(from_upstream);
            tokio::select! {
                biased;
                sent = &mut sending => {
                    match sent {
                        Ok(()) => sent_whole = true,
                        // It stopped reading: its answer may be here already.
                        Err(Failed::Broken(e)) => tracing::debug!(error = %e, "the upstream stopped reading the body"),
                        Err(other) => return Err(other),
                    }
                    break;
                }
                got = reader.read_buf(from_upstream) => match got {
                    Ok(n) if n > 0 => {
                        answer.clear();
                        if has_final_head(from_upstream, flags, answer, date)? {
                            break;
                        }
                    }
                    _ => {
                        ended = true;
                        break;
                    }
                },
            }
        }
    }
    loop {
        loop {
            answer.clear();
            match h1::parse_answer(from_upstream, flags, answer, date).map_err(Failed::Malformed)? {
                Answer::Final(head) => return Ok((head, sent_whole)),
                Answer::Interim(len) => {
                    from_upstream.drain(..len);
                }
                Answer::Partial if from_upstream.len() > MAX_ANSWER_HEAD => {
                    return Err(Failed::Malformed(h1::Malformed::TOO_LONG));
                }
                Answer::Partial => break,
            }
        }
        let eof = std::io::ErrorKind::UnexpectedEof;
        if ended {
            return Err(match from_upstream.is_empty() {
                true => Failed::Nothing(eof.into()),
                false => Failed::Broken(eof.into()),
            });
        }
        crate::stream::grow(from_upstream);
        match stream.read_buf(from_upstream).await {
            Ok(n) if n > 0 => {}
            Ok(_) => ended = true,
            Err(e) if from_upstream.is_empty() => return Err(Failed::Nothing(e)),
            Err(e) => return Err(Failed::Broken(e)),
        }
    }
}

/// Whether `from_upstream` holds a final answer's head (interim ones are dropped from it).
fn has_final_head(
    from_upstream: &mut Vec<u8>,
    flags: (bool, bool),
    answer: &mut Vec<u8>,
    date: &mut h1::Date,
) -> Result<bool, Failed> {
    loop {
        answer.clear();
        match h1::parse_answer(from_upstream, flags, answer, date).map_err(Failed::Malformed)? {
            Answer::Final(_) => return Ok(true),
            Answer::Interim(len) => {
                from_upstream.drain(..len);
            }
            Answer::Partial => return Ok(false),
        }
    }
}

/// The body: from `read` when it is all there, else as the client sends it (what arrives
/// beyond it is the next request's, and stays in `read`).
async fn send_body<W: AsyncWrite + Unpin>(
    stream: &mut W,
    upload: &mut Upload<'_>,
) -> Result<(), Failed> {
    if let Some(n) = upload.whole {
        return match n {
            0 => Ok(()),
            n => stream
                .write_all(&upload.read[..n])
                .await
                .map_err(Failed::Broken),
        };
    }
    while upload.len > 0 {
        if upload.read.is_empty() {
            upload.read.reserve(16 * 1024);
            let reading = upload.client.read_buf(upload.read);
            match tokio::time::timeout(upload.timeout, reading).await {
                Ok(Ok(0)) => return Err(Failed::Client(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Failed::Client(e)),
                Err(_) => return Err(Failed::Client(std::io::ErrorKind::TimedOut.into())),
            }
        }
        let taken = usize::try_from(upload.len)
            .unwrap_or(usize::MAX)
            .min(upload.read.len());
        stream
            .write_all(&upload.read[..taken])
            .await
            .map_err(Failed::Broken)?;
        upload.read.drain(..taken);
        upload.len -= taken as u64;
    }
    Ok(())
}
