//! Signed identity assertions: with a Validate answer that asks for one, a short-lived JWT
//! that says whose session it is, signed by session-svc, so that a business upstream behind
//! the gateway can verify who the user is with a standard JWT library instead of trusting a
//! header. ES256 (ECDSA over P-256, which every JWT library verifies), with a `kid`. The public
//! keys are published as a JWKS (`GetIdentityKeys`, relayed by the gateway at
//! `/.well-known/jwks.json`). Gateways never hold the signing key.
//!
//! Rotation: list the new key first in `WEAPP_IDENTITY_KEY_FILES` (it signs from then on) and
//! keep the old one listed, so it stays published, until its last assertion has expired
//! (`WEAPP_IDENTITY_TTL` after the switch); then remove it.
use std::{sync::Arc, time::Duration};

use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash},
};
use serde::Serialize;
use weapp_common::config::duration;

use crate::{
    credentials::short_hash,
    record::{SessionRecord, UnixMillis},
};

/// One signing key, with its public half as a JWK.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    key: Arc<EncodingKey>,
    public: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// Reads a P-256 private key (PKCS#8 PEM, as `openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256` writes it); a clap value parser, whose errors name the file,
    /// never the key.
    pub fn load(path: &str) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        Self::from_pem(&pem)
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let not_a_key = |_| "not a P-256 private key in PKCS#8 PEM".to_owned();
        let key = EncodingKey::from_ec_pem(pem).map_err(not_a_key)?;
        let mut public = Jwk::from_encoding_key(&key, Algorithm::ES256).map_err(not_a_key)?;
        // RFC 7638: the key's own thumbprint names it, so a kid can never name two keys.
        let kid = public.thumbprint(ThumbprintHash::SHA256);
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self {
            kid,
            key: Arc::new(key),
            public,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct IdentitySettings {
    /// P-256 private keys (PKCS#8 PEM files, comma-separated) that sign identity assertions:
    /// the first signs, all are published. Without any, Validate answers carry no assertion.
    #[arg(id = "identity_key_files", value_name = "IDENTITY_KEY_FILES", long = "identity-key-files", env = "WEAPP_IDENTITY_KEY_FILES", value_delimiter = ',', value_parser = SigningKey::load)]
    pub keys: Vec<SigningKey>,

    /// Longest life of an assertion (never past its session's end).
    #[arg(id = "identity_ttl", value_name = "IDENTITY_TTL", long = "identity-ttl", env = "WEAPP_IDENTITY_TTL", default_value = "5m", value_parser = duration)]
    pub ttl: Duration,

    /// The assertions' issuer (`iss`), which upstreams check.
    #[arg(
        id = "identity_issuer",
        value_name = "IDENTITY_ISSUER",
        long = "identity-issuer",
        env = "WEAPP_IDENTITY_ISSUER",
        default_value = "weapp"
    )]
    pub issuer: String,
}

/// What an assertion says. `sub` is the openId; `sid` a short hash of the session id (the id
/// itself is a credential's half and stays with the client).
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    unionid: Option<&'a str>,
    sid: String,
    /// The session's app (AppId). Not `aud`: verifiers that name no audience (PyJWT's
    /// default) refuse a token that has one.
    appid: &'a str,
    iat: i64,
    exp: i64,
    /// The user object, as `/me` answers it.
    user: &'a serde_json::Map<String, serde_json::Value>,
    /// OpenID Connect's claims, once WeChat has verified the user's number (E.164).
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_number_verified: Option<bool>,
}

/// What an event's assertion says: which app's event, about whom, and the digest of the body
/// it came with, so an upstream believes the body only if it matches.
#[derive(Serialize)]
struct EventClaims<'a> {
    iss: &'a str,
    /// The user the event is about (FromUserName); absent for events about no user.
    #[serde(skip_serializing_if = "str::is_empty")]
    sub: &'a str,
    appid: &'a str,
    event_id: &'a str,
    /// Lowercase hex SHA-256 of the delivered body.
    body_sha256: &'a str,
    iat: i64,
    exp: i64,
}

/// A signed assertion and how long it is good for.
pub struct Assertion {
    pub token: String,
    pub expires_in: Duration,
}

pub struct IdentitySigner {
    settings: IdentitySettings,
    jwks: String,
}

impl IdentitySigner {
    /// `None` when no key is configured.
    pub fn new(settings: &IdentitySettings) -> Option<Self> {
        settings.keys.first()?;
        let set = JwkSet {
            keys: settings.keys.iter().map(|k| k.public.clone()).collect(),
        };
        Some(Self {
            settings: settings.clone(),
            jwks: serde_json::to_string(&set).unwrap_or_default(),
        })
    }

    /// The published keys, as a JWKS document.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// An assertion for this session, good until `ttl` from `now` or the session's end,
    /// whichever comes first. `None` only when signing fails (logged).
    pub fn sign(&self, record: &SessionRecord, app_id: &str, now: UnixMillis) -> Option<Assertion> {
        let signer = self.settings.keys.first()?;
        let ttl = i64::try_from(self.settings.ttl.as_millis()).unwrap_or(i64::MAX);
        let until = now.saturating_add(ttl).min(record.expires_at);
        let claims = Claims {
            iss: &self.settings.issuer,
            sub: record.user.open_id(),
            unionid: record.user.union_id(),
            sid: short_hash(&record.id),
            appid: app_id,
            iat: now.div_euclid(1000),
            exp: until.div_euclid(1000),
            user: record.user.fields(),
            phone_number: record.phone.as_ref().map(|p| p.e164()),
            phone_number_verified: record.phone.as_ref().map(|_| true),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signer.kid.clone());
        match jsonwebtoken::encode(&header, &claims, &signer.key) {
            Ok(token) => Some(Assertion {
                token,
                expires_in: Duration::from_millis(
                    u64::try_from(until.saturating_sub(now)).unwrap_or_default(),
                ),
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot sign an identity assertion");
                None
            }
        }
    }
}

impl IdentitySigner {
    /// An assertion for one delivery of WeChat's pushed event (`body_sha256`: of the body
    /// as delivered), good for the assertions' lifetime from `now`.
    pub fn sign_event(
        &self,
        (app_id, open_id, event_id): (&str, &str, &str),
        body_sha256: &str,
        now: UnixMillis,
    ) -> Option<String> {
        let signer = self.settings.keys.first()?;
        let iat = now.div_euclid(1000);
        let claims = EventClaims {
            iss: &self.settings.issuer,
            sub: open_id,
            appid: app_id,
            event_id,
            body_sha256,
            iat,
            exp: iat.saturating_add(i64::try_from(self.settings.ttl.as_secs()).unwrap_or(i64::MAX)),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signer.kid.clone());
        jsonwebtoken::encode(&header, &claims, &signer.key)
            .inspect_err(|e| tracing::error!(error = %e, "cannot sign an event assertion"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header, jwk::JwkSet};

    use super::*;
    use crate::record::UserInfo;

    fn new_key() -> SigningKey {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        SigningKey::from_pem(pem.as_bytes()).unwrap()
    }

    fn signer(keys: Vec<SigningKey>) -> IdentitySigner {
        IdentitySigner::new(&IdentitySettings {
            keys,
            ttl: Duration::from_secs(300),
            issuer: "weapp".into(),
        })
        .unwrap()
    }

    fn record(now: UnixMillis, expires_in_ms: i64) -> SessionRecord {
        SessionRecord {
            id: "a".repeat(32),
            skey_hash: "b".repeat(64),
            user: UserInfo::code_only("o-user", Some("u-user")),
            created_at: now,
            last_seen_at: now,
            expires_at: now + expires_in_ms,
            max_expires_at: now + expires_in_ms,
            phone: None,
            app_id: None,
        }
    }

    /// Verifies `token` against the JWKS `signer` publishes, as an upstream would.
    fn verify(signer: &IdentitySigner, token: &str) -> Result<serde_json::Value, String> {
        let set: JwkSet = serde_json::from_str(signer.jwks()).unwrap();
        let kid = decode_header(token).unwrap().kid.unwrap();
        let jwk = set.find(&kid).ok_or("kid not published")?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&["weapp"]);
        decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .map(|t| t.claims)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn rotation_keeps_old_assertions_verifiable_until_their_key_is_retired() {
        let now = crate::record::now_millis();
        let (old, new) = (new_key(), new_key());
        let before = signer(vec![old.clone()]);
        let old_token = before
            .sign(&record(now, 3_600_000), "wxapp", now)
            .unwrap()
            .token;

        // The new key first: it signs; the old one is still published.
        let during = signer(vec![new.clone(), old.clone()]);
        let new_token = during
            .sign(&record(now, 3_600_000), "wxapp", now)
            .unwrap()
            .token;
        assert_eq!(
            decode_header(&new_token).unwrap().kid.as_deref(),
            Some(new.kid())
        );
        assert_eq!(verify(&during, &new_token).unwrap()["sub"], "o-user");
        assert_eq!(verify(&during, &old_token).unwrap()["unionid"], "u-user");

        // Retired: its assertions no longer verify.
        let after = signer(vec![new.clone()]);
        assert!(verify(&after, &old_token).is_err());
        assert!(verify(&after, &new_token).is_ok());
    }

    #[test]
    fn an_assertion_never_outlives_its_session() {
        let now = crate::record::now_millis();
        let signer = signer(vec![new_key()]);
        let assertion = signer.sign(&record(now, 60_000), "wxapp", now).unwrap();
        assert_eq!(assertion.expires_in, Duration::from_secs(60));
        let claims = verify(&signer, &assertion.token).unwrap();
        assert_eq!(claims["exp"].as_i64().unwrap(), (now + 60_000) / 1000);
        assert_eq!(claims["appid"], "wxapp");
    }

    #[test]
    fn a_key_that_is_not_p256_is_refused_with_a_message() {
        let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem();
        for pem in [ed25519.as_str(), "not a key"] {
            let err = SigningKey::from_pem(pem.as_bytes()).unwrap_err();
            assert!(err.contains("P-256"), "{err}");
        }
    }
}
