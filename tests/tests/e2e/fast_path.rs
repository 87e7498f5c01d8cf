//! The gateway's fast path (`gateway-svc/src/edge/fast_path.rs`, `fast_forward.rs`): HTTP/1.1
//! requests read once, business requests forwarded as bytes with their answers in the
//! upstream's own framing, own paths answered on the same connection. Against an upstream
//! that answers byte for byte what each test scripts, and clients that keep one connection:
//! the answers' framings, pipelining, bodies, own paths and the hand-over to hyper
//! mid-connection, answers that end badly, upstream connections closed while idle, and the
//! same request on the upstream's side whichever path forwarded it. (Every other e2e test
//! over HTTP/1.1 runs through the fast path too.)
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use axum::{body::Body, http::Request};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use weapp_tests::{
    ClientSession, Service, Stack,
    scripted::{self, Scripted},
};

/// A stack routing `/api/` to an upstream scripted by `framings`, and a session on it.
async fn scripted_stack() -> (Scripted, Stack, ClientSession) {
    let upstream = Scripted::start(framings).await;
    let stack = Stack::builder().routes(upstream.routes()).start().await;
    let (_, session) = stack.new_session().await;
    (upstream, stack, session)
}

pub(crate) fn framings(line: &str, body: usize) -> (Vec<u8>, bool) {
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default();
    let path = parts
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    let answer: &str = match [method, path] {
        ["HEAD", "/api/length"] => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        ["GET", "/api/length"] => {
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-From: up\r\nKeep-Alive: timeout=5\r\n\
             Connection: keep-alive, x-hop\r\nX-Hop: secret\r\n\r\nhello"
        }
        [_, "/api/chunked"] => {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n\
             5\r\nhello\r\n6;e=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
        }
        [_, "/api/empty"] => "HTTP/1.1 204 No Content\r\nX-From: up\r\n\r\n",
        [_, "/api/early"] => {
            "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        }
        [_, "/api/slow"] => "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow",
        [_, "/api/posted"] => "HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\nposted",
        [_, "/api/count"] => return scripted::ok(&body.to_string()),
        [_, target] if target.starts_with("/api/n/") => {
            return scripted::ok(&format!("n={}", &target["/api/n/".len()..]));
        }
        [_, "/api/until-close"] => return (b"HTTP/1.1 200 OK\r\n\r\nall of it".to_vec(), true),
        [_, "/api/cut"] => {
            return (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf".to_vec(),
                true,
            );
        }
        [_, "/api/two-lengths"] => {
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"
        }
        // Closes after answering, without saying so: the gateway's idle connection is dead.
        [_, "/api/once"] => {
            return (
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce".to_vec(),
                true,
            );
        }
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    };
    (answer.as_bytes().to_vec(), false)
}

/// One client connection, with hyper's HTTP/1.1 client (its own framing rules: an answer
/// the gateway framed wrongly fails it).
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    addr: SocketAddr,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        Self { sender, addr }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        session: &ClientSession,
        body: &'static str,
    ) -> (u16, BTreeMap<String, String>, String) {
        self.send_body(method, path, session, Body::from(body))
            .await
    }

    async fn send_body(
        &mut self,
        method: &str,
        path: &str,
        session: &ClientSession,
        body: Body,
    ) -> (u16, BTreeMap<String, String>, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (name, value) in &session.headers() {
            request = request.header(name, value);
        }
        let request = request.body(body).unwrap();
        self.sender
            .ready()
            .await
            .expect("the connection is still open");
        let answer =
            tokio::time::timeout(Duration::from_secs(5), self.sender.send_request(request))
                .await
                .expect("an answer within 5 s")
                .expect("an answer");
        let status = answer.status().as_u16();
        let headers = answer
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let body = axum::body::to_bytes(Body::new(answer.into_body()), 1 << 20)
            .await
            .expect("the whole body");
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}

#[tokio::test]
async fn answers_come_back_in_the_upstreams_framing_on_one_kept_connection() {
    let (upstream, stack, session) = scripted_stack().await;
    let mut client = Connection::open(stack.gateway_addr()).await;

    let (status, headers, body) = client.send("GET", "/api/length", &session, "").await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert_eq!(headers.get("x-from").map(String::as_str), Some("up"));
    for hop in ["keep-alive", "x-hop", "connection"] {
        assert!(
            !headers.contains_key(hop),
            "{hop} ends at the gateway: {headers:?}"
        );
    }
    let (status, headers, body) = client.send("GET", "/api/chunked", &session, "").await;
    assert_eq!((status, body.as_str()), (200, "hello world"));
    assert_eq!(
        headers.get("transfer-encoding").map(String::as_str),
        Some("chunked")
    );
    let (status, headers, body) = client.send("HEAD", "/api/length", &session, "").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(headers.get("content-length").map(String::as_str), Some("5"));
    let (status, headers, body) = client.send("GET", "/api/empty", &session, "").await;
    assert_eq!((status, body.as_str()), (204, ""));
    assert_eq!(headers.get("x-from").map(String::as_str), Some("up"));
    let (status, _, body) = client.send("GET", "/api/early", &session, "").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok"),
        "the 103 is not the answer"
    );

    // One client connection and one upstream connection carried all of it, each request
    // with the session's identity and without its credentials.
    assert_eq!(upstream.connections(), 1);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 5);
    for head in &seen {
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("\r\nx-weapp-open-id: "), "{head}");
        assert!(lower.contains("\r\nx-weapp-assertion: "), "{head}");
        assert!(!head.contains(&session.skey), "{head}");
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (_upstream, stack, session) = scripted_stack().await;
    let mut tcp = TcpStream::connect(stack.gateway_addr()).await.unwrap();
    let requests: String = ["1", "22", "333"]
        .iter()
        .map(|n| {
            format!(
                "GET /api/n/{n} HTTP/1.1\r\nHost: x\r\nX-WX-Id: {}\r\nX-WX-Skey: {}\r\n\r\n",
                session.id, session.skey
            )
        })
        .collect();
    // All three in one write: the gateway reads them together.
    tcp.write_all(requests.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).ends_with("n=333") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .expect("three answers within 5 s")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let bodies: Vec<&str> = text
        .split("\r\n\r\n")
        .skip(1)
        .map(|b| &b[..b.find("HTTP/").unwrap_or(b.len())])
        .collect();
    assert_eq!(bodies, ["n=1", "n=22", "n=333"], "{text}");
}

#[tokio::test]
async fn bodies_own_paths_and_the_hand_over_to_hyper_share_one_connection() {
    let (upstream, stack, session) = scripted_stack().await;
    let mut client = Connection::open(stack.gateway_addr()).await;
    let (status, _, body) = client.send("GET", "/api/length", &session, "").await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    // A body with its length, larger than any buffer: it streams on, and the next request
    // on the connection starts where it ends.
    let big: &'static str = "x".repeat(3 << 20).leak();
    let (status, _, body) = client.send("POST", "/api/count", &session, big).await;
    assert_eq!((status, body.as_str()), (200, "3145728"));
    let (status, _, body) = client
        .send("POST", "/api/posted", &session, "{\"a\":1}")
        .await;
    assert_eq!((status, body.as_str()), (201, "posted"));
    // The gateway's own paths, framed by the gateway.
    let (status, headers, body) = client.send("GET", "/me", &session, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers.get("content-length"), Some(&body.len().to_string()));
    let (status, _, body) = client.send("HEAD", "/me", &session, "").await;
    assert_eq!((status, body.as_str()), (200, ""));
    let (status, _, body) = client.send("GET", "/healthz", &session, "").await;
    assert_eq!(status, 200, "{body}");
    // A chunked body: hyper's, from here on, on the same connection.
    let chunks = futures::stream::iter([Ok::<_, std::io::Error>("ab"), Ok("cd")]);
    let (status, _, body) = client
        .send_body("POST", "/api/count", &session, Body::from_stream(chunks))
        .await;
    assert_eq!((status, body.as_str()), (200, "4"));
    let (status, _, body) = client.send("GET", "/me", &session, "").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = client.send("GET", "/api/chunked", &session, "").await;
    assert_eq!((status, body.as_str()), (200, "hello world"));
    let posted = upstream
        .seen()
        .into_iter()
        .find(|h| h.starts_with("POST /api/posted"))
        .unwrap();
    assert!(
        posted.to_ascii_lowercase().contains("content-length: 7"),
        "{posted}"
    );
}

#[tokio::test]
async fn a_body_over_the_routes_limit_is_413_and_ends_the_connection() {
    let upstream = Scripted::start(framings).await;
    let routes = format!("{}max_body_bytes = 10\n", upstream.routes());
    let stack = Stack::builder().routes(routes).start().await;
    let (_, session) = stack.new_session().await;
    let request = format!(
        "POST /api/count HTTP/1.1\r\nHost: x\r\nX-WX-Id: {}\r\nX-WX-Skey: {}\r\nContent-Length: 11\r\n\r\n",
        session.id, session.skey
    );
    let mut tcp = sent(&stack, &request).await;
    // The body is never sent: the answer does not wait for it, and the connection ends
    // (what follows would be read as the next request).
    let text = until_closed(&mut tcp).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert!(upstream.seen().is_empty(), "nothing reached the upstream");
}

/// Reads from `tcp` until it closes (within 3 s).
async fn until_closed(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut got))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// A connection to the gateway on which `request` was sent.
async fn sent(stack: &Stack, request: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(stack.gateway_addr()).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// `text` is an answer with `status` and `body` that says the connection ends.
fn closing_answer(text: &str, status: u16, body: &str) {
    assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text}");
}

fn raw_get(path: &str, session: &ClientSession) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nX-WX-Id: {}\r\nX-WX-Skey: {}\r\n\r\n",
        session.id, session.skey
    )
}

#[tokio::test]
async fn answers_that_end_badly_end_the_client_connection_or_are_502() {
    let (_upstream, stack, session) = scripted_stack().await;

    // Ended by the upstream closing: the client's connection ends too, the body whole.
    let mut tcp = sent(&stack, &raw_get("/api/until-close", &session)).await;
    let text = until_closed(&mut tcp).await;
    closing_answer(&text, 200, "all of it");

    // Cut short: the client's connection is closed, so the client knows (never kept alive
    // with a body it waits for).
    let mut tcp = sent(&stack, &raw_get("/api/cut", &session)).await;
    let text = until_closed(&mut tcp).await;
    assert!(text.ends_with("\r\n\r\nhalf"), "{text}");

    // Not a framing the gateway can pass on: 502, and the connection serves on.
    let mut client = Connection::open(stack.gateway_addr()).await;
    let (status, _, body) = client.send("GET", "/api/two-lengths", &session, "").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("ERR_UPSTREAM"), "{body}");
    let (status, _, body) = client.send("GET", "/api/length", &session, "").await;
    assert_eq!((status, body.as_str()), (200, "hello"));

    // The client says close: answered, then closed.
    let request =
        raw_get("/api/length", &session).replace("Host: x\r\n", "Host: x\r\nConnection: close\r\n");
    let mut tcp = sent(&stack, &request).await;
    let text = until_closed(&mut tcp).await;
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
}

#[tokio::test]
async fn an_upstream_connection_closed_while_idle_is_replaced() {
    let (upstream, stack, session) = scripted_stack().await;
    let mut client = Connection::open(stack.gateway_addr()).await;
    // Back to back: the close may or may not have been seen when the next request goes.
    for _ in 0..10 {
        let (status, _, body) = client.send("GET", "/api/once", &session, "").await;
        assert_eq!((status, body.as_str()), (200, "once"));
    }
    assert_eq!(upstream.connections(), 10);
}

/// What the upstream got, as `name: value` lines in a canonical order, with the values that
/// differ between two stacks (their sessions, their addresses) named only.
fn canonical(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| {
            let name = name.trim().to_ascii_lowercase();
            match name.starts_with("x-weapp-") || name == "x-forwarded-host" {
                true => name,
                false => format!("{name}: {}", value.trim()),
            }
        })
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn the_upstream_gets_the_same_request_from_either_path() {
    let upstream = Scripted::start(framings).await;
    let fast = Stack::builder().routes(upstream.routes()).start().await;
    let hyper_only = Stack::builder()
        .routes(upstream.routes())
        .gateway_args(["--http-fast-path", "false"])
        .start()
        .await;
    let mut heads = Vec::new();
    for stack in [&fast, &hyper_only] {
        let (_, session) = stack.new_session().await;
        let request = format!(
            "GET /api/length?a=1&X-WX-Skey={skey}&x-wx-id={id}&b=%20two HTTP/1.1\r\n\
             Host: gateway.example\r\nX-WX-Id: {id}\r\nX-WX-Skey: {skey}\r\n\
             X-WX-OPENID: spoofed\r\nX-Weapp-Open-Id: spoofed\r\nX-Weapp-User: spoofed\r\n\
             X-Original-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
             X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\
             Keep-Alive: timeout=1\r\nTE: trailers\r\nProxy-Authorization: Basic x\r\n\
             Proxy-Connection: keep-alive\r\nAccept: */*\r\nX-Custom: one\r\nX-Custom: two\r\n\
             Content-Length: 0\r\n\r\n",
            id = session.id,
            skey = session.skey
        );
        let before = upstream.seen().len();
        let mut tcp = sent(stack, &request).await;
        let mut got = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&got[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = upstream.seen();
        assert_eq!(seen.len(), before + 1);
        heads.push(seen[before].clone());
    }
    let (fast_head, hyper_head) = (&heads[0], &heads[1]);
    assert_eq!(
        fast_head.lines().next(),
        Some("GET /api/length?a=1&b=%20two HTTP/1.1"),
        "{fast_head}"
    );
    assert_eq!(fast_head.lines().next(), hyper_head.lines().next());
    assert_eq!(
        canonical(fast_head),
        canonical(hyper_head),
        "{fast_head}\n---\n{hyper_head}"
    );
    // (The test stack trusts 127.0.0.1 as a proxy: its X-Forwarded-For and -Proto are
    // believed, as behind nginx.)
    for spoofed in [
        "spoofed",
        "evil",
        "Basic x",
        "timeout=1",
        "x-real-ip",
        "x-original-forwarded-for",
        "proxy-connection",
        "\r\nte:",
    ] {
        assert!(
            !fast_head
                .to_ascii_lowercase()
                .contains(&spoofed.to_ascii_lowercase()),
            "{spoofed} reached the upstream: {fast_head}"
        );
    }
}

#[tokio::test]
async fn a_request_in_flight_when_the_gateway_stops_is_answered_and_told_the_connection_ends() {
    let (_upstream, stack, session) = scripted_stack().await;
    let mut tcp = sent(&stack, &raw_get("/api/slow", &session)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    stack.begin_shutdown(Service::Gateway);
    let text = until_closed(&mut tcp).await;
    closing_answer(&text, 200, "slow");
}
