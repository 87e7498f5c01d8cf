//! session-svc on MongoDB (a real nx-27017 server): what operators see in the database, and
//! what clients see when the database goes away and comes back.
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document, doc};
use sha2::{Digest, Sha256};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use weapp_proto::session::v1::{ValidateRequest, session_service_client::SessionServiceClient};
use weapp_tests::{
    ClientSession, MAGIC_KEY, Stack, TestStore, json, session_from, wechat_sandbox::MintRequest,
};

async fn mongo_stack() -> Stack {
    Stack::builder().store(TestStore::Mongo).start().await
}

async fn sessions_collection(stack: &Stack) -> mongodb::Collection<Document> {
    let (uri, database) = stack.mongo_database();
    mongodb::Client::with_uri_str(uri)
        .await
        .unwrap()
        .database(&database)
        .collection("sessions")
}

#[tokio::test]
async fn a_login_creates_one_readable_document_without_clear_secrets() {
    let stack = mongo_stack().await;
    let minted = stack.mint(MintRequest {
        unionid: Some("union-42".into()),
        ..Default::default()
    });
    let response = stack.login_encrypted(&minted).await;
    let session = session_from(response).await;

    let sessions = sessions_collection(&stack).await;
    assert_eq!(sessions.count_documents(doc! {}).await.unwrap(), 1);
    let stored = sessions.find_one(doc! {}).await.unwrap().unwrap();
    assert_eq!(stored.get_str("_id").unwrap(), session.id);
    assert_eq!(stored.get_str("openId").unwrap(), minted.openid);
    assert_eq!(stored.get_str("unionId").unwrap(), "union-42");
    let user_info = stored.get_document("userInfo").unwrap();
    assert_eq!(user_info.get_str("nickName").unwrap(), "Sandbox User");
    for field in ["createdAt", "lastSeenAt", "expiresAt", "maxExpiresAt"] {
        assert!(
            matches!(stored.get(field), Some(Bson::DateTime(_))),
            "{field} is a BSON date: {stored}"
        );
    }
    let skey_hash = hex::encode(Sha256::digest(session.skey.as_bytes()));
    assert_eq!(stored.get_str("skeyHash").unwrap(), skey_hash);
    let text = stored.to_string();
    assert!(
        !text.contains(&session.skey),
        "clear-text skey stored: {text}"
    );
    assert!(
        !text.to_lowercase().contains("session_key") && !text.contains("sessionKey"),
        "{text}"
    );
}

/// What a database dump shows of the central control server's secrets: sealed values with
/// their key ids, never a session_key or an access_token in the clear.
#[tokio::test]
async fn session_keys_and_the_access_token_are_stored_sealed() {
    use weapp_proto::session::v1::GetAccessTokenRequest;
    let stack = mongo_stack().await;
    let (minted, _) = stack.new_session().await;
    let session_key = stack.sandbox.session_key(&minted.code).unwrap();
    let token = SessionServiceClient::new(stack.session_channel().await)
        .get_access_token(GetAccessTokenRequest {
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;

    let (uri, database) = stack.mongo_database();
    let db = mongodb::Client::with_uri_str(uri)
        .await
        .unwrap()
        .database(&database);
    let keys = db.collection::<Document>("session_keys");
    let kept = keys
        .find_one(doc! { "_id": &minted.openid })
        .await
        .unwrap()
        .expect("the user's session_key is kept");
    assert!(
        matches!(kept.get("expiresAt"), Some(Bson::DateTime(_))),
        "{kept}"
    );
    let tokens = db.collection::<Document>("wechat_tokens");
    let stored_token = tokens
        .find_one(doc! { "_id": &stack.app_id })
        .await
        .unwrap()
        .expect("the token is stored");
    for stored in [&kept, &stored_token] {
        let sealed = stored.get_document("sealed").unwrap();
        assert_eq!(sealed.get_str("keyId").unwrap().len(), 12, "{stored}");
        let text = stored.to_string();
        assert!(
            !text.contains(&session_key) && !text.contains(&token),
            "{text}"
        );
    }
    let mut cursor = keys.list_indexes().await.unwrap();
    let mut ttl = None;
    while cursor.advance().await.unwrap() {
        let index = cursor.deserialize_current().unwrap();
        if index.keys == doc! { "expiresAt": 1 } {
            ttl = index.options.and_then(|o| o.expire_after);
        }
    }
    assert_eq!(
        ttl,
        Some(Duration::ZERO),
        "TTL index on session_keys.expiresAt"
    );
}

#[tokio::test]
async fn the_ttl_and_open_id_indexes_exist_and_start_up_is_idempotent() {
    let mut stack = mongo_stack().await;
    // A restart runs index creation again over the existing indexes.
    stack.stop_session_svc().await;
    stack.start_session_svc().await;
    let (_, session) = stack.new_session().await;
    assert_eq!(stack.get("/me", Some(&session)).await.status(), 200);

    let sessions = sessions_collection(&stack).await;
    let mut cursor = sessions.list_indexes().await.unwrap();
    let (mut ttl, mut by_user) = (None, false);
    while cursor.advance().await.unwrap() {
        let index = cursor.deserialize_current().unwrap();
        if index.keys == doc! { "expiresAt": 1 } {
            ttl = index.options.and_then(|o| o.expire_after);
        }
        by_user |= index.keys == doc! { "openId": 1 };
    }
    assert_eq!(ttl, Some(Duration::ZERO), "TTL index on expiresAt");
    assert!(by_user, "index on openId");
}

async fn me_status(stack: &Stack, session: &ClientSession) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let (status, body) = json(stack.get("/me", Some(session)).await).await;
    (status, body, started.elapsed())
}

#[tokio::test]
async fn a_database_outage_is_a_prompt_503_and_heals_without_restarts() {
    let mut stack = mongo_stack().await;
    let (minted, session) = stack.new_session().await;
    stack.mongo().stop();

    let (status, body, took) = me_status(&stack, &session).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "ERR_SESSION_UNAVAILABLE");
    assert!(body.get(MAGIC_KEY).is_none(), "{body}");
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    let code = stack.mint(MintRequest::default()).code;
    let (status, body) = json(stack.login_code_only(&code).await).await;
    assert!(status == 503 || status == 504, "{status} {body}");

    // Backends calling session-svc directly get UNAVAILABLE within the store timeout (500 ms
    // in these stacks), not a hang.
    let channel = stack.session_channel().await;
    let started = Instant::now();
    let refused = SessionServiceClient::new(channel)
        .validate(ValidateRequest {
            id: session.id.clone(),
            skey: session.skey.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );

    stack.mongo().resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body, _) = me_status(&stack, &session).await;
        if status == 200 {
            assert_eq!(body["openId"], minted.openid.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And new logins work again.
    stack.new_session().await;
}

async fn health(stack: &Stack) -> ServingStatus {
    let channel = stack.session_channel().await;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "weapp.session.v1.SessionService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

#[tokio::test]
async fn session_svc_starts_with_the_database_down_and_serves_once_it_is_up() {
    let mut stack = mongo_stack().await;
    let (_, session) = stack.new_session().await;
    stack.stop_session_svc().await;
    stack.mongo().stop();

    stack.start_session_svc().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(health(&stack).await, ServingStatus::NotServing);
    assert_eq!(me_status(&stack, &session).await.0, 503);

    stack.mongo().resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(&stack).await != ServingStatus::Serving {
        assert!(Instant::now() < deadline, "health never turned SERVING");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(me_status(&stack, &session).await.0, 200);
}
