//! WebSockets forwarded to a business upstream (`websocket = true` on a route): a real
//! WebSocket server behind the gateway (tokio-tungstenite, recording each handshake and the
//! close code it got), real clients in front, identity on the upgrade, frames and close codes
//! both ways, logout and RevokeUser closing the socket.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::{
    accept_hdr_async, connect_async,
    tungstenite::{
        Message,
        client::IntoClientRequest as _,
        handshake::server::{ErrorResponse, Request, Response},
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};
use weapp_proto::session::v1::{RevokeUserRequest, session_service_client::SessionServiceClient};
use weapp_tests::{
    ClientSession, Stack,
    ws::{close_code, next_frame, next_text},
};

/// What the upstream saw of one socket.
#[derive(Clone, Debug, Default)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    /// The close code the gateway sent it, when the socket ended.
    closed_with: Option<u16>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A team's WebSocket server: greets the user by the openId it was handed, echoes text and
/// binary frames, closes with 4001 "bye" when told `close`, refuses paths under `/missing`.
struct SocketServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SocketServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut index = None;
                    // tungstenite's callback type, not ours to shrink.
                    #[allow(clippy::result_large_err)]
                    let callback = |request: &Request, mut response: Response| {
                        if request.uri().path().ends_with("/missing") {
                            let mut refusal = ErrorResponse::new(Some("no such room".into()));
                            *refusal.status_mut() =
                                tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
                            return Err(refusal);
                        }
                        let headers = request
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
                            .collect();
                        let mut log = log.lock().unwrap();
                        log.push(Seen {
                            path: request.uri().to_string(),
                            headers,
                            closed_with: None,
                        });
                        index = Some(log.len() - 1);
                        let offered = request
                            .headers()
                            .get("sec-websocket-protocol")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        if offered.split(',').any(|p| p.trim() == "chat.v1") {
                            response
                                .headers_mut()
                                .insert("sec-websocket-protocol", "chat.v1".parse().unwrap());
                        }
                        Ok(response)
                    };
                    let Ok(mut ws) = accept_hdr_async(tcp, callback).await else {
                        return;
                    };
                    let index = index.unwrap();
                    let openid = {
                        let log = log.lock().unwrap();
                        let seen = &log[index];
                        seen.header("x-wx-openid")
                            .or(seen.header("x-weapp-open-id"))
                            .unwrap_or("nobody")
                            .to_owned()
                    };
                    let _ = ws.send(Message::text(format!("hello {openid}"))).await;
                    while let Some(Ok(message)) = ws.next().await {
                        match message {
                            Message::Text(t) if t.as_str() == "close" => {
                                let frame = CloseFrame {
                                    code: CloseCode::from(4001),
                                    reason: "bye".into(),
                                };
                                let _ = ws.close(Some(frame)).await;
                            }
                            Message::Text(t) => {
                                let _ = ws.send(Message::text(format!("echo {t}"))).await;
                            }
                            Message::Binary(b) => {
                                let _ = ws.send(Message::Binary(b)).await;
                            }
                            Message::Close(frame) => {
                                let code = frame.map_or(1005, |f| u16::from(f.code));
                                log.lock().unwrap()[index].closed_with = Some(code);
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the `index`th socket has been closed by the gateway; the code.
    async fn closed_with(&self, index: usize) -> u16 {
        for _ in 0..100 {
            if let Some(code) = self.seen().get(index).and_then(|s| s.closed_with) {
                return code;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "the upstream's socket {index} was not closed: {:?}",
            self.seen()
        );
    }
}

async fn stack_with(server: &SocketServer, names: &str, extra: &[&str]) -> Stack {
    Stack::builder()
        .routes(format!(
            r#"
            [[route]]
            prefix = "/live/"
            upstream = "http://{}"
            session = "required"
            identity_headers = "{names}"
            websocket = true
            "#,
            server.addr
        ))
        .gateway_args(extra.iter().copied())
        .start()
        .await
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(stack: &Stack, path: &str, session: Option<&ClientSession>) -> Client {
    let mut request = stack.ws_url(path).into_client_request().unwrap();
    if let Some(session) = session {
        request.headers_mut().extend(session.headers());
    }
    connect_async(request)
        .await
        .expect("the upgrade is accepted")
        .0
}

#[tokio::test]
async fn a_socket_reaches_the_business_with_the_identity_and_never_the_credentials() {
    let server = SocketServer::start().await;
    let stack = stack_with(&server, "both", &[]).await;
    let (minted, session) = stack.new_session().await;

    let mut request = stack
        .ws_url(&format!(
            "/live/room?x=1&X-WX-Skey={}&X-WX-Id={}",
            session.skey, session.id
        ))
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.extend(session.headers());
    headers.insert("x-wx-openid", "attacker".parse().unwrap());
    headers.insert("x-weapp-open-id", "attacker".parse().unwrap());
    headers.insert(
        "sec-websocket-protocol",
        "chat.v1, chat.v0".parse().unwrap(),
    );
    let (mut ws, answer) = connect_async(request).await.expect("upgrade accepted");
    assert_eq!(answer.headers()["sec-websocket-protocol"], "chat.v1");

    assert_eq!(next_text(&mut ws).await, format!("hello {}", minted.openid));
    ws.send(Message::text("ping?")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "echo ping?");
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut ws).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );

    let seen = server.seen().remove(0);
    assert_eq!(
        seen.path, "/live/room?x=1",
        "no session parameters: {seen:?}"
    );
    assert_eq!(seen.header("x-wx-openid"), Some(minted.openid.as_str()));
    assert_eq!(seen.header("x-weapp-open-id"), Some(minted.openid.as_str()));
    assert_eq!(seen.header("x-wx-appid"), Some(stack.app_id.as_str()));
    assert_eq!(seen.header("x-wx-source"), Some("weapp"));
    assert_eq!(seen.header("x-original-forwarded-for"), Some("127.0.0.1"));
    assert!(seen.header("x-weapp-assertion").is_some(), "{seen:?}");
    for credential in ["x-wx-skey", "x-wx-id"] {
        assert_eq!(seen.header(credential), None, "{seen:?}");
    }
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(n, _)| n == "x-wx-openid")
            .count(),
        1,
        "the client's is gone: {seen:?}"
    );

    // Close codes pass through: the upstream's to the client…
    ws.send(Message::text("close")).await.unwrap();
    match next_frame(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(
                (u16::from(frame.code), frame.reason.as_str()),
                (4001, "bye")
            );
        }
        other => panic!("expected the upstream's close, got {other:?}"),
    }
    // …and the client's to the upstream.
    let mut second = open(&stack, "/live/other", Some(&session)).await;
    next_text(&mut second).await;
    second
        .close(Some(CloseFrame {
            code: CloseCode::from(4002),
            reason: "leaving".into(),
        }))
        .await
        .unwrap();
    assert_eq!(server.closed_with(1).await, 4002);
}

#[tokio::test]
async fn a_logout_or_a_revocation_closes_a_forwarded_socket_within_a_second() {
    let server = SocketServer::start().await;
    let stack = stack_with(&server, "cloudrun", &[]).await;
    let (_, session) = stack.new_session().await;
    let mut ws = open(&stack, "/live/room", Some(&session)).await;
    next_text(&mut ws).await;

    let started = Instant::now();
    let logout = stack.get("/logout", Some(&session)).await;
    assert_eq!(logout.status(), 200);
    assert_eq!(u16::from(close_code(next_frame(&mut ws).await)), 1008);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.closed_with(0).await, 1008);

    // RevokeUser from a backend closes them too.
    let (minted, session) = stack.new_session().await;
    let mut ws = open(&stack, "/live/room", Some(&session)).await;
    next_text(&mut ws).await;
    let started = Instant::now();
    SessionServiceClient::new(stack.session_channel().await)
        .revoke_user(RevokeUserRequest {
            open_id: minted.openid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(u16::from(close_code(next_frame(&mut ws).await)), 1008);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn refusals_come_before_the_upgrade_and_count_against_the_caps() {
    let server = SocketServer::start().await;
    let stack = stack_with(&server, "weapp", &["--ws-max-per-session", "1"]).await;
    let (_, session) = stack.new_session().await;

    let status_of = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => answer.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    };
    // No session on a route that requires one: 401, and the business never hears of it.
    let anonymous = connect_async(stack.ws_url("/live/room")).await;
    assert_eq!(status_of(anonymous), 401);
    assert!(server.seen().is_empty());
    // The business's own refusal is the client's answer.
    let mut request = stack.ws_url("/live/missing").into_client_request().unwrap();
    request.headers_mut().extend(session.headers());
    assert_eq!(status_of(connect_async(request).await), 404);
    // One socket per session here: the second is refused (429).
    let mut first = open(&stack, "/live/room", Some(&session)).await;
    next_text(&mut first).await;
    let mut request = stack.ws_url("/live/room").into_client_request().unwrap();
    request.headers_mut().extend(session.headers());
    assert_eq!(status_of(connect_async(request).await), 429);
}
