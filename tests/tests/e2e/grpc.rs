//! session-svc over gRPC as any backend would use it: status codes, health, reflection.
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use weapp_proto::session::v1::{
    CheckSessionsRequest, LoginRequest, LogoutRequest, RevokeUserRequest, ValidateRequest,
    WatchRevocationsRequest, revocation::Event, session_service_client::SessionServiceClient,
};
use weapp_tests::{Stack, wechat_sandbox::MintRequest};

#[tokio::test]
async fn login_validate_logout_with_meaningful_status_codes() {
    let stack = Stack::start().await;
    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let minted = stack.mint(MintRequest::default());
    let login = client
        .login(LoginRequest {
            code: minted.code.clone(),
            encrypted_data: Some(minted.encrypted_data.clone()),
            iv: Some(minted.iv.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let creds = login.session.unwrap();
    assert_eq!(
        login.user.unwrap().nick_name.as_deref(),
        Some("Sandbox User")
    );

    let valid = client
        .validate(ValidateRequest {
            id: creds.id.clone(),
            skey: creds.skey.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(valid.user.unwrap().open_id, minted.openid);
    assert!(valid.expires_at.unwrap().seconds > valid.created_at.unwrap().seconds);

    let replay = client
        .login(LoginRequest {
            code: minted.code.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::PermissionDenied);
    assert_eq!(replay.metadata().get("wechat-errcode").unwrap(), "40163");

    let empty = client.login(LoginRequest::default()).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);

    let quota = stack.mint(MintRequest {
        errcode: Some(45011),
        ..Default::default()
    });
    let limited = client
        .login(LoginRequest {
            code: quota.code,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);

    client
        .logout(LogoutRequest {
            id: creds.id.clone(),
            skey: creds.skey.clone(),
        })
        .await
        .unwrap();
    let gone = client
        .validate(ValidateRequest {
            id: creds.id,
            skey: creds.skey,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn revoke_user_ends_every_session_of_that_user_and_no_other() {
    let stack = Stack::start().await;
    let (alice, first) = stack.new_session().await;
    let again = stack.mint(MintRequest {
        openid: Some(alice.openid.clone()),
        ..Default::default()
    });
    let second = weapp_tests::session_from(stack.login_encrypted(&again).await).await;
    let (_, bob) = stack.new_session().await;

    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let answer = client
        .revoke_user(RevokeUserRequest {
            open_id: alice.openid.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.revoked, 2);
    for session in [&first, &second] {
        assert_eq!(stack.get("/me", Some(session)).await.status(), 401);
    }
    assert_eq!(stack.get("/me", Some(&bob)).await.status(), 200);
    let empty = client
        .revoke_user(RevokeUserRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn check_sessions_names_the_ended_ones_by_id_alone() {
    let stack = Stack::start().await;
    let (_, live) = stack.new_session().await;
    let (_, gone) = stack.new_session().await;
    assert_eq!(stack.get("/logout", Some(&gone)).await.status(), 200);
    let unknown = "0".repeat(32);
    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let mut ended = client
        .check_sessions(CheckSessionsRequest {
            session_ids: vec![
                live.id.clone(),
                gone.id.clone(),
                unknown.clone(),
                "not an id".into(),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .ended;
    ended.sort();
    let mut expected = vec![gone.id.clone(), unknown, "not an id".to_owned()];
    expected.sort();
    assert_eq!(ended, expected);
    let too_many = client
        .check_sessions(CheckSessionsRequest {
            session_ids: vec![live.id.clone(); 10_001],
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let stack = Stack::start().await;
    let mut health = HealthClient::new(stack.session_channel().await);
    for service in ["", "weapp.session.v1.SessionService"] {
        // SERVING once the store has answered the first check.
        let mut status = ServingStatus::Unknown;
        for _ in 0..40 {
            let answer = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            status = answer.status();
            if status == ServingStatus::Serving {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(stack.session_channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"weapp.session.v1.SessionService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

/// The next revocation on the stream, skipping heartbeats; fails after 2 s.
async fn next_revocation(
    stream: &mut tonic::Streaming<weapp_proto::session::v1::Revocation>,
) -> Event {
    tokio::time::timeout(std::time::Duration::from_secs(2), async {
        loop {
            match stream.message().await.unwrap().unwrap().event.unwrap() {
                Event::Heartbeat(_) => continue,
                event => return event,
            }
        }
    })
    .await
    .expect("a revocation within 2 s")
}

#[tokio::test]
async fn watch_revocations_streams_heartbeats_logouts_and_user_revocations() {
    let stack = Stack::start().await;
    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let mut stream = client
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    // A heartbeat first, saying how often they come; then more of them while nothing happens.
    let first = stream.message().await.unwrap().unwrap().event.unwrap();
    let Event::Heartbeat(beat) = first else {
        panic!("expected a heartbeat first, got {first:?}");
    };
    let interval = std::time::Duration::try_from(beat.heartbeat_interval.unwrap()).unwrap();
    assert!(
        interval <= std::time::Duration::from_millis(500),
        "{interval:?}"
    );
    let second = tokio::time::timeout(interval * 4, stream.message()).await;
    assert!(
        matches!(second, Ok(Ok(Some(_)))),
        "heartbeats keep coming: {second:?}"
    );

    let (minted, session) = stack.new_session().await;
    client
        .logout(LogoutRequest {
            id: session.id.clone(),
            skey: session.skey.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        next_revocation(&mut stream).await,
        Event::SessionId(session.id)
    );

    client
        .revoke_user(RevokeUserRequest {
            open_id: minted.openid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next_revocation(&mut stream).await,
        Event::OpenId(minted.openid)
    );
}
