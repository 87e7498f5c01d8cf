//! `session-svc admin …`: the operator's commands, parsed as the binary parses them and run
//! against a running stack over real gRPC, with API keys like any backend's.
use clap::Parser as _;
use serde_json::Value;
use session_svc::config::{Cli, SessionCommand};
use weapp_tests::{Stack, ws::next_text};

/// Runs `session-svc admin <args>` with `key` in a key file: its line of JSON, or its refusal.
async fn admin(stack: &Stack, key: Option<&str>, args: &[&str]) -> Result<Value, String> {
    let mut argv = vec!["session-svc".to_owned(), "admin".into()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    if !args.contains(&"--url") {
        argv.extend(["--url".into(), stack.session_svc_url()]);
    }
    if let Some(key) = key {
        let file = stack
            .data_dir
            .path()
            .join(format!("admin-{}.key", key.len()));
        std::fs::write(&file, format!("{key}\n")).expect("key file");
        argv.extend(["--key-file".into(), file.display().to_string()]);
    }
    let Some(SessionCommand::Admin(command)) = Cli::try_parse_from(argv).expect("parses").command
    else {
        panic!("an admin command");
    };
    command
        .run()
        .await
        .map(|line| serde_json::from_str(&line).expect("one line of JSON"))
}

#[tokio::test]
async fn an_operator_revokes_publishes_checks_sessions_and_reads_the_token_without_grpcurl() {
    let stack = Stack::start().await;
    let (minted, session) = stack.new_session().await;
    let key = Some(stack.backend_key());

    let token = admin(&stack, key, &["token"]).await.expect("token");
    assert!(
        !token["access_token"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{token}"
    );
    assert!(
        token["expires_in_seconds"].as_i64().unwrap_or_default() > 0,
        "{token}"
    );

    let url = stack.ws_url(&format!("/ws?{}", session.query()));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    assert!(next_text(&mut ws).await.starts_with("Server: "));
    stack.wait_for_followers(1).await;
    let published = admin(
        &stack,
        key,
        &["publish", "--open-id", &minted.openid, "your order shipped"],
    )
    .await
    .expect("publish");
    assert_eq!(published["sockets"], 1, "{published}");
    assert_eq!(next_text(&mut ws).await, "your order shipped");

    let checked = admin(&stack, key, &["sessions", &session.id, "not-a-session"])
        .await
        .expect("sessions");
    assert_eq!(checked["ended"], serde_json::json!(["not-a-session"]));

    let revoked = admin(&stack, key, &["revoke-user", &minted.openid])
        .await
        .expect("revoke-user");
    assert_eq!(revoked["revoked"], 1, "{revoked}");
    assert_eq!(stack.get("/me", Some(&session)).await.status(), 401);
    let checked = admin(&stack, key, &["sessions", &session.id])
        .await
        .expect("sessions");
    assert_eq!(checked["ended"], serde_json::json!([session.id]));

    let refreshed = admin(
        &stack,
        key,
        &["force-refresh", "--reason", "leaked in a log"],
    )
    .await
    .expect("force-refresh");
    assert_eq!(refreshed["refreshed"], true, "{refreshed}");
}

#[tokio::test]
async fn a_missing_key_or_scope_is_refused_with_what_to_do() {
    let stack = Stack::start().await;
    let no_key = admin(&stack, None, &["revoke-user", "o-1"])
        .await
        .unwrap_err();
    assert!(
        no_key.contains("Unauthenticated") && no_key.contains("--key-file"),
        "{no_key}"
    );
    // The gateway's key has no admin scope.
    let no_scope = admin(&stack, Some(stack.gateway_key()), &["revoke-user", "o-1"])
        .await
        .unwrap_err();
    assert!(
        no_scope.contains("PermissionDenied") && no_scope.contains("scope"),
        "{no_scope}"
    );
    assert!(
        !no_scope.contains(stack.gateway_key()),
        "a key is never echoed: {no_scope}"
    );
    let nowhere = admin(&stack, None, &["token", "--url", "http://127.0.0.1:1"]).await;
    assert!(nowhere.unwrap_err().contains("cannot reach session-svc"));
}
