//! `/login`: both SDK flows, WeChat's refusals, bad input, and the one-exchange-per-code rule.
use weapp_tests::{
    MAGIC_KEY, Stack, json, session_from,
    wechat_sandbox::{Fault, MintRequest, Profile},
};

#[tokio::test]
async fn code_only_login_gives_a_session_whose_user_is_the_openid() {
    let stack = Stack::start().await;
    let minted = stack.mint(MintRequest {
        unionid: Some("union-1".into()),
        ..Default::default()
    });
    let session = session_from(stack.login_code_only(&minted.code).await).await;
    // Its creation time (12 hex digits), then 128 random bits.
    assert_eq!(session.id.len(), 44, "{}", session.id);
    assert!(session.id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(session.skey.len() >= 43, "256-bit skey");

    let (status, me) = json(stack.get("/me", Some(&session)).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        me,
        serde_json::json!({ "openId": minted.openid, "unionId": "union-1" })
    );
}

#[tokio::test]
async fn encrypted_data_login_gives_the_decrypted_profile() {
    let stack = Stack::start().await;
    let minted = stack.mint(MintRequest {
        profile: Some(Profile {
            nick_name: "小程序用户".into(),
            gender: 2,
            ..Profile::default()
        }),
        ..Default::default()
    });
    let (status, body) = json(stack.login_encrypted(&minted).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["userInfo"]["nickName"], "小程序用户");
    let session = weapp_tests::ClientSession {
        id: body["session"]["id"].as_str().unwrap().into(),
        skey: body["session"]["skey"].as_str().unwrap().into(),
    };
    let (_, me) = json(stack.get("/me", Some(&session)).await).await;
    // What wafer kept as req.session.userInfo: the decrypted object whole, watermark included.
    assert_eq!(me, minted.decrypted);
    assert_eq!(me["openId"], minted.openid.as_str());
    assert_eq!(me["nickName"], "小程序用户");
    assert_eq!(me["gender"], 2);
    assert_eq!(me["watermark"]["appid"], stack.app_id.as_str());
}

#[tokio::test]
async fn login_params_in_the_query_string_with_plus_turned_to_space_still_work() {
    let stack = Stack::start().await;
    // Mint until the base64 holds a '+', the character a query string turns into a space.
    let minted = (0..50)
        .map(|_| stack.mint(MintRequest::default()))
        .find(|m| m.encrypted_data.contains('+'))
        .expect("some encryptedData holds a '+'");
    // Deliberately unescaped, as broken clients send it.
    let url = format!(
        "{}?X-WX-Code={}&X-WX-Encrypted-Data={}&X-WX-IV={}",
        stack.url("/login"),
        minted.code,
        minted.encrypted_data.replace('=', "%3D"),
        minted.iv.replace('+', "%2B").replace('=', "%3D")
    );
    let session = session_from(stack.http.get(url).send().await.unwrap()).await;
    let (_, me) = json(stack.get("/me", Some(&session)).await).await;
    assert_eq!(me["nickName"], "Sandbox User");
}

#[tokio::test]
async fn raw_data_signature_is_checked() {
    let stack = Stack::start().await;
    let minted = stack.mint(MintRequest::default());
    let good = stack
        .http
        .post(stack.url("/login"))
        .header("X-WX-Code", &minted.code)
        .header("X-WX-Raw-Data", &minted.raw_data)
        .header("X-WX-Signature", &minted.signature)
        .send()
        .await
        .unwrap();
    let session = session_from(good).await;
    let (_, me) = json(stack.get("/me", Some(&session)).await).await;
    assert_eq!(
        me["nickName"], "Sandbox User",
        "profile taken from the verified rawData"
    );

    let minted = stack.mint(MintRequest::default());
    let forged = minted.raw_data.replace("Sandbox User", "Admin");
    let before = stack.session_count().await;
    let (status, body) = json(
        stack
            .http
            .get(stack.url("/login"))
            .header("X-WX-Code", &minted.code)
            .header("X-WX-Raw-Data", forged)
            .header("X-WX-Signature", &minted.signature)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("ERR_LOGIN_FAILED")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    assert_eq!(
        stack.session_count().await,
        before,
        "no session from a forged rawData"
    );
}

/// Sends a login, expects the given status and ERR_LOGIN_FAILED, and that no session appeared.
async fn refused(stack: &Stack, request: reqwest::RequestBuilder, status: u16, message_has: &str) {
    let before = stack.session_count().await;
    let (got, body) = json(request.send().await.unwrap()).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body[MAGIC_KEY], 1, "{body}");
    assert_eq!(body["error"], "ERR_LOGIN_FAILED", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(message_has),
        "{message:?} should mention {message_has:?}"
    );
    assert!(body.get("session").is_none());
    assert_eq!(
        stack.session_count().await,
        before,
        "a refused login created a session"
    );
}

#[tokio::test]
async fn wechat_refusals_are_401_with_the_errcode() {
    let stack = Stack::start().await;
    let login = |code: &str| {
        stack
            .http
            .get(stack.url("/login"))
            .header("X-WX-Code", code)
    };

    let used = stack.mint(MintRequest::default());
    session_from(stack.login_code_only(&used.code).await).await;
    refused(&stack, login(&used.code), 401, "40163").await;

    refused(&stack, login("unknown-code"), 401, "40029").await;

    let other_app = stack.mint(MintRequest {
        appid: Some("wx-some-other-app".into()),
        ..Default::default()
    });
    refused(&stack, login(&other_app.code), 401, "40029").await;

    let blocked = stack.mint(MintRequest {
        errcode: Some(40226),
        ..Default::default()
    });
    refused(&stack, login(&blocked.code), 401, "40226").await;
}

#[tokio::test]
async fn wechat_trouble_maps_to_honest_upstream_statuses() {
    let stack = Stack::builder()
        .session_args(["--wechat-timeout", "500ms"])
        .start()
        .await;
    let cases = [
        (
            MintRequest {
                errcode: Some(45011),
                ..Default::default()
            },
            429,
            "45011",
        ),
        (
            MintRequest {
                errcode: Some(-1),
                ..Default::default()
            },
            503,
            "-1",
        ),
        (
            MintRequest {
                fault: Some(Fault::Http500),
                ..Default::default()
            },
            503,
            "500",
        ),
        (
            MintRequest {
                fault: Some(Fault::Malformed),
                ..Default::default()
            },
            502,
            "format",
        ),
        (
            MintRequest {
                fault: Some(Fault::Truncated),
                ..Default::default()
            },
            502,
            "format",
        ),
        (
            MintRequest {
                delay_ms: Some(1500),
                ..Default::default()
            },
            504,
            "did not answer",
        ),
    ];
    for (mint, status, message_has) in cases {
        let code = stack.mint(mint).code;
        let login = stack
            .http
            .get(stack.url("/login"))
            .header("X-WX-Code", code);
        refused(&stack, login, status, message_has).await;
    }
}

#[tokio::test]
async fn bad_input_is_400_and_spends_nothing() {
    let stack = Stack::start().await;
    let minted = stack.mint(MintRequest::default());
    let with = |headers: &[(&str, &str)]| {
        let mut request = stack.http.get(stack.url("/login"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
    };

    refused(&stack, with(&[]), 400, "X-WX-Code").await;
    refused(
        &stack,
        with(&[("X-WX-Code", &minted.code), ("X-WX-IV", &minted.iv)]),
        400,
        "together",
    )
    .await;
    refused(
        &stack,
        with(&[
            ("X-WX-Code", &minted.code),
            ("X-WX-Encrypted-Data", "@@not base64@@"),
            ("X-WX-IV", &minted.iv),
        ]),
        400,
        "base64",
    )
    .await;
    refused(
        &stack,
        with(&[
            ("X-WX-Code", &minted.code),
            ("X-WX-Encrypted-Data", &minted.encrypted_data),
            ("X-WX-IV", "c2hvcnQ="),
        ]),
        400,
        "iv",
    )
    .await;
    let long_code = "a".repeat(200);
    refused(&stack, with(&[("X-WX-Code", &long_code)]), 400, "malformed").await;
    let control = stack.http.get(stack.url("/login?X-WX-Code=ab%01cd"));
    refused(&stack, control, 400, "malformed").await;
    // None of that reached WeChat: the code is still good.
    assert_eq!(stack.sandbox.code_stats(&minted.code).unwrap().exchanges, 0);
    session_from(stack.login_encrypted(&minted).await).await;
}

#[tokio::test]
async fn user_data_that_does_not_check_out_creates_no_session() {
    let stack = Stack::start().await;
    let headers = |code: &str, data: &str, iv: &str| {
        stack
            .http
            .get(stack.url("/login"))
            .header("X-WX-Code", code)
            .header("X-WX-Encrypted-Data", data)
            .header("X-WX-IV", iv)
    };

    // Well-formed ciphertext from another login: wrong key for this code's session_key.
    let a = stack.mint(MintRequest::default());
    let b = stack.mint(MintRequest::default());
    refused(&stack, headers(&a.code, &b.encrypted_data, &b.iv), 400, "").await;

    let foreign = stack.mint(MintRequest {
        watermark_appid: Some("wx-foreign".into()),
        ..Default::default()
    });
    refused(
        &stack,
        headers(&foreign.code, &foreign.encrypted_data, &foreign.iv),
        400,
        "watermark",
    )
    .await;

    let stale = stack.mint(MintRequest {
        watermark_timestamp: Some(1_500_000_000),
        ..Default::default()
    });
    refused(
        &stack,
        headers(&stale.code, &stale.encrypted_data, &stale.iv),
        400,
        "too old",
    )
    .await;
}

#[tokio::test]
async fn a_double_tapped_code_is_exchanged_once_and_both_requests_succeed() {
    let stack = Stack::start().await;
    let minted = stack.mint(MintRequest {
        delay_ms: Some(300),
        ..Default::default()
    });
    let (first, second) = tokio::join!(
        stack.login_encrypted(&minted),
        stack.login_encrypted(&minted)
    );
    let (first, second) = (session_from(first).await, session_from(second).await);
    assert_ne!(first, second, "each request gets its own session");
    assert_eq!(stack.sandbox.code_stats(&minted.code).unwrap().exchanges, 1);
    for session in [&first, &second] {
        let (_, me) = json(stack.get("/me", Some(session)).await).await;
        assert_eq!(me["openId"], minted.openid.as_str());
    }

    // Once the exchange is over, a replay fails as WeChat says: nothing was cached.
    let (status, body) = json(stack.login_encrypted(&minted).await).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("40163"));
    assert_eq!(stack.sandbox.code_stats(&minted.code).unwrap().exchanges, 2);
}

#[tokio::test]
async fn login_ignores_stale_session_headers_and_takes_any_method() {
    let stack = Stack::start().await;
    let minted = stack.mint(MintRequest::default());
    let response = stack
        .http
        .post(stack.url("/login"))
        .header("X-WX-Code", &minted.code)
        .header("X-WX-Id", "0".repeat(32))
        .header("X-WX-Skey", "stale")
        .send()
        .await
        .unwrap();
    session_from(response).await;
}

#[tokio::test]
async fn the_sandbox_mint_endpoint_serves_the_readme_flow() {
    let stack = Stack::start().await;
    let minted: serde_json::Value = stack
        .http
        .post(format!("{}/sandbox/mint", stack.sandbox_url))
        .json(&serde_json::json!({ "profile": { "nickName": "curl user", "gender": 0, "language": "en",
            "city": "", "province": "", "country": "", "avatarUrl": "" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = stack
        .http
        .get(stack.url("/login"))
        .header("X-WX-Code", minted["code"].as_str().unwrap())
        .header(
            "X-WX-Encrypted-Data",
            minted["encryptedData"].as_str().unwrap(),
        )
        .header("X-WX-IV", minted["iv"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let session = session_from(response).await;
    let (_, me) = json(stack.get("/me", Some(&session)).await).await;
    assert_eq!(me["nickName"], "curl user");
}

#[tokio::test]
async fn a_login_flood_from_one_address_is_refused_before_wechat_is_asked() {
    let stack = Stack::builder()
        .gateway_args(["--login-rate-per-address", "3"])
        .start()
        .await;
    let login_from = |address: &'static str, code: String| {
        let request = stack
            .http
            .get(stack.url("/login"))
            .header("X-WX-Code", code)
            // The test talks to the gateway from loopback, a trusted proxy by default.
            .header("X-Real-IP", address);
        async move { request.send().await.expect("gateway answers") }
    };
    // Bogus codes count as much as good ones: each would have cost a WeChat call.
    for i in 0..3 {
        let answer = login_from("203.0.113.7", format!("bogus{i}")).await;
        assert_eq!(answer.status(), 401);
    }
    let minted = stack.mint(MintRequest::default());
    let refused = login_from("203.0.113.7", minted.code.clone()).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let (_, body) = json(refused).await;
    assert_eq!(body[MAGIC_KEY], 1, "{body}");
    assert_eq!(body["error"], "ERR_LOGIN_FAILED");
    assert_eq!(
        stack.sandbox.code_stats(&minted.code).unwrap().exchanges,
        0,
        "WeChat was not asked"
    );
    // Another address is not affected, and the refused code is still good.
    let other = login_from("203.0.113.8", minted.code.clone()).await;
    assert_eq!(other.status(), 200);
}

#[tokio::test]
async fn one_user_creating_sessions_in_a_loop_is_slowed_down() {
    let stack = Stack::builder()
        .session_args(["--login-rate-per-user", "2"])
        .start()
        .await;
    let as_user = |openid: &str| {
        stack.mint(MintRequest {
            openid: Some(openid.to_owned()),
            ..Default::default()
        })
    };
    for _ in 0..2 {
        session_from(stack.login_encrypted(&as_user("o_looping")).await).await;
    }
    let sessions_before = stack.session_count().await;
    let refused = stack.login_encrypted(&as_user("o_looping")).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let (_, body) = json(refused).await;
    assert_eq!(body["error"], "ERR_LOGIN_FAILED", "{body}");
    assert_eq!(
        stack.session_count().await,
        sessions_before,
        "no session created"
    );
    // Other users log in as usual.
    session_from(stack.login_encrypted(&as_user("o_other")).await).await;
}
