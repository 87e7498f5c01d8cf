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

/// A stored session. Holds the skey only as a hash, and nothing of WeChat's session_key: no
/// feature needs it after login, so the safest copy is none.
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
}

impl SessionRecord {
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        now >= self.expires_at
    }
}
