//! What session-svc keeps for WeChat's server APIs, beside the sessions: the app's
//! access_token (sealed), the lease that elects its one refresher among replicas, and each
//! user's latest session_key (sealed). Both stores implement [`SecretStore`]; the values are
//! sealed by the caller (`vault.rs`), so a store never sees a secret in the clear.
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::{record::UnixMillis, vault::Sealed};

/// The app's access_token as stored: one per AppId.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredToken {
    pub sealed: Sealed,
    /// When WeChat stops accepting it (its `expires_in` counted from the fetch).
    pub expires_at: UnixMillis,
    pub fetched_at: UnixMillis,
    /// When forced refreshes were made (the last day's), to keep within WeChat's limits
    /// whichever replica is asked.
    #[serde(default)]
    pub forced_at: Vec<UnixMillis>,
}

/// A user's latest session_key as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSessionKey {
    pub open_id: String,
    /// The app of the login it came from (none: from before apps files, the default app's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    pub sealed: Sealed,
    pub updated_at: UnixMillis,
    /// Kept as long as a session of that login can live; then deleted.
    pub expires_at: UnixMillis,
}

#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// The access_token stored for `app_id`, if any (expired or not).
    async fn load_token(&self, app_id: &str) -> Result<Option<StoredToken>, StoreError>;
    /// Replaces the access_token stored for `app_id`.
    async fn save_token(&self, app_id: &str, token: &StoredToken) -> Result<(), StoreError>;

    /// Takes the lease `name` for `holder` until `until` if no one else holds it past `now`
    /// (renewing it if `holder` already does); whether it is now held by `holder`.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: UnixMillis,
        until: UnixMillis,
    ) -> Result<bool, StoreError>;
    /// Gives the lease up, if `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Replaces the user's session_key (only the latest login's is valid at WeChat). With
    /// `sync` false, a store may write it with its next session insert instead of at once (and
    /// only then can it be read): a login's insert follows straight after, and one durable
    /// commit serves both. A later `sync` write of the user's key always wins.
    async fn put_session_key(&self, key: &StoredSessionKey, sync: bool) -> Result<(), StoreError>;
    /// The user's session_key, expired or not: expiry is the caller's call.
    async fn get_session_key(&self, open_id: &str) -> Result<Option<StoredSessionKey>, StoreError>;
    /// Deletes session_keys whose expiry is at or before `now`; how many.
    async fn purge_session_keys(&self, now: UnixMillis) -> Result<u64, StoreError>;
}
