//! Session resolution on every request: valid, absent, wrong, expired, revoked, restarted.
use std::time::Duration;

use weapp_tests::{ClientSession, MAGIC_KEY, Stack, json};

async fn expect_invalid(response: reqwest::Response) {
    let (status, body) = json(response).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body[MAGIC_KEY], 1,
        "the SDK must see the magic key to re-login: {body}"
    );
    assert_eq!(body["error"], "ERR_INVALID_SESSION");
}

#[tokio::test]
async fn me_with_without_and_with_a_wrong_session() {
    let stack = Stack::start().await;
    let (minted, session) = stack.new_session().await;

    let (status, me) = json(stack.get("/me", Some(&session)).await).await;
    assert_eq!(
        (status, me["openId"].as_str()),
        (200, Some(minted.openid.as_str()))
    );

    let (status, anonymous) = json(stack.get("/me", None).await).await;
    assert_eq!(
        (status, anonymous),
        (200, serde_json::json!({ "noBody": true }))
    );

    // The right skey with its last character changed (to one it is not).
    let last = if session.skey.ends_with('A') {
        'B'
    } else {
        'A'
    };
    let wrong_skey = ClientSession {
        skey: format!("{}{last}", &session.skey[..session.skey.len() - 1]),
        ..session.clone()
    };
    expect_invalid(stack.get("/me", Some(&wrong_skey)).await).await;
    let unknown = ClientSession {
        id: "f".repeat(32),
        ..session.clone()
    };
    expect_invalid(stack.get("/me", Some(&unknown)).await).await;
    let garbage = ClientSession {
        id: "../../etc/passwd".into(),
        skey: "x".into(),
    };
    expect_invalid(stack.get("/me", Some(&garbage)).await).await;

    // A lone id is an invalid session, not an anonymous request.
    let lone = stack
        .http
        .get(stack.url("/me"))
        .header("x-wx-id", &session.id)
        .send()
        .await
        .unwrap();
    expect_invalid(lone).await;

    // Header names are case-insensitive.
    let shouting = stack
        .http
        .get(stack.url("/me"))
        .header("X-WX-ID", &session.id)
        .header("x-wx-SKEY", &session.skey)
        .send()
        .await
        .unwrap();
    assert_eq!(json(shouting).await.1["openId"], minted.openid.as_str());
}

#[tokio::test]
async fn session_parameters_work_from_the_query_string() {
    let stack = Stack::start().await;
    let (minted, session) = stack.new_session().await;
    let url = format!("{}?{}", stack.url("/me"), session.query());
    let (status, me) = json(stack.http.get(url).send().await.unwrap()).await;
    assert_eq!(
        (status, me["openId"].as_str()),
        (200, Some(minted.openid.as_str()))
    );

    let bad = format!("{}?X-WX-Id={}&X-WX-Skey=nope", stack.url("/me"), session.id);
    expect_invalid(stack.http.get(bad).send().await.unwrap()).await;
}

#[tokio::test]
async fn the_fallback_answers_plainly_but_still_checks_sessions() {
    let stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    for who in [None, Some(&session)] {
        let response = stack.get("/anything/else", who).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "Response from express");
    }
    let wrong = ClientSession {
        skey: "A".repeat(43),
        ..session
    };
    expect_invalid(stack.get("/anything/else", Some(&wrong)).await).await;
}

#[tokio::test]
async fn two_users_at_once_see_only_themselves() {
    let stack = Stack::start().await;
    let ((alice, alice_session), (bob, bob_session)) =
        tokio::join!(stack.new_session(), stack.new_session());
    assert_ne!(alice.openid, bob.openid);
    let (a, b) = tokio::join!(
        stack.get("/me", Some(&alice_session)),
        stack.get("/me", Some(&bob_session))
    );
    assert_eq!(json(a).await.1["openId"], alice.openid.as_str());
    assert_eq!(json(b).await.1["openId"], bob.openid.as_str());
}

#[tokio::test]
async fn re_login_of_the_same_user_issues_a_fresh_session() {
    let stack = Stack::start().await;
    let (minted, first) = stack.new_session().await;
    let again = stack.mint(weapp_tests::wechat_sandbox::MintRequest {
        openid: Some(minted.openid.clone()),
        ..Default::default()
    });
    let second = weapp_tests::session_from(stack.login_encrypted(&again).await).await;
    assert_ne!(first, second);
    for session in [&first, &second] {
        assert_eq!(
            json(stack.get("/me", Some(session)).await).await.1["openId"],
            minted.openid.as_str()
        );
    }
}

#[tokio::test]
async fn logout_revokes_at_once() {
    let stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    let (_, other) = stack.new_session().await;
    let response = stack
        .http
        .post(stack.url("/logout"))
        .headers(session.headers())
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert_eq!(
        (status, body["logout"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    expect_invalid(stack.get("/me", Some(&session)).await).await;
    assert_eq!(
        stack.get("/me", Some(&other)).await.status(),
        200,
        "other sessions untouched"
    );

    let again = stack
        .http
        .post(stack.url("/logout"))
        .headers(session.headers())
        .send()
        .await
        .unwrap();
    expect_invalid(again).await;
}

#[tokio::test]
async fn sessions_survive_a_session_svc_restart() {
    let mut stack = Stack::start().await;
    let (minted, session) = stack.new_session().await;
    stack.stop_session_svc().await;
    stack.start_session_svc().await;
    // Survival is the point, not the first answer's latency: on a loaded machine the first
    // call to a session-svc that just started (its store connection included) may miss the
    // gateway's deadline, which answers 503 "retry shortly".
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stack.get("/me", Some(&session)).await.status() == 503
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, me) = json(stack.get("/me", Some(&session)).await).await;
    assert_eq!(
        (status, me["openId"].as_str()),
        (200, Some(minted.openid.as_str())),
        "{me}"
    );
    assert_eq!(me["nickName"], "Sandbox User");
}

#[tokio::test]
async fn idle_sessions_expire_and_use_renews_them() {
    let stack = Stack::builder()
        .session_args([
            "--session-idle-ttl",
            "1200ms",
            "--session-max-age",
            "60s",
            "--session-renew-after",
            "100ms",
        ])
        .start()
        .await;
    let (_, idle) = stack.new_session().await;
    let (_, busy) = stack.new_session().await;
    // Used every 400 ms for 2.4 s: twice the idle TTL, kept alive by sliding renewal.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(stack.get("/me", Some(&busy)).await.status(), 200);
    }
    expect_invalid(stack.get("/me", Some(&idle)).await).await;
}

#[tokio::test]
async fn the_absolute_lifetime_ends_even_a_busy_session() {
    let max_age = Duration::from_millis(2500);
    let stack = Stack::builder()
        .session_args([
            "--session-idle-ttl",
            "1500ms",
            "--session-max-age",
            "2500ms",
            "--session-renew-after",
            "50ms",
        ])
        .start()
        .await;
    // Measured from before the login, so the session is never younger than we think.
    let started = std::time::Instant::now();
    let (_, session) = stack.new_session().await;
    // Busy (renewed every 200 ms) until a second before the end of its life...
    while started.elapsed() < max_age - Duration::from_secs(1) {
        assert_eq!(stack.get("/me", Some(&session)).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and refused once its life is over, although its idle timeout has not run out.
    tokio::time::sleep_until((started + max_age + Duration::from_millis(200)).into()).await;
    expect_invalid(stack.get("/me", Some(&session)).await).await;
}
