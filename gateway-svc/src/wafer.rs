//! The wafer protocol as `wafer-client-sdk` speaks it: parameter names, the magic key, and the
//! shape of every body the session layer produces. Nothing here does I/O.
use serde_json::{Value, json, value::RawValue};

/// Present in every body produced by the session layer; the client SDK keys on it.
pub const MAGIC_KEY: &str = "F2C224D4-2BCE-4C64-AF9F-A6D872000D1A";

pub const ERR_LOGIN_FAILED: &str = "ERR_LOGIN_FAILED";
pub const ERR_INVALID_SESSION: &str = "ERR_INVALID_SESSION";
pub const ERR_SESSION_UNAVAILABLE: &str = "ERR_SESSION_UNAVAILABLE";
/// Not wafer's: a request the gateway refuses whatever its session (body too large, body
/// never finished). No magic key with these: the session is not at fault.
pub const ERR_REQUEST_TOO_LARGE: &str = "ERR_REQUEST_TOO_LARGE";
pub const ERR_BAD_REQUEST: &str = "ERR_BAD_REQUEST";
/// Not wafer's either: a forwarded route's upstream is down (502) or slow (504).
pub const ERR_UPSTREAM_UNAVAILABLE: &str = "ERR_UPSTREAM_UNAVAILABLE";
pub const ERR_UPSTREAM_TIMEOUT: &str = "ERR_UPSTREAM_TIMEOUT";
/// Not wafer's: `/phone-number` could not get the number (a bad or used code, WeChat
/// refusing or unreachable). No magic key: the session is fine.
pub const ERR_PHONE_NUMBER_FAILED: &str = "ERR_PHONE_NUMBER_FAILED";
/// Where `/phone-number` takes the code from the getPhoneNumber button.
pub const PHONE_CODE_HEADER: &str = "x-wx-phone-code";

pub use weapp_wire::params::*;

/// `{"F2C…": 1, "error": …, "message": …}`: tells the SDK its session is gone.
pub fn error_body(error: &str, message: &str) -> Value {
    json!({ MAGIC_KEY: 1, "error": error, "message": message })
}

/// The outage body: no magic key on purpose, so the SDK keeps its session through an outage.
pub fn unavailable_body(message: &str) -> Value {
    json!({ "error": ERR_SESSION_UNAVAILABLE, "message": message })
}

pub fn login_body(id: &str, skey: &str, user: Option<&RawValue>) -> String {
    let session = json!({ "id": id, "skey": skey });
    match user {
        // An addition to wafer's body: the SDK ignores it, newer clients save a round trip.
        // session-svc's text of it as it came: a login only passes the user on.
        Some(user) => format!(r#"{{"{MAGIC_KEY}":1,"session":{session},"userInfo":{user}}}"#),
        None => format!(r#"{{"{MAGIC_KEY}":1,"session":{session}}}"#),
    }
}

/// `/logout`'s answer; the magic key makes the SDK drop its copy of the session.
pub fn logout_body() -> Value {
    json!({ MAGIC_KEY: 1, "logout": true })
}

/// express's `app.use('/me', …)`: any method, `/me` and any path under `/me/`, matched without
/// regard to case as express does.
pub fn is_me(path: &str) -> bool {
    let Some(head) = path.get(..3) else {
        return false;
    };
    head.eq_ignore_ascii_case("/me") && matches!(path.as_bytes().get(3), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_magic_key_except_the_outage_body() {
        assert_eq!(error_body(ERR_INVALID_SESSION, "m")[MAGIC_KEY], 1);
        let login: Value = serde_json::from_str(&login_body("i", "s\"", None)).unwrap();
        assert_eq!(login[MAGIC_KEY], 1);
        assert_eq!(login["session"]["skey"], "s\"");
        assert!(unavailable_body("m").get(MAGIC_KEY).is_none());
    }

    #[test]
    fn the_login_body_carries_the_whole_user() {
        let user = RawValue::from_string(r#"{"openId":"o","unionId":"u"}"#.to_owned()).unwrap();
        let body: Value = serde_json::from_str(&login_body("i", "s", Some(&user))).unwrap();
        assert_eq!(body["userInfo"], json!({"openId": "o", "unionId": "u"}));
        assert_eq!(body["session"], json!({"id": "i", "skey": "s"}));
    }

    #[test]
    fn me_matches_as_express_mounts_it() {
        for path in ["/me", "/me/", "/me/x/y", "/ME", "/Me/profile"] {
            assert!(is_me(path), "{path}");
        }
        for path in ["/", "/m", "/mex", "/me.json", "/api/me", "/ме"] {
            assert!(!is_me(path), "{path}");
        }
    }
}
