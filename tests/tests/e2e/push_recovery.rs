//! Pushes that survive a reconnect: every push to a user is kept in the user's stream at the
//! next position, and a socket that reconnects with `since=EPOCH:OFFSET` gets a resume frame,
//! what it missed in order exactly once, then live pushes — or `recovered:false` with a reason
//! and nothing. A socket without `since` is the tutorial's, unchanged.
use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use weapp_proto::session::v1::{
    PresenceRequest, PublishRequest, PushMessage, push_message::Target,
    session_service_client::SessionServiceClient,
};
use weapp_tests::{
    ClientSession, Stack, TestStore,
    stack::AuthorizedChannel,
    ws::{next_frame, text},
};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket of `session` on `addr`, with `since` if given; after the greeting.
async fn open(addr: std::net::SocketAddr, session: &ClientSession, since: Option<&str>) -> Ws {
    let since = since.map_or(String::new(), |s| format!("&since={s}"));
    let url = format!("ws://{addr}/ws?{}{since}", session.query());
    let mut ws = connect_async(url).await.expect("upgrade accepted").0;
    assert!(text(next_frame(&mut ws).await).starts_with("Server: "));
    ws
}

async fn frame(ws: &mut Ws) -> Value {
    let frame = text(next_frame(ws).await);
    serde_json::from_str(&frame).unwrap_or_else(|_| panic!("a JSON frame, not {frame:?}"))
}

async fn silent(ws: &mut Ws) {
    let next = tokio::time::timeout(Duration::from_millis(300), next_frame(ws)).await;
    assert!(next.is_err(), "nothing more, got {next:?}");
}

async fn publish(
    client: &mut SessionServiceClient<AuthorizedChannel>,
    open_id: &str,
    text: &str,
    key: &str,
) -> (String, u64, u64) {
    let answer = client
        .publish(PublishRequest {
            message: Some(PushMessage {
                target: Some(Target::OpenId(open_id.into())),
                text: text.into(),
                idempotency_key: key.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("publish")
        .into_inner();
    let position = answer.position.expect("a push to a user gets a position");
    assert_eq!(answer.online, answer.sockets > 0);
    (position.epoch, position.offset, answer.sockets)
}

fn push(epoch: &str, offset: u64, text: &str) -> Value {
    serde_json::json!({ "t": "push", "epoch": epoch, "offset": offset, "text": text })
}

#[tokio::test]
async fn a_reconnecting_socket_gets_what_it_missed_in_order_exactly_once_then_live() {
    let stack = Stack::start().await;
    // Live pushes reach the gateway once it follows session-svc (under load, its first
    // health probe can find the store not ready yet and the follow start a moment later).
    stack.wait_for_followers(1).await;
    let (minted, session) = stack.new_session().await;
    let mut pushes = SessionServiceClient::new(stack.session_channel().await);
    let addr = stack.gateway_addr();

    // `since=` empty: where the stream is, before the first push.
    let mut ws = open(addr, &session, Some("")).await;
    let resume = frame(&mut ws).await;
    assert_eq!(resume["t"], "resume");
    assert_eq!(resume["recovering"], false);
    assert_eq!(resume["top"], 0);
    let epoch = resume["epoch"].as_str().unwrap().to_owned();
    let (e, offset, sockets) = publish(&mut pushes, &minted.openid, "a", "").await;
    assert_eq!((e.as_str(), offset, sockets), (epoch.as_str(), 1, 1));
    assert_eq!(frame(&mut ws).await, push(&epoch, 1, "a"));
    // An echo stays plain text.
    use futures::SinkExt as _;
    ws.send(tokio_tungstenite::tungstenite::Message::Text("hi".into()))
        .await
        .unwrap();
    assert_eq!(text(next_frame(&mut ws).await), "Server: Received(hi)");
    drop(ws);

    // Published while the socket is down: kept, nobody online.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (text, expected) in [("b", 2), ("c", 3)] {
        let (_, offset, sockets) = publish(&mut pushes, &minted.openid, text, "").await;
        assert_eq!((offset, sockets), (expected, 0));
    }
    let mut ws = open(addr, &session, Some(&format!("{epoch}:1"))).await;
    let resume = frame(&mut ws).await;
    assert_eq!(
        resume,
        serde_json::json!({"t": "resume", "recovering": true, "recovered": true,
            "epoch": epoch, "since": 1, "top": 3, "missed": 2})
    );
    assert_eq!(frame(&mut ws).await, push(&epoch, 2, "b"));
    assert_eq!(frame(&mut ws).await, push(&epoch, 3, "c"));
    let (_, offset, _) = publish(&mut pushes, &minted.openid, "d", "").await;
    assert_eq!(offset, 4);
    assert_eq!(frame(&mut ws).await, push(&epoch, 4, "d"));

    // A retried publish (same idempotency key) appends nothing and delivers nothing again.
    let first = publish(&mut pushes, &minted.openid, "e", "order-42").await;
    assert_eq!(frame(&mut ws).await, push(&epoch, 5, "e"));
    let again = publish(&mut pushes, &minted.openid, "e", "order-42").await;
    assert_eq!((again.0, again.1), (first.0, first.1));
    assert_eq!(again.2, 1, "still counted: the user is online");
    silent(&mut ws).await;

    // A plain socket of the same user alongside: the tutorial's frames, raw text.
    let mut plain = open(addr, &session, None).await;
    publish(&mut pushes, &minted.openid, "f", "").await;
    assert_eq!(text(next_frame(&mut plain).await), "f");
    assert_eq!(frame(&mut ws).await, push(&epoch, 6, "f"));

    // Presence: online, on two sockets, and the top.
    let presence = pushes
        .presence(PresenceRequest {
            open_ids: vec![minted.openid.clone(), "o-nobody".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (me, nobody) = (&presence.users[0], &presence.users[1]);
    assert_eq!((me.online, me.sockets, me.top), (true, 2, 6));
    assert_eq!(me.epoch, epoch);
    assert_eq!((nobody.online, nobody.sockets, nobody.top), (false, 0, 0));
}

#[tokio::test]
async fn what_cannot_be_recovered_says_why_and_sends_nothing() {
    let stack = Stack::builder()
        .session_args(["--stream-window-count", "3", "--stream-max-recover", "2"])
        .start()
        .await;
    let mut pushes = SessionServiceClient::new(stack.session_channel().await);
    let addr = stack.gateway_addr();
    // Each case on its own user, the same five pushes.
    for (since_offset, reason) in [
        (Some("1"), "window"),
        (Some("2"), "burst"),
        (Some("9"), "future"),
        (None, "epoch"),
        (Some("x"), "epoch"),
    ] {
        let (minted, session) = stack.new_session().await;
        let mut epoch = String::new();
        for i in 1..=5 {
            epoch = publish(&mut pushes, &minted.openid, &format!("m{i}"), "")
                .await
                .0;
        }
        let since = match since_offset {
            Some(offset) => format!("{epoch}:{offset}"),
            None => "another:5".to_owned(),
        };
        let mut ws = open(addr, &session, Some(&since)).await;
        let resume = frame(&mut ws).await;
        assert_eq!(
            resume,
            serde_json::json!({"t": "resume", "recovering": true, "recovered": false,
                "reason": reason, "epoch": epoch, "top": 5}),
            "{since}"
        );
        silent(&mut ws).await;
    }
    // Within the window and the burst: recovered; then live pushes from the top.
    let (minted, session) = stack.new_session().await;
    let mut epoch = String::new();
    for i in 1..=5 {
        epoch = publish(&mut pushes, &minted.openid, &format!("m{i}"), "")
            .await
            .0;
    }
    let mut ws = open(addr, &session, Some(&format!("{epoch}:3"))).await;
    assert_eq!(frame(&mut ws).await["recovered"], true);
    assert_eq!(frame(&mut ws).await, push(&epoch, 4, "m4"));
    assert_eq!(frame(&mut ws).await, push(&epoch, 5, "m5"));
    let (_, offset, _) = publish(&mut pushes, &minted.openid, "live", "").await;
    assert_eq!(frame(&mut ws).await, push(&epoch, offset, "live"));
    assert_eq!(offset, 6);
}

#[tokio::test]
async fn a_logged_out_session_resumes_nothing_and_one_users_history_never_reaches_another() {
    let stack = Stack::start().await;
    let mut pushes = SessionServiceClient::new(stack.session_channel().await);
    let addr = stack.gateway_addr();
    let (alice, alice_session) = stack.new_session().await;
    let (_, bob_session) = stack.new_session().await;
    let (epoch, _, _) = publish(&mut pushes, &alice.openid, "alice's secret", "").await;

    // Bob with Alice's position: his own stream, another epoch: nothing of hers.
    let mut ws = open(addr, &bob_session, Some(&format!("{epoch}:0"))).await;
    let resume = frame(&mut ws).await;
    assert_eq!(resume["recovered"], false);
    assert_ne!(resume["epoch"], epoch.as_str());
    silent(&mut ws).await;

    // Alice logs out: her socket with `since` is refused like any other, and reads nothing.
    let logout = stack.get("/logout", Some(&alice_session)).await;
    assert_eq!(logout.status(), 200);
    let url = format!("ws://{addr}/ws?{}&since={epoch}:0", alice_session.query());
    let mut ws = connect_async(url).await.expect("upgrade accepted").0;
    let refused: Value = serde_json::from_str(&text(next_frame(&mut ws).await)).unwrap();
    assert_eq!(refused["error"], "ERR_INVALID_SESSION");
    assert!(!refused.to_string().contains("secret"));
}

/// Two replicas on MongoDB, two gateways: pushes published through both replicas at once,
/// while the user's socket keeps dropping and resuming on either gateway, arrive in order,
/// exactly once, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_raced_against_publishes_on_two_replicas_lose_and_repeat_nothing() {
    let stack = Stack::builder().store(TestStore::Mongo).start().await;
    let replica = stack.extra_session_svc().await;
    let other_gateway = stack.extra_gateway().await;
    stack.wait_for_followers(2).await;
    let (minted, session) = stack.new_session().await;
    let channels = [
        stack.session_channel().await,
        stack.session_channel_at(replica.addr).await,
    ];
    const EACH: u64 = 40;
    let publishers: Vec<_> = channels
        .into_iter()
        .enumerate()
        .map(|(n, channel)| {
            let open_id = minted.openid.clone();
            tokio::spawn(async move {
                let mut client = SessionServiceClient::new(channel);
                for i in 0..EACH {
                    publish(&mut client, &open_id, &format!("r{n}-{i}"), "").await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let gateways = [stack.gateway_addr(), other_gateway.addr];
    let mut seen: Vec<u64> = Vec::new();
    let mut since = String::new();
    let mut epoch = String::new();
    for round in 0.. {
        let mut ws = open(gateways[round % 2], &session, Some(&since)).await;
        let resume = frame(&mut ws).await;
        if !since.is_empty() {
            assert_eq!(resume["recovered"], true, "{resume}");
        }
        epoch = resume["epoch"].as_str().unwrap().to_owned();
        // A few frames on this socket, then it drops.
        let until = tokio::time::Instant::now() + Duration::from_millis(150);
        while let Ok(next) = tokio::time::timeout_at(until, next_frame(&mut ws)).await {
            let frame: Value = serde_json::from_str(&text(next)).unwrap();
            assert_eq!(frame["t"], "push");
            seen.push(frame["offset"].as_u64().unwrap());
        }
        drop(ws);
        let last = seen
            .last()
            .copied()
            .unwrap_or(resume["top"].as_u64().unwrap());
        since = format!("{epoch}:{last}");
        if publishers.iter().all(|p| p.is_finished()) && last == 2 * EACH {
            break;
        }
        assert!(round < 400, "never caught up: {seen:?}");
    }
    let expected: Vec<u64> = (seen[0]..=2 * EACH).collect();
    assert_eq!(
        seen, expected,
        "in order, exactly once, no gap (epoch {epoch})"
    );

    // Presence, counted live on both gateways, asked of either replica.
    let _on_one = open(gateways[0], &session, None).await;
    let _on_other = open(gateways[1], &session, Some("")).await;
    let mut client = SessionServiceClient::new(stack.session_channel_at(replica.addr).await);
    let presence = client
        .presence(PresenceRequest {
            open_ids: vec![minted.openid.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(presence.gateways_answered, 2, "{presence:?}");
    let user = &presence.users[0];
    assert_eq!((user.online, user.sockets, user.top), (true, 2, 2 * EACH));
    assert_eq!(user.epoch, epoch);
}
