//! The identity the gateway hands to the business: headers on forwarded requests, on
//! `auth_request` answers and on relayed WebSocket messages. Every header the gateway sets
//! starts with `X-Weapp-`, and before any is set, a client's own identity headers of every
//! naming are removed (`strip_client_headers`): nothing a client sends can pass for an
//! identity. The headers are for convenience; the
//! assertion (a JWT signed by session-svc, verifiable against `/.well-known/jwks.json`) is
//! the proof.
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::user::User;

/// weapp's identity headers.
pub const PREFIX: &str = "x-weapp-";
/// wafer's session parameters and WeChat Cloud Run's identity headers (`X-WX-OPENID`,
/// `X-WX-UNIONID`, `X-WX-APPID`, …), which containers written for Cloud Run trust.
pub const WX_PREFIX: &str = "x-wx-";
/// Cloud Run's name for the client's address, trusted like its identity headers.
const ORIGINAL_FORWARDED_FOR: &str = "x-original-forwarded-for";
/// nginx's name for the client's address: the gateway believes it from trusted proxies for its
/// own rate limit, and passes on none (the upstream gets `X-Forwarded-For`), so a client
/// cannot name its own address to a business either.
const REAL_IP: &str = "x-real-ip";
/// The user's openId.
pub const OPEN_ID: HeaderName = HeaderName::from_static("x-weapp-open-id");
/// The user's unionId, when WeChat gave one.
pub const UNION_ID: HeaderName = HeaderName::from_static("x-weapp-union-id");
/// A short hash of the session id (the id itself is half a credential).
pub const SESSION: HeaderName = HeaderName::from_static("x-weapp-session");
/// The user object (as `/me` answers it), as unpadded base64url JSON: header values cannot
/// carry the nicknames of every script.
pub const USER: HeaderName = HeaderName::from_static("x-weapp-user");
/// The signed identity assertion (JWT).
pub const ASSERTION: HeaderName = HeaderName::from_static("x-weapp-assertion");
/// The user's phone number (E.164), once WeChat has verified it (`/phone-number`).
pub const PHONE: HeaderName = HeaderName::from_static("x-weapp-phone");

/// Removes every header that names a user or a client address: `X-Weapp-*`, `X-WX-*` (the
/// session credentials among them), `X-Original-Forwarded-For` and `X-Real-IP`. Only the
/// gateway says who the user is.
pub fn strip_client_headers(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.starts_with(PREFIX)
                || name.starts_with(WX_PREFIX)
                || name == ORIGINAL_FORWARDED_FOR
                || name == REAL_IP
        })
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// A session's identity headers, rendered once per Validate answer and cached with it: a
/// forwarded request copies them (reference-counted values), it does not hash or encode.
#[derive(Debug)]
pub struct Identity {
    headers: HeaderMap,
}

impl Identity {
    pub fn new(
        session_id: &str,
        user: &User,
        phone: Option<&str>,
        assertion: Option<HeaderValue>,
    ) -> Self {
        let mut headers = HeaderMap::with_capacity(6);
        if let Ok(value) = HeaderValue::from_str(&user.open_id) {
            headers.insert(OPEN_ID, value);
        }
        if let Some(value) = user
            .union_id
            .as_deref()
            .and_then(|u| HeaderValue::from_str(u).ok())
        {
            headers.insert(UNION_ID, value);
        }
        if let Ok(value) = HeaderValue::from_str(&weapp_wire::short_hash(session_id)) {
            headers.insert(SESSION, value);
        }
        if let Ok(value) = HeaderValue::try_from(URL_SAFE_NO_PAD.encode(&user.me_body)) {
            headers.insert(USER, value);
        }
        if let Some(value) = phone.and_then(|p| HeaderValue::from_str(p).ok()) {
            headers.insert(PHONE, value);
        }
        if let Some(assertion) = assertion {
            headers.insert(ASSERTION, assertion);
        }
        Self { headers }
    }

    /// Adds these headers to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use weapp_wire::UserInfo;

    use super::*;

    #[test]
    fn client_identity_headers_are_replaced_by_the_sessions() {
        let mut headers = HeaderMap::new();
        headers.insert("x-weapp-open-id", HeaderValue::from_static("someone-else"));
        headers.insert("X-Weapp-Anything", HeaderValue::from_static("x"));
        headers.insert("X-WX-OpenId", HeaderValue::from_static("attacker"));
        headers.insert("X-WX-UNIONID", HeaderValue::from_static("attacker"));
        headers.insert("x-wx-skey", HeaderValue::from_static("secret"));
        headers.insert("X-Real-IP", HeaderValue::from_static("6.6.6.6"));
        headers.insert(
            "X-Original-Forwarded-For",
            HeaderValue::from_static("6.6.6.6"),
        );
        headers.insert(
            "x-wxother",
            HeaderValue::from_static("kept: not the namespace"),
        );
        headers.insert("x-other", HeaderValue::from_static("kept"));
        strip_client_headers(&mut headers);
        assert_eq!(headers.len(), 2, "{headers:?}");
        headers.remove("x-wxother");
        assert_eq!(headers.len(), 1);
        let user = User::new(&UserInfo::code_only("o-1", Some("u-1")));
        Identity::new(
            "id",
            &user,
            Some("+8613800138000"),
            Some(HeaderValue::from_static("a.b.c")),
        )
        .apply(&mut headers);
        assert_eq!(headers[PHONE], "+8613800138000");
        assert_eq!(headers[OPEN_ID], "o-1");
        assert_eq!(headers[UNION_ID], "u-1");
        assert_eq!(headers[SESSION], weapp_wire::short_hash("id").as_str());
        assert_eq!(headers[ASSERTION], "a.b.c");
        let user = URL_SAFE_NO_PAD.decode(headers[USER].as_bytes()).unwrap();
        assert_eq!(user, br#"{"openId":"o-1","unionId":"u-1"}"#);
    }
}
