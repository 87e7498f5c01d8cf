//! What a client may send before its request is routed: header deadline (slow-loris), number
//! and size of headers.
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weapp_tests::Stack;

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

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_dropped_at_the_deadline() {
    let stack = Stack::builder()
        .gateway(|g| g.http.header_timeout = Duration::from_millis(500))
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
async fn too_many_or_too_large_headers_get_431() {
    let stack = Stack::builder()
        .gateway(|g| {
            g.http.max_headers = 16;
            g.http.max_header_bytes = 8192;
        })
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
