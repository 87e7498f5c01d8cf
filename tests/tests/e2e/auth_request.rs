//! nginx `auth_request`: the gateway's auth endpoint answers who the user is, and the shipped
//! site's commented example — uncommented as its comment says — routes a business API in
//! nginx itself with that identity, on real nginx in front of a plain upstream.
use std::time::Duration;

use weapp_tests::{
    MAGIC_KEY, Stack, json,
    nginx::{Nginx, Site},
    upstream::Upstream,
};

#[tokio::test]
async fn the_auth_endpoint_answers_identity_headers_or_the_wafer_body() {
    let stack = Stack::start().await;
    let (minted, session) = stack.new_session().await;
    let answer = stack.get("/_weapp/auth", Some(&session)).await;
    assert_eq!(answer.status(), 200);
    let headers = answer.headers();
    assert_eq!(headers["x-weapp-open-id"], minted.openid.as_str());
    assert_eq!(
        headers["x-weapp-assertion"]
            .to_str()
            .unwrap()
            .split('.')
            .count(),
        3
    );
    let (status, body) = json(stack.get("/_weapp/auth", None).await).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &"ERR_INVALID_SESSION".into())
    );
    assert_eq!(body[MAGIC_KEY], 1);
}

#[tokio::test]
async fn the_shipped_auth_request_example_routes_a_business_api_with_the_identity() {
    let mut stack = Stack::start().await;
    let upstream = Upstream::start().await;
    let nginx = Nginx::with_site(
        Site::ShippedWithAuthRequest(upstream.addr),
        &[stack.gateway_addr()],
    );
    let client = nginx.wafer_client();
    let (minted, session) = stack.new_session().await;

    let answer = client
        .http
        .get(nginx.https_url("/shop/cart/echo?item=1"))
        .headers(session.headers())
        .header("X-Weapp-Open-Id", "o-spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "{}", nginx.error_log());
    let (_, seen) = json(answer).await;
    assert_eq!(seen["uri"], "/shop/cart/echo?item=1");
    let headers = &seen["headers"];
    assert_eq!(headers["x-weapp-open-id"], minted.openid.as_str());
    assert_eq!(
        headers["x-weapp-assertion"]
            .as_str()
            .unwrap()
            .split('.')
            .count(),
        3
    );
    assert!(headers.get("x-wx-skey").is_none() && headers.get("x-wx-id").is_none());

    // No session: the gateway's own 401 and wafer body reach the client (the SDK logs in).
    let answer = client
        .http
        .get(nginx.https_url("/shop/cart/echo"))
        .send()
        .await
        .unwrap();
    let (status, body) = json(answer).await;
    assert_eq!(status, 401);
    assert_eq!(body[MAGIC_KEY], 1);
    assert_eq!(body["error"], "ERR_INVALID_SESSION");

    // Sessions cannot be checked: 503 and the outage body, never the upstream.
    let before = upstream.seen().len();
    stack.stop_session_svc().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = client
        .http
        .get(nginx.https_url("/shop/cart/echo"))
        .headers(session.headers())
        .send()
        .await
        .unwrap();
    let (status, body) = json(answer).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "ERR_SESSION_UNAVAILABLE");
    assert_eq!(upstream.seen().len(), before);

    // The internal locations are not reachable from outside.
    let direct = client
        .http
        .get(nginx.https_url("/_weapp_auth"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 404);
}
