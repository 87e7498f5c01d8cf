//! A resolved session's user, as the gateway keeps it: rendered once from the user object
//! session-svc sent, into its `/me` body and the two fields the gateway itself reads. Not the
//! parsed object: thousands of sessions stay cached and behind open WebSockets, and the
//! rendered body is all `/me` needs (a cached session answers it without building JSON).
use std::sync::Arc;

use axum::body::Bytes;
use weapp_proto::session::v1 as pb;
use weapp_wire::{UserInfo, user::MissingOpenId};

#[derive(Debug)]
pub struct User {
    /// Whose session it is (revocations name users by openId).
    pub open_id: String,
    /// The user's unionId, when WeChat gave one (an identity header of forwarded requests).
    pub union_id: Option<String>,
    /// The session's app (AppId), as session-svc said (empty from an older one).
    pub app_id: Arc<str>,
    /// What the WebSocket greeting calls the user.
    pub display_name: String,
    /// The user object as JSON: `/me`'s answer, exactly wafer's `req.session.userInfo`.
    pub me_body: Bytes,
}

impl User {
    pub fn new(info: &UserInfo) -> Self {
        Self::with_body(info, info.to_json())
    }

    fn with_body(info: &UserInfo, me_body: String) -> Self {
        Self {
            open_id: info.open_id().to_owned(),
            union_id: info.union_id().map(str::to_owned),
            app_id: Arc::from(""),
            display_name: info.display_name().to_owned(),
            me_body: me_body.into(),
        }
    }
}

impl User {
    /// The same user, of `app_id`.
    pub fn of_app(self, app_id: &str) -> Self {
        Self {
            app_id: Arc::from(app_id),
            ..self
        }
    }
}

impl TryFrom<&pb::UserInfo> for User {
    type Error = MissingOpenId;

    fn try_from(user: &pb::UserInfo) -> Result<Self, MissingOpenId> {
        let info = UserInfo::try_from(user)?;
        // The JSON session-svc sent (just checked) is the body already: no second
        // serialization on every Validate.
        Ok(match user.json.is_empty() {
            true => Self::new(&info),
            false => Self::with_body(&info, user.json.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use serde_json::{Map, Value, json};
    use weapp_wire::user_data::{Expected, parse_decrypted};

    use super::*;

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Every field of a decrypted payload reaches `/me` unchanged, through the one path
        /// the services use: checked by session-svc, sent over gRPC, rendered by the gateway.
        #[test]
        fn every_field_of_the_decrypted_payload_reaches_me_unchanged(
            fields in prop::collection::btree_map("[a-zA-Z_]{1,10}", any_json(), 0..8),
            union_id in proptest::option::of("[a-z0-9]{4,8}"),
        ) {
            let mut payload: Map<String, Value> = fields.into_iter().collect();
            payload.insert("openId".into(), json!("o-user"));
            payload.insert("watermark".into(), json!({"appid": "wxapp", "timestamp": 1000}));
            if let Some(union_id) = &union_id {
                payload.insert("unionId".into(), json!(union_id));
            }
            let plaintext = serde_json::to_vec(&payload).unwrap();
            let user = parse_decrypted(&plaintext, &Expected {
                app_id: "wxapp",
                open_id: "o-user",
                union_id: union_id.as_deref(),
                now_secs: 1000,
                max_age: Duration::from_secs(600),
            }).unwrap();
            let wire = pb::UserInfo::from(&user);
            let gateway_user = User::try_from(&wire).unwrap();
            let me: Value = serde_json::from_slice(&gateway_user.me_body).unwrap();
            prop_assert_eq!(me, Value::Object(payload));
        }
    }
}
