//! `/ws`: greeting, ordered echo, refusal without a session, limits and keep-alive.
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{
        Message,
        client::IntoClientRequest as _,
        protocol::frame::{
            Frame,
            coding::{CloseCode, Data, OpCode},
        },
    },
};
use weapp_tests::{
    ClientSession, MAGIC_KEY, Stack,
    wechat_sandbox::MintRequest,
    ws::{close_code, next_frame, text},
};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(stack: &Stack, session: Option<&ClientSession>) -> Ws {
    let url = match session {
        Some(s) => stack.ws_url(&format!("/ws?{}", s.query())),
        None => stack.ws_url("/ws"),
    };
    connect_async(url).await.expect("upgrade accepted").0
}

#[tokio::test]
async fn greets_by_nickname_and_echoes_100_messages_in_order() {
    let stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    let mut ws = connect(&stack, Some(&session)).await;
    assert_eq!(
        text(next_frame(&mut ws).await),
        "Server: 恭喜，Sandbox User"
    );
    for i in 0..100 {
        ws.send(Message::Text(format!("message {i}").into()))
            .await
            .unwrap();
    }
    for i in 0..100 {
        assert_eq!(
            text(next_frame(&mut ws).await),
            format!("Server: Received(message {i})")
        );
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn greets_by_openid_after_a_code_only_login_and_accepts_headers() {
    let stack = Stack::start().await;
    let minted = stack.mint(MintRequest::default());
    let session = weapp_tests::session_from(stack.login_code_only(&minted.code).await).await;
    let mut request = stack.ws_url("/ws").into_client_request().unwrap();
    request.headers_mut().extend(session.headers());
    let (mut ws, _) = connect_async(request).await.unwrap();
    assert_eq!(
        text(next_frame(&mut ws).await),
        format!("Server: 恭喜，{}", minted.openid)
    );
}

#[tokio::test]
async fn without_a_valid_session_one_error_frame_then_policy_close() {
    let stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    let wrong = ClientSession {
        skey: "B".repeat(43),
        ..session
    };
    for who in [None, Some(&wrong)] {
        let mut ws = connect(&stack, who).await;
        let body: serde_json::Value =
            serde_json::from_str(&text(next_frame(&mut ws).await)).unwrap();
        assert_eq!(body[MAGIC_KEY], 1);
        assert_eq!(body["error"], "ERR_INVALID_SESSION");
        assert_eq!(close_code(next_frame(&mut ws).await), CloseCode::Policy);
    }
}

#[tokio::test]
async fn two_users_at_once_have_their_own_conversations() {
    let stack = Stack::start().await;
    let alice = stack.mint(MintRequest {
        profile: Some(weapp_tests::wechat_sandbox::Profile {
            nick_name: "Alice".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let bob = stack.mint(MintRequest {
        profile: Some(weapp_tests::wechat_sandbox::Profile {
            nick_name: "Bob".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let alice = weapp_tests::session_from(stack.login_encrypted(&alice).await).await;
    let bob = weapp_tests::session_from(stack.login_encrypted(&bob).await).await;
    let (mut a, mut b) = (
        connect(&stack, Some(&alice)).await,
        connect(&stack, Some(&bob)).await,
    );
    assert_eq!(text(next_frame(&mut a).await), "Server: 恭喜，Alice");
    assert_eq!(text(next_frame(&mut b).await), "Server: 恭喜，Bob");
    for i in 0..20 {
        a.send(Message::Text(format!("a{i}").into())).await.unwrap();
        b.send(Message::Text(format!("b{i}").into())).await.unwrap();
    }
    for i in 0..20 {
        assert_eq!(
            text(next_frame(&mut a).await),
            format!("Server: Received(a{i})")
        );
        assert_eq!(
            text(next_frame(&mut b).await),
            format!("Server: Received(b{i})")
        );
    }
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let stack = Stack::builder()
        .gateway_args(["--ws-max-message-bytes", "1024"])
        .start()
        .await;
    let (_, session) = stack.new_session().await;
    let mut ws = connect(&stack, Some(&session)).await;
    next_frame(&mut ws).await;
    ws.send(Message::Text("x".repeat(1000).into()))
        .await
        .unwrap();
    assert_eq!(
        text(next_frame(&mut ws).await).len(),
        "Server: Received()".len() + 1000
    );
    ws.send(Message::Text("x".repeat(4096).into()))
        .await
        .unwrap();
    assert_eq!(close_code(next_frame(&mut ws).await), CloseCode::Size);
}

#[tokio::test]
async fn a_protocol_error_closes_with_1002_not_a_dropped_connection() {
    let stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    // A reserved bit set, with no extension negotiated (RFC 6455 §5.2).
    let mut ws = connect(&stack, Some(&session)).await;
    next_frame(&mut ws).await;
    let mut frame = Frame::message(&b"hi"[..], OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(close_code(next_frame(&mut ws).await), CloseCode::Protocol);
    // Text that is not UTF-8: 1007.
    let mut ws = connect(&stack, Some(&session)).await;
    next_frame(&mut ws).await;
    let frame = Frame::message(&[0xff, 0xfe][..], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(close_code(next_frame(&mut ws).await), CloseCode::Invalid);
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed() {
    let stack = Stack::builder()
        .gateway_args(["--ws-ping-interval", "200ms", "--ws-pong-timeout", "300ms"])
        .start()
        .await;
    let (_, session) = stack.new_session().await;
    let mut ws = connect(&stack, Some(&session)).await;
    next_frame(&mut ws).await;
    // Not reading means tungstenite sends no pongs: the server must give up on us.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut saw_ping = false;
    let code = loop {
        match ws.next().await.expect("frame").expect("valid") {
            Message::Ping(_) => saw_ping = true,
            Message::Close(frame) => break frame.map(|f| f.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(saw_ping, "the server pinged");
    assert_eq!(code, Some(CloseCode::Away));
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let stack = Stack::builder()
        .gateway_args(["--ws-ping-interval", "100ms", "--ws-pong-timeout", "200ms"])
        .start()
        .await;
    let (_, session) = stack.new_session().await;
    let mut ws = connect(&stack, Some(&session)).await;
    next_frame(&mut ws).await;
    // Reading lets tungstenite answer the pings; a second later we are still talking.
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    let mut pings = 0;
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, ws.next()).await {
        assert!(matches!(message, Message::Ping(_)), "{message:?}");
        pings += 1;
    }
    assert!(pings >= 3, "{pings} pings");
    ws.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(
        text(next_frame(&mut ws).await),
        "Server: Received(still here)"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused() {
    let stack = Stack::builder()
        .gateway_args(["--ws-max-connections", "1"])
        .start()
        .await;
    let (_, session) = stack.new_session().await;
    let mut first = connect(&stack, Some(&session)).await;
    next_frame(&mut first).await;
    let url = stack.ws_url(&format!("/ws?{}", session.query()));
    match connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("second connection should be refused, got {other:?}"),
    }
    first.close(None).await.unwrap();
    // The slot is given back once the first connection is gone.
    let mut retried = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok((ws, _)) = connect_async(stack.ws_url(&format!("/ws?{}", session.query()))).await
        {
            retried = Some(ws);
            break;
        }
    }
    let mut ws = retried.expect("slot released");
    assert!(text(next_frame(&mut ws).await).starts_with("Server: 恭喜"));
}

/// The session was revoked: the socket gets the invalid-session body, then a policy close.
async fn expect_revoked(ws: &mut Ws) {
    let body: serde_json::Value = serde_json::from_str(&text(next_frame(ws).await)).unwrap();
    assert_eq!(body["error"], "ERR_INVALID_SESSION", "{body}");
    assert_eq!(close_code(next_frame(ws).await), CloseCode::Policy);
}

#[tokio::test]
async fn a_logout_closes_that_sessions_websockets_on_every_gateway_and_no_others() {
    let stack = Stack::start().await;
    let other_gateway = stack.extra_gateway().await;
    let (_, session) = stack.new_session().await;
    let (_, bystander) = stack.new_session().await;
    let mut here = connect(&stack, Some(&session)).await;
    let url = format!("ws://{}/ws?{}", other_gateway.addr, session.query());
    let mut there = connect_async(url).await.expect("upgrade accepted").0;
    let mut unrelated = connect(&stack, Some(&bystander)).await;
    for ws in [&mut here, &mut there, &mut unrelated] {
        assert!(text(next_frame(ws).await).starts_with("Server: "));
    }

    assert_eq!(stack.get("/logout", Some(&session)).await.status(), 200);
    let started = std::time::Instant::now();
    expect_revoked(&mut here).await;
    expect_revoked(&mut there).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    unrelated
        .send(Message::Text("still here".into()))
        .await
        .unwrap();
    assert_eq!(
        text(next_frame(&mut unrelated).await),
        "Server: Received(still here)"
    );
}

#[tokio::test]
async fn revoking_a_user_closes_the_websockets_of_all_their_sessions() {
    use weapp_proto::session::v1::{
        RevokeUserRequest, session_service_client::SessionServiceClient,
    };
    let stack = Stack::start().await;
    let openid = "o_revoked_user".to_owned();
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let minted = stack.mint(MintRequest {
            openid: Some(openid.clone()),
            ..Default::default()
        });
        let session = weapp_tests::session_from(stack.login_encrypted(&minted).await).await;
        let mut ws = connect(&stack, Some(&session)).await;
        assert!(text(next_frame(&mut ws).await).starts_with("Server: "));
        sockets.push(ws);
    }
    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let revoked = client
        .revoke_user(RevokeUserRequest {
            open_id: openid,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 2);
    for ws in &mut sockets {
        expect_revoked(ws).await;
    }
}

#[tokio::test]
async fn one_session_holds_at_most_its_share_of_websockets() {
    let stack = Stack::builder()
        .gateway_args(["--ws-max-per-session", "2"])
        .start()
        .await;
    let (_, session) = stack.new_session().await;
    let (_, other) = stack.new_session().await;
    let mut first = connect(&stack, Some(&session)).await;
    let mut second = connect(&stack, Some(&session)).await;
    next_frame(&mut first).await;
    next_frame(&mut second).await;
    let url = stack.ws_url(&format!("/ws?{}", session.query()));
    match connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("a third connection should be refused, got {other:?}"),
    }
    // Other sessions are not affected, and the session keeps working over HTTP.
    let mut unrelated = connect(&stack, Some(&other)).await;
    assert!(text(next_frame(&mut unrelated).await).starts_with("Server: "));
    assert_eq!(stack.get("/me", Some(&session)).await.status(), 200);
    // A closed connection gives its place back.
    first.close(None).await.unwrap();
    let mut third = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok((ws, _)) = connect_async(url.clone()).await {
            third = Some(ws);
            break;
        }
    }
    let mut ws = third.expect("place released");
    assert!(text(next_frame(&mut ws).await).starts_with("Server: "));
}

#[tokio::test]
async fn sockets_of_sessions_that_ended_unannounced_close_when_the_stream_returns() {
    let mut stack = Stack::start().await;
    let (_, ended) = stack.new_session().await;
    let (_, alive) = stack.new_session().await;
    let mut doomed = connect(&stack, Some(&ended)).await;
    let mut fine = connect(&stack, Some(&alive)).await;
    for ws in [&mut doomed, &mut fine] {
        assert!(text(next_frame(ws).await).starts_with("Server: "));
    }
    // The session ends without a revocation on the stream, as when it is revoked while the
    // gateway's stream is down: nothing tells the gateway, and the socket stays open...
    assert!(stack.store().remove(&ended.id).await.unwrap());
    doomed
        .send(Message::Text("still here".into()))
        .await
        .unwrap();
    assert_eq!(
        text(next_frame(&mut doomed).await),
        "Server: Received(still here)"
    );
    // ...until the stream comes back after an outage, when open sockets are checked again.
    stack.stop_session_svc().await;
    stack.start_session_svc().await;
    expect_revoked(&mut doomed).await;
    fine.send(Message::Text("and me".into())).await.unwrap();
    assert_eq!(
        text(next_frame(&mut fine).await),
        "Server: Received(and me)"
    );
}

/// A client may send its first message right behind its handshake, before the 101 comes back:
/// those bytes reach the gateway with the handshake, and are the socket's first message.
#[tokio::test]
async fn a_message_sent_right_behind_the_handshake_is_not_lost() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    let mut tcp = tokio::net::TcpStream::connect(stack.gateway_addr())
        .await
        .unwrap();
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         X-WX-Id: {}\r\nX-WX-Skey: {}\r\n\r\n",
        session.id, session.skey
    )
    .into_bytes();
    // A masked text frame (RFC 6455 §5.2), as a client must send it: "early".
    let mask = [1u8, 2, 3, 4];
    bytes.extend([0x81, 0x80 | 5]);
    bytes.extend(mask);
    bytes.extend(b"early".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&bytes).await.unwrap();

    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(n > 0, "closed before the 101");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "RFC 6455's accept key: {head}"
    );
    let mut ws = WebSocketStream::from_raw_socket(
        tcp,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    assert_eq!(
        text(next_frame(&mut ws).await),
        "Server: 恭喜，Sandbox User"
    );
    assert_eq!(text(next_frame(&mut ws).await), "Server: Received(early)");
}
