//! The edge reads every request one way (DESIGN, "HTTP at the edge"; the gateway's
//! `edge/request_head.rs`): raw request and answer vectors — request smuggling's classics
//! (CL.TE, TE.CL, transfer-coding obfuscations, duplicate and malformed lengths), pipelining,
//! identity fields in every spelling, answers framed two ways, stray bytes, early answers —
//! sent byte for byte to a gateway with the fast path on and to one with it off, and what a
//! recording upstream received checked: 400 and close, or one request no upstream could read
//! differently; no client identity of any spelling; no answer crossing to another request.
use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use weapp_tests::{
    ClientSession, Stack,
    scripted::{self, Scripted},
};

/// One upstream behind two gateways: the fast path on (the default) and off.
pub(crate) struct Edge {
    pub upstream: Scripted,
    pub gateways: Vec<(&'static str, Stack, ClientSession)>,
}

impl Edge {
    pub async fn start() -> Self {
        let upstream = Scripted::start(answers).await;
        let addr = upstream.addr;
        let routes = format!(
            "[[route]]\nprefix = \"/api/\"\nupstream = \"http://{addr}\"\nsession = \"required\"\n\n\
             [[route]]\nprefix = \"/pub/\"\nupstream = \"http://{addr}\"\nsession = \"optional\"\n\n\
             [[route]]\nprefix = \"/cr/\"\nupstream = \"http://{addr}\"\nsession = \"required\"\n\
             identity_headers = \"cloudrun\"\n"
        );
        let mut gateways = Vec::new();
        for (name, fast) in [("fast path", "true"), ("hyper", "false")] {
            let stack = Stack::builder()
                .routes(routes.clone())
                .gateway_args(["--http-fast-path", fast])
                .start()
                .await;
            let (_, session) = stack.new_session().await;
            gateways.push((name, stack, session));
        }
        Self { upstream, gateways }
    }
}

fn answers(line: &str, body: usize) -> (Vec<u8>, bool) {
    let path = line.split(' ').nth(1).unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let answer: &str = match path.rsplit('/').next().unwrap_or_default() {
        "stray" => {
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
             HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen"
        }
        "cl-te" => {
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        }
        "te-cl" => {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
        }
        "two-lengths" => "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        "upgrade" => {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        }
        "http10-te" => {
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        }
        "undated" => "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nundated",
        "answers-early" => {
            "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!"
        }
        _ => return scripted::ok(&format!("seen={body}")),
    };
    (answer.as_bytes().to_vec(), false)
}

/// Sends `bytes` on a new connection and reads until the gateway closes it (within 5 s).
/// The client sends nothing more after it (its side is shut): a body shorter than its length
/// says ends there.
pub(crate) async fn exchange(stack: &Stack, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(stack.gateway_addr()).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let _ = tcp.shutdown().await;
    read_until_closed(&mut tcp).await
}

async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Err(_) => panic!(
                "the gateway did not close the connection: {}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The statuses of the answers in `text`, in order.
pub(crate) fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.")
        .filter_map(|(at, _)| text[at + 9..].get(..3)?.parse().ok())
        .collect()
}

pub(crate) fn credentials(session: &ClientSession) -> String {
    format!("X-WX-Id: {}\r\nX-WX-Skey: {}\r\n", session.id, session.skey)
}

#[tokio::test]
async fn what_could_be_read_two_ways_is_refused_with_400_and_close_and_reaches_no_upstream() {
    let edge = Edge::start().await;
    let smuggled = "GET /api/admin HTTP/1.1\r\nHost: x\r\n\r\n";
    let vectors: Vec<(&str, String)> =
        vec![
        (
            "CL.TE",
            format!(
                "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 4\r\n\r\n26\r\n{smuggled}\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE obfuscated by a space before the colon",
            format!(
                "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
                 Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE obfuscated by a folded line",
            format!(
                "POST /pub/a HTTP/1.1\r\nHost: x\r\nX: y\r\n Transfer-Encoding: chunked\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE obfuscated by a vertical tab",
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"
                .into(),
        ),
        (
            "TE xchunked",
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
                .into(),
        ),
        (
            "TE chunked twice",
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .into(),
        ),
        (
            "TE gzip, chunked",
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                .into(),
        ),
        (
            "TE identity",
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n".into(),
        ),
        (
            "TE in HTTP/1.0",
            "POST /pub/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "TE in an HTTP/1.0 WebSocket upgrade",
            "GET /ws HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .into(),
        ),
        (
            "two different lengths",
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
                .into(),
        ),
        (
            "a length list",
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc".into(),
        ),
        (
            "a signed length",
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc".into(),
        ),
        ("no Host", "GET /pub/a HTTP/1.1\r\n\r\n".into()),
        (
            "two Hosts",
            "GET /pub/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".into(),
        ),
        (
            "a fragment in the target",
            "GET /pub/a#/../../api/admin HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        ),
        ("bare LF line ends", "GET /pub/a HTTP/1.1\nHost: x\n\n".into()),
        (
            "a NUL in a value",
            "GET /pub/a HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n".into(),
        ),
        (
            "a CR in a value",
            "GET /pub/a HTTP/1.1\r\nHost: x\r\nX: a\rTransfer-Encoding: chunked\r\n\r\n".into(),
        ),
    ];
    for (gateway, stack, _) in &edge.gateways {
        for (name, bytes) in &vectors {
            let text = exchange(stack, bytes.as_bytes()).await;
            assert_eq!(statuses(&text), [400], "{gateway}, {name}: {text}");
            assert!(
                text.to_ascii_lowercase()
                    .contains("\r\nconnection: close\r\n"),
                "{gateway}, {name}: {text}"
            );
            assert!(
                text.to_ascii_lowercase().contains("\r\ndate: "),
                "{gateway}, {name}: {text}"
            );
        }
    }
    assert!(
        edge.upstream.requests().is_empty(),
        "{:?}",
        edge.upstream.seen()
    );
}

#[tokio::test]
async fn a_bare_lf_is_answered_at_once_not_at_the_head_deadline() {
    let edge = Edge::start().await;
    for (gateway, stack, _) in &edge.gateways {
        let mut tcp = TcpStream::connect(stack.gateway_addr()).await.unwrap();
        // The head is not finished: only the bare LF can be answered.
        tcp.write_all(b"GET /pub/a HTTP/1.1\n").await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), tcp.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{gateway}: no answer within 1 s"))
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400 "), "{gateway}: {text}");
    }
}

#[tokio::test]
async fn pipelined_requests_are_each_read_once_before_and_after_a_hand_over_to_hyper() {
    let edge = Edge::start().await;
    for (gateway, stack, _) in &edge.gateways {
        let before = edge.upstream.requests().len();
        // A request, a chunked one (hyper's on the fast path), a good one, then one that
        // could be read two ways: three answers, then 400 and close.
        let pipelined = "GET /pub/one HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /pub/two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             3;ext=1\r\nabc\r\n0\r\n\r\n\
             GET /pub/three HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /pub/four#frag HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /pub/five HTTP/1.1\r\nHost: x\r\n\r\n";
        let text = exchange(stack, pipelined.as_bytes()).await;
        assert_eq!(statuses(&text), [200, 200, 200, 400], "{gateway}: {text}");
        let seen = &edge.upstream.requests()[before..];
        let lines: Vec<&str> = seen
            .iter()
            .map(|r| r.head.lines().next().unwrap_or_default())
            .collect();
        assert_eq!(
            lines,
            [
                "GET /pub/one HTTP/1.1",
                "POST /pub/two HTTP/1.1",
                "GET /pub/three HTTP/1.1"
            ],
            "{gateway}"
        );
        assert_eq!(seen[1].body, b"abc", "{gateway}");
    }
}

#[tokio::test]
async fn two_equal_lengths_reach_the_upstream_as_one() {
    let edge = Edge::start().await;
    for (gateway, stack, _) in &edge.gateways {
        let before = edge.upstream.requests().len();
        let request = "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
                       content-length: 3\r\nConnection: close\r\n\r\nabc";
        let text = exchange(stack, request.as_bytes()).await;
        assert_eq!(statuses(&text), [200], "{gateway}: {text}");
        let seen = &edge.upstream.requests()[before];
        let lengths = seen
            .head
            .to_ascii_lowercase()
            .matches("\r\ncontent-length:")
            .count();
        assert_eq!(lengths, 1, "{gateway}: {}", seen.head);
        assert_eq!(seen.body, b"abc");
    }
}

#[tokio::test]
async fn no_client_identity_of_any_spelling_reaches_an_upstream() {
    let edge = Edge::start().await;
    let spoofed = "X_WX_OPENID: victim\r\nx_wx_unionid: victim\r\nX_Weapp_Open_Id: victim\r\n\
                   X-WX-OPENID: victim\r\nx-wx-appid: victim\r\nX_Weapp_User: victim\r\n\
                   X-Weapp-Assertion: victim\r\nx_real_ip: victim\r\nX-Real-IP: victim\r\n\
                   X_Original_Forwarded_For: victim\r\nX-Original-URL: /api/victim\r\n\
                   X_Rewrite_URL: /api/victim\r\nForwarded: for=victim\r\n\
                   X-Forwarded-Host: victim\r\nX_Forwarded_For: victim\r\nX-Forwarded-Port: 1\r\n";
    for (gateway, stack, session) in &edge.gateways {
        let before = edge.upstream.requests().len();
        let auth = credentials(session);
        let close = "Connection: close\r\n";
        let requests = [
            format!("GET /api/a HTTP/1.1\r\nHost: x\r\n{auth}{spoofed}{close}\r\n"),
            format!("GET /cr/a HTTP/1.1\r\nHost: x\r\n{auth}{spoofed}{close}\r\n"),
            // Without a session, on an optional route.
            format!("GET /pub/a HTTP/1.1\r\nHost: x\r\n{spoofed}{close}\r\n"),
            // HTTP/1.0 without a Host: the client's X-Forwarded-Host still goes.
            format!("GET /pub/a HTTP/1.0\r\n{spoofed}\r\n"),
            // In the trailers of a chunked body (hyper's, on the fast path too).
            format!(
                "POST /cr/a HTTP/1.1\r\nHost: x\r\n{auth}{close}Transfer-Encoding: chunked\r\n\r\n\
                 3\r\nabc\r\n0\r\n{spoofed}\r\n"
            ),
        ];
        for request in &requests {
            let text = exchange(stack, request.as_bytes()).await;
            assert_eq!(statuses(&text), [200], "{gateway}: {request}\n{text}");
        }
        let seen = &edge.upstream.requests()[before..];
        assert_eq!(seen.len(), requests.len(), "{gateway}");
        for request in seen {
            let all = format!("{}{}", request.head, request.trailers).to_ascii_lowercase();
            assert!(!all.contains("victim"), "{gateway}: {all}");
            assert!(!all.contains("forwarded:"), "{gateway}: {all}");
            assert!(!all.contains("x-forwarded-port"), "{gateway}: {all}");
        }
        // The Cloud Run route's identity is the session's, under Cloud Run's name.
        for cloudrun in [&seen[1], &seen[4]] {
            let lower = cloudrun.head.to_ascii_lowercase();
            assert_eq!(lower.matches("\r\nx-wx-openid: ").count(), 1, "{lower}");
        }
        assert_eq!(seen[4].body, b"abc");
    }
}

#[tokio::test]
async fn every_answer_carries_a_date() {
    let edge = Edge::start().await;
    for (gateway, stack, session) in &edge.gateways {
        let auth = credentials(session);
        for request in [
            format!("GET /me HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            "GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            "GET /pub/undated HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            "GET /api/undated HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            "GET /pub/a%2fb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
        ] {
            let text = exchange(stack, request.as_bytes()).await;
            let dates = text.to_ascii_lowercase().matches("\r\ndate: ").count();
            assert_eq!(dates, 1, "{gateway}: {request}\n{text}");
        }
    }
}

#[tokio::test]
async fn an_upstreams_early_answer_reaches_the_client() {
    let edge = Edge::start().await;
    for (gateway, stack, _) in &edge.gateways {
        // A body with its length (the fast path's), and a chunked one (hyper's client).
        for chunked in [false, true] {
            let text = upload_to_an_early_answer(stack, chunked).await;
            assert!(
                text.starts_with("HTTP/1.1 413 "),
                "{gateway}, chunked {chunked}: {text}"
            );
            assert!(
                text.ends_with("too big!"),
                "{gateway}, chunked {chunked}: {text}"
            );
        }
    }
}

/// Uploads 8 MiB to a path the upstream answers before reading the body (and closes), and
/// reads what the client gets while the body is still being sent.
async fn upload_to_an_early_answer(stack: &Stack, chunked: bool) -> String {
    let size = 8 << 20;
    let chunk = 64 * 1024;
    let framing = match chunked {
        true => "Transfer-Encoding: chunked".to_owned(),
        false => format!("Content-Length: {size}"),
    };
    let mut tcp = TcpStream::connect(stack.gateway_addr()).await.unwrap();
    let head = format!("POST /pub/answers-early HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = tcp.into_split();
    // The body goes on as the client sends it, whatever happens to it.
    let sending = tokio::spawn(async move {
        let mut part = match chunked {
            true => format!("{chunk:x}\r\n").into_bytes(),
            false => Vec::new(),
        };
        part.extend(std::iter::repeat_n(b'x', chunk));
        if chunked {
            part.extend_from_slice(b"\r\n");
        }
        for _ in 0..size / chunk {
            if writer.write_all(&part).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no end within 10 s: {}", String::from_utf8_lossy(&got)),
        }
        if got.ends_with(b"too big!") {
            break;
        }
    }
    sending.abort();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn bytes_after_an_upstreams_answer_never_answer_another_request() {
    let edge = Edge::start().await;
    for (gateway, stack, _) in &edge.gateways {
        // On one connection, then on others: the stray answer is nobody's.
        let pipelined = "GET /pub/stray HTTP/1.1\r\nHost: x\r\n\r\n\
                         GET /pub/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let text = exchange(stack, pipelined.as_bytes()).await;
        assert!(!text.contains("stolen"), "{gateway}: {text}");
        assert_eq!(statuses(&text), [200, 200], "{gateway}: {text}");
        assert!(text.ends_with("seen=0"), "{gateway}: {text}");
        for _ in 0..5 {
            let text = exchange(
                stack,
                b"GET /pub/other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(!text.contains("stolen"), "{gateway}: {text}");
            assert!(text.ends_with("seen=0"), "{gateway}: {text}");
        }
    }
}

#[tokio::test]
async fn answers_framed_two_ways_are_502_and_the_connection_serves_on() {
    let edge = Edge::start().await;
    for (gateway, stack, _) in &edge.gateways {
        for path in ["cl-te", "te-cl", "two-lengths", "upgrade", "http10-te"] {
            let request = format!(
                "GET /pub/{path} HTTP/1.1\r\nHost: x\r\n\r\n\
                 GET /pub/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let text = exchange(stack, request.as_bytes()).await;
            assert_eq!(statuses(&text), [502, 200], "{gateway}, {path}: {text}");
            assert!(text.ends_with("seen=0"), "{gateway}, {path}: {text}");
        }
    }
}

#[tokio::test]
async fn a_malformed_chunk_is_the_clients_error() {
    let edge = Edge::start().await;
    for (gateway, stack, _) in &edge.gateways {
        for body in [
            "zz\r\nabc\r\n0\r\n\r\n",
            "3\nabc\r\n0\r\n\r\n",
            "3\r\nabcd\r\n0\r\n\r\n",
        ] {
            let request = format!(
                "POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            );
            let text = exchange(stack, request.as_bytes()).await;
            assert_eq!(statuses(&text), [400], "{gateway}, {body:?}: {text}");
        }
    }
}

#[tokio::test]
async fn a_refused_requests_body_is_never_read_as_a_request() {
    let edge = Edge::start().await;
    let smuggled = "GET /pub/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    for (gateway, stack, _) in &edge.gateways {
        let before = edge.upstream.requests().len();
        // Refused for its session (401), on a route that needs one and on one that does not,
        // each with a body that reads as a request; then a request of its own.
        for refused in [
            format!(
                "POST /api/a HTTP/1.1\r\nHost: x\r\nX-WX-Id: nobody\r\nX-WX-Skey: nothing\r\n\
                 Content-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            format!(
                "POST /pub/a HTTP/1.1\r\nHost: x\r\nX-WX-Id: nobody\r\nX-WX-Skey: nothing\r\n\
                 Content-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ] {
            let pipelined =
                format!("{refused}GET /pub/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let text = exchange(stack, pipelined.as_bytes()).await;
            assert!(!text.contains("smuggled"), "{gateway}: {text}");
            let seen = &edge.upstream.requests()[before..];
            assert!(
                seen.iter().all(|r| !r.head.contains("/pub/smuggled")),
                "{gateway}: {seen:?}"
            );
            // Either the connection ended with the refusal, or the next request was read
            // where it starts: never the body.
            let statuses = statuses(&text);
            assert!(
                statuses == [401] || statuses == [401, 200],
                "{gateway}: {text}"
            );
        }
    }
}
