//! MongoDB's [`SecretStore`]: three collections beside `sessions`.
//!
//! ```text
//! wechat_tokens  { _id: "<appid>", sealed: { keyId, nonce, ciphertext }, expiresAt: <ms>,
//!                  fetchedAt: <ms>, forcedAt: [<ms>] }
//! leases         { _id: "<name>", holder: "<replica>", until: <ms> }
//! session_keys   { _id: "<openId>", sealed: { keyId, nonce, ciphertext }, updatedAt: <ms>,
//!                  expiresAt: ISODate }   (TTL index)
//! ```
//!
//! The lease is taken with operations every MongoDB-wire server implements alike: a
//! conditional replace (ours already, or expired), else an insert that the unique `_id` lets
//! only one replica win. Replacement documents carry their `_id`, so an upsert cannot invent
//! one.
use std::time::Duration;

use async_trait::async_trait;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{DateTime, doc},
    error::{ErrorKind, WriteFailure},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use super::{MongoStore, unavailable};
use crate::{
    record::UnixMillis,
    store::{
        StoreError,
        secrets::{SecretStore, StoredSessionKey, StoredToken},
    },
    vault::Sealed,
};

const TOKENS: &str = "wechat_tokens";
const LEASES: &str = "leases";
const SESSION_KEYS: &str = "session_keys";
const SESSION_KEYS_TTL_INDEX: &str = "expiresAt_ttl";
/// MongoDB's duplicate-key error.
const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenDoc {
    #[serde(rename = "_id")]
    app_id: String,
    #[serde(flatten)]
    token: StoredToken,
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseDoc {
    #[serde(rename = "_id")]
    name: String,
    holder: String,
    until: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionKeyDoc {
    #[serde(rename = "_id")]
    open_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app_id: Option<String>,
    sealed: Sealed,
    updated_at: i64,
    expires_at: DateTime,
}

/// A user's session_key as one upsert statement of an `update` command (a login's, written with
/// its group: `logins.rs`).
pub(super) fn key_upsert(key: &StoredSessionKey) -> Result<mongodb::bson::Document, StoreError> {
    let replacement = mongodb::bson::to_document(&key_doc(key))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(doc! { "q": { "_id": &key.open_id }, "u": replacement, "upsert": true })
}

fn key_doc(key: &StoredSessionKey) -> SessionKeyDoc {
    SessionKeyDoc {
        open_id: key.open_id.clone(),
        app_id: key.app_id.clone(),
        sealed: key.sealed.clone(),
        updated_at: key.updated_at,
        expires_at: DateTime::from_millis(key.expires_at),
    }
}

pub(super) const SESSION_KEYS_COLLECTION: &str = SESSION_KEYS;

#[derive(Clone)]
pub(super) struct Collections {
    tokens: Collection<TokenDoc>,
    leases: Collection<LeaseDoc>,
    session_keys: Collection<SessionKeyDoc>,
}

impl Collections {
    pub(super) fn new(db: &Database) -> Self {
        Self {
            tokens: db.collection(TOKENS),
            leases: db.collection(LEASES),
            session_keys: db.collection(SESSION_KEYS),
        }
    }

    pub(super) async fn prepare(&self) -> Result<(), StoreError> {
        let ttl = IndexModel::builder()
            .keys(doc! { "expiresAt": 1 })
            .options(
                IndexOptions::builder()
                    .name(SESSION_KEYS_TTL_INDEX.to_owned())
                    .expire_after(Duration::ZERO)
                    .build(),
            )
            .build();
        self.session_keys
            .create_index(ttl)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

pub(super) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|w| w.code == DUPLICATE_KEY)),
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

#[async_trait]
impl SecretStore for MongoStore {
    async fn load_token(&self, app_id: &str) -> Result<Option<StoredToken>, StoreError> {
        let doc = self
            .secrets
            .tokens
            .find_one(doc! { "_id": app_id })
            .await
            .map_err(unavailable)?;
        Ok(doc.map(|d| d.token))
    }

    async fn save_token(&self, app_id: &str, token: &StoredToken) -> Result<(), StoreError> {
        let doc = TokenDoc {
            app_id: app_id.to_owned(),
            token: token.clone(),
        };
        self.secrets
            .tokens
            .replace_one(doc! { "_id": app_id }, doc)
            .upsert(true)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: UnixMillis,
        until: UnixMillis,
    ) -> Result<bool, StoreError> {
        let lease = || LeaseDoc {
            name: name.to_owned(),
            holder: holder.to_owned(),
            until,
        };
        let taken_over = self
            .secrets
            .leases
            .replace_one(
                doc! { "_id": name, "$or": [ { "holder": holder }, { "until": { "$lte": now } } ] },
                lease(),
            )
            .await
            .map_err(unavailable)?;
        if taken_over.matched_count > 0 {
            return Ok(true);
        }
        match self.secrets.leases.insert_one(lease()).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.secrets
            .leases
            .delete_one(doc! { "_id": name, "holder": holder })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn put_session_key(&self, key: &StoredSessionKey, sync: bool) -> Result<(), StoreError> {
        if !sync {
            // A login's: written with its session, in the next group (`logins.rs`).
            self.logins.queue_key(&key.open_id, key_upsert(key)?);
            return Ok(());
        }
        self.logins.forget_keys(&key.open_id);
        let doc = key_doc(key);
        self.secrets
            .session_keys
            .replace_one(doc! { "_id": &key.open_id }, doc)
            .upsert(true)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_session_key(&self, open_id: &str) -> Result<Option<StoredSessionKey>, StoreError> {
        let doc = self
            .secrets
            .session_keys
            .find_one(doc! { "_id": open_id })
            .await
            .map_err(unavailable)?;
        Ok(doc.map(|d| StoredSessionKey {
            open_id: d.open_id,
            app_id: d.app_id,
            sealed: d.sealed,
            updated_at: d.updated_at,
            expires_at: d.expires_at.timestamp_millis(),
        }))
    }

    async fn purge_session_keys(&self, now: UnixMillis) -> Result<u64, StoreError> {
        let result = self
            .secrets
            .session_keys
            .delete_many(doc! { "expiresAt": { "$lte": DateTime::from_millis(now) } })
            .await
            .map_err(unavailable)?;
        Ok(result.deleted_count)
    }
}
