//! Forwarding that nothing a client sends can spoof or confuse: every spelling of a path is
//! normalized before a route is chosen (or refused), so no spelling reaches a session-required
//! route's upstream without a session; and no identity header a client makes up — in any
//! naming, WeChat Cloud Run's included — reaches an upstream, a relayed message or an
//! `auth_request` answer. Paths are sent byte for byte (`raw.rs`): any URL library would
//! resolve the dot segments before they left the test.
use serde_json::Value;
use weapp_tests::{ClientSession, MAGIC_KEY, Stack, raw, upstream::Upstream};

/// `/api/` needs a session, `/pub/` does not: one upstream behind both, as in the issue.
async fn stack(upstream: &Upstream) -> Stack {
    Stack::builder()
        .routes(format!(
            r#"
[[route]]
prefix = "/api/"
upstream = "{url}"
session = "required"

[[route]]
prefix = "/pub/"
upstream = "{url}"
session = "optional"
"#,
            url = upstream.url()
        ))
        .start()
        .await
}

fn credentials(session: &ClientSession) -> [(&str, &str); 2] {
    [("X-WX-Id", &session.id), ("X-WX-Skey", &session.skey)]
}

/// Spellings that a framework reads as `/api/orders` (decoded, dot segments removed, slashes
/// merged, or letter case ignored), starting under the optional route or nowhere.
const SPELLINGS_OF_API: [&str; 14] = [
    "/pub/../api/orders",
    "/pub/%2e%2e/api/orders",
    "/pub/%2E%2E/api/orders",
    "/pub/.%2e/api/orders",
    "/pub/%2e./api/orders",
    "/pub/./../api/orders",
    "/pub/x/../../api/orders",
    "/pub//..//api/orders",
    "//api/orders",
    "/./api/orders",
    "/../api/orders",
    "/%61pi/orders",
    "/API/orders",
    "/pub/../api/orders?q=1",
];

/// Spellings no rewriting can make safe for every framework.
const REFUSED: [&str; 11] = [
    "/pub/..%2fapi/orders",
    "/pub/..%2Fapi/orders",
    "/pub/%2e%2e%2fapi/orders",
    "/pub/..%5capi/orders",
    "/pub/..%5Capi/orders",
    "/pub/..;/api/orders",
    "/pub/..;x=1/api/orders",
    "/pub/%2e%2e%3b/api/orders",
    "/pub/%252e%252e/api/orders",
    "/pub/%252E%252E%252Fapi/orders",
    "/pub/%00/../api/orders",
];

#[tokio::test]
async fn no_spelling_of_a_path_reaches_a_session_required_route_without_a_session() {
    let upstream = Upstream::start().await;
    let stack = stack(&upstream).await;
    let gateway = stack.gateway_addr();
    for spelling in SPELLINGS_OF_API {
        let answer = raw::get(gateway, spelling, &[]).await;
        assert_eq!(answer.status, 401, "{spelling}: {}", answer.body);
        let body = answer.json();
        assert_eq!(body["error"], "ERR_INVALID_SESSION", "{spelling}");
        assert_eq!(body[MAGIC_KEY], 1, "the SDK logs in and retries");
    }
    for spelling in REFUSED {
        let answer = raw::get(gateway, spelling, &[]).await;
        assert_eq!(answer.status, 400, "{spelling}: {}", answer.body);
        assert_eq!(answer.json()["error"], "ERR_BAD_REQUEST", "{spelling}");
        assert!(
            answer.json().get(MAGIC_KEY).is_none(),
            "the session is fine"
        );
    }
    assert_eq!(upstream.seen(), Vec::<Value>::new(), "nothing reached it");

    // With a session, every spelling reaches the upstream as the one path it means.
    let (minted, session) = stack.new_session().await;
    for spelling in SPELLINGS_OF_API {
        let answer = raw::get(gateway, spelling, &credentials(&session)).await;
        assert_eq!(answer.status, 201, "{spelling}: {}", answer.body);
        let seen = answer.json();
        let expected = match spelling.split_once('?') {
            Some((_, query)) => format!("/api/orders?{query}"),
            None if spelling == "/API/orders" => "/API/orders".to_owned(),
            None => "/api/orders".to_owned(),
        };
        assert_eq!(seen["uri"], expected.as_str(), "{spelling}");
        assert_eq!(seen["headers"]["x-weapp-open-id"], minted.openid.as_str());
    }
    // Refused whatever the session.
    for spelling in REFUSED {
        let answer = raw::get(gateway, spelling, &credentials(&session)).await;
        assert_eq!(answer.status, 400, "{spelling}: {}", answer.body);
    }
    assert_eq!(upstream.seen().len(), SPELLINGS_OF_API.len());
}

#[tokio::test]
async fn the_optional_route_gets_the_normalized_path_and_keeps_its_own() {
    let upstream = Upstream::start().await;
    let stack = stack(&upstream).await;
    let gateway = stack.gateway_addr();
    for (spelling, forwarded) in [
        ("/pub/./a//b/../c?q=%2e", "/pub/a/c?q=%2e"),
        ("/pub/%7euser/%41%62c", "/pub/~user/Abc"),
        ("/pub/a%3fb%2a", "/pub/a%3Fb%2A"),
        ("/api/../pub/x", "/pub/x"),
        ("/pub/x/", "/pub/x/"),
        ("/pub/x/.", "/pub/x/"),
    ] {
        let answer = raw::get(gateway, spelling, &[]).await;
        assert_eq!(answer.status, 201, "{spelling}: {}", answer.body);
        let seen = answer.json();
        assert_eq!(seen["uri"], forwarded, "{spelling}");
        assert!(seen["headers"].get("x-weapp-open-id").is_none());
    }
    // Leaving the optional route is no way out of the gateway's answer either.
    let answer = raw::get(gateway, "/pub/..", &[]).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "Response from express")
    );
}

#[tokio::test]
async fn the_gateways_own_paths_and_the_auth_endpoint_are_normalized_too() {
    let upstream = Upstream::start().await;
    let stack = stack(&upstream).await;
    let gateway = stack.gateway_addr();
    let (minted, session) = stack.new_session().await;
    for spelling in ["//me", "/pub/../me", "/%6de", "/x/./../me"] {
        let answer = raw::get(gateway, spelling, &credentials(&session)).await;
        assert_eq!(answer.status, 200, "{spelling}: {}", answer.body);
        assert_eq!(
            answer.json()["openId"],
            minted.openid.as_str(),
            "{spelling}"
        );
    }
    for spelling in ["/_weapp//auth", "/pub/../_weapp/auth", "/_weapp/%61uth"] {
        let answer = raw::get(gateway, spelling, &credentials(&session)).await;
        assert_eq!(answer.status, 200, "{spelling}: {}", answer.body);
        assert_eq!(
            answer.header("x-weapp-open-id"),
            Some(minted.openid.as_str())
        );
        let answer = raw::get(gateway, spelling, &[]).await;
        assert_eq!(answer.status, 401, "{spelling}: {}", answer.body);
    }
    let answer = raw::get(gateway, "/_weapp/..%2f_weapp/auth", &credentials(&session)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(upstream.seen(), Vec::<Value>::new());
}

/// What a client might send to pass for someone: every naming a service may trust.
const SPOOFED: [(&str, &str); 12] = [
    ("X-WX-OpenId", "attacker"),
    ("X-WX-OPENID", "attacker"),
    ("X-WX-UNIONID", "attacker"),
    ("X-WX-APPID", "attacker"),
    ("X-WX-SOURCE", "attacker"),
    ("X-WX-FROM-OPENID", "attacker"),
    ("X-WX-Anything-Else", "attacker"),
    ("X-Weapp-Open-Id", "attacker"),
    ("X-Weapp-Assertion", "attacker"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Original-Forwarded-For", "6.6.6.6"),
    ("x-wx-code", "attacker"),
];

/// Neither a spoofed name nor a spoofed value among `headers` (a JSON object, as the
/// recording upstream describes them).
fn assert_nothing_spoofed(headers: &Value) {
    let headers = headers.as_object().expect("headers");
    for (name, value) in headers {
        assert!(
            !name.starts_with("x-wx-") && name != "x-real-ip" && name != "x-original-forwarded-for",
            "{name} reached the upstream"
        );
        let value = value.as_str().unwrap_or_default();
        assert!(
            !value.contains("attacker") && !value.contains("6.6.6.6"),
            "{name}: {value}"
        );
    }
}

#[tokio::test]
async fn no_client_made_identity_reaches_an_upstream_or_the_auth_answer() {
    let upstream = Upstream::start().await;
    let stack = stack(&upstream).await;
    let gateway = stack.gateway_addr();
    let (minted, session) = stack.new_session().await;
    let mut with_session = SPOOFED.to_vec();
    with_session.extend(credentials(&session));
    for (target, headers, who) in [
        ("/api/orders", &with_session, Some(minted.openid.as_str())),
        ("/pub/orders", &with_session, Some(minted.openid.as_str())),
        ("/pub/orders", &SPOOFED.to_vec(), None),
    ] {
        let answer = raw::get(gateway, target, headers).await;
        assert_eq!(answer.status, 201, "{target}: {}", answer.body);
        let seen = answer.json();
        assert_nothing_spoofed(&seen["headers"]);
        assert_eq!(
            seen["headers"]
                .get("x-weapp-open-id")
                .and_then(Value::as_str),
            who
        );
    }
    // The auth_request answer names the session's user and nothing the client sent.
    let answer = raw::get(gateway, "/_weapp/auth", &with_session).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("x-weapp-open-id"),
        Some(minted.openid.as_str())
    );
    let answered: serde_json::Map<String, Value> = answer
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), Value::from(value.as_str())))
        .collect();
    assert_nothing_spoofed(&Value::Object(answered));
}
