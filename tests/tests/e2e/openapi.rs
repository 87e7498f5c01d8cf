//! session-svc's open-API proxy, as a backend uses it: WeChat's documented request without an
//! access_token, WeChat's answer back. WeChat is the sandbox (it records the token each call
//! carried); the proxy, the token's refresh and the callers are the real thing over TCP.
use std::net::SocketAddr;

use serde_json::{Value, json};
use weapp_tests::{
    Service, Stack,
    wechat_sandbox::{Subscription, wxacode_image},
};

use crate::access_token::{client, token};

async fn openapi_stack() -> Stack {
    Stack::builder().openapi().start().await
}

/// A client whose requests leave from `from` (127.0.0.1 is the stack's trusted network; any
/// other loopback address is not).
fn http_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().ok())
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

async fn call(
    http: &reqwest::Client,
    addr: SocketAddr,
    path_and_query: &str,
    key: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = http
        .post(format!("http://{addr}{path_and_query}"))
        .json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("the open-API proxy answers")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body");
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (status, value)
}

fn check_v2(openid: &str, content: &str) -> Value {
    json!({ "content": content, "version": 2, "scene": 2, "openid": openid })
}

#[tokio::test]
async fn a_backend_with_a_key_calls_wechat_without_a_token_and_wechat_sees_the_current_one() {
    let stack = openapi_stack().await;
    let (minted, _) = stack.new_session().await;
    let http = http_from("127.0.0.1");
    // The caller's own token (a leftover of code written against WeChat directly) never
    // goes on.
    let response = call(
        &http,
        stack.openapi_addr(),
        "/wxa/msg_sec_check?access_token=MINE&x=1",
        Some(stack.openapi_key()),
        check_v2(&minted.openid, "hello"),
    )
    .await;
    assert!(response.headers().contains_key("x-openapi-seqid"));
    let (status, body) = json_of(response).await;
    assert_eq!((status, body["errcode"].as_i64()), (200, Some(0)), "{body}");
    assert_eq!(body["result"]["suggest"], "pass", "{body}");

    let current = token(&mut client(&stack).await).await.unwrap().access_token;
    let calls = stack.sandbox.wxa().calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].access_token.as_deref(), Some(current.as_str()));

    let (_, body) = json_of(
        call(
            &http,
            stack.openapi_addr(),
            "/wxa/msg_sec_check",
            Some(stack.openapi_key()),
            check_v2(&minted.openid, "a sandbox-risky post"),
        )
        .await,
    )
    .await;
    assert_eq!(body["result"]["suggest"], "risky", "{body}");
    // WeChat's own refusals come back as WeChat sent them (200 with an errcode).
    let (status, body) = json_of(
        call(
            &http,
            stack.openapi_addr(),
            "/wxa/msg_sec_check",
            Some(stack.openapi_key()),
            check_v2("not-a-user", "hello"),
        )
        .await,
    )
    .await;
    assert_eq!((status, body["errcode"].as_i64()), (200, Some(40003)));

    // Counted by allow-listed path and errcode; the token is nowhere in the metrics.
    let metrics = stack
        .http
        .get(format!(
            "http://{}/metrics",
            stack.metrics_addr(Service::SessionSvc)
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weapp_wechat_calls_total")
                && l.contains(r#"endpoint="/wxa/msg_sec_check""#)
                && l.contains(r#"errcode="40003""#)),
        "{metrics}"
    );
    assert!(!metrics.contains(&current));
}

#[tokio::test]
async fn a_token_wechat_stops_accepting_is_refreshed_once_and_the_call_still_succeeds() {
    let stack = openapi_stack().await;
    let (minted, _) = stack.new_session().await;
    let mut grpc = client(&stack).await;
    let old = token(&mut grpc).await.unwrap().access_token;
    assert!(stack.sandbox.apis().revoke_token(Some(&old)));
    let before = stack.sandbox.apis().token_stats();

    let (status, body) = json_of(
        call(
            &http_from("127.0.0.1"),
            stack.openapi_addr(),
            "/wxa/msg_sec_check",
            Some(stack.openapi_key()),
            check_v2(&minted.openid, "hello"),
        )
        .await,
    )
    .await;
    assert_eq!((status, body["errcode"].as_i64()), (200, Some(0)), "{body}");

    let calls = stack.sandbox.wxa().calls();
    let seen: Vec<(Option<&str>, i64)> = calls
        .iter()
        .map(|c| (c.access_token.as_deref(), c.errcode))
        .collect();
    let new = token(&mut grpc).await.unwrap().access_token;
    assert_ne!(new, old);
    assert_eq!(
        seen,
        vec![(Some(old.as_str()), 40001), (Some(new.as_str()), 0)],
        "the refused token once, then the new one once"
    );
    let after = stack.sandbox.apis().token_stats();
    assert_eq!(after.stable_token, before.stable_token + 1, "one refresh");
    assert_eq!(after.stable_token_forced, 0, "never a forced refresh");
}

#[tokio::test]
async fn callers_and_paths_not_allowed_are_refused_before_wechat_is_called() {
    let stack = openapi_stack().await;
    let addr = stack.openapi_addr();
    let (trusted, outsider) = (http_from("127.0.0.1"), http_from("127.0.0.2"));
    let key = Some(stack.openapi_key());
    let body = json!({ "path": "pages/index/index" });
    // What, from where, which path, with which key; the status and errcode expected.
    type Case<'a> = (
        &'a str,
        &'a reqwest::Client,
        &'a str,
        Option<&'a str>,
        u16,
        i64,
    );
    let cases: Vec<Case> = vec![
        // Not in the key's allow-list (it is in the trusted networks' list: the key decides).
        (
            "a path the key may not call",
            &trusted,
            "/wxa/generate_urllink",
            key,
            403,
            48001,
        ),
        (
            "a key without the wechat.openapi scope",
            &trusted,
            "/wxa/msg_sec_check",
            Some(stack.backend_key()),
            403,
            48001,
        ),
        (
            "an unknown key, even from a trusted network",
            &trusted,
            "/wxa/msg_sec_check",
            Some("0123456789abcdef0123456789abcdef-nope"),
            401,
            41001,
        ),
        (
            "no key from outside the trusted networks",
            &outsider,
            "/wxa/msg_sec_check",
            None,
            401,
            41001,
        ),
        (
            "a trusted caller, a path not on its list",
            &trusted,
            "/wxa/getwxacodeunlimit",
            None,
            403,
            48001,
        ),
        (
            "the token endpoint",
            &trusted,
            "/cgi-bin/token?grant_type=client_credential",
            key,
            403,
            48001,
        ),
        (
            "the stable token endpoint",
            &trusted,
            "/cgi-bin/stable_token",
            key,
            403,
            48001,
        ),
        (
            "the token endpoint, dressed up",
            &trusted,
            "/wxa/x/../../cgi-bin/%74oken",
            key,
            403,
            48001,
        ),
        (
            "an encoded slash",
            &trusted,
            "/wxa%2Fmsg_sec_check",
            key,
            400,
            40097,
        ),
    ];
    for (what, http, path, key, status, errcode) in cases {
        let (got, body) = json_of(call(http, addr, path, key, body.clone()).await).await;
        assert_eq!(
            (got, body["errcode"].as_i64()),
            (status, Some(errcode)),
            "{what}: {body}"
        );
        let message = body["errmsg"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("weapp open-API proxy: "),
            "{what}: {message}"
        );
    }
    // As an HTTP proxy it forwards to WeChat only.
    let proxied = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{addr}")).unwrap())
        .build()
        .unwrap();
    let (status, body) = json_of(
        proxied
            .post("http://example.com/wxa/msg_sec_check")
            .bearer_auth(stack.openapi_key())
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_i64()),
        (403, Some(48001)),
        "{body}"
    );

    assert!(stack.sandbox.wxa().calls().is_empty(), "WeChat was called");
    let stats = stack.sandbox.apis().token_stats();
    assert_eq!((stats.stable_token, stats.token), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn a_trusted_container_calls_through_the_proxy_in_absolute_form_without_a_key() {
    let stack = openapi_stack().await;
    // How a Cloud Run container's HTTP library reaches http://api.weixin.qq.com through a
    // proxy setting (the other way is pointing the name at the listener by DNS).
    let proxied = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", stack.openapi_addr())).unwrap())
        .build()
        .unwrap();
    let (status, body) = json_of(
        proxied
            .post("http://api.weixin.qq.com/wxa/generate_urllink")
            .json(&json!({ "path": "pages/index/index", "query": "a=1" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["errcode"].as_i64()), (200, Some(0)), "{body}");
    let link = body["url_link"].as_str().unwrap_or_default();
    assert!(link.starts_with("https://wxaurl.cn/"), "{body}");
    // WeChat's own errors, as WeChat documents them.
    let (_, body) = json_of(
        proxied
            .post("http://api.weixin.qq.com/wxa/generate_urllink")
            .json(&json!({ "path": "/pages/index/index" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["errcode"].as_i64(), Some(40165), "{body}");
}

#[tokio::test]
async fn a_wxacode_comes_back_byte_for_byte_and_its_errors_as_json() {
    let stack = openapi_stack().await;
    let http = http_from("127.0.0.1");
    let request = json!({ "scene": "id=42&from=share", "page": "pages/item/item", "width": 430 });
    let response = call(
        &http,
        stack.openapi_addr(),
        "/wxa/getwxacodeunlimit",
        Some(stack.openapi_key()),
        request,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let image = response.bytes().await.unwrap();
    let expected = wxacode_image("id=42&from=share", "pages/item/item", 430);
    assert!(expected.len() > 100_000, "as large as a real code");
    assert_eq!(image.len(), expected.len());
    assert!(image[..] == expected[..], "the image differs");

    let (status, body) = json_of(
        call(
            &http,
            stack.openapi_addr(),
            "/wxa/getwxacodeunlimit",
            Some(stack.openapi_key()),
            json!({ "scene": "x".repeat(33) }),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_i64()),
        (200, Some(40169)),
        "{body}"
    );
}

#[tokio::test]
async fn a_subscribe_message_needs_the_users_consent_each_time() {
    let stack = openapi_stack().await;
    let (minted, _) = stack.new_session().await;
    let http = http_from("127.0.0.1");
    let send = || {
        call(
            &http,
            stack.openapi_addr(),
            "/cgi-bin/message/subscribe/send",
            Some(stack.openapi_key()),
            json!({
                "touser": minted.openid,
                "template_id": "TPL-order-shipped",
                "page": "pages/order/order?id=7",
                "data": { "thing1": { "value": "Your order shipped" } },
            }),
        )
    };
    let (_, refused) = json_of(send().await).await;
    assert_eq!(refused["errcode"].as_i64(), Some(43101), "{refused}");
    stack.sandbox.wxa().subscribe(Subscription {
        openid: minted.openid.clone(),
        template_id: "TPL-order-shipped".into(),
        times: 1,
    });
    let (_, sent) = json_of(send().await).await;
    assert_eq!(sent["errcode"].as_i64(), Some(0), "{sent}");
    let (_, again) = json_of(send().await).await;
    assert_eq!(
        again["errcode"].as_i64(),
        Some(43101),
        "one message per consent"
    );
    assert_eq!(stack.sandbox.wxa().sent().len(), 1);
}
