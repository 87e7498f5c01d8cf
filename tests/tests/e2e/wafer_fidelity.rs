//! What wafer-node-session behind the tutorial's express app answered, answered the same:
//! `/me` is the decrypted user object whole (`watermark` included, and any field WeChat adds),
//! for any method and any path under `/me`, and a WebSocket upgrade that a proxy sends as
//! HTTP/1.0 (the tutorial's nginx config does) still becomes a WebSocket.
use futures::SinkExt as _;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role},
};
use weapp_tests::{
    ClientSession, Stack, json, session_from,
    wechat_sandbox::{MintRequest, MintedLogin},
    ws::next_text,
};

/// A small deterministic generator, so a failing case can be replayed from its seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn text(&mut self) -> String {
        const PIECES: [&str; 8] = ["a", "Z", "9", "小程序", "é", " ", "\"q\"", "\\"];
        (0..self.below(6) + 1)
            .map(|_| PIECES[self.below(8) as usize])
            .collect()
    }

    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth == 0 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => json!(self.below(2) == 1),
            2 => json!(self.below(1_000_000) as i64 - 500_000),
            3 => json!(self.below(1000) as f64 / 8.0),
            4 => json!(self.text()),
            5 => Value::Array((0..self.below(3)).map(|_| self.value(depth - 1)).collect()),
            _ => Value::Object(self.object(depth - 1)),
        }
    }

    fn object(&mut self, depth: u32) -> Map<String, Value> {
        (0..self.below(4) + 1)
            .map(|i| (format!("{}{i}", self.text()), self.value(depth)))
            .collect()
    }
}

async fn login(stack: &Stack, minted: &MintedLogin) -> ClientSession {
    session_from(stack.login_encrypted(minted).await).await
}

#[tokio::test]
async fn me_is_the_decrypted_user_object_whole_whatever_fields_it_has() {
    let stack = Stack::start().await;
    for seed in 1..=25u64 {
        let mut generator = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let extra = generator.object(2);
        let minted = stack.mint(MintRequest {
            extra: Some(extra),
            unionid: (seed % 2 == 0).then(|| format!("union-{seed}")),
            ..Default::default()
        });
        let session = login(&stack, &minted).await;
        let (status, me) = json(stack.get("/me", Some(&session)).await).await;
        assert_eq!(status, 200, "seed {seed}: {me}");
        assert!(minted.decrypted.get("watermark").is_some());
        assert_eq!(me, minted.decrypted, "seed {seed}");
    }
}

#[tokio::test]
async fn me_answers_any_method_and_any_path_under_it_as_express_mounts_it() {
    let stack = Stack::start().await;
    let minted = stack.mint(MintRequest::default());
    let session = login(&stack, &minted).await;
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for path in ["/me", "/me/", "/me/profile", "/ME", "/Me/x/y?z=1"] {
            let request = stack
                .http
                .request(method.parse().unwrap(), stack.url(path))
                .headers(session.headers());
            let (status, me) = json(request.send().await.unwrap()).await;
            assert_eq!((status, &me), (200, &minted.decrypted), "{method} {path}");
            let anonymous = stack.http.request(method.parse().unwrap(), stack.url(path));
            let (_, body) = json(anonymous.send().await.unwrap()).await;
            assert_eq!(body, json!({ "noBody": true }), "{method} {path}");
        }
    }
    // Only /me and what is under it: the rest is the tutorial's fallback.
    for path in ["/mex", "/me.json", "/api/me"] {
        let answer = stack.get(path, Some(&session)).await;
        assert_eq!(
            answer.text().await.unwrap(),
            "Response from express",
            "{path}"
        );
    }
    // HEAD: the headers of the same answer, no body.
    let head = stack
        .http
        .head(stack.url("/me/"))
        .headers(session.headers())
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "application/json");
}

/// A WebSocket handshake sent as HTTP/1.0, as nginx sends it without `proxy_http_version 1.1`.
async fn http10_upgrade(stack: &Stack, request_headers: &str) -> (String, tokio::net::TcpStream) {
    let mut tcp = tokio::net::TcpStream::connect(stack.gateway_addr())
        .await
        .unwrap();
    let request = format!(
        "GET /ws HTTP/1.0\r\nHost: localhost\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{request_headers}\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), tcp)
}

#[tokio::test]
async fn an_http10_websocket_upgrade_from_a_proxy_becomes_a_websocket() {
    let stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    let headers = format!(
        "Upgrade: websocket\r\nConnection: upgrade\r\nX-WX-Id: {}\r\nX-WX-Skey: {}\r\n",
        session.id, session.skey
    );
    let (head, tcp) = http10_upgrade(&stack, &headers).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    assert_eq!(next_text(&mut ws).await, "Server: 恭喜，Sandbox User");
    ws.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "Server: Received(hi)");

    // Only a WebSocket upgrade is upgraded: an HTTP/1.0 request that does not ask for one
    // gets an ordinary answer.
    let (head, _) = http10_upgrade(&stack, "Upgrade: websocket\r\nConnection: close\r\n").await;
    assert!(!head.contains(" 101 "), "{head}");
}
