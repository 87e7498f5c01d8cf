//! No secret in any log line, at any level: the whole stack runs with every crate at TRACE
//! while a client logs in, uses its session over HTTP and WebSocket, has its phone number
//! verified, has WeRun data decrypted and its session_key checked and reset, a backend gets,
//! reports and forces the access_token, error paths are hit and the client logs out; the
//! captured output is searched for every secret and every piece of personal data involved
//! (access_tokens, session_keys, phone codes and numbers). Its own test binary, so
//! that it owns the process's log subscriber.
use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use weapp_proto::session::v1::{
    CheckSessionKeyRequest, DecryptUserDataRequest, ForceRefreshAccessTokenRequest,
    GetAccessTokenRequest, ReportInvalidAccessTokenRequest, ResetSessionKeyRequest,
    RevokeUserRequest, SessionCredentials, Subject, session_service_client::SessionServiceClient,
    subject,
};
use weapp_tests::{
    Stack, session_from,
    wechat_sandbox::{MintRequest, PhoneCodeRequest, UserDataRequest},
};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs_at_any_level() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        // Everything but this test's own WebSocket client, which logs the request it sends
        // (skey included, by design of the test) under its handshake target; the gateway does
        // not use tungstenite's handshake (hyper upgrades the connection).
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "trace,tungstenite::handshake::client=off",
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let mut stack = Stack::builder().openapi().start().await;
    let mut secrets: Vec<(&str, String)> = vec![("AppSecret", stack.app_secret.clone())];

    // A legacy login, /me, a WebSocket conversation, in headers and in the query string.
    let minted = stack.mint(MintRequest::default());
    let session = session_from(stack.login_encrypted(&minted).await).await;
    secrets.push(("login code", minted.code.clone()));
    secrets.push((
        "session_key",
        stack
            .sandbox
            .session_key(&minted.code)
            .expect("minted code"),
    ));
    secrets.push(("skey", session.skey.clone()));
    secrets.push(("session id", session.id.clone()));
    assert_eq!(stack.get("/me", Some(&session)).await.status(), 200);
    let query_url = stack.url(&format!("/me?{}", session.query()));
    assert_eq!(
        stack.http.get(query_url).send().await.unwrap().status(),
        200
    );
    let (mut ws, _) =
        tokio_tungstenite::connect_async(stack.ws_url(&format!("/ws?{}", session.query())))
            .await
            .unwrap();
    ws.next().await.unwrap().unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    ws.next().await.unwrap().unwrap();

    // Two WebSocket handshakes as the tutorial's nginx sends them (HTTP/1.0): both served, the
    // advice to set `proxy_http_version 1.1` logged once.
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(stack.gateway_addr())
            .await
            .unwrap();
        let request = format!(
            "GET /ws?{} HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            session.query()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = [0u8; 12];
        tcp.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 101");
    }

    // The central control server: the access_token (fetched, reported, forced), a phone
    // number through the gateway, the session_key decrypting, checked and reset.
    let mut backend = SessionServiceClient::new(stack.session_channel().await);
    let first = backend
        .get_access_token(GetAccessTokenRequest {
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    secrets.push(("access_token", first.clone()));
    stack.sandbox.apis().revoke_token(Some(&first));
    let second = backend
        .report_invalid_access_token(ReportInvalidAccessTokenRequest {
            access_token: first.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    secrets.push(("refreshed access_token", second));
    let forced = backend
        .force_refresh_access_token(ForceRefreshAccessTokenRequest {
            reason: "log test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    secrets.push(("forced access_token", forced.clone()));
    stack.sandbox.apis().revoke_token(Some(&forced));
    let phone = stack.sandbox.apis().mint_phone_code(PhoneCodeRequest {
        openid: Some(minted.openid.clone()),
        pure_phone_number: Some("13912345678".into()),
        ..Default::default()
    });
    secrets.push(("phone code", phone.code.clone()));
    secrets.push(("phone number", phone.pure_phone_number.clone()));
    // The phone call meets a refused token (40001): refreshed and retried, logged as such.
    let answer = stack
        .http
        .post(stack.url("/phone-number"))
        .headers(session.headers())
        .json(&serde_json::json!({ "code": phone.code }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let current = backend
        .get_access_token(GetAccessTokenRequest {
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    secrets.push(("access_token after a 40001", current.clone()));

    // The open-API proxy: a call whose token WeChat refuses (refreshed, retried), a caller's
    // own token in the query (dropped), a refusal; neither token nor key is logged.
    assert!(stack.sandbox.apis().revoke_token(Some(&current)));
    let openapi = format!("http://{}", stack.openapi_addr());
    let checked = stack
        .http
        .post(format!("{openapi}/wxa/msg_sec_check?access_token=caller-own-token-0123456789"))
        .bearer_auth(stack.openapi_key())
        .json(&serde_json::json!({ "content": "hi", "version": 2, "scene": 2, "openid": minted.openid }))
        .send()
        .await
        .unwrap();
    assert_eq!(checked.status(), 200);
    let refused = stack
        .http
        .post(format!("{openapi}/cgi-bin/stable_token"))
        .bearer_auth("0123456789abcdef0123456789abcdef-unknown-key")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    secrets.push((
        "caller's own access_token",
        "caller-own-token-0123456789".into(),
    ));
    secrets.push(("open-API key", stack.openapi_key().to_owned()));
    secrets.push((
        "unknown open-API key",
        "0123456789abcdef0123456789abcdef-unknown-key".into(),
    ));
    let proxied = backend
        .get_access_token(GetAccessTokenRequest {
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    secrets.push(("access_token after the proxy's refresh", proxied));
    assert_eq!(stack.get("/me", Some(&session)).await.status(), 200);
    let subject = || {
        Some(Subject {
            subject: Some(subject::Subject::Session(SessionCredentials {
                id: session.id.clone(),
                skey: session.skey.clone(),
            })),
            ..Default::default()
        })
    };
    let werun = stack
        .sandbox
        .apis()
        .encrypt_user_data(UserDataRequest {
            openid: minted.openid.clone(),
            ..Default::default()
        })
        .unwrap();
    backend
        .decrypt_user_data(DecryptUserDataRequest {
            subject: subject(),
            encrypted_data: werun.encrypted_data.clone(),
            iv: werun.iv.clone(),
        })
        .await
        .unwrap();
    backend
        .check_session_key(CheckSessionKeyRequest { subject: subject() })
        .await
        .unwrap();
    backend
        .reset_session_key(ResetSessionKeyRequest { subject: subject() })
        .await
        .unwrap();
    secrets.push((
        "reset session_key",
        stack
            .sandbox
            .apis()
            .current_session_key(&minted.openid)
            .unwrap(),
    ));
    // Data that no longer decrypts (the old key): an error path with the key in hand.
    let _ = backend
        .decrypt_user_data(DecryptUserDataRequest {
            subject: subject(),
            encrypted_data: werun.encrypted_data,
            iv: werun.iv,
        })
        .await
        .unwrap_err();

    // Error paths: a wrong skey, a replayed code, data that does not decrypt, WeChat refusing.
    let mut wrong = session.clone();
    wrong.skey = format!("{}x", &session.skey[..session.skey.len() - 1]);
    assert_eq!(stack.get("/me", Some(&wrong)).await.status(), 401);
    assert_eq!(stack.login_encrypted(&minted).await.status(), 401);
    let mut garbled = stack.mint(MintRequest::default());
    secrets.push(("second login code", garbled.code.clone()));
    garbled.encrypted_data = garbled.encrypted_data.chars().rev().collect();
    assert_eq!(stack.login_encrypted(&garbled).await.status(), 400);
    let refused = stack.mint(MintRequest {
        errcode: Some(40029),
        ..Default::default()
    });
    secrets.push(("refused code", refused.code.clone()));
    assert_eq!(stack.login_encrypted(&refused).await.status(), 401);

    // session-svc away and back: the gateway's outage paths log too.
    stack.stop_session_svc().await;
    assert_eq!(stack.get("/me", Some(&session)).await.status(), 503);
    stack.start_session_svc().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stack.get("/me", Some(&session)).await.status() != 200 {
        assert!(std::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Logout (closing the WebSocket) and a user revocation.
    assert_eq!(stack.get("/logout", Some(&session)).await.status(), 200);
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
    let mut client = backend;
    client
        .revoke_user(RevokeUserRequest {
            open_id: minted.openid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    // A MongoDB URI with a password, for a database that is not there: session-svc starts,
    // reports the store unreachable, and retries, all of it logged.
    let mongo_password = "pw-7c1d0e55a9";
    secrets.push(("MongoDB password", mongo_password.to_owned()));
    let uri_file = stack.data_dir.path().join("unreachable_mongodb_uri");
    std::fs::write(
        &uri_file,
        format!("mongodb://weapp:{mongo_password}@127.0.0.1:9/weapp"),
    )
    .unwrap();
    let mut args = stack.session_args();
    args.extend([
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--mongodb-uri-file".into(),
        uri_file.display().to_string(),
        "--mongodb-timeout".into(),
        "200ms".into(),
    ]);
    let settings = session_svc::Settings::parse_from(args).unwrap();
    let app = session_svc::Application::build(settings).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let logs = capture.text();
    // The capture really holds the run, at every level.
    for expected in [
        "TRACE",
        "DEBUG",
        "INFO",
        "WARN",
        "login succeeded",
        "access_token refreshed",
        "phone number verified",
        "path=/me",
        "127.0.0.1:9",
    ] {
        assert!(logs.contains(expected), "the logs lack {expected:?}");
    }
    for (what, secret) in &secrets {
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|line| line.contains(secret.as_str()))
            .take(3)
            .collect();
        assert!(
            leaks.is_empty(),
            "the {what} appears in the logs: {leaks:#?}"
        );
    }
    assert_eq!(
        logs.matches("proxy_http_version 1.1").count(),
        1,
        "the HTTP/1.0 upgrade advice is logged once per gateway"
    );
    // Not even the skey as it travels in a query string (URL-encoded).
    let encoded_skey = session.skey.replace('-', "%2D").replace('_', "%5F");
    assert!(!logs.contains(&encoded_skey));
}
