//! The user behind a session, the one shape every part of weapp passes around.
//!
//! It is the object wafer kept as `req.session.userInfo`: the decrypted user data with every
//! field WeChat put in it (`watermark` included), or `{openId, unionId?}` for a code-only
//! login. Keeping the object whole, instead of copying known fields into a struct, is what
//! makes `/me` answer exactly what wafer answered — a field WeChat adds tomorrow reaches it
//! too. `openId` is always present and is always the login code's.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Profile fields a verified rawData may fill in when the encrypted data lacks them.
const PROFILE_FIELDS: [&str; 7] = [
    "nickName",
    "gender",
    "language",
    "city",
    "province",
    "country",
    "avatarUrl",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>", into = "Map<String, Value>")]
pub struct UserInfo {
    fields: Map<String, Value>,
}

/// A user object without a string `openId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the user object has no openId")]
pub struct MissingOpenId;

impl TryFrom<Map<String, Value>> for UserInfo {
    type Error = MissingOpenId;

    fn try_from(fields: Map<String, Value>) -> Result<Self, MissingOpenId> {
        match fields.get("openId") {
            Some(Value::String(_)) => Ok(Self { fields }),
            _ => Err(MissingOpenId),
        }
    }
}

impl From<UserInfo> for Map<String, Value> {
    fn from(user: UserInfo) -> Self {
        user.fields
    }
}

impl UserInfo {
    /// A code-only login: all WeChat said is who the user is.
    pub fn code_only(open_id: &str, union_id: Option<&str>) -> Self {
        Self::from_payload(Map::new(), open_id, union_id)
    }

    /// Decrypted user data, kept whole. The ids are the code exchange's: they are set here
    /// (the caller has checked that the payload's own `openId`, if any, agrees), and a
    /// `unionId` is added when only the exchange knew it.
    pub fn from_payload(
        mut fields: Map<String, Value>,
        open_id: &str,
        union_id: Option<&str>,
    ) -> Self {
        fields.insert("openId".into(), Value::String(open_id.to_owned()));
        if let Some(union_id) = union_id {
            fields.insert("unionId".into(), Value::String(union_id.to_owned()));
        }
        Self { fields }
    }

    /// Fills profile fields from a verified rawData where the user data did not have them.
    /// Never the ids or the watermark: rawData describes the profile only.
    pub fn fill_profile(&mut self, raw: &Map<String, Value>) {
        for name in PROFILE_FIELDS {
            if let Some(value) = raw.get(name) {
                self.fields.entry(name).or_insert_with(|| value.clone());
            }
        }
    }

    pub fn open_id(&self) -> &str {
        self.string("openId").unwrap_or_default()
    }

    pub fn union_id(&self) -> Option<&str> {
        self.string("unionId")
    }

    pub fn nick_name(&self) -> Option<&str> {
        self.string("nickName")
    }

    /// A field as a string, when it is one.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// A field as an integer, when it is one.
    pub fn integer(&self, name: &str) -> Option<i64> {
        self.fields.get(name).and_then(Value::as_i64)
    }

    /// Every field, as the JSON object `/me` answers.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The object as JSON text.
    pub fn to_json(&self) -> String {
        // A map of JSON values always serializes; the fallback is never taken.
        serde_json::to_string(&self.fields).unwrap_or_else(|_| "{}".into())
    }

    /// Reads the JSON text [`Self::to_json`] wrote.
    pub fn from_json(text: &str) -> Result<Self, MissingOpenId> {
        match serde_json::from_str::<Map<String, Value>>(text) {
            Ok(fields) => Self::try_from(fields),
            Err(_) => Err(MissingOpenId),
        }
    }

    /// What the WebSocket greeting calls the user: the nickname, else the openId.
    pub fn display_name(&self) -> &str {
        self.nick_name()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.open_id())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn the_payload_is_kept_whole_and_the_ids_are_the_exchanges() {
        let payload = object(json!({"nickName": "N", "x": [1, {"y": null}],
            "watermark": {"appid": "wx1", "timestamp": 1}}));
        let user = UserInfo::from_payload(payload.clone(), "o1", Some("u1"));
        let mut expected = payload;
        expected.insert("openId".into(), json!("o1"));
        expected.insert("unionId".into(), json!("u1"));
        assert_eq!(user.fields(), &expected);
        assert_eq!((user.open_id(), user.union_id()), ("o1", Some("u1")));
        let round_trip: UserInfo = serde_json::from_str(&user.to_json()).unwrap();
        assert_eq!(round_trip, user);
    }

    #[test]
    fn raw_data_fills_only_missing_profile_fields() {
        let mut user = UserInfo::from_payload(object(json!({"nickName": "Enc"})), "o1", None);
        user.fill_profile(&object(
            json!({"nickName": "Raw", "city": "C", "openId": "evil",
            "watermark": 1}),
        ));
        assert_eq!(user.nick_name(), Some("Enc"));
        assert_eq!(user.string("city"), Some("C"));
        assert_eq!(user.open_id(), "o1");
        assert!(user.fields().get("watermark").is_none());
    }

    #[test]
    fn an_object_without_open_id_is_not_a_user() {
        assert!(serde_json::from_str::<UserInfo>(r#"{"nickName":"N"}"#).is_err());
        assert!(UserInfo::from_json(r#"{"openId":1}"#).is_err());
        assert_eq!(UserInfo::code_only("o", None).display_name(), "o");
    }
}
