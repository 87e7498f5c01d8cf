//! What a stored session is. Its own module because both the stores and the session life
//! cycle speak of it, and neither should depend on the other to do so.
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The user behind a session: the whole object wafer kept as `req.session.userInfo`.
pub use weapp_wire::UserInfo;

/// Milliseconds since the Unix epoch: the one time unit of stored sessions.
pub type UnixMillis = i64;

pub fn now_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A user's phone number as WeChat verified it (`getuserphonenumber`). Personal data: its
/// `Debug` shows nothing, so it cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhoneNumber {
    /// With the country code, as WeChat formats it ("+86 13800138000" or "13800138000").
    pub phone_number: String,
    /// Without the country code.
    pub pure_phone_number: String,
    pub country_code: String,
    pub verified_at: UnixMillis,
}

impl std::fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhoneNumber(..)")
    }
}

impl PhoneNumber {
    /// E.164 (`+8613800138000`), as the OpenID `phone_number` claim wants it.
    pub fn e164(&self) -> String {
        format!(
            "+{}{}",
            self.country_code.trim_start_matches('+'),
            self.pure_phone_number
        )
    }
}

/// A stored session. Holds the skey only as a hash; WeChat's session_key is kept per user,
/// sealed, apart from sessions (`store/secrets.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub id: String,
    pub skey_hash: String,
    pub user: UserInfo,
    pub created_at: UnixMillis,
    pub last_seen_at: UnixMillis,
    /// Idle expiry, never past `max_expires_at`: the session is dead from this instant on.
    pub expires_at: UnixMillis,
    /// Absolute end of life, whatever the use.
    pub max_expires_at: UnixMillis,
    /// The user's phone number, once WeChat has verified it for this app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<PhoneNumber>,
    /// The app (AppId) the session belongs to. Records from before apps files have none:
    /// they are the default app's, so moving to an apps file keeps every session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
}

impl SessionRecord {
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        now >= self.expires_at
    }
}
