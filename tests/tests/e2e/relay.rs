//! WebSocket relay: with a relay URL, each client message reaches the business upstream with
//! the user's identity and the answers come back in order; an upstream error is one error
//! frame and the socket stays open.
use futures::SinkExt as _;
use serde_json::Value;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, client::IntoClientRequest as _},
};
use weapp_tests::{
    Stack,
    upstream::Upstream,
    ws::{next_frame, text},
};

#[tokio::test]
async fn each_message_reaches_the_upstream_with_the_identity_and_answers_come_back_in_order() {
    let upstream = Upstream::start().await;
    let stack = Stack::builder()
        .gateway_args(["--ws-relay-url", &format!("{}/chat/echo", upstream.url())])
        .start()
        .await;
    let (minted, session) = stack.new_session().await;
    let url = stack.ws_url(&format!("/ws?{}", session.query()));
    // Identities the client made up on the upgrade never reach the relayed POSTs.
    let mut upgrade = url.into_client_request().unwrap();
    for (name, value) in [
        ("X-WX-OPENID", "attacker"),
        ("X-WX-UnionId", "attacker"),
        ("X-Weapp-Open-Id", "attacker"),
        ("X-Real-IP", "6.6.6.6"),
    ] {
        upgrade.headers_mut().insert(name, value.parse().unwrap());
    }
    let (mut ws, _) = connect_async(upgrade).await.unwrap();
    for i in 0..20 {
        ws.send(Message::Text(format!("message {i}").into()))
            .await
            .unwrap();
    }
    for i in 0..20 {
        let answer: Value = serde_json::from_str(&text(next_frame(&mut ws).await)).unwrap();
        assert_eq!(
            answer["text"],
            format!("message {i}"),
            "in order, no greeting first"
        );
        assert_eq!(answer["method"], "POST");
        let headers = &answer["headers"];
        assert_eq!(headers["x-weapp-open-id"], minted.openid.as_str());
        assert_eq!(
            headers["x-weapp-assertion"]
                .as_str()
                .unwrap()
                .split('.')
                .count(),
            3
        );
        let text = answer.to_string();
        assert!(
            !text.contains(&session.skey),
            "the skey stays in the gateway"
        );
        assert!(
            !text.contains("attacker") && !text.contains("6.6.6.6"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn an_upstream_error_is_one_error_frame_and_the_socket_stays_open() {
    let upstream = Upstream::start().await;
    let stack = Stack::builder()
        .gateway_args(["--ws-relay-url", &format!("{}/chat/fail", upstream.url())])
        .start()
        .await;
    let (_, session) = stack.new_session().await;
    let url = stack.ws_url(&format!("/ws?{}", session.query()));
    let (mut ws, _) = connect_async(url).await.unwrap();
    for _ in 0..2 {
        ws.send(Message::Text("hello".into())).await.unwrap();
        let frame: Value = serde_json::from_str(&text(next_frame(&mut ws).await)).unwrap();
        assert_eq!(frame["error"], "ERR_RELAY_FAILED");
        assert!(
            frame["message"].as_str().unwrap().contains("500"),
            "{frame}"
        );
    }
}
