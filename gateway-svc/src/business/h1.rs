//! HTTP/1.1 messages as bytes, for the forwarding path that does not build them as objects
//! (`fast_path.rs`; request heads are read in `edge/request_head.rs`): the upstream's request
//! head written, the gateway's own answers framed, and the upstream's answer passed on with
//! only its head looked at — how long its body is (RFC 9112 §6.3), which fields end at this
//! hop. An answer two readers could frame two ways (two lengths, a length beside a transfer
//! coding, a transfer coding in HTTP/1.0, an upgrade nobody asked for) is refused (502).
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
pub use weapp_wire::framing::{Chunked, Malformed, content_length};

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

/// An upstream answer with more header lines than this is refused (502).
const MAX_ANSWER_HEADERS: usize = 128;

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

/// `Date` for the answers of one connection (RFC 9110 §6.6.1: an answer from a server with a
/// clock carries one), formatted once a second, not once an answer.
#[derive(Default)]
pub struct Date {
    second: u64,
    text: Vec<u8>,
}

impl Date {
    /// The `date: …\r\n` line for now.
    pub fn line(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text.clear();
            self.text.extend_from_slice(b"date: ");
            self.text
                .extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            self.text.extend_from_slice(b"\r\n");
        }
        &self.text
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
    (status, headers): (StatusCode, &HeaderMap),
    (length, close): (Length, bool),
    date: &mut Date,
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
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(date.line());
    }
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

/// Reads the upstream's answer head at the start of `buf` and, when it is whole and final,
/// writes the head the client gets into `out`: the same status and fields, minus those that
/// end at this hop (RFC 9110 §7.6.1), with a `Date` when it had none. The body's framing is
/// kept as it is (a chunked body is passed on chunked), so `Transfer-Encoding` stays when
/// there is one.
pub fn parse_answer(
    buf: &[u8],
    (head_request, client_close): (bool, bool),
    out: &mut Vec<u8>,
    date: &mut Date,
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
    let mut dated = false;
    for line in answer.headers.iter() {
        let value = line.value.trim_ascii();
        dated |= line.name.eq_ignore_ascii_case("date");
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
    // RFC 9112 §6.1, §6.3: faulty framing, whatever the request was.
    if coded && version == 0 {
        return Err(Malformed("a transfer coding in HTTP/1.0"));
    }
    if coded && length.is_some() {
        return Err(Malformed("both Content-Length and Transfer-Encoding"));
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
    if !dated {
        out.extend_from_slice(date.line());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The head the client gets, without its `Date` line (checked to be there, once).
    fn undated(out: Vec<u8>) -> String {
        let out = String::from_utf8(out).unwrap();
        let dates: Vec<&str> = out
            .split("\r\n")
            .filter(|l| l.starts_with("date: "))
            .collect();
        assert_eq!(dates.len(), 1, "{out:?}");
        assert!(httpdate::parse_http_date(&dates[0]["date: ".len()..]).is_ok());
        out.replacen(&format!("{}\r\n", dates[0]), "", 1)
    }

    fn parse(text: &str, flags: (bool, bool), out: &mut Vec<u8>) -> Result<Answer, Malformed> {
        parse_answer(text.as_bytes(), flags, out, &mut Date::default())
    }

    fn answer(text: &str, head_request: bool, client_close: bool) -> (AnswerHead, String) {
        let mut out = Vec::new();
        match parse(text, (head_request, client_close), &mut out) {
            Ok(Answer::Final(head)) => (head, undated(out)),
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
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            true,
        );
        assert_eq!(head.framing, Framing::Chunked(Chunked::default()));
        assert!(!head.client_keeps_open);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        // The upstream's own Date stands.
        let mut out = Vec::new();
        let dated =
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 10:00:00 GMT\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            parse(dated, (false, false), &mut out),
            Ok(Answer::Final(_))
        ));
        assert_eq!(String::from_utf8(out).unwrap(), dated);
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
            // Framing two readers read two ways (RFC 9112 §6.1, §6.3).
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                parse(bad, (false, false), &mut Vec::new()).is_err(),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse(
                "HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200",
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
        let date = &mut Date::default();
        let mut out = Vec::new();
        write_answer_head(
            &mut out,
            (StatusCode::OK, &fields),
            (Length::Known(2), false),
            date,
        );
        write_body_part(&mut out, b"ok", Length::Known(2));
        write_body_end(&mut out, Length::Known(2));
        assert_eq!(
            undated(out),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
        );
        let mut out = Vec::new();
        let empty = HeaderMap::new();
        write_answer_head(
            &mut out,
            (StatusCode::CREATED, &empty),
            (Length::Chunked, true),
            date,
        );
        for part in [&b"hello"[..], b"", b" world"] {
            write_body_part(&mut out, part, Length::Chunked);
        }
        write_body_end(&mut out, Length::Chunked);
        assert_eq!(
            undated(out),
            "HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        );
        let mut out = Vec::new();
        write_answer_head(
            &mut out,
            (StatusCode::NO_CONTENT, &empty),
            (Length::None, false),
            date,
        );
        assert_eq!(undated(out), "HTTP/1.1 204 No Content\r\n\r\n");
    }
}
