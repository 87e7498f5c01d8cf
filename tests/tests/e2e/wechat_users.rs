//! session-svc as the app's WeChat central control server, for users: phone numbers through
//! the gateway (kept on the session, carried by Validate and forwarded identities), and each
//! user's latest session_key kept sealed for decrypting WeRun-style data, checksession and
//! resetusersessionkey, with data keys that rotate. WeChat is the sandbox.
use base64::Engine as _;
use serde_json::Value;
use tonic::Code;
use weapp_proto::session::v1::{
    CheckSessionKeyRequest, DecryptUserDataRequest, GetPhoneNumberRequest, ResetSessionKeyRequest,
    SessionCredentials, Subject, ValidateRequest, subject,
};
use weapp_tests::{
    ClientSession, Stack, json, raw,
    upstream::Upstream,
    wechat_sandbox::{PhoneCodeRequest, UserDataRequest},
};

use crate::access_token::{client, token};

fn by_session(session: &ClientSession) -> Option<Subject> {
    Some(Subject {
        subject: Some(subject::Subject::Session(SessionCredentials {
            id: session.id.clone(),
            skey: session.skey.clone(),
        })),
        ..Default::default()
    })
}

fn by_open_id(open_id: &str) -> Option<Subject> {
    Some(Subject {
        subject: Some(subject::Subject::OpenId(open_id.to_owned())),
        ..Default::default()
    })
}

/// The mini-program's getPhoneNumber code, sent to the gateway as the README says.
async fn send_phone_code(stack: &Stack, session: &ClientSession, code: &str) -> reqwest::Response {
    stack
        .http
        .post(stack.url("/phone-number"))
        .headers(session.headers())
        .header("X-WX-Phone-Code", code)
        .send()
        .await
        .unwrap()
}

/// The headers a business upstream received for a request of `session` to `url`.
async fn forwarded_headers(stack: &Stack, url: &str, session: &ClientSession) -> Value {
    let (status, seen) = json(
        stack
            .http
            .get(url)
            .headers(session.headers())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{seen}");
    seen["headers"].clone()
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
    let phone = stack.sandbox.apis().mint_phone_code(PhoneCodeRequest {
        openid: Some(minted.openid.clone()),
        ..Default::default()
    });
    // WeChat stopped accepting the current token: session-svc refreshes it and retries once.
    token(&mut client(&stack).await).await.unwrap();
    assert!(stack.sandbox.apis().revoke_token(None));

    let answer = send_phone_code(&stack, &session, &phone.code).await;
    let (status, body) = json(answer).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phoneNumber"], phone.phone_number.as_str());
    assert_eq!(body["purePhoneNumber"], phone.pure_phone_number.as_str());
    assert_eq!(body["countryCode"], "86");
    let stats = stack.sandbox.apis().token_stats();
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
    let headers = forwarded_headers(&stack, &stack.url("/api/echo"), &session).await;
    assert_eq!(headers["x-weapp-phone"], e164.as_str());

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

/// A body sent chunked (no Content-Length) reaches the route that reads it, as one with a
/// length does: the code in `{"code": …}` either way.
#[tokio::test]
async fn a_phone_code_in_a_chunked_body_is_read_as_one_with_a_length() {
    let stack = Stack::start().await;
    let (minted, session) = stack.new_session().await;
    let credentials = format!("X-WX-Id: {}\r\nX-WX-Skey: {}", session.id, session.skey);
    for chunked in [true, false] {
        let phone = stack.sandbox.apis().mint_phone_code(PhoneCodeRequest {
            openid: Some(minted.openid.clone()),
            ..Default::default()
        });
        let body = serde_json::json!({ "code": phone.code }).to_string();
        let (framing, bytes) = match chunked {
            true => (
                "Transfer-Encoding: chunked".to_owned(),
                raw::chunked(body.as_bytes(), 7),
            ),
            false => (
                format!("Content-Length: {}", body.len()),
                body.clone().into_bytes(),
            ),
        };
        let head = format!(
            "POST /phone-number HTTP/1.1\r\nContent-Type: application/json\r\n{credentials}\r\n{framing}"
        );
        let answer = raw::request(stack.gateway_addr(), &head, &bytes).await;
        assert_eq!(answer.status, 200, "chunked {chunked}: {}", answer.body);
        assert_eq!(
            answer.json()["purePhoneNumber"],
            phone.pure_phone_number.as_str()
        );
    }
    // Past the gateway's body limit, chunked or not: 413 before anything is asked.
    let stack = Stack::builder()
        .gateway_args(["--http-max-body-bytes", "64"])
        .start()
        .await;
    let (_, session) = stack.new_session().await;
    let credentials = format!("X-WX-Id: {}\r\nX-WX-Skey: {}", session.id, session.skey);
    let big = format!("{{\"code\": \"{}\"}}", "x".repeat(100));
    let head = format!(
        "POST /phone-number HTTP/1.1\r\nContent-Type: application/json\r\n{credentials}\r\nTransfer-Encoding: chunked"
    );
    let answer = raw::request(
        stack.gateway_addr(),
        &head,
        &raw::chunked(big.as_bytes(), 16),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.body);
}

#[tokio::test]
async fn backends_get_phone_numbers_by_open_id_whatever_form_the_country_code_takes() {
    let stack = Stack::start().await;
    let (minted, _) = stack.new_session().await;
    let phone = stack.sandbox.apis().mint_phone_code(PhoneCodeRequest {
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
    let other = stack.sandbox.apis().mint_phone_code(PhoneCodeRequest {
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
        .apis()
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
        .apis()
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
    let before = stack
        .sandbox
        .apis()
        .current_session_key(&minted.openid)
        .unwrap();
    c.reset_session_key(ResetSessionKeyRequest {
        subject: by_open_id(&minted.openid),
    })
    .await
    .unwrap();
    assert_ne!(
        stack
            .sandbox
            .apis()
            .current_session_key(&minted.openid)
            .unwrap(),
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
        .apis()
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
        .apis()
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

/// A number verified through one gateway reaches what another gateway had cached of the
/// session: session-svc's stream tells every gateway to forget it (the session stays valid,
/// its WebSockets open).
#[tokio::test]
async fn every_gateway_forwards_the_verified_number_at_once() {
    let upstream = Upstream::start().await;
    let stack = Stack::builder()
        .routes(phone_routes(&upstream))
        .start()
        .await;
    let other = stack.extra_gateway().await;
    stack.wait_for_followers(2).await;
    let (minted, session) = stack.new_session().await;
    let forwarded_phone = || async {
        forwarded_headers(&stack, &other.url("/api/echo"), &session)
            .await
            .get("x-weapp-phone")
            .cloned()
    };
    assert_eq!(
        forwarded_phone().await,
        None,
        "no number yet (and now cached)"
    );
    let phone = stack.sandbox.apis().mint_phone_code(PhoneCodeRequest {
        openid: Some(minted.openid.clone()),
        ..Default::default()
    });
    let answer = send_phone_code(&stack, &session, &phone.code).await;
    assert_eq!(answer.status(), 200);
    let e164 = Value::from(format!("+86{}", phone.pure_phone_number));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while forwarded_phone().await.as_ref() != Some(&e164) {
        assert!(
            std::time::Instant::now() < deadline,
            "the other gateway still forwards its cached identity"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Still the same session there: it was not revoked.
    assert_eq!(
        stack
            .http
            .get(other.url("/me"))
            .headers(session.headers())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
