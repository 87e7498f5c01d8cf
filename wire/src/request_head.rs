//! The one reading of an HTTP/1 request head. Every head on every HTTP/1 connection is read
//! here first, whoever serves the request after (the fast path, or hyper for one request),
//! so nginx in front, the gateway and an upstream behind cannot read one byte stream two
//! ways: what two readers could disagree on is refused, not repaired (DESIGN, "HTTP at the
//! edge"; RFC 9112).
//!
//! Refused with 400 and the connection closed: bare LF line ends, whitespace before a colon,
//! obs-fold lines, NUL / CR / LF in a value (httparse's own rules), a `#` in the target, a
//! `Content-Length` that is not digits only or two that differ, `Transfer-Encoding` that is
//! not exactly one `chunked`, beside a `Content-Length`, or in an HTTP/1.0 request, and no
//! `Host` or two in HTTP/1.1 (two in 1.0). More fields or bytes than the limits: 431.
//!
//! What is left is read once: its fields into the `HeaderMap` the gateway's rules work on
//! (`forward::request_headers`), two equal `Content-Length` lines as one, and who serves it
//! (`Serve`): the gateway's fast path, or hyper.
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use crate::framing;

/// Header slots on the stack; a gateway configured for more takes them from the heap.
const STACK_SLOTS: usize = 128;

/// What the start of a client's buffer holds.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet, and nothing refused so far.
    Partial,
    Head(RequestHead),
    /// Answered with its status, and the connection closed: nothing after it can be read
    /// the same way by everyone.
    Refused(Refusal),
}

/// Why a head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the request head is malformed: {0}")]
    Malformed(&'static str),
    #[error("the request head has more fields or bytes than this gateway takes")]
    TooLarge,
}

/// How the request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `Content-Length` (0 without one).
    Length(u64),
    Chunked,
}

/// Who serves a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serve {
    /// The fast path: HTTP/1.1, an origin-form target, no body or a `Content-Length` one,
    /// no `Expect`, no `Upgrade`, `Connection` naming no other field.
    Fast,
    /// hyper, this one request (its head and body, nothing after).
    HyperOne,
    /// hyper, the rest of the connection: an `Upgrade` request (after a 101 the bytes are no
    /// longer HTTP; after any other answer the connection closes).
    HyperRest,
}

/// A request head that passed (its fields are in the `HeaderMap` it was read into, when it
/// is the fast path's).
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// As sent (origin form for the fast path: the path and the query).
    pub target: String,
    /// Where the path ends in `target`.
    path_end: usize,
    /// Its length in bytes; the body starts there.
    pub len: usize,
    pub body: Body,
    /// The connection ends after this request (`Connection: close`, or HTTP/1.0 without
    /// `keep-alive`).
    pub close: bool,
    pub serve: Serve,
}

impl RequestHead {
    pub fn path(&self) -> &str {
        self.target.get(..self.path_end).unwrap_or_default()
    }

    pub fn query(&self) -> Option<&str> {
        self.target.get(self.path_end + 1..)
    }

    /// The body's length when it has one (`Content-Length`, 0 without).
    pub fn length(&self) -> Option<u64> {
        match self.body {
            Body::Length(n) => Some(n),
            Body::Chunked => None,
        }
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

/// The limits a head is read under.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_headers: usize,
    pub max_bytes: usize,
}

/// Reads the request head at the start of `buf`. A fast-path head's fields go into `fields`
/// (cleared first: a connection reuses one map); `fast` false sends every request to hyper.
pub fn parse(buf: &[u8], limits: Limits, fields: &mut HeaderMap, fast: bool) -> Parsed {
    let mut stack;
    let mut heap;
    let slots: &mut [httparse::Header<'_>] = if limits.max_headers <= STACK_SLOTS {
        stack = [httparse::EMPTY_HEADER; STACK_SLOTS];
        &mut stack[..limits.max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut heap
    };
    let mut request = httparse::Request::new(slots);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > limits.max_bytes => {
            return Parsed::Refused(Refusal::TooLarge);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            // What is here is all head: a bare LF in it is refused now, not at the deadline.
            if let Some(refused) = bare_lf(buf) {
                return Parsed::Refused(refused);
            }
            if buf.len() >= limits.max_bytes {
                return Parsed::Refused(Refusal::TooLarge);
            }
            return Parsed::Partial;
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::Refused(Refusal::TooLarge),
        Err(e) => return Parsed::Refused(Refusal::Malformed(malformed(e))),
    };
    if let Some(refused) = bare_lf(&buf[..len]) {
        return Parsed::Refused(refused);
    }
    let (Some(version), Some(method), Some(target)) =
        (request.version, request.method, request.path)
    else {
        return Parsed::Refused(Refusal::Malformed("no request line"));
    };
    if target.contains('#') {
        return Parsed::Refused(Refusal::Malformed("a fragment (#) in the request target"));
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Refused(Refusal::Malformed("an unreadable method"));
    };
    let framing = match Framing::read(request.headers, version) {
        Ok(framing) => framing,
        Err(refused) => return Parsed::Refused(refused),
    };
    let origin_form = target.starts_with('/') && http::uri::PathAndQuery::try_from(target).is_ok();
    let serve = if framing.upgrade {
        Serve::HyperRest
    } else if fast
        && version == 1
        && origin_form
        && method != Method::CONNECT
        && framing.body != Body::Chunked
        && !framing.expect
        && !framing.names_other_fields
    {
        Serve::Fast
    } else {
        Serve::HyperOne
    };
    let close = framing.close || (version == 0 && !framing.keep_alive);
    let head = |target: &str| RequestHead {
        method: method.clone(),
        target: target.to_owned(),
        path_end: target.find('?').unwrap_or(target.len()),
        len,
        body: framing.body,
        close,
        serve,
    };
    if serve != Serve::Fast {
        return Parsed::Head(head(target));
    }
    fields.clear();
    // The values share one copy of the head instead of one allocation each.
    let shared = Bytes::copy_from_slice(&buf[..len]);
    let start = buf.as_ptr() as usize;
    let mut length_seen = false;
    for line in request.headers.iter() {
        let Some(name) = field_name(line.name) else {
            return Parsed::Refused(Refusal::Malformed("an unreadable field name"));
        };
        // Two equal lengths go on as one (llhttp, Node's parser, refuses two).
        if name == header::CONTENT_LENGTH && std::mem::replace(&mut length_seen, true) {
            continue;
        }
        let at = line.value.as_ptr() as usize - start;
        let Ok(value) = HeaderValue::from_maybe_shared(shared.slice(at..at + line.value.len()))
        else {
            return Parsed::Refused(Refusal::Malformed("an unreadable field value"));
        };
        fields.append(name, value);
    }
    Parsed::Head(head(target))
}

/// What a head's fields say of its framing and its connection.
#[derive(Default)]
struct Framing {
    body: Body,
    close: bool,
    keep_alive: bool,
    /// `Connection` names fields that end at this hop: hyper's rules remove them.
    names_other_fields: bool,
    expect: bool,
    upgrade: bool,
}

impl Default for Body {
    fn default() -> Self {
        Self::Length(0)
    }
}

impl Framing {
    fn read(fields: &[httparse::Header<'_>], version: u8) -> Result<Self, Refusal> {
        let mut framing = Self::default();
        let mut length: Option<u64> = None;
        let mut codings = 0usize;
        let mut chunked = false;
        let mut hosts = 0usize;
        for line in fields {
            let name = line.name;
            let value = line.value.trim_ascii();
            if name.eq_ignore_ascii_case("content-length") {
                let n = framing::content_length(value).ok_or(Refusal::Malformed(
                    "a Content-Length that is not digits only",
                ))?;
                if length.is_some_and(|earlier| earlier != n) {
                    return Err(Refusal::Malformed("two different Content-Lengths"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    codings += 1;
                    chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
            } else if name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        framing.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        framing.keep_alive = true;
                    } else if !token.is_empty() {
                        framing.names_other_fields = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("expect") {
                framing.expect = true;
            } else if name.eq_ignore_ascii_case("upgrade") {
                framing.upgrade = true;
            }
        }
        if codings > 0 {
            if version == 0 {
                return Err(Refusal::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if length.is_some() {
                return Err(Refusal::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            // One coding, chunked: anything else two readers may read two ways.
            if codings != 1 || !chunked {
                return Err(Refusal::Malformed("a Transfer-Encoding other than chunked"));
            }
            framing.body = Body::Chunked;
        } else {
            framing.body = Body::Length(length.unwrap_or(0));
        }
        match (version, hosts) {
            (1, 1) | (0, 0 | 1) => {}
            (1, 0) => return Err(Refusal::Malformed("no Host")),
            _ => return Err(Refusal::Malformed("more than one Host")),
        }
        Ok(framing)
    }
}

/// A line ended by LF alone (RFC 9112 §2.2: a recipient may accept it; an edge must not,
/// where the reader in front or behind may not).
fn bare_lf(head: &[u8]) -> Option<Refusal> {
    let mut previous = 0u8;
    for &b in head {
        if b == b'\n' && previous != b'\r' {
            return Some(Refusal::Malformed("a line ends with LF alone"));
        }
        previous = b;
    }
    None
}

fn malformed(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "an unreadable field name (whitespace before a colon?)",
        httparse::Error::HeaderValue => "an unreadable field value",
        httparse::Error::NewLine => "a bad line end (a folded line?)",
        httparse::Error::Token => "an unreadable request line",
        httparse::Error::Version => "not HTTP/1.0 or HTTP/1.1",
        _ => "unreadable",
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_headers: 64,
        max_bytes: 16 * 1024,
    };

    fn parsed(text: &str) -> Parsed {
        parse(text.as_bytes(), LIMITS, &mut HeaderMap::new(), true)
    }

    fn head(text: &str) -> RequestHead {
        head_and_fields(text).0
    }

    fn head_and_fields(text: &str) -> (RequestHead, HeaderMap) {
        let mut fields = HeaderMap::new();
        match parse(text.as_bytes(), LIMITS, &mut fields, true) {
            Parsed::Head(head) => (head, fields),
            other => panic!("{other:?}: {text:?}"),
        }
    }

    fn refused(text: &str) -> Refusal {
        match parsed(text) {
            Parsed::Refused(refusal) => refusal,
            other => panic!("not refused ({other:?}): {text:?}"),
        }
    }

    #[test]
    fn a_bodiless_http11_request_is_the_fast_paths() {
        let text = "GET /api/x?a=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next";
        let (first, fields) = head_and_fields(text);
        assert_eq!(first.method, Method::GET);
        assert_eq!(first.serve, Serve::Fast);
        assert_eq!((first.path(), first.query()), ("/api/x", Some("a=1")));
        assert_eq!(first.len, text.len() - "GET /next".len());
        let values: Vec<_> = fields.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(fields["host"], "h");
        assert_eq!(head("GET /p HTTP/1.1\r\nHost: h\r\n\r\n").query(), None);
        assert_eq!(
            head("GET /p? HTTP/1.1\r\nHost: h\r\n\r\n").query(),
            Some("")
        );
        // A known name in any letter case is that name.
        let (_, fields) = head_and_fields("GET / HTTP/1.1\r\nHost: h\r\nX-Wx-SKEY: s\r\n\r\n");
        assert_eq!(fields["x-wx-skey"], "s");
        assert!(!first.close);
        assert!(head("GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, close\r\n\r\n").close);
        let mut moved = head("GET /a/./b?q=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(moved.set_path("/a/b"));
        assert_eq!(
            (moved.target.as_str(), moved.path(), moved.query()),
            ("/a/b?q=1", "/a/b", Some("q=1"))
        );
        assert!(!moved.set_path("/a b"), "not a target");
        assert_eq!(moved.target, "/a/b?q=1");
        assert!(matches!(
            parsed("GET /x HTTP/1.1\r\nHost: h\r\n"),
            Parsed::Partial
        ));
    }

    #[test]
    fn two_equal_lengths_go_on_as_one() {
        let text =
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc";
        let (posted, fields) = head_and_fields(text);
        assert_eq!((posted.body, posted.len), (Body::Length(3), text.len() - 3));
        assert_eq!(fields.get_all(header::CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(
            head("GET /x HTTP/1.1\r\nHost: h\r\n\r\n").body,
            Body::Length(0)
        );
    }

    #[test]
    fn what_the_fast_path_does_not_serve_goes_to_hyper_one_request_at_a_time() {
        for (text, serve, body) in [
            ("GET /x HTTP/1.0\r\n\r\n", Serve::HyperOne, Body::Length(0)),
            (
                "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Serve::HyperOne,
                Body::Chunked,
            ),
            (
                "POST /x HTTP/1.1\r\nHost: h\r\ntransfer-encoding: Chunked\r\n\r\n",
                Serve::HyperOne,
                Body::Chunked,
            ),
            (
                "PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
                Serve::HyperOne,
                Body::Length(2),
            ),
            (
                "GET /x HTTP/1.1\r\nHost: h\r\nConnection: x-secret\r\n\r\n",
                Serve::HyperOne,
                Body::Length(0),
            ),
            (
                "GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
                Serve::HyperOne,
                Body::Length(0),
            ),
            (
                "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
                Serve::HyperOne,
                Body::Length(0),
            ),
            (
                "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
                Serve::HyperOne,
                Body::Length(0),
            ),
            (
                "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                Serve::HyperRest,
                Body::Length(0),
            ),
        ] {
            let read = head(text);
            assert_eq!((read.serve, read.body), (serve, body), "{text:?}");
        }
        let mut fields = HeaderMap::new();
        let text = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(matches!(
            parse(text, LIMITS, &mut fields, false),
            Parsed::Head(RequestHead {
                serve: Serve::HyperOne,
                ..
            })
        ));
        assert!(head("GET /x HTTP/1.0\r\n\r\n").close);
        assert!(!head("GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
    }

    #[test]
    fn what_two_readers_could_read_two_ways_is_refused() {
        for text in [
            // Lengths.
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc",
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: -3\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3 4\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            // CL.TE, TE.CL and transfer codings.
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunk\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n",
            "POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\nTransfer-Encoding: chunked\r\n\r\n",
            // TE obfuscations httparse refuses itself.
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nX: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\x00\r\n\r\n",
            // Host.
            "GET /x HTTP/1.1\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            "GET /x HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
            // Targets and line ends.
            "GET /x#frag HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /api/x?a=1#/../admin HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /x HTTP/1.1\nHost: h\n\n",
            "GET /x HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: h\r\nX: 1\r\n\tfolded\r\n\r\n",
            "GET /x HTTP/2.0\r\nHost: h\r\n\r\n",
            "GET  /x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /x HTTP/1.1 \r\nHost: h\r\n\r\n",
        ] {
            assert!(matches!(refused(text), Refusal::Malformed(_)), "{text:?}");
        }
        // A bare LF is refused as soon as it arrives, not when the head is whole.
        assert!(matches!(
            refused("GET /x HTTP/1.1\n"),
            Refusal::Malformed(_)
        ));
        assert!(matches!(
            refused("GET /x HTTP/1.1\r\nHost: h\n"),
            Refusal::Malformed(_)
        ));
    }

    #[test]
    fn over_the_limits_is_431() {
        let many: String = (0..65).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            refused(&format!("GET /x HTTP/1.1\r\nHost: h\r\n{many}\r\n")),
            Refusal::TooLarge
        );
        let long = format!("GET /x HTTP/1.1\r\nHost: h\r\nX: {}", "v".repeat(16 * 1024));
        assert_eq!(refused(&long), Refusal::TooLarge);
        let whole = format!(
            "GET /x HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "v".repeat(16 * 1024)
        );
        assert_eq!(refused(&whole), Refusal::TooLarge);
        // A gateway configured for more fields than the stack holds reads them all.
        let many: String = (0..200).map(|i| format!("x-{i}: v\r\n")).collect();
        let text = format!("GET /x HTTP/1.1\r\nHost: h\r\n{many}\r\n");
        let limits = Limits {
            max_headers: 300,
            max_bytes: 64 * 1024,
        };
        let mut fields = HeaderMap::new();
        assert!(matches!(
            parse(text.as_bytes(), limits, &mut fields, true),
            Parsed::Head(_)
        ));
        assert_eq!(fields.len(), 201);
    }
}
