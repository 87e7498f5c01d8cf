//! What a client may send before its request is routed: header deadline (slow-loris), idle
//! keep-alive connections, number and size of headers, body size, connections per gateway.
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weapp_tests::{Stack, wechat_sandbox::MintRequest};

/// Sends `raw` and returns what the gateway answers before closing, and how long that took.
async fn exchange(stack: &Stack, raw: &[u8]) -> (String, Duration) {
    let mut tcp = tokio::net::TcpStream::connect(stack.gateway_addr())
        .await
        .unwrap();
    tcp.write_all(raw).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gateway kept the connection open");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// A connection that has had one request answered and is kept alive.
async fn kept_alive(stack: &Stack) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(stack.gateway_addr())
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tcp
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_dropped_at_the_deadline() {
    let stack = Stack::builder()
        .gateway_args(["--http-header-timeout", "500ms"])
        .start()
        .await;
    let (answer, took) = exchange(&stack, b"GET /me HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    assert!(took < Duration::from_secs(3), "dropped after {took:?}");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    // Others are served meanwhile and after.
    assert_eq!(stack.get("/healthz", None).await.status(), 200);
}

#[tokio::test]
async fn the_header_deadline_counts_from_accept_whatever_is_trickled() {
    // A request line held back to its last byte, then a byte of header at a time: one
    // deadline from accept, on the fast path and off it (hyper reads no head of its own).
    for fast in ["true", "false"] {
        let stack = Stack::builder()
            .gateway_args(["--http-header-timeout", "1s", "--http-fast-path", fast])
            .start()
            .await;
        let tcp = tokio::net::TcpStream::connect(stack.gateway_addr())
            .await
            .unwrap();
        let accepted = Instant::now();
        let (mut reader, mut writer) = tcp.into_split();
        let trickle = async {
            writer.write_all(b"GET /me HTTP/1.1\r").await?;
            tokio::time::sleep(Duration::from_millis(900)).await;
            writer.write_all(b"\n").await?;
            for byte in b"Host: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
                tokio::time::sleep(Duration::from_millis(200)).await;
                writer.write_all(&[*byte]).await?;
            }
            std::future::pending::<std::io::Result<()>>().await
        };
        // The gateway closing the connection ends the read.
        let mut rest = Vec::new();
        tokio::select! {
            _ = reader.read_to_end(&mut rest) => {}
            _ = trickle => {}
            () = tokio::time::sleep(Duration::from_secs(8)) => {}
        }
        let took = accepted.elapsed();
        // Restarted when the request line ended, the deadline would be at 1.9 s.
        assert!(
            took < Duration::from_millis(1600),
            "fast path {fast}: held {took:?} with the deadline at 1 s from accept"
        );
    }
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let stack = Stack::builder()
        .gateway_args([
            "--http-max-headers",
            "16",
            "--http-max-header-bytes",
            "8192",
        ])
        .start()
        .await;
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (answer, _) = exchange(
        &stack,
        format!("GET /me HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let big = "a".repeat(20_000);
    let (answer, _) = exchange(
        &stack,
        format!("GET /me HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let long_url = format!("GET /me?{big} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (answer, _) = exchange(&stack, long_url.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 414"),
        "{answer:?}"
    );
    // A normal request still works.
    assert_eq!(stack.get("/healthz", None).await.status(), 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let stack = Stack::builder()
        .gateway_args(["--http-header-timeout", "500ms"])
        .start()
        .await;
    let mut tcp = kept_alive(&stack).await;
    // Then nothing: the connection is let go once it has idled for the timeout.
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle connection was kept open");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_before_anything_is_spent() {
    let stack = Stack::builder()
        .gateway_args(["--http-max-body-bytes", "1024"])
        .start()
        .await;
    let minted = stack.mint(MintRequest::default());
    let response = stack
        .http
        .post(stack.url("/login"))
        .header("X-WX-Code", &minted.code)
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "ERR_REQUEST_TOO_LARGE", "{body}");
    assert_eq!(
        stack.sandbox.code_stats(&minted.code).unwrap().exchanges,
        0,
        "the code was spent on a refused request"
    );
    // Announced by length or streamed in chunks, on any path: refused before it is read.
    let (answer, took) = exchange(
        &stack,
        b"POST /anything HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let chunk = format!("800\r\n{}\r\n", "y".repeat(0x800));
    let mut tcp = tokio::net::TcpStream::connect(stack.gateway_addr())
        .await
        .unwrap();
    tcp.write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let _ = tcp.write_all(chunk.as_bytes()).await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    // Small bodies are fine.
    let minted = stack.mint(MintRequest::default());
    let response = stack
        .http
        .post(stack.url("/login"))
        .header("X-WX-Code", &minted.code)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503_and_room_is_made_when_one_closes() {
    let stack = Stack::builder()
        .gateway_args(["--http-max-connections", "3"])
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(kept_alive(&stack).await);
    }
    let (answer, took) = exchange(&stack, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.contains("Retry-After: 1") || answer.contains("retry-after: 1"),
        "{answer:?}"
    );
    assert!(answer.contains("too many connections"), "{answer:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        let (answer, _) = exchange(
            &stack,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a closed connection did not free its place");
}

#[tokio::test]
async fn a_chunked_body_that_never_ends_gets_408_at_the_deadline() {
    let stack = Stack::builder()
        .gateway_args(["--http-header-timeout", "500ms"])
        .start()
        .await;
    let (answer, took) = exchange(
        &stack,
        b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("ERR_BAD_REQUEST"), "{answer:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// HTTP/2 with prior knowledge (h2c: a proxy or a client set up for it) is told from HTTP/1 by
/// its preface and served like any request.
#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    let stack = Stack::builder().start().await;
    let tcp = tokio::net::TcpStream::connect(stack.gateway_addr())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = axum::http::Request::get(format!("http://{}/healthz", stack.gateway_addr()))
        .body(axum::body::Body::empty())
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), axum::http::Version::HTTP_2);
}
