//! A container written for WeChat Cloud Run (`examples/cloudrun-container`, Node, unchanged)
//! behind weapp: the gateway hands it Cloud Run's identity headers and its WebSocket, and
//! session-svc's open-API proxy answers its key-less calls to http://api.weixin.qq.com (the
//! container's axios reads HTTP_PROXY, so the proxy gets them in absolute form).
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::SinkExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, client::IntoClientRequest as _},
};
use weapp_tests::{
    Stack,
    ports::Port,
    process::wait_until_listening,
    ws::{close_code, next_frame, next_text},
};

use crate::access_token::{client, token};

struct Container {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Container {
    fn start(port: &Port, openapi: std::net::SocketAddr) -> Self {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloudrun-container");
        assert!(
            example.join("node_modules").is_dir(),
            "run `npm ci --prefix examples/cloudrun-container` (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = dir.path().join("container.err");
        let mut child = Command::new("node")
            .arg(example.join("server.js"))
            .env("PORT", port.number().to_string())
            .env("HTTP_PROXY", format!("http://{openapi}"))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("node runs");
        wait_until_listening(
            "the Cloud Run example container",
            &mut child,
            port.number(),
            Duration::from_secs(20),
            || std::fs::read_to_string(&err).unwrap_or_default(),
        );
        Self { child, _dir: dir }
    }
}

async fn stack_in_front_of(port: &Port) -> Stack {
    Stack::builder()
        .openapi()
        .routes(format!(
            r#"
            [[route]]
            prefix = "/cloudrun/"
            upstream = "http://{}"
            session = "required"
            strip_prefix = true
            identity_headers = "cloudrun"
            websocket = true
            "#,
            port.addr()
        ))
        .start()
        .await
}

#[tokio::test]
async fn a_cloud_run_container_runs_unchanged_behind_weapp() {
    let port = Port::reserve();
    let stack = stack_in_front_of(&port).await;
    let _container = Container::start(&port, stack.openapi_addr());
    let (minted, session) = stack.new_session().await;

    // Cloud Run's headers, from the gateway: never the client's.
    let answer = stack
        .http
        .get(stack.url("/cloudrun/api/wx_openid"))
        .headers(session.headers())
        .header("X-WX-OPENID", "attacker")
        .header("X-WX-APPID", "wx-attacker")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let who: Value = answer.json().await.unwrap();
    assert_eq!(who["openid"], minted.openid.as_str(), "{who}");
    assert_eq!(who["appid"], stack.app_id.as_str(), "{who}");
    assert_eq!(who["source"], "weapp", "{who}");
    assert_eq!(who["ip"], "127.0.0.1", "{who}");
    let anonymous = stack
        .http
        .get(stack.url("/cloudrun/api/wx_openid"))
        .header("X-WX-OPENID", "attacker")
        .header("X-WX-SOURCE", "wx_client")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "the route requires a session");

    // WeChat's content check, called by the container with no token.
    let comment = |content: &str| {
        stack
            .http
            .post(stack.url("/cloudrun/api/comments"))
            .headers(session.headers())
            .json(&json!({ "content": content }))
            .send()
    };
    let fine: Value = comment("a kind word").await.unwrap().json().await.unwrap();
    assert_eq!(fine["accepted"], true, "{fine}");
    let risky: Value = comment("sandbox-risky offer")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (risky["accepted"].clone(), risky["suggest"].clone()),
        (json!(false), json!("risky"))
    );
    let current = token(&mut client(&stack).await).await.unwrap().access_token;
    let calls = stack.sandbox.wxa().calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c.path == "/wxa/msg_sec_check" && c.access_token.as_deref() == Some(&current)),
        "WeChat saw the current token: {calls:?}"
    );

    // Its WebSocket, with the user on the upgrade, closed within a second of a logout.
    let mut request = stack.ws_url("/cloudrun/ws").into_client_request().unwrap();
    request.headers_mut().extend(session.headers());
    let (mut ws, _) = connect_async(request).await.expect("upgrade accepted");
    let hello: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(hello["hello"], minted.openid.as_str());
    ws.send(Message::text("hi")).await.unwrap();
    let echo: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(echo, json!({ "echo": "hi", "from": minted.openid }));
    let started = Instant::now();
    assert_eq!(stack.get("/logout", Some(&session)).await.status(), 200);
    assert_eq!(u16::from(close_code(next_frame(&mut ws).await)), 1008);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
