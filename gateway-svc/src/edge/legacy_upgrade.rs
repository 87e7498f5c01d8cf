//! WebSocket upgrades that arrive as HTTP/1.0.
//!
//! The tutorial's nginx config sets `Upgrade` and `Connection: upgrade` but not
//! `proxy_http_version 1.1`, so nginx sends WebSocket handshakes upstream as HTTP/1.0. Node
//! accepts them; hyper, rightly by the RFC, does not upgrade an HTTP/1.0 connection. A team
//! that swaps its Node app for weapp behind that nginx must keep its WebSockets, so the first
//! request of each connection is looked at before hyper sees it: when it is an HTTP/1.0
//! request that asks for exactly a WebSocket upgrade (`Upgrade: websocket` and a `Connection`
//! header with the `upgrade` token), its version is rewritten to HTTP/1.1. Nothing else is
//! touched: any other HTTP/1.0 request, or any HTTP/1.1 one, reaches hyper byte for byte.
//! Only the first request matters: nginx opens a new upstream connection for each HTTP/1.0
//! request.
//!
//! The same first look tells an HTTP/2 connection (its preface, `PRI * HTTP/2.0`) from an
//! HTTP/1 one, so the server runs hyper's HTTP/1 connection directly, whose upgraded stream
//! comes back as the gateway's own type (`stream.rs`).
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::stream::{self, Prefixed};

/// What the first look found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstRequest {
    /// Passed on as it came.
    AsSent,
    /// An HTTP/1.0 WebSocket upgrade, passed on as HTTP/1.1.
    UpgradedToHttp11,
    /// HTTP/2 with prior knowledge (its connection preface), passed on as it came.
    Http2,
}

/// Reads the start of `io`'s first request (up to the end of its request line, or of its
/// head for an HTTP/1.0 request, at most `max_head` bytes) and decides what to pass on. A
/// line ended by a bare LF stops the look at once: the head's one reading
/// (`request_head.rs`) refuses it.
pub async fn first_request<IO: AsyncRead + Unpin, K>(
    mut io: IO,
    keep: K,
    max_head: usize,
) -> io::Result<(Prefixed<IO, K>, FirstRequest)> {
    // On the heap, not in this future: the future's size is every connection task's size.
    // Small, and grown as bytes come: a connection that has sent little holds little.
    let mut buf = Vec::new();
    let mut line_end = None;
    let outcome = loop {
        stream::grow(&mut buf);
        let n = io.read_buf(&mut buf).await?;
        if bare_lf(&buf) {
            break FirstRequest::AsSent;
        }
        if line_end.is_none() {
            line_end = find(&buf, b"\r\n");
        }
        let Some(line_end) = line_end else {
            if n == 0 || buf.len() >= max_head {
                break FirstRequest::AsSent;
            }
            continue;
        };
        if buf[..line_end] == *b"PRI * HTTP/2.0" {
            break FirstRequest::Http2;
        }
        if !buf[..line_end].ends_with(b" HTTP/1.0") {
            break FirstRequest::AsSent;
        }
        if find(&buf, b"\r\n\r\n").is_some() {
            if asks_for_websocket(&buf) {
                // "HTTP/1.0" → "HTTP/1.1": same length, so the rest of the head is unchanged.
                buf[line_end - 1] = b'1';
                break FirstRequest::UpgradedToHttp11;
            }
            break FirstRequest::AsSent;
        }
        if n == 0 || buf.len() >= max_head {
            break FirstRequest::AsSent;
        }
    };
    Ok((Prefixed::new(buf, io, keep), outcome))
}

fn bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn asks_for_websocket(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let values = |name: &str| {
        request
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .collect::<Vec<_>>()
    };
    let upgrade = values("upgrade");
    let connection = values("connection");
    // A body's framing in an HTTP/1.0 head is refused as it came (RFC 9112 §6.1), not
    // rewritten into HTTP/1.1 where it would be read.
    let framed = !values("transfer-encoding").is_empty() || !values("content-length").is_empty();
    !framed
        && request.method == Some("GET")
        && upgrade.len() == 1
        && upgrade[0].trim().eq_ignore_ascii_case("websocket")
        && connection
            .iter()
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use tokio::io::{AsyncReadExt as _, ReadBuf};

    use super::*;

    async fn pass(request: &str) -> (String, FirstRequest) {
        // Delivered in small pieces, as a slow client or proxy may send it.
        let mut builder = tokio_test_io(request.as_bytes());
        let (mut prefixed, outcome) = first_request(&mut builder, (), 16 * 1024).await.unwrap();
        let mut seen = Vec::new();
        prefixed.read_to_end(&mut seen).await.unwrap();
        (String::from_utf8(seen).unwrap(), outcome)
    }

    fn tokio_test_io(bytes: &[u8]) -> impl AsyncRead + Unpin + '_ {
        // A reader that hands out 7 bytes at a time.
        struct Trickle<'a>(&'a [u8]);
        impl AsyncRead for Trickle<'_> {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let n = self.0.len().min(7).min(buf.remaining());
                buf.put_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Poll::Ready(Ok(()))
            }
        }
        Trickle(bytes)
    }

    const UPGRADE_10: &str = "GET /ws HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: upgrade\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[tokio::test]
    async fn an_http10_websocket_upgrade_becomes_http11_and_nothing_else_changes() {
        let (seen, outcome) = pass(UPGRADE_10).await;
        assert_eq!(outcome, FirstRequest::UpgradedToHttp11);
        assert_eq!(seen, UPGRADE_10.replacen("HTTP/1.0", "HTTP/1.1", 1));
    }

    #[tokio::test]
    async fn everything_else_passes_byte_for_byte() {
        for request in [
            "GET /me HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /me HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET /ws HTTP/1.0\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n",
            "POST /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbody",
            "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
             Content-Length: 0\r\n\r\n",
            "GET /ws HTTP/1.0\nUpgrade: websocket\nConnection: upgrade\n\n",
            "GET /ws HTTP/1.0\r\nUpgrade: websocket\nConnection: upgrade\r\n\r\n",
            "garbage without a line end",
            "",
        ] {
            let (seen, outcome) = pass(request).await;
            assert_eq!(outcome, FirstRequest::AsSent, "{request:?}");
            assert_eq!(seen, request);
        }
    }

    #[tokio::test]
    async fn http2_with_prior_knowledge_is_told_apart_and_passes_as_it_came() {
        let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(
            pass(preface).await,
            (preface.to_owned(), FirstRequest::Http2)
        );
    }
}
