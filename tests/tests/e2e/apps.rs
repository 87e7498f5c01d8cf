//! Moving from `WEAPP_APP_ID` to an apps file loses nothing: sessions created before (and
//! records from before apps files, which name no app) are the default app's, keys without
//! `apps` keep acting for it. Both settings at once is refused at start.
use session_svc::{
    credentials::Credentials,
    record::{SessionRecord, UserInfo},
};
use weapp_proto::session::v1::{
    GetAccessTokenRequest, session_service_client::SessionServiceClient,
};
use weapp_tests::{ClientSession, Stack, session_from, wechat_sandbox::MintRequest};

/// Replaces `--app-id` and `--app-secret-file` by an apps file naming the stack's app as the
/// default and a second app (unknown to the sandbox: only listed).
fn use_an_apps_file(stack: &mut Stack) {
    let dir = stack.data_dir.path().join("apps");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("main.secret"), &stack.app_secret).unwrap();
    std::fs::write(dir.join("other.secret"), "another-apps-secret").unwrap();
    std::fs::write(
        dir.join("apps.toml"),
        format!(
            "default = \"{0}\"\n\n[[app]]\nappid = \"{0}\"\nsecret_file = \"main.secret\"\n\n\
             [[app]]\nappid = \"wxanotherapp00000\"\nsecret_file = \"other.secret\"\n",
            stack.app_id
        ),
    )
    .unwrap();
    let args = stack.session_args_mut();
    for flag in ["--app-id", "--app-secret-file"] {
        let at = args
            .iter()
            .position(|a| a == flag)
            .expect("the stack sets it");
        args.drain(at..at + 2);
    }
    args.extend([
        "--apps-file".to_owned(),
        dir.join("apps.toml").display().to_string(),
    ]);
}

#[tokio::test]
async fn moving_to_an_apps_file_keeps_every_session_and_key() {
    let mut stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    // A record written before apps files: no app in it.
    let old = Credentials::generate().unwrap();
    let now = session_svc::record::now_millis();
    stack
        .store()
        .insert(&SessionRecord {
            id: old.id.clone(),
            skey_hash: old.skey_hash(),
            user: UserInfo::code_only("o-before-apps-files", None),
            created_at: now,
            last_seen_at: now,
            expires_at: now + 3_600_000,
            max_expires_at: now + 7_200_000,
            phone: None,
            app_id: None,
        })
        .await
        .unwrap();
    let old = ClientSession {
        id: old.id,
        skey: old.skey,
    };
    let mut tokens = SessionServiceClient::new(stack.session_channel().await);
    let token = tokens
        .get_access_token(GetAccessTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .access_token;

    stack.stop_session_svc().await;
    use_an_apps_file(&mut stack);
    stack.start_session_svc().await;

    for session in [&session, &old] {
        let me = stack.get("/me", Some(session)).await;
        assert_eq!(me.status(), 200);
        assert_eq!(me.headers()["x-weapp-app-id"], stack.app_id.as_str());
    }
    // The backend key names no apps: the default app's token, the one stored before.
    let mut tokens = SessionServiceClient::new(stack.session_channel().await);
    let again = tokens
        .get_access_token(GetAccessTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .access_token;
    assert_eq!(again, token, "the stored token is the default app's");
    let denied = tokens
        .get_access_token(GetAccessTokenRequest {
            app_id: "wxanotherapp00000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // New logins with no Referer are the default app's.
    let minted = stack.mint(MintRequest::default());
    let answer = stack.login_encrypted(&minted).await;
    assert_eq!(answer.headers()["x-weapp-app-id"], stack.app_id.as_str());
    session_from(answer).await;
}

#[tokio::test]
async fn an_apps_file_and_an_app_id_together_are_refused_at_start() {
    let mut stack = Stack::start().await;
    stack.stop_session_svc().await;
    use_an_apps_file(&mut stack);
    let mut args = stack.session_args();
    args.extend(["--app-id".to_owned(), stack.app_id.clone()]);
    let refused = session_svc::Settings::parse_from(&args)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("--app-id") && refused.contains("--apps-file"),
        "{refused}"
    );
    assert!(!refused.contains(&stack.app_secret));

    // The secret from the environment's way (a file) with an apps file: refused too.
    let secret = stack
        .data_dir
        .path()
        .join("app_secret")
        .display()
        .to_string();
    let mut args = stack.session_args();
    args.extend(["--app-secret-file".to_owned(), secret]);
    let settings = session_svc::Settings::parse_from(&args);
    let refused = match settings {
        Ok(settings) => session_svc::Application::build(settings)
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string(),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("WEAPP_APPS_FILE"), "{refused}");
    assert!(!refused.contains(&stack.app_secret));
}
