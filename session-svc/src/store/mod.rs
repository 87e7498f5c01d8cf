//! Where sessions live. Every store implements [`SessionStore`] and passes the same
//! conformance suite; the embedded store is the default, MongoDB slots in beside it.
mod embedded;
pub mod events;
mod metered;
mod mongo;
pub mod secrets;
pub mod streams;

pub use embedded::EmbeddedStore;
pub use events::{Event, EventState, EventStore, NonceSeen, OutboxStats, Requeue};
pub use metered::Metered;
pub use mongo::{MongoSettings, MongoStore};
pub use secrets::{SecretStore, StoredSessionKey, StoredToken};
pub use streams::{Stream, StreamStore, Window};

use async_trait::async_trait;

use crate::record::{PhoneNumber, SessionRecord, UnixMillis};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refused the operation; the caller may retry later.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be read back.
    #[error("session store holds an unreadable record: {0}")]
    Corrupt(String),
    /// The store's settings are wrong (found when it is opened, never later).
    #[error("session store configuration: {0}")]
    Misconfigured(String),
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Where the store is, safe to log (no credentials).
    fn describe(&self) -> String;
    /// One-time set-up that needs the store to be reachable (indexes). Idempotent; retried
    /// by the caller until it succeeds.
    async fn prepare(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Adds a new session (ids are random and never reused).
    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError>;
    /// The session with this id, expired or not: expiry is the caller's call.
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Stores a renewed session (new `last_seen_at` and `expires_at`, nothing else changes)
    /// unless it was revoked meanwhile; false when it no longer exists.
    async fn renew(&self, renewed: &SessionRecord) -> Result<bool, StoreError>;
    /// Records the user's verified phone number on every session of theirs; how many.
    async fn set_phone(&self, open_id: &str, phone: &PhoneNumber) -> Result<u64, StoreError>;
    /// Revokes one session; false when there was none.
    async fn remove(&self, id: &str) -> Result<bool, StoreError>;
    /// Revokes every session of a user; how many there were.
    async fn remove_by_open_id(&self, open_id: &str) -> Result<u64, StoreError>;
    /// Every stored session of a user (openId), expired or not.
    async fn sessions_of_user(&self, open_id: &str) -> Result<Vec<SessionRecord>, StoreError>;
    /// Every stored session of a person (unionId), in any app, expired or not.
    async fn sessions_of_union(&self, union_id: &str) -> Result<Vec<SessionRecord>, StoreError>;
    /// Deletes sessions whose expiry is at or before `now`; how many.
    async fn purge_expired(&self, now: UnixMillis) -> Result<u64, StoreError>;
    /// Sessions stored, expired ones not yet swept included (logged when the store is ready).
    async fn count(&self) -> Result<u64, StoreError>;
    /// Cheap reachability check, for health reporting.
    async fn ping(&self) -> Result<(), StoreError>;
}
