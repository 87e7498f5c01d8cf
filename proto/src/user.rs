//! The one conversion between the user as weapp keeps it ([`weapp_wire::UserInfo`], the whole
//! object) and the user on the wire ([`pb::UserInfo`]). Every service goes through here, so a
//! field cannot be dropped on one path and kept on another.
use weapp_wire::{UserInfo, user::MissingOpenId};

use crate::session::v1 as pb;

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
