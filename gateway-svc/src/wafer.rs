//! The wafer protocol as `wafer-client-sdk` speaks it: parameter names, the magic key, and the
//! shape of every body the session layer produces. Nothing here does I/O.
use serde_json::{Map, Value, json};
use weapp_proto::session::v1::UserInfo;

/// Present in every body produced by the session layer; the client SDK keys on it.
pub const MAGIC_KEY: &str = "F2C224D4-2BCE-4C64-AF9F-A6D872000D1A";

pub const ERR_LOGIN_FAILED: &str = "ERR_LOGIN_FAILED";
pub const ERR_INVALID_SESSION: &str = "ERR_INVALID_SESSION";
pub const ERR_SESSION_UNAVAILABLE: &str = "ERR_SESSION_UNAVAILABLE";
/// Not wafer's: a request the gateway refuses whatever its session (body too large, body
/// never finished). No magic key with these: the session is not at fault.
pub const ERR_REQUEST_TOO_LARGE: &str = "ERR_REQUEST_TOO_LARGE";
pub const ERR_BAD_REQUEST: &str = "ERR_BAD_REQUEST";

pub use weapp_wire::params::*;

/// `{"F2C…": 1, "error": …, "message": …}`: tells the SDK its session is gone.
pub fn error_body(error: &str, message: &str) -> Value {
    json!({ MAGIC_KEY: 1, "error": error, "message": message })
}

/// The outage body: no magic key on purpose, so the SDK keeps its session through an outage.
pub fn unavailable_body(message: &str) -> Value {
    json!({ "error": ERR_SESSION_UNAVAILABLE, "message": message })
}

pub fn login_body(id: &str, skey: &str, user: Option<&UserInfo>) -> Value {
    let mut body = json!({ MAGIC_KEY: 1, "session": { "id": id, "skey": skey } });
    if let Some(user) = user {
        // An addition to wafer's body: the SDK ignores it, newer clients save a round trip.
        body["userInfo"] = user_json(user);
    }
    body
}

/// A resolved session's user, with its `/me` body rendered once (a cached session answers
/// `/me` without building JSON again).
#[derive(Debug)]
pub struct User {
    pub info: UserInfo,
    pub me_body: axum::body::Bytes,
}

impl User {
    pub fn new(info: UserInfo) -> Self {
        let me_body = user_json(&info).to_string().into();
        Self { info, me_body }
    }
}

/// The user in WeChat's field names, as wafer's `req.session.userInfo` had them.
pub fn user_json(user: &UserInfo) -> Value {
    let mut map = Map::new();
    map.insert("openId".into(), json!(user.open_id));
    let optional = [
        ("unionId", user.union_id.as_ref().map(|v| json!(v))),
        ("nickName", user.nick_name.as_ref().map(|v| json!(v))),
        ("gender", user.gender.map(|v| json!(v))),
        ("language", user.language.as_ref().map(|v| json!(v))),
        ("city", user.city.as_ref().map(|v| json!(v))),
        ("province", user.province.as_ref().map(|v| json!(v))),
        ("country", user.country.as_ref().map(|v| json!(v))),
        ("avatarUrl", user.avatar_url.as_ref().map(|v| json!(v))),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            map.insert(key.into(), value);
        }
    }
    Value::Object(map)
}

/// What the WebSocket greeting calls the user: the nickname, else the openId.
pub fn display_name(user: &UserInfo) -> &str {
    user.nick_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(&user.open_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_magic_key_except_the_outage_body() {
        assert_eq!(error_body(ERR_INVALID_SESSION, "m")[MAGIC_KEY], 1);
        assert_eq!(login_body("i", "s", None)["session"]["skey"], "s");
        assert!(unavailable_body("m").get(MAGIC_KEY).is_none());
    }

    #[test]
    fn user_json_uses_wechat_names_and_omits_absent_fields() {
        let user = UserInfo {
            open_id: "o".into(),
            nick_name: Some("N".into()),
            gender: Some(1),
            ..Default::default()
        };
        assert_eq!(
            user_json(&user),
            json!({"openId": "o", "nickName": "N", "gender": 1})
        );
        assert_eq!(display_name(&user), "N");
        assert_eq!(
            display_name(&UserInfo {
                open_id: "o".into(),
                ..Default::default()
            }),
            "o"
        );
    }
}
