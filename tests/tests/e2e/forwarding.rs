//! Business routes: a session reaches the upstream with an identity it can verify, a spoofed
//! identity and the session credentials never do, bodies stream both ways, and an upstream
//! that is down or slow gets a 502 or 504 in time.
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use serde_json::Value;
use sha2::{Digest, Sha256};
use weapp_tests::{MAGIC_KEY, Stack, json, upstream::Upstream};

fn routes(upstream: &Upstream, extra: &str) -> String {
    format!(
        r#"
[[route]]
prefix = "/api/"
upstream = "{url}"
session = "required"
max_body_bytes = 134217728
{extra}

[[route]]
prefix = "/public"
upstream = "{url}/base"
session = "optional"
strip_prefix = true
"#,
        url = upstream.url()
    )
}

async fn stack_with(upstream: &Upstream, extra: &str) -> Stack {
    Stack::builder()
        .routes(routes(upstream, extra))
        .start()
        .await
}

/// Verifies an assertion as an upstream would: the gateway's JWKS and a standard library.
async fn verify(stack: &Stack, token: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let (_, jwks) = json(stack.get("/.well-known/jwks.json", None).await).await;
    let jwks: JwkSet = serde_json::from_value(jwks).unwrap();
    let kid = jsonwebtoken::decode_header(token)?.kid.unwrap_or_default();
    let jwk = jwks.find(&kid).expect("the kid is published");
    let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_issuer(&["weapp"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .map(|data| data.claims)
}

#[tokio::test]
async fn a_session_reaches_the_upstream_with_a_verifiable_identity_and_nothing_else() {
    let upstream = Upstream::start().await;
    let stack = stack_with(&upstream, "").await;
    let (minted, session) = stack.new_session().await;
    let answer = stack
        .http
        .post(stack.url(&format!(
            "/api/orders/echo?a=1&X-WX-Skey={}&x-wx-id={}&b=%20two",
            session.skey, session.id
        )))
        .headers(session.headers())
        .header("X-Weapp-Open-Id", "o-somebody-else")
        .header("X-Weapp-Assertion", "forged.jwt.here")
        .header("x-weapp-anything", "spoofed")
        .header("Connection", "x-hop-secret")
        .header("x-hop-secret", "hop")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("x-business", "kept")
        .body("order #1")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "the upstream's status comes back");
    assert_eq!(answer.headers()["x-upstream"], "yes");
    let (_, seen) = json(answer).await;

    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["uri"], "/api/orders/echo?a=1&b=%20two");
    assert_eq!(seen["length"], 8);
    let headers = &seen["headers"];
    assert_eq!(headers["x-business"], "kept");
    assert_eq!(
        headers["host"],
        upstream.addr.to_string(),
        "the upstream's own Host"
    );
    assert_eq!(
        headers["x-forwarded-host"],
        stack.gateway_addr().to_string()
    );
    assert_eq!(headers["x-weapp-open-id"], minted.openid.as_str());
    assert!(headers.get("x-weapp-anything").is_none());
    assert!(headers.get("x-hop-secret").is_none());
    assert!(headers.get("x-wx-skey").is_none() && headers.get("x-wx-id").is_none());
    let text = seen.to_string();
    assert!(
        !text.contains(&session.skey) && !text.contains(&session.id),
        "the credentials never leave the gateway: {text}"
    );
    // The client connected from loopback, which is a trusted proxy by default: its list goes on.
    assert_eq!(headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["x-weapp-session"].as_str().unwrap().len(),
        8,
        "a short hash of the session id"
    );
    use base64::Engine as _;
    let user = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(headers["x-weapp-user"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&user).unwrap(),
        minted.decrypted
    );

    let claims = verify(&stack, headers["x-weapp-assertion"].as_str().unwrap())
        .await
        .expect("the assertion verifies against the JWKS");
    assert_eq!(claims["sub"], minted.openid.as_str());
    assert_eq!(claims["sid"], headers["x-weapp-session"]);
    assert!(verify(&stack, "forged.jwt.here").await.is_err());
}

#[tokio::test]
async fn a_required_route_without_a_session_gets_the_wafer_invalid_session_body() {
    let upstream = Upstream::start().await;
    let stack = stack_with(&upstream, "").await;
    let (status, body) = json(stack.get("/api/echo", None).await).await;
    assert_eq!(status, 401);
    assert_eq!(body[MAGIC_KEY], 1);
    assert_eq!(body["error"], "ERR_INVALID_SESSION");

    // A wrong skey fails closed on every route, optional ones included.
    let (_, session) = stack.new_session().await;
    let wrong = weapp_tests::ClientSession {
        skey: "not-the-skey".into(),
        ..session.clone()
    };
    for path in ["/api/echo", "/public/echo"] {
        let (status, body) = json(stack.get(path, Some(&wrong)).await).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"], "ERR_INVALID_SESSION");
    }
    assert!(upstream.seen().is_empty(), "nothing reached the upstream");

    // An optional route without a session goes on anonymously, spoofing removed.
    let answer = stack
        .http
        .get(stack.url("/public/echo?q=1"))
        .header("x-weapp-open-id", "o-spoofed")
        .send()
        .await
        .unwrap();
    let (status, seen) = json(answer).await;
    assert_eq!(status, 201);
    assert_eq!(
        seen["uri"], "/base/echo?q=1",
        "prefix stripped, base path added"
    );
    assert!(
        seen["headers"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("x-weapp-")),
        "{seen}"
    );
}

#[tokio::test]
async fn bodies_stream_both_ways_without_being_buffered() {
    let upstream = Upstream::start().await;
    let stack = stack_with(&upstream, "").await;
    let (_, session) = stack.new_session().await;

    // 96 MiB, chunked: the first chunk must reach the upstream before the rest is even sent,
    // which no buffering proxy allows.
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 96;
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    // 96 MiB through a debug build on a busy 2-core machine can take longer than the stack
    // client's 10 s budget for a whole request: this one gets a minute.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let request = http
        .put(stack.url("/api/upload"))
        .headers(session.headers())
        .body(reqwest::Body::wrap_stream(rx))
        .send();
    let sending = tokio::spawn(request);
    let mut tx = tx;
    use futures::SinkExt as _;
    tx.send(Ok(vec![7u8; CHUNK])).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), upstream.first_bytes())
        .await
        .expect("the first chunk reached the upstream while the client was still sending");
    let mut hasher = Sha256::new();
    hasher.update(vec![7u8; CHUNK]);
    for i in 1..CHUNKS {
        let chunk = vec![i as u8; CHUNK];
        hasher.update(&chunk);
        tx.send(Ok(chunk)).await.unwrap();
    }
    drop(tx);
    let (status, seen) = json(sending.await.unwrap().unwrap()).await;
    assert_eq!(status, 201);
    assert_eq!(seen["length"], CHUNK * CHUNKS);
    assert_eq!(seen["sha256"], hex::encode(hasher.finalize()));

    // The answer streams too: its first chunk arrives while the upstream holds the rest.
    let answer = stack
        .http
        .get(stack.url("/api/stream"))
        .headers(session.headers())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the first chunk came before the upstream finished")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first;");
    upstream.release();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"second");
}

#[tokio::test]
async fn bodies_over_the_routes_limit_are_refused() {
    let upstream = Upstream::start().await;
    let stack = Stack::builder()
        .routes(format!(
            "[[route]]\nprefix = \"/api/\"\nupstream = \"{}\"\nsession = \"optional\"\nmax_body_bytes = 1000\n",
            upstream.url()
        ))
        .start()
        .await;
    let announced = stack
        .http
        .post(stack.url("/api/echo"))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(announced.status(), 413);
    let chunked = stack
        .http
        .post(stack.url("/api/echo"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(
            (0..4).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 400])),
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 413);
    // Refused in the middle of its body: the connection ends, and says so (a client that
    // pooled it would lose its next request to the close).
    assert_eq!(chunked.headers()["connection"], "close");
    let (status, seen) = json(
        stack
            .http
            .post(stack.url("/api/echo"))
            .body(vec![b'x'; 1000])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, seen["length"].as_u64()), (201, Some(1000)));
}

#[tokio::test]
async fn upstreams_are_reached_over_a_keep_alive_pool() {
    let upstream = Upstream::start().await;
    let stack = stack_with(&upstream, "").await;
    let (_, session) = stack.new_session().await;
    for _ in 0..20 {
        let answer = stack.get("/api/echo", Some(&session)).await;
        assert_eq!(answer.status(), 201);
        answer.bytes().await.unwrap();
    }
    assert_eq!(upstream.connections(), 1, "one connection, reused");
}

#[tokio::test]
async fn an_upstream_down_is_502_and_a_slow_one_504_in_time() {
    let upstream = Upstream::start().await;
    let down = weapp_tests::ports::Port::reserve();
    let stack = Stack::builder()
        .routes(format!(
            r#"
[[route]]
prefix = "/slow/"
upstream = "{}"
session = "optional"
timeout = "500ms"

[[route]]
prefix = "/down/"
upstream = "http://{}"
session = "optional"
connect_timeout = "300ms"
"#,
            upstream.url(),
            down.addr()
        ))
        .start()
        .await;
    let started = Instant::now();
    let (status, body) = json(stack.get("/slow/slow", None).await).await;
    assert_eq!(status, 504);
    assert_eq!(body["error"], "ERR_UPSTREAM_TIMEOUT");
    assert!(body.get(MAGIC_KEY).is_none(), "the session is not at fault");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within the timeout"
    );

    let started = Instant::now();
    let (status, body) = json(stack.get("/down/x", None).await).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"], "ERR_UPSTREAM_UNAVAILABLE");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn route_table_mistakes_stop_start_up_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    for (table, expect) in [
        (
            "[[route]]\nprefix = \"/api/\"\nupstream = \"http://h:1\"\nsession = \"required\"\ncolor = 1\n",
            "unknown field `color`",
        ),
        (
            "[[route]]\nprefix = \"/api/\"\nupstream = \"not a url\"\nsession = \"required\"\n",
            "route #1 (prefix \"/api/\")",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\nsession = \"required\"\n\
             [[route]]\nprefix = \"/a/b\"\nupstream = \"http://h:2\"\nsession = \"required\"\n",
            "route #2 (prefix \"/a/b\") overlaps",
        ),
    ] {
        let file = dir.path().join("routes.toml");
        std::fs::write(&file, table).unwrap();
        let err = gateway_svc::Settings::parse_from(["--routes-file", file.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expect) && err.contains("--routes-file"),
            "{err}"
        );
    }
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        "[[route]]\nprefix = \"/me/orders\"\nupstream = \"http://h:1\"\nsession = \"required\"\n",
    )
    .unwrap();
    let err = gateway_svc::Settings::parse_from(["--routes-file", file.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("route \"/me/orders\": the gateway serves /me itself"),
        "{err}"
    );
}
