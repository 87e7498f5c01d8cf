//! Health, readiness and graceful shutdown, as orchestrators and load balancers see them.
use std::time::Duration;

use weapp_proto::session::v1::{LoginRequest, session_service_client::SessionServiceClient};
use weapp_tests::{Service, Stack, json, session_from, wechat_sandbox::MintRequest};

/// Polls /readyz until it answers 200 (session-svc reports SERVING once its store answered).
async fn wait_ready(stack: &Stack) -> serde_json::Value {
    let mut last = None;
    for _ in 0..100 {
        let (status, body) = json(stack.get("/readyz", None).await).await;
        if status == 200 {
            return body;
        }
        last = Some((status, body));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never ready: {last:?}");
}

#[tokio::test]
async fn readyz_follows_session_svc_and_healthz_does_not() {
    let mut stack = Stack::start().await;
    assert_eq!(wait_ready(&stack).await["status"], "ready");
    gateway_svc::probe::check(stack.gateway_addr())
        .await
        .unwrap();
    session_svc::probe::check(stack.session_svc_addr(), false)
        .await
        .unwrap();

    stack.stop_session_svc().await;
    let (status, body) = json(stack.get("/readyz", None).await).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        gateway_svc::probe::check(stack.gateway_addr())
            .await
            .is_err()
    );
    assert!(
        session_svc::probe::check(stack.session_svc_addr(), false)
            .await
            .is_err()
    );
    // Liveness is about the gateway process only.
    assert_eq!(stack.get("/healthz", None).await.status(), 200);

    stack.start_session_svc().await;
    wait_ready(&stack).await;
}

#[tokio::test]
async fn a_gateway_shutting_down_finishes_requests_in_flight() {
    let mut stack = Stack::start().await;
    let slow = stack.mint(MintRequest {
        delay_ms: Some(700),
        ..Default::default()
    });
    let in_flight = {
        let request = stack
            .http
            .get(stack.url("/login"))
            .header("X-WX-Code", &slow.code);
        tokio::spawn(async move { request.send().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.begin_shutdown(Service::Gateway);
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight login got an answer");
    session_from(response).await;
    stack.stop_gateway().await;
    assert!(
        tokio::net::TcpStream::connect(stack.gateway_addr())
            .await
            .is_err(),
        "a stopped gateway accepts nothing"
    );
}

#[tokio::test]
async fn session_svc_shutting_down_drains_rpcs_in_flight() {
    let mut stack = Stack::start().await;
    let slow = stack.mint(MintRequest {
        delay_ms: Some(700),
        ..Default::default()
    });
    let channel = stack.session_channel().await;
    let in_flight = tokio::spawn(async move {
        SessionServiceClient::new(channel)
            .login(LoginRequest {
                code: slow.code,
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.begin_shutdown(Service::SessionSvc);
    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight Login completed");
    assert!(answer.into_inner().session.is_some());
    stack.stop_session_svc().await;
}
