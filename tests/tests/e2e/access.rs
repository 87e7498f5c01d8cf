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
    };
    let revoke = || RevokeUserRequest {
        open_id: minted.openid.clone(),
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
