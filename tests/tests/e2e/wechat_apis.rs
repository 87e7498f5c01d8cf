//! session-svc as the app's WeChat central control server: one access_token for every replica
//! and backend (fetched once, refreshed ahead, compare-and-refresh, forced only by an
//! operator, kept across restarts), phone numbers through the gateway, and the user's
//! session_key kept sealed for decrypting, checking and resetting. WeChat is the sandbox;
//! everything else is real (gRPC over TCP, the gateway over HTTP, nx-27017 for MongoDB).
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::Value;
use tonic::Code;
use weapp_proto::session::v1::{
    AccessToken, CheckSessionKeyRequest, DecryptUserDataRequest, ForceRefreshAccessTokenRequest,
    GetAccessTokenRequest, GetPhoneNumberRequest, ReportInvalidAccessTokenRequest,
    ResetSessionKeyRequest, SessionCredentials, Subject, ValidateRequest,
    session_service_client::SessionServiceClient, subject,
};
use weapp_tests::{
    ClientSession, Stack, TestStore, json,
    stack::AuthorizedChannel,
    upstream::Upstream,
    wechat_sandbox::{PhoneCodeRequest, TokenFailure, UserDataRequest},
};

type Client = SessionServiceClient<AuthorizedChannel>;

async fn client(stack: &Stack) -> Client {
    SessionServiceClient::new(stack.session_channel().await)
}

async fn token(client: &mut Client) -> Result<AccessToken, tonic::Status> {
    client
        .get_access_token(GetAccessTokenRequest {})
        .await
        .map(tonic::Response::into_inner)
}

fn by_session(session: &ClientSession) -> Option<Subject> {
    Some(Subject {
        subject: Some(subject::Subject::Session(SessionCredentials {
            id: session.id.clone(),
            skey: session.skey.clone(),
        })),
    })
}

fn by_open_id(open_id: &str) -> Option<Subject> {
    Some(Subject {
        subject: Some(subject::Subject::OpenId(open_id.to_owned())),
    })
}

/// 50 concurrent GetAccessToken calls on `client`'s session-svc; every token they got.
async fn fifty_at_once(client: &Client) -> HashSet<String> {
    let calls = (0..50).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move { token(&mut client).await.unwrap().access_token })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn two_replicas_on_one_mongodb_fetch_the_token_once_and_share_it() {
    let stack = Stack::builder().store(TestStore::Mongo).start().await;
    let replica = stack.extra_session_svc().await;
    let a = client(&stack).await;
    let b = SessionServiceClient::new(stack.session_channel_at(replica.addr).await);

    let (from_a, from_b) = tokio::join!(fifty_at_once(&a), fifty_at_once(&b));
    assert_eq!(from_a.len(), 1, "one token in replica A: {from_a:?}");
    assert_eq!(from_a, from_b, "the same token in both replicas");
    let stats = stack.sandbox.token_stats();
    assert_eq!(
        stats.stable_token, 1,
        "exactly one stable_token call: {stats:?}"
    );
    assert_eq!(stats.token, 0, "never cgi-bin/token");
    assert_eq!(stats.stable_token_forced, 0, "never a forced refresh");

    // WeChat stops accepting it; backends report it to both replicas at once: one refresh.
    let stale = from_a.into_iter().next().unwrap();
    assert!(stack.sandbox.revoke_token(Some(&stale)));
    let reports = (0..20).map(|i| {
        let mut client = if i % 2 == 0 { a.clone() } else { b.clone() };
        let stale = stale.clone();
        tokio::spawn(async move {
            client
                .report_invalid_access_token(ReportInvalidAccessTokenRequest {
                    access_token: stale,
                })
                .await
                .unwrap()
                .into_inner()
                .access_token
        })
    });
    let fresh: HashSet<String> = futures::future::join_all(reports)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(!fresh.contains(&stale));
    let stats = stack.sandbox.token_stats();
    assert_eq!(
        stats.stable_token, 2,
        "exactly one refresh for all reports: {stats:?}"
    );
    assert_eq!(stats.stable_token_forced, 0);
    // Both replicas now hand out the new one.
    let (mut a, mut b) = (a, b);
    assert!(fresh.contains(&token(&mut a).await.unwrap().access_token));
    assert!(fresh.contains(&token(&mut b).await.unwrap().access_token));
    // A report of a token that is no longer current changes nothing.
    let again = a
        .report_invalid_access_token(ReportInvalidAccessTokenRequest {
            access_token: stale,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fresh.contains(&again.access_token));
    assert_eq!(stack.sandbox.token_stats().stable_token, 2);
    replica.stop().await;
}

#[tokio::test]
async fn the_token_survives_a_restart_and_is_refreshed_ahead_of_expiry() {
    // Tokens of 30 s: session-svc refreshes 20 s ahead, at most every 15 s; WeChat rotates
    // in the last half of such a short life.
    let mut stack = Stack::builder()
        .sandbox_token_ttl(Duration::from_secs(30))
        .session_args(["--access-token-refresh-ahead", "20s"])
        .start()
        .await;
    let first = token(&mut client(&stack).await).await.unwrap();
    let expires_in = Duration::try_from(first.expires_in.unwrap()).unwrap();
    assert!(expires_in > Duration::from_secs(25) && expires_in <= Duration::from_secs(30));

    stack.stop_session_svc().await;
    stack.start_session_svc().await;
    let mut c = client(&stack).await;
    assert_eq!(
        token(&mut c).await.unwrap().access_token,
        first.access_token
    );
    assert_eq!(
        stack.sandbox.token_stats().stable_token,
        1,
        "read back from the store after the restart, not fetched again"
    );

    // The background refresh replaces it before it expires; callers never wait for it.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let started = Instant::now();
        let now = token(&mut c).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "never on the caller's path"
        );
        if now.access_token != first.access_token {
            break;
        }
        assert!(Instant::now() < deadline, "no refresh ahead of expiry");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stats = stack.sandbox.token_stats();
    assert_eq!(
        (stats.stable_token, stats.token, stats.stable_token_forced),
        (2, 0, 0)
    );
}

#[tokio::test]
async fn while_wechat_is_down_the_token_is_served_until_it_expires_then_unavailable() {
    let stack = Stack::builder()
        .sandbox_token_ttl(Duration::from_secs(30))
        .session_args(["--access-token-refresh-ahead", "20s"])
        .start()
        .await;
    let mut c = client(&stack).await;
    let first = token(&mut c).await.unwrap();
    stack.sandbox.fail_token_calls(
        TokenFailure::Fault(weapp_tests::wechat_sandbox::Fault::Http500),
        1000,
    );
    // The scheduled refresh (15 s in) fails; the current token is still handed out.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(
        stack.sandbox.token_stats().stable_token >= 2,
        "a refresh was tried"
    );
    assert_eq!(
        token(&mut c).await.unwrap().access_token,
        first.access_token
    );
    // Within 10 s of its end it is not handed out any more, and there is no other.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let err = token(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().contains(&first.access_token));
    // WeChat back: the next call fetches a new token.
    stack.sandbox.fail_token_calls(TokenFailure::Errcode(0), 0);
    let back = token(&mut c).await.unwrap();
    assert_ne!(back.access_token, first.access_token);
}

#[tokio::test]
async fn wechat_refusals_say_what_the_operator_must_fix() {
    let stack = Stack::start().await;
    let mut c = client(&stack).await;
    for (errcode, code, says) in [
        (40164, Code::FailedPrecondition, "whitelist"),
        (40125, Code::FailedPrecondition, "AppSecret"),
        (40001, Code::FailedPrecondition, "AppSecret"),
        (45009, Code::ResourceExhausted, "quota"),
        (-1, Code::Unavailable, "-1"),
    ] {
        stack
            .sandbox
            .fail_token_calls(TokenFailure::Errcode(errcode), 1);
        let err = token(&mut c).await.unwrap_err();
        assert_eq!(err.code(), code, "{errcode}: {err:?}");
        assert!(err.message().contains(says), "{errcode}: {}", err.message());
        assert_eq!(
            err.metadata()
                .get("wechat-errcode")
                .and_then(|v| v.to_str().ok()),
            Some(errcode.to_string().as_str())
        );
        assert!(!err.message().contains(&stack.app_secret));
    }
    assert!(token(&mut c).await.is_ok());
    // The gateway's key may not ask for the token at all.
    let mut gateway =
        SessionServiceClient::new(stack.session_channel_with(Some(stack.gateway_key())).await);
    assert_eq!(
        token(&mut gateway).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn a_forced_refresh_is_an_admins_and_keeps_within_wechats_limits() {
    let stack = Stack::start().await;
    let mut c = client(&stack).await;
    let before = token(&mut c).await.unwrap().access_token;
    let force = |reason: &str| ForceRefreshAccessTokenRequest {
        reason: reason.into(),
    };
    let mut gateway =
        SessionServiceClient::new(stack.session_channel_with(Some(stack.gateway_key())).await);
    let refused = gateway
        .force_refresh_access_token(force("not mine to ask"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        c.force_refresh_access_token(force(""))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument,
        "a reason is required"
    );

    let after = c
        .force_refresh_access_token(force("the token leaked into a log"))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    assert_ne!(after, before);
    assert_eq!(token(&mut c).await.unwrap().access_token, after);
    let again = c
        .force_refresh_access_token(force("once more"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted);
    let retry_after: u64 = again
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let stats = stack.sandbox.token_stats();
    assert_eq!(
        (stats.stable_token, stats.stable_token_forced),
        (2, 1),
        "{stats:?}"
    );
}

fn phone_routes(upstream: &Upstream) -> String {
    format!(
        "[[route]]\nprefix = \"/api/\"\nupstream = \"{}\"\nsession = \"required\"\n",
        upstream.url()
    )
}

#[tokio::test]
async fn a_phone_code_through_the_gateway_gives_the_number_and_the_session_carries_it() {
    let upstream = Upstream::start().await;
    let stack = Stack::builder()
        .routes(phone_routes(&upstream))
        .start()
        .await;
    let (minted, session) = stack.new_session().await;
    let phone = stack.sandbox.mint_phone_code(PhoneCodeRequest {
        openid: Some(minted.openid.clone()),
        ..Default::default()
    });
    // WeChat stopped accepting the current token: session-svc refreshes it and retries once.
    token(&mut client(&stack).await).await.unwrap();
    assert!(stack.sandbox.revoke_token(None));

    let answer = stack
        .http
        .post(stack.url("/phone-number"))
        .headers(session.headers())
        .header("X-WX-Phone-Code", &phone.code)
        .send()
        .await
        .unwrap();
    let (status, body) = json(answer).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phoneNumber"], phone.phone_number.as_str());
    assert_eq!(body["purePhoneNumber"], phone.pure_phone_number.as_str());
    assert_eq!(body["countryCode"], "86");
    let stats = stack.sandbox.token_stats();
    assert_eq!(
        (stats.refused_tokens, stats.stable_token),
        (1, 2),
        "{stats:?}"
    );

    // Validate answers carry it, and so do forwarded identities (header and signed claim).
    let validated = client(&stack)
        .await
        .validate(ValidateRequest {
            id: session.id.clone(),
            skey: session.skey.clone(),
            want_identity_assertion: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        validated.phone.as_ref().unwrap().pure_phone_number,
        phone.pure_phone_number
    );
    let e164 = format!("+86{}", phone.pure_phone_number);
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(validated.identity_assertion.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["phone_number"], e164.as_str());
    assert_eq!(claims["phone_number_verified"], true);
    let (status, seen) = json(
        stack
            .http
            .get(stack.url("/api/echo"))
            .headers(session.headers())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{seen}");
    assert_eq!(seen["headers"]["x-weapp-phone"], e164.as_str());

    // A used code, no code, no session: clear answers, nothing changes.
    for (request, want) in [
        (
            stack
                .http
                .post(stack.url("/phone-number"))
                .headers(session.headers())
                .json(&serde_json::json!({ "code": phone.code })),
            400,
        ),
        (
            stack
                .http
                .post(stack.url("/phone-number"))
                .headers(session.headers()),
            400,
        ),
    ] {
        let (status, body) = json(request.send().await.unwrap()).await;
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error"], "ERR_PHONE_NUMBER_FAILED");
        assert!(
            body.get(weapp_tests::MAGIC_KEY).is_none(),
            "the session is fine"
        );
    }
    let (status, body) = json(
        stack
            .http
            .post(stack.url("/phone-number"))
            .header("X-WX-Phone-Code", "whatever")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        body[weapp_tests::MAGIC_KEY],
        1,
        "the SDK logs in and retries"
    );
}

#[tokio::test]
async fn backends_get_phone_numbers_by_open_id_whatever_form_the_country_code_takes() {
    let stack = Stack::start().await;
    let (minted, _) = stack.new_session().await;
    let phone = stack.sandbox.mint_phone_code(PhoneCodeRequest {
        openid: Some(minted.openid.clone()),
        country_code: Some("852".into()),
        pure_phone_number: Some("51234567".into()),
        country_code_as_number: true,
        ..Default::default()
    });
    let mut c = client(&stack).await;
    let got = c
        .get_phone_number(GetPhoneNumberRequest {
            subject: by_open_id(&minted.openid),
            code: phone.code.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .phone
        .unwrap();
    assert_eq!(got.country_code, "852");
    assert_eq!(got.phone_number, "+852 51234567");
    // Another user's code is refused by WeChat; a session-less subject is refused by us.
    let other = stack.sandbox.mint_phone_code(PhoneCodeRequest {
        openid: Some("o-someone-else".into()),
        ..Default::default()
    });
    let err = c
        .get_phone_number(GetPhoneNumberRequest {
            subject: by_open_id(&minted.openid),
            code: other.code,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = c
        .get_phone_number(GetPhoneNumberRequest {
            subject: None,
            code: phone.code,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn the_session_key_decrypts_werun_data_checks_and_resets() {
    let stack = Stack::start().await;
    let (minted, session) = stack.new_session().await;
    let mut c = client(&stack).await;
    let werun = stack
        .sandbox
        .encrypt_user_data(UserDataRequest {
            openid: minted.openid.clone(),
            ..Default::default()
        })
        .unwrap();
    let decrypt = |subject: Option<Subject>,
                   data: &weapp_tests::wechat_sandbox::EncryptedUserData| {
        DecryptUserDataRequest {
            subject,
            encrypted_data: data.encrypted_data.clone(),
            iv: data.iv.clone(),
        }
    };
    let json_text = c
        .decrypt_user_data(decrypt(by_session(&session), &werun))
        .await
        .unwrap()
        .into_inner()
        .json;
    let decrypted: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(decrypted, werun.decrypted);
    assert_eq!(decrypted["stepInfoList"][0]["step"], 8412);

    // Another app's watermark is refused.
    let foreign = stack
        .sandbox
        .encrypt_user_data(UserDataRequest {
            openid: minted.openid.clone(),
            watermark_appid: Some("wx-another-app".into()),
            ..Default::default()
        })
        .unwrap();
    let err = c
        .decrypt_user_data(decrypt(by_open_id(&minted.openid), &foreign))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // checksession with WeChat's HMAC rule; a reset replaces the key here and at WeChat.
    let check = |subject| CheckSessionKeyRequest { subject };
    assert!(
        c.check_session_key(check(by_session(&session)))
            .await
            .unwrap()
            .into_inner()
            .valid
    );
    let before = stack.sandbox.current_session_key(&minted.openid).unwrap();
    c.reset_session_key(ResetSessionKeyRequest {
        subject: by_open_id(&minted.openid),
    })
    .await
    .unwrap();
    assert_ne!(
        stack.sandbox.current_session_key(&minted.openid).unwrap(),
        before
    );
    assert!(
        c.check_session_key(check(by_open_id(&minted.openid)))
            .await
            .unwrap()
            .into_inner()
            .valid
    );
    let after_reset = stack
        .sandbox
        .encrypt_user_data(UserDataRequest {
            openid: minted.openid.clone(),
            ..Default::default()
        })
        .unwrap();
    assert!(
        c.decrypt_user_data(decrypt(by_session(&session), &after_reset))
            .await
            .is_ok()
    );
    // Data encrypted under the old key no longer decrypts, and says why.
    let err = c
        .decrypt_user_data(decrypt(by_session(&session), &werun))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("latest session_key"),
        "{}",
        err.message()
    );

    // The user logs in again elsewhere: WeChat's new key replaces ours.
    let second = stack.mint(weapp_tests::wechat_sandbox::MintRequest {
        openid: Some(minted.openid.clone()),
        ..Default::default()
    });
    weapp_tests::session_from(stack.login_encrypted(&second).await).await;
    assert!(
        c.check_session_key(check(by_session(&session)))
            .await
            .unwrap()
            .into_inner()
            .valid
    );

    // Never logged in: nothing kept.
    let err = c
        .check_session_key(check(by_open_id("o-never-logged-in")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // A bad session: UNAUTHENTICATED, as for Validate.
    let mut wrong = session.clone();
    wrong.skey = "x".repeat(43);
    let err = c
        .check_session_key(check(by_session(&wrong)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

/// Writes a data key file (32 bytes of `byte`, base64) and returns its path.
fn data_key(stack: &Stack, name: &str, byte: u8) -> String {
    let path = stack.data_dir.path().join(name);
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode([byte; 32]),
    )
    .unwrap();
    path.display().to_string()
}

/// DecryptUserData of fresh WeRun data of `open_id`, for `session`.
async fn decrypts(
    stack: &Stack,
    open_id: &str,
    session: &ClientSession,
) -> Result<tonic::Response<weapp_proto::session::v1::DecryptUserDataResponse>, tonic::Status> {
    let data = stack
        .sandbox
        .encrypt_user_data(UserDataRequest {
            openid: open_id.to_owned(),
            ..Default::default()
        })
        .unwrap();
    client(stack)
        .await
        .decrypt_user_data(DecryptUserDataRequest {
            subject: by_session(session),
            encrypted_data: data.encrypted_data,
            iv: data.iv,
        })
        .await
}

async fn restart_with_keys(stack: &mut Stack, keys: &[&str]) {
    stack.stop_session_svc().await;
    let args = stack.session_args_mut();
    // A list flag given twice would add up: replace it.
    if let Some(at) = args.iter().position(|a| a == "--data-key-files") {
        args.drain(at..at + 2);
    }
    args.extend(["--data-key-files".to_owned(), keys.join(",")]);
    stack.start_session_svc().await;
}

#[tokio::test]
async fn data_keys_rotate_old_ones_still_open_and_the_next_login_seals_with_the_newest() {
    let mut stack = Stack::start().await;
    let (k1, k2, k3) = (
        data_key(&stack, "k1", 1),
        data_key(&stack, "k2", 2),
        data_key(&stack, "k3", 3),
    );
    restart_with_keys(&mut stack, &[&k1]).await;
    let (minted, session) = stack.new_session().await;
    assert!(decrypts(&stack, &minted.openid, &session).await.is_ok());

    // k1 gone: what it sealed no longer opens, and the error says which key is missing.
    restart_with_keys(&mut stack, &[&k2]).await;
    let err = decrypts(&stack, &minted.openid, &session)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("WEAPP_DATA_KEY_FILES"),
        "{}",
        err.message()
    );

    // k2 first, k1 still listed: the old key opens it (and it is sealed again with k2).
    restart_with_keys(&mut stack, &[&k2, &k1]).await;
    assert!(decrypts(&stack, &minted.openid, &session).await.is_ok());
    restart_with_keys(&mut stack, &[&k2]).await;
    assert!(
        decrypts(&stack, &minted.openid, &session).await.is_ok(),
        "resealed with the newest key"
    );

    // The next login seals with the newest key.
    restart_with_keys(&mut stack, &[&k3, &k2]).await;
    let again = stack.mint(weapp_tests::wechat_sandbox::MintRequest {
        openid: Some(minted.openid.clone()),
        ..Default::default()
    });
    weapp_tests::session_from(stack.login_encrypted(&again).await).await;
    restart_with_keys(&mut stack, &[&k3]).await;
    assert!(decrypts(&stack, &minted.openid, &session).await.is_ok());
}
