//! Push: a backend publishes over gRPC, the message reaches every open socket of the user (or
//! of one session) on every gateway, exactly as given and in order, and the backend learns
//! how many sockets took it. A client that does not read is closed, not fed without bound.
use std::time::Duration;

use futures::StreamExt as _;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, protocol::frame::coding::CloseCode},
};
use weapp_proto::session::v1::{
    PublishBatchRequest, PublishRequest, PushMessage, push_message::Target,
    session_service_client::SessionServiceClient,
};
use weapp_tests::{
    ClientSession, Stack,
    stack::AuthorizedChannel,
    wechat_sandbox::MintRequest,
    ws::{next_frame, text},
};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(addr: std::net::SocketAddr, session: &ClientSession) -> Ws {
    let url = format!("ws://{addr}/ws?{}", session.query());
    let mut ws = connect_async(url).await.expect("upgrade accepted").0;
    assert!(text(next_frame(&mut ws).await).starts_with("Server: "));
    ws
}

fn to_user(open_id: &str, text: &str) -> PushMessage {
    PushMessage {
        target: Some(Target::OpenId(open_id.into())),
        text: text.into(),
        ..Default::default()
    }
}

async fn publish(
    client: &mut SessionServiceClient<AuthorizedChannel>,
    message: PushMessage,
) -> (u64, u32, u32) {
    let answer = client
        .publish(PublishRequest {
            message: Some(message),
        })
        .await
        .expect("publish")
        .into_inner();
    (answer.sockets, answer.gateways, answer.gateways_answered)
}

#[tokio::test]
async fn a_publish_reaches_every_socket_of_the_user_on_every_gateway_as_given() {
    let stack = Stack::start().await;
    let other_gateway = stack.extra_gateway().await;
    let user = stack.mint(MintRequest::default());
    let first = weapp_tests::session_from(stack.login_encrypted(&user).await).await;
    let again = stack.mint(MintRequest {
        openid: Some(user.openid.clone()),
        ..MintRequest::default()
    });
    let second = weapp_tests::session_from(stack.login_encrypted(&again).await).await;
    let (_, bystander) = stack.new_session().await;
    let mut here = open(stack.gateway_addr(), &first).await;
    let mut there = open(other_gateway.addr, &second).await;
    let mut unrelated = open(stack.gateway_addr(), &bystander).await;
    // The followers must be connected before a publish can count on them.
    stack.wait_for_followers(2).await;

    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let message = r#"{"type":"order","id":42} 恭喜 — not prefixed"#;
    assert_eq!(
        publish(&mut client, to_user(&user.openid, message)).await,
        (2, 2, 2),
        "two sockets over two gateways, both reported"
    );
    assert_eq!(text(next_frame(&mut here).await), message);
    assert_eq!(text(next_frame(&mut there).await), message);

    let to_session = PushMessage {
        target: Some(Target::SessionId(second.id.clone())),
        text: "only the second session".into(),
        ..Default::default()
    };
    assert_eq!(publish(&mut client, to_session).await.0, 1);
    assert_eq!(
        text(next_frame(&mut there).await),
        "only the second session"
    );
    assert_eq!(
        publish(&mut client, to_user("o-nobody-online", "x"))
            .await
            .0,
        0,
        "nobody online is not an error"
    );

    // A batch: counts in order, and each socket gets its messages in publish order.
    let messages: Vec<PushMessage> = (0..50)
        .map(|i| to_user(&user.openid, &format!("m{i}")))
        .chain([to_user("o-nobody-online", "y")])
        .collect();
    let answer = client
        .publish_batch(PublishBatchRequest { messages })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.sockets.len(), 51);
    assert!(answer.sockets[..50].iter().all(|&n| n == 2));
    assert_eq!(answer.sockets[50], 0);
    for ws in [&mut here, &mut there] {
        for i in 0..50 {
            assert_eq!(text(next_frame(ws).await), format!("m{i}"));
        }
    }
    // The bystander got nothing: its next frame is the echo of its own message.
    use futures::SinkExt as _;
    unrelated.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(
        text(next_frame(&mut unrelated).await),
        "Server: Received(ping)"
    );
}

#[tokio::test]
async fn bad_publishes_are_refused_and_the_gateway_key_cannot_publish() {
    let stack = Stack::start().await;
    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let oversize = to_user("o", &"x".repeat(64 * 1024 + 1));
    let status = client
        .publish(PublishRequest {
            message: Some(oversize),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let aimless = PushMessage {
        target: None,
        text: "x".into(),
        ..Default::default()
    };
    let status = client
        .publish(PublishRequest {
            message: Some(aimless),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let mut gateway =
        SessionServiceClient::new(stack.session_channel_with(Some(stack.gateway_key())).await);
    let status = gateway
        .publish(PublishRequest {
            message: Some(to_user("o", "x")),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_instead_of_queued_without_bound() {
    let stack = Stack::builder()
        .gateway_args(["--ws-send-queue", "4"])
        .start()
        .await;
    let (minted, session) = stack.new_session().await;
    let mut ws = open(stack.gateway_addr(), &session).await;
    stack.wait_for_followers(1).await;
    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let big = "x".repeat(60 * 1024);
    // The socket is not read: kernel buffers fill, then the queue, then the gateway gives up.
    let mut published = 0;
    let mut closed = false;
    for _ in 0..2000 {
        let (sockets, _, _) = publish(&mut client, to_user(&minted.openid, &big)).await;
        published += 1;
        if sockets == 0 {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "still taking messages after {published} unread ones"
    );
    // What was sent before the close is readable; then the socket ends.
    let mut received = 0;
    let ending = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(_))) => received += 1,
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| f.code);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the socket ends");
    assert!(received < published);
    if let Some(code) = ending {
        assert_eq!(code, CloseCode::from(4008));
    }
}

/// The gateway's count of session cache misses, from its `/metrics`.
async fn cache_misses(stack: &Stack) -> f64 {
    let addr = stack.metrics_addr(weapp_tests::Service::Gateway);
    let text = stack
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix("weapp_session_cache_requests_total{result=\"miss\"} "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cache miss count in:\n{text}"))
}

/// Pushes have a lane of their own: a flood of them neither delays a revocation past the
/// bound nor turns the gateway's session cache off (which a cut stream would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_pushes_neither_delays_a_logout_nor_turns_the_cache_off() {
    let stack = Stack::start().await;
    let (flooded, flooded_session) = stack.new_session().await;
    let _socket = open(stack.gateway_addr(), &flooded_session).await;
    let (_, leaving) = stack.new_session().await;
    let (_, staying) = stack.new_session().await;
    stack.wait_for_followers(1).await;
    for session in [&leaving, &staying] {
        assert_eq!(stack.get("/me", Some(session)).await.status(), 200);
    }
    let misses_before = cache_misses(&stack).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = SessionServiceClient::new(stack.session_channel().await);
        let (stop, open_id) = (stop.clone(), flooded.openid.clone());
        flood.spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                let messages = (0..1_000)
                    .map(|i| to_user(&open_id, &format!("{i}")))
                    .collect();
                if client
                    .publish_batch(PublishBatchRequest { messages })
                    .await
                    .is_ok()
                {
                    sent += 1_000;
                }
            }
            sent
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A logout taken by session-svc directly (not through this gateway, which would evict its
    // own entry at once): only the revocation feed can tell the gateway.
    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let logged_out = std::time::Instant::now();
    client
        .logout(weapp_proto::session::v1::LogoutRequest {
            id: leaving.id.clone(),
            skey: leaving.skey.clone(),
        })
        .await
        .expect("logout");
    let heard = loop {
        let status = stack.get("/me", Some(&leaving)).await.status();
        if status == 401 {
            break logged_out.elapsed();
        }
        assert_eq!(status, 200);
        assert!(
            logged_out.elapsed() < Duration::from_secs(5),
            "the logout never arrived"
        );
    };
    for _ in 0..20 {
        assert_eq!(stack.get("/me", Some(&staying)).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.cancel();
    let mut pushed = 0;
    while let Some(sent) = flood.join_next().await {
        pushed += sent.expect("flood task");
    }
    assert!(heard < Duration::from_secs(1), "the logout took {heard:?}");
    assert!(pushed >= 10_000, "a flood: {pushed} messages");
    // One miss: the logged-out session, asked once more. The staying one was served from
    // the cache all along: it was never emptied.
    let misses = cache_misses(&stack).await - misses_before;
    assert_eq!(misses, 1.0, "the cache was emptied under the flood");
}
