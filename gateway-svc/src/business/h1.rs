//! HTTP/1.1 messages as bytes, for the forwarding path that does not build them as objects
//! (`fast_path.rs`): a request head read into what the gateway's rules need (its headers as a
//! `HeaderMap`, so that `forward::request_headers` decides what the upstream sees, as for
//! every other forwarded request), the upstream's request head written, and the upstream's
//! answer passed on with only its head looked at — how long its body is (RFC 9112 §6.3), which
//! fields end at this hop.
//!
//! Narrow by design: a request this path would have to think hard about — a chunked body,
//! `Expect`, `Upgrade`, any HTTP version but 1.1, a request target that is not a path, two
//! different lengths, more headers than fit, anything httparse refuses — is `NotMine`, and
//! hyper serves it (and the rest of that connection) with its full rules.
use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
};

/// Whether a field of this name ends at this hop whatever `Connection` says.
pub(crate) fn ends_at_this_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// RFC 9110 §7.6.1: connection-specific fields, which end at this hop (with the fields the
/// `Connection` header names).
pub const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TRAILER,
];

/// Header lines looked at in one request or answer; more go to hyper (431 past the
/// gateway's own limit) or fail the answer.
const MAX_HEADERS: usize = 64;
/// An upstream answer with more header lines than this is refused (502).
const MAX_ANSWER_HEADERS: usize = 128;

/// What the start of a client's buffer holds.
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    Head(RequestHead),
    /// For hyper.
    NotMine,
}

/// An HTTP/1.1 request's head (its fields are in the `HeaderMap` it was read into).
pub struct RequestHead {
    pub method: Method,
    /// Origin form: the path and the query.
    pub target: String,
    /// Where the path ends in `target`.
    path_end: usize,
    /// Its length in bytes; the body starts there.
    pub len: usize,
    /// The body's length (`Content-Length`; 0 without one).
    pub body: u64,
    /// The client said `Connection: close`.
    pub close: bool,
}

impl RequestHead {
    pub fn path(&self) -> &str {
        self.target.get(..self.path_end).unwrap_or_default()
    }

    pub fn query(&self) -> Option<&str> {
        self.target.get(self.path_end + 1..)
    }

    /// Puts `path` in place of the target's path, the query kept; `false` (and nothing
    /// changed) when the result is not a target hyper would take.
    pub fn set_path(&mut self, path: &str) -> bool {
        let target = match self.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        if http::uri::PathAndQuery::try_from(target.as_str()).is_err() {
            return false;
        }
        self.path_end = path.len();
        self.target = target;
        true
    }
}

/// Reads the request head at the start of `buf`, taking at most `max_headers` header lines,
/// its fields into `headers` (cleared first: a connection reuses one map).
pub fn parse_request(buf: &[u8], max_headers: usize, headers: &mut HeaderMap) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots[..max_headers.min(MAX_HEADERS)]);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotMine,
    };
    let (Some(1), Some(method), Some(target)) = (request.version, request.method, request.path)
    else {
        return Parsed::NotMine;
    };
    // A path and query hyper would take as they are (`/x`, never `http://…` or `*`).
    if !target.starts_with('/') || http::uri::PathAndQuery::try_from(target).is_err() {
        return Parsed::NotMine;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::NotMine;
    };
    if method == Method::CONNECT {
        return Parsed::NotMine;
    }
    headers.clear();
    // The values share one copy of the head instead of one allocation each.
    let shared = Bytes::copy_from_slice(&buf[..len]);
    let start = buf.as_ptr() as usize;
    let mut close = false;
    let mut body = None;
    for line in request.headers.iter() {
        let Some(name) = field_name(line.name) else {
            return Parsed::NotMine;
        };
        let value = line.value.trim_ascii();
        if name == header::TRANSFER_ENCODING || name == header::EXPECT || name == header::UPGRADE {
            return Parsed::NotMine;
        }
        if name == header::CONTENT_LENGTH {
            // A second one must say the same (RFC 9112 §6.3).
            match (content_length(value), body) {
                (Some(n), None) => body = Some(n),
                (Some(n), Some(earlier)) if n == earlier => {}
                _ => return Parsed::NotMine,
            }
        }
        if name == header::CONNECTION {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                    // It names other fields that end at this hop: hyper's rules do that.
                    return Parsed::NotMine;
                }
            }
        }
        let at = line.value.as_ptr() as usize - start;
        let Ok(value) = HeaderValue::from_maybe_shared(shared.slice(at..at + line.value.len()))
        else {
            return Parsed::NotMine;
        };
        headers.append(name, value);
    }
    Parsed::Head(RequestHead {
        method,
        target: target.to_owned(),
        path_end: target.find('?').unwrap_or(target.len()),
        len,
        body: body.unwrap_or(0),
        close,
    })
}

/// A `Content-Length` value: digits only (no sign, no list), within a u64.
fn content_length(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
}

/// Names every wafer client or proxy sends that are not among `http`'s standard ones:
/// matched here, they cost no allocation.
const KNOWN: [HeaderName; 8] = [
    HeaderName::from_static("x-wx-id"),
    HeaderName::from_static("x-wx-skey"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
];

fn field_name(name: &str) -> Option<HeaderName> {
    match KNOWN.iter().find(|k| k.as_str().eq_ignore_ascii_case(name)) {
        Some(known) => Some(known.clone()),
        None => HeaderName::from_bytes(name.as_bytes()).ok(),
    }
}

/// Writes a request head for the upstream into `out`: `fields`, then `more`.
pub fn write_request_head<'a>(
    out: &mut Vec<u8>,
    (method, target): (&Method, &str),
    fields: &HeaderMap,
    more: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(out, fields);
    write_fields(out, more);
    out.extend_from_slice(b"\r\n");
}

fn write_fields<'a>(
    out: &mut Vec<u8>,
    fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// How the gateway's own answer's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// No body, and no length said (204, 304; a HEAD answer whose body's length is unknown).
    None,
    Known(u64),
    Chunked,
}

/// Writes the head of one of the gateway's own answers into `out`: `headers`, the framing
/// of `length`, and `Connection: close` when the connection ends after it.
pub fn write_answer_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    length: Length,
    close: bool,
) {
    status_line(
        out,
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
    );
    let framing = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ];
    write_fields(
        out,
        headers.iter().filter(|(name, _)| !framing.contains(name)),
    );
    match length {
        Length::None => {}
        Length::Known(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Length::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a part of that answer's body, framed.
pub fn write_body_part(out: &mut Vec<u8>, data: &[u8], length: Length) {
    match length {
        Length::Chunked if data.is_empty() => {}
        Length::Chunked => {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        _ => out.extend_from_slice(data),
    }
}

/// Appends the end of that answer's body.
pub fn write_body_end(out: &mut Vec<u8>, length: Length) {
    if length == Length::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse and `StatusCode` hold statuses to three digits.
    let digits = [status / 100 % 10, status / 10 % 10, status % 10];
    out.extend(digits.map(|d| b'0' + d as u8));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How an answer's body ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (an answer to HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked(Chunked),
    /// When the upstream closes the connection.
    UntilClose,
}

impl Framing {
    /// How much of `bytes` (the next the upstream sent) is the body, and whether the body
    /// ends there.
    pub fn pass(&mut self, bytes: &[u8]) -> Result<(usize, bool), Malformed> {
        Ok(match self {
            Self::Empty => (0, true),
            Self::Length(left) => {
                let taken = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                *left -= taken as u64;
                (taken, *left == 0)
            }
            Self::Chunked(chunked) => match chunked.feed(bytes)? {
                Some(end) => (end, true),
                None => (bytes.len(), false),
            },
            Self::UntilClose => (bytes.len(), false),
        })
    }
}

/// What the start of the upstream's buffer holds.
#[derive(Debug)]
pub enum Answer {
    Partial,
    /// A 1xx head of this many bytes, to skip: the answer follows.
    Interim(usize),
    Final(AnswerHead),
}

#[derive(Debug)]
pub struct AnswerHead {
    pub status: u16,
    /// The head's length in the upstream's bytes.
    pub len: usize,
    pub framing: Framing,
    /// The upstream keeps the connection open after this answer.
    pub upstream_keeps_open: bool,
    /// The client's connection stays open after this answer.
    pub client_keeps_open: bool,
}

/// The upstream's answer is not HTTP/1.1 the gateway can pass on.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's answer is malformed: {0}")]
pub struct Malformed(&'static str);

impl Malformed {
    pub const TOO_LONG: Self = Self("its head is too long");
}

/// Reads the upstream's answer head at the start of `buf` and, when it is whole and final,
/// writes the head the client gets into `out`: the same status and fields, minus those that
/// end at this hop (RFC 9110 §7.6.1). The body's framing is kept as it is (a chunked body is
/// passed on chunked), so `Transfer-Encoding` stays when there is one.
pub fn parse_answer(
    buf: &[u8],
    (head_request, client_close): (bool, bool),
    out: &mut Vec<u8>,
) -> Result<Answer, Malformed> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut answer = httparse::Response::new(&mut slots);
    let len = match answer.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Answer::Partial),
        Err(_) => return Err(Malformed("unreadable head")),
    };
    let (Some(version), Some(status)) = (answer.version, answer.code) else {
        return Err(Malformed("no status"));
    };
    if status == 101 {
        return Err(Malformed("an upgrade nobody asked for"));
    }
    if (100..200).contains(&status) {
        return Ok(Answer::Interim(len));
    }
    let mut length: Option<u64> = None;
    let mut coded = false;
    let mut chunked = false;
    let mut close = version == 0;
    let mut named: Vec<&str> = Vec::new();
    for line in answer.headers.iter() {
        let value = line.value.trim_ascii();
        if line.name.eq_ignore_ascii_case("content-length") {
            let n = content_length(value).ok_or(Malformed("bad Content-Length"))?;
            if length.is_some_and(|earlier| earlier != n) {
                return Err(Malformed("two Content-Lengths"));
            }
            length = Some(n);
        } else if line.name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            chunked = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if line.name.eq_ignore_ascii_case("connection") {
            let tokens = std::str::from_utf8(value).map_err(|_| Malformed("bad Connection"))?;
            for token in tokens.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == 0 {
                    close = false;
                }
                named.push(token);
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if coded {
        match chunked {
            true => Framing::Chunked(Chunked::default()),
            false => Framing::UntilClose,
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let client_keeps_open = !client_close && framing != Framing::UntilClose;
    status_line(out, status, answer.reason.unwrap_or(""));
    for line in answer.headers.iter() {
        let name = line.name;
        let framing_field = name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("content-length");
        let passed = if framing_field {
            // The body goes on in the upstream's framing; a length beside a transfer coding
            // is not sent (RFC 9112 §6.2).
            name.eq_ignore_ascii_case("transfer-encoding") || !coded
        } else {
            !ends_at_this_hop(name) && !named.iter().any(|n| n.eq_ignore_ascii_case(name))
        };
        if passed {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(line.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !client_keeps_open {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Answer::Final(AnswerHead {
        status,
        len,
        framing,
        upstream_keeps_open: !close,
        client_keeps_open,
    }))
}

/// Follows a chunked body (RFC 9112 §7.1) as it passes, to know where it ends: the bytes are
/// passed on unchanged, trailers included.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Chunked {
    /// Follows `bytes`: `Some(n)` when the body ends after the first `n` of them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            if self.state == Data {
                let take = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - i);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err(Malformed("chunk size too large"));
                    }
                    self.digits += 1;
                    let digit = (b as char).to_digit(16).unwrap_or_default();
                    self.size = self.size * 16 + u64::from(digit);
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(Malformed("bare LF in a chunk extension")),
                (Extension, _) => Extension,
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    match self.size {
                        0 => TrailerStart,
                        _ => Data,
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart, b'\n') => return Err(Malformed("bare LF in the trailers")),
                (Trailer, b'\r') => TrailerLf,
                (TrailerStart | Trailer, _) => Trailer,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => return Ok(Some(i)),
                _ => return Err(Malformed("bad chunked framing")),
            };
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> RequestHead {
        head_and_fields(text).0
    }

    fn head_and_fields(text: &str) -> (RequestHead, HeaderMap) {
        let mut fields = HeaderMap::new();
        match parse_request(text.as_bytes(), 64, &mut fields) {
            Parsed::Head(head) => (head, fields),
            Parsed::Partial => panic!("partial: {text:?}"),
            Parsed::NotMine => panic!("not mine: {text:?}"),
        }
    }

    fn not_mine(text: &str) -> bool {
        matches!(
            parse_request(text.as_bytes(), 64, &mut HeaderMap::new()),
            Parsed::NotMine
        )
    }

    #[test]
    fn a_bodiless_http11_request_is_read() {
        let text = "GET /api/x?a=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next";
        let (first, fields) = head_and_fields(text);
        assert_eq!(first.method, Method::GET);
        assert_eq!((first.path(), first.query()), ("/api/x", Some("a=1")));
        assert_eq!(first.len, text.len() - "GET /next".len());
        let values: Vec<_> = fields.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(fields["host"], "h");
        assert_eq!(head("GET /p HTTP/1.1\r\n\r\n").query(), None);
        assert_eq!(head("GET /p? HTTP/1.1\r\n\r\n").query(), Some(""));
        // A known name in any letter case is that name.
        let (_, fields) = head_and_fields("GET / HTTP/1.1\r\nX-Wx-SKEY: s\r\n\r\n");
        assert_eq!(fields["x-wx-skey"], "s");
        assert!(!first.close);
        assert!(head("GET / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n").close);
        assert!(!head("DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n").close);
        let posted = "POST /x HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc";
        let (posted_head, _) = head_and_fields(posted);
        assert_eq!((posted_head.body, posted_head.len), (3, posted.len() - 3));
        assert_eq!(head("GET /x HTTP/1.1\r\n\r\n").body, 0);
        let mut moved = head("GET /a/./b?q=1 HTTP/1.1\r\n\r\n");
        assert!(moved.set_path("/a/b"));
        assert_eq!(
            (moved.target.as_str(), moved.path(), moved.query()),
            ("/a/b?q=1", "/a/b", Some("q=1"))
        );
        assert!(!moved.set_path("/a b"), "not a target");
        assert_eq!(moved.target, "/a/b?q=1");
        assert!(matches!(
            parse_request(b"GET /x HTTP/1.1\r\nHost: h\r\n", 64, &mut HeaderMap::new()),
            Parsed::Partial
        ));
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        for text in [
            "GET /x HTTP/1.0\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            "POST /x HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc",
            "POST /x HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "PUT /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET /x HTTP/1.1\r\nConnection: x-secret\r\n\r\n",
            "GET http://h/x HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT h:443 HTTP/1.1\r\n\r\n",
            "GET /x HTTP/1.1\r\nbad header\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(not_mine(text), "{text:?}");
        }
        let many: String = (0..65).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(not_mine(&format!("GET /x HTTP/1.1\r\n{many}\r\n")));
        // The gateway's own limit, under the path's.
        assert!(matches!(
            parse_request(
                b"GET /x HTTP/1.1\r\na: 1\r\nb: 2\r\n\r\n",
                1,
                &mut HeaderMap::new()
            ),
            Parsed::NotMine
        ));
    }

    fn answer(text: &str, head_request: bool, client_close: bool) -> (AnswerHead, String) {
        let mut out = Vec::new();
        match parse_answer(text.as_bytes(), (head_request, client_close), &mut out) {
            Ok(Answer::Final(head)) => (head, String::from_utf8(out).unwrap()),
            other => panic!("{other:?} for {text:?}"),
        }
    }

    #[test]
    fn an_answer_keeps_its_fields_and_framing_minus_this_hops() {
        let (head, out) = answer(
            "HTTP/1.1 201 Made\r\nContent-Length: 5\r\nConnection: x-hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nX-End: 2\r\n\r\nhello",
            false,
            false,
        );
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.upstream_keeps_open && head.client_keeps_open);
        assert_eq!(
            out,
            "HTTP/1.1 201 Made\r\nContent-Length: 5\r\nX-End: 2\r\n\r\n"
        );
        let (head, out) = answer(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            true,
        );
        assert_eq!(head.framing, Framing::Chunked(Chunked::default()));
        assert!(!head.client_keeps_open);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn how_an_answer_body_ends() {
        let framing = |text: &str, head_request| answer(text, head_request, false).0.framing;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", false),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\n\r\n", false),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Framing::UntilClose
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Framing::UntilClose
        );
        let (head, out) = answer("HTTP/1.0 200 OK\r\n\r\n", false, false);
        assert!(!head.upstream_keeps_open && !head.client_keeps_open);
        assert!(out.ends_with("connection: close\r\n\r\n"));
        let (head, _) = answer(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert!(!head.upstream_keeps_open && head.client_keeps_open);
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "nonsense\r\n\r\n",
        ] {
            assert!(
                parse_answer(bad.as_bytes(), (false, false), &mut Vec::new()).is_err(),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_answer(
                b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200",
                (false, false),
                &mut Vec::new()
            ),
            Ok(Answer::Interim(37))
        ));
    }

    #[test]
    fn the_gateways_own_answers_say_how_their_body_ends() {
        let mut fields = HeaderMap::new();
        fields.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        fields.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let mut out = Vec::new();
        write_answer_head(&mut out, StatusCode::OK, &fields, Length::Known(2), false);
        write_body_part(&mut out, b"ok", Length::Known(2));
        write_body_end(&mut out, Length::Known(2));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
        );
        let mut out = Vec::new();
        write_answer_head(
            &mut out,
            StatusCode::CREATED,
            &HeaderMap::new(),
            Length::Chunked,
            true,
        );
        for part in [&b"hello"[..], b"", b" world"] {
            write_body_part(&mut out, part, Length::Chunked);
        }
        write_body_end(&mut out, Length::Chunked);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        );
        let mut out = Vec::new();
        write_answer_head(
            &mut out,
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            Length::None,
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
    }

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_do() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        // Whole, and byte by byte.
        assert_eq!(Chunked::default().feed(body).unwrap(), Some(end));
        let mut chunked = Chunked::default();
        for (i, b) in body.iter().enumerate() {
            match chunked.feed(std::slice::from_ref(b)).unwrap() {
                Some(1) => {
                    assert_eq!(i + 1, end);
                    break;
                }
                Some(n) => panic!("{n}"),
                None => assert!(i + 1 < end),
            }
        }
        assert_eq!(Chunked::default().feed(b"0\r\n\r\n").unwrap(), Some(5));
        assert_eq!(Chunked::default().feed(b"3\r\nab").unwrap(), None);
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcd\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\n\n",
        ] {
            assert!(Chunked::default().feed(bad).is_err(), "{bad:?}");
        }
    }
}
