//! The example business backend in Node (`examples/node-backend`), run as a user runs it:
//! behind the gateway's forwarding, verifying assertions with `jose` against the gateway's
//! JWKS, and pushing to the user's WebSocket over gRPC with its own API key.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine as _;
use tokio_tungstenite::connect_async;
use weapp_proto::session::v1::{ValidateRequest, session_service_client::SessionServiceClient};
use weapp_tests::{
    Stack, json,
    ports::Port,
    process::wait_until_listening,
    ws::{next_frame, text},
};

struct Backend {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    fn start(stack: &Stack, port: &Port) -> Self {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/node-backend");
        assert!(
            example.join("node_modules").is_dir(),
            "run `npm ci --prefix examples/node-backend` (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("backend.key");
        std::fs::write(&key_file, stack.backend_key()).unwrap();
        let log = dir.path().join("backend.log");
        let mut child = Command::new("node")
            .arg(example.join("server.js"))
            .env("PORT", port.number().to_string())
            .env("WEAPP_JWKS_URL", stack.url("/.well-known/jwks.json"))
            .env("WEAPP_SESSION_SVC", stack.session_svc_addr().to_string())
            .env("WEAPP_API_KEY_FILE", &key_file)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("backend.err")).unwrap())
            .spawn()
            .expect("node runs");
        let err = dir.path().join("backend.err");
        wait_until_listening(
            "the example backend",
            &mut child,
            port.number(),
            Duration::from_secs(20),
            || std::fs::read_to_string(&err).unwrap_or_default(),
        );
        Self {
            child,
            port: port.number(),
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn stack_in_front_of(port: &Port) -> Stack {
    Stack::builder()
        .routes(format!(
            "[[route]]\nprefix = \"/api/\"\nupstream = \"http://{}\"\nsession = \"required\"\n",
            port.addr()
        ))
        // Short-lived assertions, so that an expired one can be shown to fail.
        .session_args(["--identity-ttl", "2s"])
        .start()
        .await
}

#[tokio::test]
async fn the_example_backend_answers_the_user_and_pushes_to_their_socket() {
    let port = Port::reserve();
    let stack = stack_in_front_of(&port).await;
    let backend = Backend::start(&stack, &port);
    let (minted, session) = stack.new_session().await;

    let (status, hello) = json(stack.get("/api/hello", Some(&session)).await).await;
    assert_eq!(status, 200, "{hello}");
    assert_eq!(hello["openId"], minted.openid.as_str());
    assert_eq!(hello["hello"], "Sandbox User");

    let url = stack.ws_url(&format!("/ws?{}", session.query()));
    let (mut ws, _) = connect_async(url).await.unwrap();
    assert!(text(next_frame(&mut ws).await).starts_with("Server: "));
    stack.wait_for_followers(1).await;
    let pushed = stack
        .http
        .post(stack.url("/api/push"))
        .headers(session.headers())
        .body("your order shipped")
        .send()
        .await
        .unwrap();
    let (status, body) = json(pushed).await;
    assert_eq!(
        status,
        200,
        "{body} {}",
        std::fs::read_to_string(&backend.log).unwrap_or_default()
    );
    assert_eq!(body["sockets"], 1);
    assert_eq!(text(next_frame(&mut ws).await), "your order shipped");
}

#[tokio::test]
async fn the_example_backend_rejects_spoofed_forged_and_expired_identities() {
    let port = Port::reserve();
    let stack = stack_in_front_of(&port).await;
    let backend = Backend::start(&stack, &port);
    let (_, session) = stack.new_session().await;
    let http = reqwest::Client::new();

    // Straight to the backend with a made-up identity header: no assertion, no entry.
    let spoofed = http
        .get(backend.url("/api/hello"))
        .header("x-weapp-open-id", "o-somebody")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 401);

    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let token = client
        .validate(ValidateRequest {
            id: session.id.clone(),
            skey: session.skey.clone(),
            want_identity_assertion: true,
        })
        .await
        .unwrap()
        .into_inner()
        .identity_assertion;
    let with = |token: String| {
        http.get(backend.url("/api/hello"))
            .header("x-weapp-assertion", token)
            .send()
    };
    assert_eq!(with(token.clone()).await.unwrap().status(), 200);

    // Another user's openId written into a real token: the signature no longer matches.
    let parts: Vec<&str> = token.split('.').collect();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = "o-somebody-else".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        engine.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    let (status, body) = json(with(forged).await.unwrap()).await;
    assert_eq!(status, 401, "{body}");

    // The real token, once its two seconds are over.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, body) = json(with(token).await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "ERR_JWT_EXPIRED");
}
