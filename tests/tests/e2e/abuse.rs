//! What an abusive client cannot take: more than its share of a team's service (slow bodies
//! against a route's `max_connections`, `queue_timeout`, `body_timeout` and body buffering), or
//! more than its share of the gateway's connections (`WEAPP_HTTP_MAX_CONNECTIONS_PER_ADDRESS`).
use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use weapp_tests::{
    Service, Stack,
    scripted::{self, Scripted},
};

fn answers(_line: &str, body: usize) -> (Vec<u8>, bool) {
    scripted::ok(&format!("seen={body}"))
}

async fn stack_with(upstream: &Scripted, settings: &str, fast: &str) -> Stack {
    let routes = format!(
        "[[route]]\nprefix = \"/pub/\"\nupstream = \"http://{}\"\nsession = \"optional\"\n{settings}\n",
        upstream.addr
    );
    Stack::builder()
        .routes(routes)
        .gateway_args(["--http-fast-path", fast])
        .start()
        .await
}

/// A connection that sent the head of a `length`-byte upload and the first bytes of it.
async fn slow_upload(stack: &Stack, length: usize, chunked: bool) -> TcpStream {
    let mut tcp = TcpStream::connect(stack.gateway_addr()).await.unwrap();
    let framing = match chunked {
        true => "Transfer-Encoding: chunked".to_owned(),
        false => format!("Content-Length: {length}"),
    };
    let head = format!("POST /pub/upload HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let start: &[u8] = match chunked {
        true => b"4\r\nabcd\r\n",
        false => b"abcd",
    };
    tcp.write_all(start).await.unwrap();
    tcp
}

async fn status_of(tcp: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut got = [0u8; 1024];
    let n = tokio::time::timeout(within, tcp.read(&mut got))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(&got[..n])
        .ok()?
        .get(9..12)?
        .parse()
        .ok()
}

async fn metrics(stack: &Stack) -> String {
    let addr = stack.metrics_addr(Service::Gateway);
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn slow_bodies_hold_at_most_a_routes_share_of_its_upstream_then_get_408() {
    for (fast, chunked) in [("true", false), ("true", true), ("false", false)] {
        let upstream = Scripted::start(answers).await;
        let settings = "max_connections = 2\nqueue_timeout = \"300ms\"\nbody_timeout = \"1500ms\"";
        let stack = stack_with(&upstream, settings, fast).await;
        // Four uploads larger than what is buffered, each stalled after its first bytes.
        let mut slow = Vec::new();
        for _ in 0..4 {
            slow.push(slow_upload(&stack, 100_000, chunked).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let case = format!("fast path {fast}, chunked {chunked}");
        assert!(
            upstream.connections() <= 2,
            "{case}: {} upstream connections",
            upstream.connections()
        );
        // Two wait for a place, in vain: 503 after the queue timeout.
        let mut refused = 0;
        for tcp in &mut slow {
            if status_of(tcp, Duration::from_millis(50)).await == Some(503) {
                refused += 1;
            }
        }
        assert_eq!(refused, 2, "{case}");
        // The two in flight stall: 408 once the body timeout has passed, and their places
        // are free again.
        let started = Instant::now();
        let mut timed_out = 0;
        for tcp in &mut slow {
            if status_of(tcp, Duration::from_secs(3)).await == Some(408) {
                timed_out += 1;
            }
        }
        assert_eq!(timed_out, 2, "{case}");
        assert!(started.elapsed() < Duration::from_secs(3), "{case}");
        let text = upload(&stack, b"done").await;
        assert!(text.ends_with("seen=4"), "{case}: {text}");
        let exposition = metrics(&stack).await;
        assert!(
            exposition.contains("weapp_upstream_refused_total{route=\"/pub/\"} 2"),
            "{case}: {exposition}"
        );
        assert!(
            exposition.contains("weapp_upstream_queued_total{route=\"/pub/\"}"),
            "{case}"
        );
    }
}

/// An upload of `body`, its answer.
async fn upload(stack: &Stack, body: &[u8]) -> String {
    let mut tcp = TcpStream::connect(stack.gateway_addr()).await.unwrap();
    let head = format!(
        "POST /pub/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_small_body_that_trickles_in_holds_no_upstream_connection_meanwhile() {
    let upstream = Scripted::start(answers).await;
    let stack = stack_with(&upstream, "", "true").await;
    let mut tcp = TcpStream::connect(stack.gateway_addr()).await.unwrap();
    tcp.write_all(
        b"POST /pub/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for byte in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(upstream.connections(), 0, "the upstream was asked early");
        tcp.write_all(&[*byte]).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).ends_with("seen=10"));
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_the_gateways_connections() {
    let stack = Stack::builder()
        .gateway_args([
            "--http-max-connections-per-address",
            "3",
            // Loopback is this test's client, not a proxy.
            "--trusted-proxies",
            "192.0.2.1",
        ])
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(stack.gateway_addr()).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = TcpStream::connect(stack.gateway_addr()).await.unwrap();
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        status_of(&mut fourth, Duration::from_secs(2)).await,
        Some(503)
    );
    // One of them finishes and leaves: its place is free again.
    let mut first = held.remove(0);
    first.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    first.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(stack.gateway_addr()).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        status_of(&mut again, Duration::from_secs(2)).await,
        Some(200)
    );
    let exposition = metrics(&stack).await;
    assert!(
        exposition.contains("cap=\"http_connections_per_address\"} 1"),
        "{exposition}"
    );
}
