//! The gateway's cache of validated sessions: it is really used, and it never outlives a
//! revocation (by more than the documented bound) or the session itself.
use std::time::{Duration, Instant};

use gateway_svc::sessions::cache::REVOCATION_BOUND;
use weapp_proto::session::v1::{RevokeUserRequest, session_service_client::SessionServiceClient};
use weapp_tests::{ClientSession, Stack};

async fn me_status(stack: &Stack, url: &str, session: &ClientSession) -> u16 {
    stack
        .http
        .get(url)
        .headers(session.headers())
        .send()
        .await
        .expect("gateway answers")
        .status()
        .as_u16()
}

/// Polls `/me` at `url` until it answers 401; how long that took.
async fn time_until_refused(stack: &Stack, url: &str, session: &ClientSession) -> Duration {
    let start = Instant::now();
    loop {
        let status = me_status(stack, url, session).await;
        if status == 401 {
            return start.elapsed();
        }
        assert_eq!(status, 200, "only 200 until the revocation lands");
        assert!(
            start.elapsed() < REVOCATION_BOUND * 3,
            "still served {:?} after the revocation",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the gateway at `url` serves `session` from its cache: session-svc's store no
/// longer has it (removed behind session-svc's back, which no revocation announces), yet the
/// gateway still answers 200.
async fn assert_served_from_cache(stack: &Stack, urls: &[String], session: &ClientSession) {
    // The revocation stream comes up right after the gateway starts; until then nothing is
    // cached, so warm up until a second request can be answered from the cache.
    for url in urls {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert_eq!(me_status(stack, url, session).await, 200);
            if Instant::now() > deadline {
                panic!("{url} never cached the session");
            }
            // Held only by the cache if it answers while session-svc would refuse.
            let removed = stack.store().get(&session.id).await.expect("store answers");
            let record = removed.expect("session still stored");
            stack.store().remove(&session.id).await.expect("remove");
            let status = me_status(stack, url, session).await;
            stack.store().insert(&record).await.expect("put back");
            if status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_logout_on_one_gateway_reaches_the_others_cache_within_the_bound() {
    let stack = Stack::start().await;
    let other = stack.extra_gateway().await;
    let (_, session) = stack.new_session().await;
    let urls = [stack.url("/me"), other.url("/me")];
    assert_served_from_cache(&stack, &urls, &session).await;

    let logout = stack.get("/logout", Some(&session)).await;
    assert_eq!(logout.status(), 200);
    // The gateway that logged the session out forgets it at once...
    assert_eq!(me_status(&stack, &urls[0], &session).await, 401);
    // ...and the other one as soon as session-svc's revocation reaches it.
    let took = time_until_refused(&stack, &urls[1], &session).await;
    assert!(took < REVOCATION_BOUND, "took {took:?}");
}

#[tokio::test]
async fn revoking_a_user_reaches_every_gateway_within_the_bound() {
    let stack = Stack::start().await;
    let other = stack.extra_gateway().await;
    let (minted, first) = stack.new_session().await;
    let (_, unrelated) = stack.new_session().await;
    let urls = [stack.url("/me"), other.url("/me")];
    assert_served_from_cache(&stack, &urls, &first).await;
    assert_served_from_cache(&stack, &urls, &unrelated).await;

    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let revoked = client
        .revoke_user(RevokeUserRequest {
            open_id: minted.openid.clone(),
            ..Default::default()
        })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(revoked.revoked, 1);
    for url in &urls {
        let took = time_until_refused(&stack, url, &first).await;
        assert!(took < REVOCATION_BOUND, "{url} took {took:?}");
        assert_eq!(me_status(&stack, url, &unrelated).await, 200);
    }
}

#[tokio::test]
async fn without_session_svc_the_cache_is_not_used() {
    let mut stack = Stack::start().await;
    let (_, session) = stack.new_session().await;
    let urls = [stack.url("/me")];
    assert_served_from_cache(&stack, &urls, &session).await;
    stack.stop_session_svc().await;
    // Nobody could revoke anything now, but a gateway cut off from a running session-svc
    // could not tell: it fails closed, exactly as without a cache.
    let (status, body) = weapp_tests::json(stack.get("/me", Some(&session)).await).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "ERR_SESSION_UNAVAILABLE");
    stack.start_session_svc().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while stack.get("/me", Some(&session)).await.status() != 200 {
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_cached_session_is_never_served_past_its_expiry() {
    let max_age = Duration::from_millis(1500);
    let stack = Stack::builder()
        .session_args([
            "--session-idle-ttl",
            "1500ms",
            "--session-max-age",
            "1500ms",
            "--session-renew-after",
            "50ms",
        ])
        // A TTL far beyond the session's life: only the session's own end can end entries.
        .gateway_args(["--session-cache-ttl", "1h"])
        .start()
        .await;
    let (_, session) = stack.new_session().await;
    // The session was created before its login answered: it has ended by this instant.
    let end = Instant::now() + max_age;
    let url = stack.url("/me");
    assert_served_from_cache(&stack, std::slice::from_ref(&url), &session).await;
    // Busy right up to and past the end of the session's life.
    let mut served = 0;
    while Instant::now() < end + Duration::from_millis(300) {
        let sent = Instant::now();
        let status = me_status(&stack, &url, &session).await;
        if sent >= end {
            assert_eq!(
                status,
                401,
                "served {:?} after the session ended",
                sent - end
            );
        } else if status == 200 {
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(served > 10, "the session was served only {served} times");
}
