//! Signed identity assertions: a Validate that asks for one gets a JWT that a business
//! upstream verifies with a standard JWT library against the JWKS the gateway relays at
//! `/.well-known/jwks.json` — and a forged or altered one does not verify.
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use weapp_proto::session::v1::{ValidateRequest, session_service_client::SessionServiceClient};
use weapp_tests::{Stack, json};

#[tokio::test]
async fn an_asked_for_assertion_verifies_against_the_relayed_jwks() {
    let stack = Stack::start().await;
    let (minted, session) = stack.new_session().await;
    let mut client = SessionServiceClient::new(stack.session_channel().await);
    let ask = |want| ValidateRequest {
        id: session.id.clone(),
        skey: session.skey.clone(),
        want_identity_assertion: want,
    };
    let plain = client.validate(ask(false)).await.unwrap().into_inner();
    assert!(
        plain.identity_assertion.is_empty(),
        "signed only when asked"
    );
    let answer = client.validate(ask(true)).await.unwrap().into_inner();
    let token = answer.identity_assertion;
    let lifetime =
        std::time::Duration::try_from(answer.identity_assertion_expires_in.unwrap()).unwrap();
    assert!(lifetime <= std::time::Duration::from_secs(300) && lifetime.as_secs() > 60);

    // An upstream's view: the JWKS from the gateway, a standard library, nothing else.
    let (status, jwks) = json(stack.get("/.well-known/jwks.json", None).await).await;
    assert_eq!(status, 200);
    let jwks: JwkSet = serde_json::from_value(jwks).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("the kid is published");
    let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_issuer(&["weapp"]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    let verify = |token: &str| {
        jsonwebtoken::decode::<serde_json::Value>(
            token,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
    };
    let claims = verify(&token).unwrap().claims;
    assert_eq!(claims["sub"], minted.openid.as_str());
    assert_eq!(claims["user"], minted.decrypted);
    let sid = claims["sid"].as_str().unwrap();
    assert!(
        sid.len() == 8 && !session.id.contains(sid),
        "a short hash, not the id"
    );
    assert!(!token.contains(&session.skey) && !token.contains(&session.id));

    // Another user's name written into the claims breaks the signature.
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = serde_json::json!("o-somebody-else");
    use base64::Engine as _;
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&forged_claims).unwrap());
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert!(
        verify(&forged).is_err(),
        "an altered assertion must not verify"
    );
}
