//! The wafer protocol as `wafer-client-sdk` speaks it: parameter names, the magic key, and the
//! shape of every body the session layer produces. Nothing here does I/O.
use http::HeaderMap;
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

pub const HEADER_ID: &str = "x-wx-id";
pub const HEADER_SKEY: &str = "x-wx-skey";
pub const HEADER_CODE: &str = "x-wx-code";
pub const HEADER_ENCRYPTED_DATA: &str = "x-wx-encrypted-data";
pub const HEADER_IV: &str = "x-wx-iv";
pub const HEADER_RAW_DATA: &str = "x-wx-raw-data";
pub const HEADER_SIGNATURE: &str = "x-wx-signature";

/// A wafer parameter: from the headers (names are case-insensitive there anyway), else from
/// the query string, whose names are matched case-insensitively too. Empty counts as absent.
/// Header values are read as UTF-8, since rawData carries nicknames in any script.
pub fn param(headers: &HeaderMap, query: Option<&str>, name: &str) -> Option<String> {
    if let Some(value) = headers.get(name) {
        return Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
            .filter(|v| !v.is_empty());
    }
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The session parameters of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionParams {
    /// Neither X-WX-Id nor X-WX-Skey: the request goes on without a session.
    Absent,
    /// At least one of them: the pair must resolve, or the request is refused (a lone id or
    /// skey is an invalid session, not an anonymous request).
    Present { id: String, skey: String },
}

pub fn session_params(headers: &HeaderMap, query: Option<&str>) -> SessionParams {
    let id = param(headers, query, HEADER_ID);
    let skey = param(headers, query, HEADER_SKEY);
    if id.is_none() && skey.is_none() {
        SessionParams::Absent
    } else {
        SessionParams::Present {
            id: id.unwrap_or_default(),
            skey: skey.unwrap_or_default(),
        }
    }
}

/// What a login request carries. Session parameters are deliberately not read: a stale
/// session must never block a fresh login.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginParams {
    pub code: Option<String>,
    pub encrypted_data: Option<String>,
    pub iv: Option<String>,
    pub raw_data: Option<String>,
    pub signature: Option<String>,
}

pub fn login_params(headers: &HeaderMap, query: Option<&str>) -> LoginParams {
    LoginParams {
        code: param(headers, query, HEADER_CODE),
        encrypted_data: param(headers, query, HEADER_ENCRYPTED_DATA),
        iv: param(headers, query, HEADER_IV),
        raw_data: param(headers, query, HEADER_RAW_DATA),
        signature: param(headers, query, HEADER_SIGNATURE),
    }
}

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
    use http::HeaderValue;

    use super::*;

    #[test]
    fn headers_win_over_query_and_names_are_case_insensitive() {
        let mut headers = HeaderMap::new();
        headers.insert("X-WX-Id", HeaderValue::from_static("from-header"));
        let params = session_params(&headers, Some("x-wx-id=from-query&X-WX-SKEY=k"));
        assert_eq!(
            params,
            SessionParams::Present {
                id: "from-header".into(),
                skey: "k".into()
            }
        );
    }

    #[test]
    fn absent_partial_and_empty() {
        let none = HeaderMap::new();
        assert_eq!(session_params(&none, None), SessionParams::Absent);
        assert_eq!(
            session_params(&none, Some("x-wx-id=&other=1")),
            SessionParams::Absent
        );
        assert_eq!(
            session_params(&none, Some("X-WX-Id=abc")),
            SessionParams::Present {
                id: "abc".into(),
                skey: String::new()
            }
        );
    }

    #[test]
    fn query_values_are_url_decoded_like_node_does() {
        // '+' becomes a space, as in Node's querystring: session-svc repairs base64 for it.
        let p = login_params(&HeaderMap::new(), Some("X-WX-Code=c&X-WX-IV=ab+c%2Bd"));
        assert_eq!(p.iv.as_deref(), Some("ab c+d"));
    }

    #[test]
    fn utf8_header_values_survive() {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_RAW_DATA,
            HeaderValue::from_bytes("{\"nickName\":\"小明\"}".as_bytes()).unwrap(),
        );
        let p = login_params(&headers, None);
        assert_eq!(p.raw_data.as_deref(), Some("{\"nickName\":\"小明\"}"));
    }

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
