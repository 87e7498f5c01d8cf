//! The one conversion between the user as weapp keeps it ([`weapp_wire::UserInfo`], the whole
//! object) and the user on the wire ([`pb::UserInfo`]). Every service goes through here, so a
//! field cannot be dropped on one path and kept on another.
use serde::Deserialize;
use serde_json::value::RawValue;
use weapp_wire::{UserInfo, user::MissingOpenId};

use crate::session::v1 as pb;

/// The user as JSON text, for an answer that only passes it on (a login's): checked as
/// [`UserInfo::try_from`] checks it — an object whose `openId` is a string — without building
/// the object and writing it out again.
pub fn user_json(user: &pb::UserInfo) -> Result<Box<RawValue>, MissingOpenId> {
    /// What is checked; every other field is skipped over.
    #[derive(Deserialize)]
    struct WithOpenId {
        #[serde(rename = "openId")]
        _open_id: String,
    }
    if user.json.is_empty() {
        let user = UserInfo::try_from(user)?;
        return RawValue::from_string(user.to_json()).map_err(|_| MissingOpenId);
    }
    // A struct also deserializes from an array: only an object is a user.
    if !user.json.trim_start().starts_with('{') {
        return Err(MissingOpenId);
    }
    serde_json::from_str::<WithOpenId>(&user.json).map_err(|_| MissingOpenId)?;
    RawValue::from_string(user.json.clone()).map_err(|_| MissingOpenId)
}

impl From<&UserInfo> for pb::UserInfo {
    fn from(user: &UserInfo) -> Self {
        let string = |name| user.string(name).map(str::to_owned);
        Self {
            open_id: user.open_id().to_owned(),
            union_id: user.union_id().map(str::to_owned),
            nick_name: string("nickName"),
            gender: user.integer("gender").and_then(|g| i32::try_from(g).ok()),
            language: string("language"),
            city: string("city"),
            province: string("province"),
            country: string("country"),
            avatar_url: string("avatarUrl"),
            json: user.to_json(),
        }
    }
}

impl TryFrom<&pb::UserInfo> for UserInfo {
    type Error = MissingOpenId;

    fn try_from(user: &pb::UserInfo) -> Result<Self, MissingOpenId> {
        if !user.json.is_empty() {
            return Self::from_json(&user.json);
        }
        // A session-svc older than the `json` field: the typed fields are all there is.
        if user.open_id.is_empty() {
            return Err(MissingOpenId);
        }
        let mut fields = serde_json::Map::new();
        let profile = [
            ("nickName", user.nick_name.clone().map(Into::into)),
            ("gender", user.gender.map(Into::into)),
            ("language", user.language.clone().map(Into::into)),
            ("city", user.city.clone().map(Into::into)),
            ("province", user.province.clone().map(Into::into)),
            ("country", user.country.clone().map(Into::into)),
            ("avatarUrl", user.avatar_url.clone().map(Into::into)),
        ];
        for (name, value) in profile {
            if let Some(value) = value {
                fields.insert(name.into(), value);
            }
        }
        Ok(Self::from_payload(
            fields,
            &user.open_id,
            user.union_id.as_deref(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_whole_object_crosses_the_wire_and_the_typed_fields_follow_it() {
        let payload = json!({"nickName": "N", "gender": 2, "extra": {"a": [1]},
            "watermark": {"appid": "wx1", "timestamp": 7}});
        let serde_json::Value::Object(payload) = payload else {
            unreachable!()
        };
        let user = UserInfo::from_payload(payload, "o1", None);
        let wire = pb::UserInfo::from(&user);
        assert_eq!(
            (wire.nick_name.as_deref(), wire.gender),
            (Some("N"), Some(2))
        );
        assert_eq!(UserInfo::try_from(&wire), Ok(user));
    }

    #[test]
    fn the_json_passed_on_is_checked_as_the_object_would_be() {
        let user = UserInfo::from_payload(
            serde_json::Map::from_iter([("nickName".to_owned(), json!("N \"q\""))]),
            "o1",
            Some("u1"),
        );
        let wire = pb::UserInfo::from(&user);
        let text = user_json(&wire).unwrap();
        let back: serde_json::Value = serde_json::from_str(text.get()).unwrap();
        assert_eq!(back, serde_json::Value::Object(user.fields().clone()));
        // A session-svc older than the `json` field: written from the typed fields.
        let typed = pb::UserInfo {
            json: String::new(),
            ..wire.clone()
        };
        let back: serde_json::Value =
            serde_json::from_str(user_json(&typed).unwrap().get()).unwrap();
        assert_eq!(back["openId"], "o1");
        for bad in [
            r#"{"nickName":"N"}"#,
            r#"{"openId":7}"#,
            r#"{"openId":null}"#,
            r#"["o1"]"#,
            r#"{"openId":"o1""#,
            r#"{"openId":"o1"} x"#,
            "",
        ] {
            let wire = pb::UserInfo {
                json: bad.to_owned(),
                open_id: if bad.is_empty() {
                    String::new()
                } else {
                    "o1".to_owned()
                },
                ..Default::default()
            };
            assert_eq!(user_json(&wire).map(|_| ()), Err(MissingOpenId), "{bad}");
            if !bad.is_empty() {
                assert_eq!(
                    UserInfo::try_from(&wire).map(|_| ()),
                    Err(MissingOpenId),
                    "{bad}"
                );
            }
        }
    }

    #[test]
    fn an_older_session_svc_still_names_the_user() {
        let wire = pb::UserInfo {
            open_id: "o1".into(),
            nick_name: Some("N".into()),
            ..Default::default()
        };
        let user = UserInfo::try_from(&wire).unwrap();
        assert_eq!((user.open_id(), user.nick_name()), ("o1", Some("N")));
        assert!(UserInfo::try_from(&pb::UserInfo::default()).is_err());
    }
}
