//! The gateway fails closed: session-svc down means 503 without the magic key, never a hang,
//! a pass-through or a logout; and everything recovers on its own.
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio_tungstenite::{
    connect_async, tungstenite::Message, tungstenite::protocol::frame::coding::CloseCode,
};
use weapp_tests::{MAGIC_KEY, Stack, json, wechat_sandbox::MintRequest};

#[tokio::test]
async fn session_svc_down_is_503_without_magic_key_and_recovery_is_automatic() {
    let mut stack = Stack::start().await;
    let (minted, session) = stack.new_session().await;
    stack.stop_session_svc().await;

    for path in ["/me", "/anything"] {
        let started = Instant::now();
        let (status, body) = json(stack.get(path, Some(&session)).await).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "ERR_SESSION_UNAVAILABLE");
        assert!(
            body.get(MAGIC_KEY).is_none(),
            "an outage must not log the user out: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "failed fast: {:?}",
            started.elapsed()
        );
    }
    // Requests without session parameters do not need session-svc.
    assert_eq!(stack.get("/me", None).await.status(), 200);
    // Logins cannot work either, and say so honestly.
    let code = stack.mint(MintRequest::default()).code;
    let (status, body) = json(stack.login_code_only(&code).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("ERR_LOGIN_FAILED")),
        "{body}"
    );

    stack.start_session_svc().await;
    let mut recovered = None;
    for _ in 0..50 {
        let response = stack.get("/me", Some(&session)).await;
        if response.status() == 200 {
            recovered = Some(json(response).await.1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let me = recovered.expect("the gateway reconnected by itself");
    assert_eq!(me["openId"], minted.openid.as_str());
}

#[tokio::test]
async fn a_silent_session_svc_is_cut_off_at_the_deadline() {
    // A listener that accepts connections and never answers: the worst kind of outage.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    let settings = gateway_svc::Settings::parse_from([
        "--listen".to_owned(),
        "127.0.0.1:0".into(),
        "--session-svc-url".into(),
        format!("http://{silent_addr}"),
        "--session-timeout".into(),
        "300ms".into(),
    ])
    .unwrap();
    let gateway = gateway_svc::Application::build(settings).await.unwrap();
    let url = format!("http://{}/me", gateway.local_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gateway.run(shutdown.clone()));

    let started = Instant::now();
    let response = stack
        .http
        .get(url)
        .headers(session.headers())
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let (status, body) = json(response).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "ERR_SESSION_UNAVAILABLE");
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_gateway_shutdown_closes_websockets_with_going_away() {
    let mut stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    let (mut ws, _) = connect_async(stack.ws_url(&format!("/ws?{}", session.query())))
        .await
        .unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    stack.stop_gateway().await;
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(close, Some(CloseCode::Away));

    // Clients reconnect to the restarted gateway with the same session.
    stack.start_gateway().await;
    let (mut ws, _) = connect_async(stack.ws_url(&format!("/ws?{}", session.query())))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert!(t.starts_with("Server: 恭喜")),
        other => panic!("{other:?}"),
    }
}
