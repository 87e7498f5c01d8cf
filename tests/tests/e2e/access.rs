//! Who may call session-svc: an API key on every call to the session service, its scopes
//! deciding which RPCs it may make; health and reflection open to anyone. The stack's own
//! gateway uses a key with the gateway's scopes (every other e2e test runs over it).
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use weapp_proto::session::v1::{
    RevokeUserRequest, ValidateRequest, WatchRevocationsRequest,
    session_service_client::SessionServiceClient,
};
use weapp_tests::{MAGIC_KEY, Stack, json};

#[tokio::test]
async fn no_key_is_unauthenticated_a_missing_scope_is_permission_denied() {
    let stack = Stack::start().await;
    let (minted, session) = stack.new_session().await;
    let validate = || ValidateRequest {
        id: session.id.clone(),
        skey: session.skey.clone(),
        ..Default::default()
    };
    let revoke = || RevokeUserRequest {
        open_id: minted.openid.clone(),
        ..Default::default()
    };

    // No key, or a key session-svc does not know: UNAUTHENTICATED, whatever the RPC.
    for key in [None, Some("not-a-key-session-svc-knows-0123456789")] {
        let mut client = SessionServiceClient::new(stack.session_channel_with(key).await);
        for status in [
            client.validate(validate()).await.unwrap_err(),
            client.revoke_user(revoke()).await.unwrap_err(),
            client
                .watch_revocations(WatchRevocationsRequest {})
                .await
                .unwrap_err(),
        ] {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        }
    }

    // The gateway's key: what a gateway does, nothing else.
    let mut gateway =
        SessionServiceClient::new(stack.session_channel_with(Some(stack.gateway_key())).await);
    let user = gateway
        .validate(validate())
        .await
        .unwrap()
        .into_inner()
        .user;
    assert_eq!(user.unwrap().open_id, minted.openid);
    gateway
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .unwrap();
    let denied = gateway.revoke_user(revoke()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("admin"), "{denied:?}");
    assert_eq!(
        stack.get("/me", Some(&session)).await.status(),
        200,
        "not revoked"
    );

    // A key with the admin scope may.
    let mut admin = SessionServiceClient::new(stack.session_channel().await);
    let revoked = admin.revoke_user(revoke()).await.unwrap().into_inner();
    assert_eq!(revoked.revoked, 1);

    // Health and reflection need no key.
    let mut health = HealthClient::new(stack.session_channel_with(None).await);
    health
        .check(HealthCheckRequest {
            service: "weapp.session.v1.SessionService".into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_gateway_whose_key_is_refused_fails_closed_and_logs_no_one_out() {
    let stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    let wrong_key = stack.data_dir.path().join("wrong.key");
    std::fs::write(&wrong_key, "a-key-session-svc-has-never-seen-0123456789").unwrap();
    let gateway = gateway_svc::Application::build(
        gateway_svc::Settings::parse_from([
            "--listen".to_owned(),
            "127.0.0.1:0".into(),
            "--session-svc-url".into(),
            stack.session_svc_url(),
            "--session-svc-key-file".into(),
            wrong_key.display().to_string(),
        ])
        .unwrap(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", gateway.local_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gateway.run(shutdown.clone()));

    // The session is fine: the client must keep it (no magic key), and hear "retry".
    let me = stack
        .http
        .get(format!("{base}/me"))
        .headers(session.headers())
        .send()
        .await
        .unwrap();
    let (status, body) = json(me).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.get(MAGIC_KEY).is_none(), "{body}");

    // A login through it is the server's failure, not the client's.
    let minted = stack.mint(Default::default());
    let login = stack
        .http
        .get(format!("{base}/login"))
        .header("X-WX-Code", &minted.code)
        .send()
        .await
        .unwrap();
    let (status, body) = json(login).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(stack.get("/me", Some(&session)).await.status(), 200);

    // Readiness tells the truth: a load balancer must not send it traffic it can only refuse.
    let ready = stack
        .http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    let (status, body) = json(ready).await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("refuses this gateway's API key")
            && reason.contains("WEAPP_SESSION_SVC_KEY_FILE"),
        "{body}"
    );
    assert_eq!(
        stack.get("/readyz", None).await.status(),
        200,
        "the right key is ready"
    );
    shutdown.cancel();
}

#[test]
fn session_svc_refuses_to_listen_beyond_loopback_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    let base = [
        "--app-id",
        "wx1",
        "--app-secret-file",
        secret.to_str().unwrap(),
        "--listen",
        "0.0.0.0:50051",
    ];
    let err = session_svc::Settings::parse_from(base)
        .unwrap_err()
        .to_string();
    assert!(err.contains("WEAPP_API_KEYS_FILE"), "{err}");
    let mut insecure = base.to_vec();
    insecure.push("--grpc-insecure");
    assert!(session_svc::Settings::parse_from(insecure).is_ok());
    let mut loopback = base.to_vec();
    loopback.extend(["--listen", "127.0.0.1:50051"]);
    assert!(session_svc::Settings::parse_from(loopback).is_ok());
}

/// The gRPC link over mutual TLS: the gateway with its client certificate and key works end to
/// end; without TLS, or without a client certificate, nothing gets through.
#[tokio::test]
async fn the_grpc_link_runs_over_mutual_tls() {
    let stack = Stack::builder().grpc_tls().start().await;
    let (minted, session) = stack.new_session().await;
    let (status, me) = json(stack.get("/me", Some(&session)).await).await;
    assert_eq!((status, &me), (200, &minted.decrypted));

    // A backend with the CA, a client certificate and a key: served.
    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let valid = client
        .validate(ValidateRequest {
            id: session.id.clone(),
            skey: session.skey.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(valid.into_inner().user.unwrap().open_id, minted.openid);

    let certs = stack.certificates.as_ref().unwrap();
    let port = stack.session_svc_addr().port();
    // No client certificate: refused at the handshake (whatever the key).
    let without_cert = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(certs.client_tls(false))
        .unwrap();
    let refused = match without_cert.connect().await {
        Err(_) => true,
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate got through");
    // Plaintext: refused.
    let plaintext =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let refused = match plaintext.connect().await {
        Err(_) => true,
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext client got through");

    // The container health check still works: a TLS handshake with the running process.
    session_svc::probe::check(stack.session_svc_addr(), true)
        .await
        .unwrap();
}

#[test]
fn tls_settings_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let gateway = |args: &[&str]| gateway_svc::Settings::parse_from(args.iter().copied());
    let err = gateway(&["--session-svc-url", "https://session-svc:50051"]).unwrap_err();
    assert!(
        err.to_string().contains("WEAPP_SESSION_SVC_CA_FILE"),
        "{err}"
    );
    let ca = ca.to_str().unwrap();
    let err = gateway(&["--session-svc-ca-file", ca]).unwrap_err();
    assert!(err.to_string().contains("https://"), "{err}");
    assert!(
        gateway(&[
            "--session-svc-url",
            "https://s:1",
            "--session-svc-ca-file",
            ca
        ])
        .is_ok()
    );
    // session-svc: a certificate without its key (and the other way round) is refused.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    let secret = secret.to_str().unwrap();
    let base = ["--app-id", "wx1", "--app-secret-file", secret];
    let mut cert_only = base.to_vec();
    cert_only.extend(["--grpc-tls-cert-file", ca]);
    assert!(session_svc::Settings::parse_from(cert_only).is_err());
    // Client certificates authenticate callers: beyond loopback without keys is then allowed.
    let key = dir.path().join("key.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let mut mutual = base.to_vec();
    mutual.extend([
        "--listen",
        "0.0.0.0:50051",
        "--grpc-tls-cert-file",
        ca,
        "--grpc-tls-key-file",
        key.to_str().unwrap(),
        "--grpc-tls-client-ca-file",
        ca,
    ]);
    assert!(session_svc::Settings::parse_from(mutual).is_ok());
}

/// What a team's backend in another language sees: it discovers the API through reflection
/// (open) and gets UNAUTHENTICATED without a key, PERMISSION_DENIED with the gateway's key
/// (no admin or push scope) and OK with a key that has the scopes.
#[tokio::test]
async fn a_python_backend_through_reflection_gets_what_its_key_allows() {
    let stack = Stack::start().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../target/test-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: scripts/test.sh installs tests/requirements.txt there",
        python.display()
    );
    let output = tokio::process::Command::new(python)
        .arg(root.join("reflection/scopes.py"))
        .arg(stack.session_svc_addr().to_string())
        .arg(stack.gateway_key())
        .arg(stack.backend_key())
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answers,
        serde_json::json!({
            "no key": {"RevokeUser": "UNAUTHENTICATED", "Publish": "UNAUTHENTICATED"},
            "gateway key": {"RevokeUser": "PERMISSION_DENIED", "Publish": "PERMISSION_DENIED"},
            "admin key": {"RevokeUser": "OK", "Publish": "OK"},
        })
    );
}

/// `WEAPP_CONFIG_WATCH` (Kubernetes updates a mounted Secret in place and sends no signal): a
/// key added to the keys file on disk is in force within the interval, a key removed is
/// refused, and a file that cannot be read as a whole keeps the keys in force.
#[tokio::test]
async fn a_keys_file_changed_on_disk_is_in_force_within_the_watch_interval() {
    use weapp_proto::session::v1::GetAccessTokenRequest;
    let stack = Stack::builder()
        .session_args(["--config-watch", "100ms"])
        .start()
        .await;
    let keys = stack.data_dir.path().join("keys");
    let file = keys.join("api-keys.toml");
    let before = std::fs::read_to_string(&file).unwrap();
    let key = "a-key-added-while-running-0123456789abcdef";
    std::fs::write(keys.join("added.key"), key).unwrap();
    let ask = || async {
        SessionServiceClient::new(stack.session_channel_with(Some(key)).await)
            .get_access_token(GetAccessTokenRequest::default())
            .await
    };
    assert_eq!(ask().await.unwrap_err().code(), Code::Unauthenticated);

    let added = format!(
        "{before}\n[[key]]\nname = \"added\"\nfile = \"added.key\"\nscopes = [\"wechat.token\"]\n"
    );
    std::fs::write(&file, &added).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while ask().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the added key never took effect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Half a file: nothing changes, and the reason is counted.
    std::fs::write(&file, &added[..added.len() / 2]).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(ask().await.is_ok(), "a broken file keeps the keys in force");
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        stack.metrics_addr(weapp_tests::Service::SessionSvc)
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains(r#"weapp_config_reloads_total{outcome="error"} 1"#),
        "one error counted, not one per look: {metrics}"
    );

    std::fs::write(&file, &before).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while ask().await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed key still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(ask().await.unwrap_err().code(), Code::Unauthenticated);
}
