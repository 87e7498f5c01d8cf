//! The embedded store's [`SecretStore`]: more tables in the same redb file (users' session_keys
//! live with their sessions' ids, `users.rs`). One process owns the file, so the lease only
//! matters for the shape of the code that takes it.
use async_trait::async_trait;
use redb::{Durability, ReadableTable as _, TableDefinition, WriteTransaction};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    EmbeddedStore,
    expiry::{self, Expiring},
    unavailable, users,
};
use crate::{
    record::UnixMillis,
    store::{
        StoreError,
        secrets::{SecretStore, StoredSessionKey, StoredToken},
    },
};

/// AppId → the sealed access_token as JSON.
pub(super) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("wechat_tokens");
/// Lease name → (holder, until).
pub(super) const LEASES: TableDefinition<&str, (&str, i64)> = TableDefinition::new("leases");

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Replaces users' session_keys inside `txn` (a batch's, opening each table once). The expiry
/// index gets an entry for each new expiry and keeps the old one: the sweep drops entries that
/// no longer match (this runs in every login's commit, the sweep once a minute).
pub(super) fn put_keys_in(
    txn: &WriteTransaction,
    keys: &[StoredSessionKey],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut users = txn.open_multimap_table(users::USERS).map_err(unavailable)?;
    let mut by_expiry = txn.open_table(expiry::BY_EXPIRY).map_err(unavailable)?;
    for key in keys {
        users::put_key(&mut users, key, &encode(key)?)?;
        by_expiry
            .insert(
                (key.expires_at, expiry::key_entry(&key.open_id).as_str()),
                (),
            )
            .map_err(unavailable)?;
    }
    Ok(())
}

impl EmbeddedStore {
    async fn read_json<T: DeserializeOwned + Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(table).map_err(unavailable)?;
            match table.get(key.as_str()).map_err(unavailable)? {
                Some(bytes) => decode(bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }
}

#[async_trait]
impl SecretStore for EmbeddedStore {
    async fn load_token(&self, app_id: &str) -> Result<Option<StoredToken>, StoreError> {
        self.read_json(TOKENS, app_id).await
    }

    async fn save_token(&self, app_id: &str, token: &StoredToken) -> Result<(), StoreError> {
        let (app_id, bytes) = (app_id.to_owned(), encode(token)?);
        self.write(Durability::Immediate, move |txn| {
            txn.open_table(TOKENS)
                .map_err(unavailable)?
                .insert(app_id.as_str(), bytes.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: UnixMillis,
        until: UnixMillis,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(Durability::Eventual, move |txn| {
            let mut leases = txn.open_table(LEASES).map_err(unavailable)?;
            let free = match leases.get(name.as_str()).map_err(unavailable)? {
                Some(entry) => {
                    let (current, expires) = entry.value();
                    current == holder || expires <= now
                }
                None => true,
            };
            if free {
                leases
                    .insert(name.as_str(), (holder.as_str(), until))
                    .map_err(unavailable)?;
            }
            Ok(free)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(Durability::Eventual, move |txn| {
            let mut leases = txn.open_table(LEASES).map_err(unavailable)?;
            let mine = leases
                .get(name.as_str())
                .map_err(unavailable)?
                .is_some_and(|entry| entry.value().0 == holder);
            if mine {
                leases.remove(name.as_str()).map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }

    async fn put_session_key(&self, key: &StoredSessionKey, sync: bool) -> Result<(), StoreError> {
        if !sync {
            // Written by the commit of the login's session, queued right after this: one
            // durable commit for both, and the group commit of concurrent logins intact (a
            // write transaction of its own would queue behind every fsync in flight).
            self.queue_session_key(key.clone());
            return Ok(());
        }
        // A key still queued for this user is older than this one: it must not land after it.
        self.unqueue_session_key(&key.open_id);
        let key = key.clone();
        self.write(Durability::Immediate, move |txn| {
            put_keys_in(txn, std::slice::from_ref(&key))
        })
        .await
    }

    async fn get_session_key(&self, open_id: &str) -> Result<Option<StoredSessionKey>, StoreError> {
        let open_id = open_id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let users = txn.open_multimap_table(users::USERS).map_err(unavailable)?;
            users::key(&users, &open_id)?
                .map(|json| decode(&json))
                .transpose()
        })
        .await
    }

    async fn purge_session_keys(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.write(Durability::Eventual, move |txn| {
            let due = expiry::due(txn, now, |e| matches!(e, Expiring::Key(_)))?;
            let mut by_expiry = txn.open_table(expiry::BY_EXPIRY).map_err(unavailable)?;
            let mut users = txn.open_multimap_table(users::USERS).map_err(unavailable)?;
            let mut removed = 0;
            for (expires_at, entry) in &due {
                by_expiry
                    .remove((*expires_at, entry.as_str()))
                    .map_err(unavailable)?;
                let Expiring::Key(open_id) = Expiring::of(entry) else {
                    continue;
                };
                // The entry of an older login: the user's current key lives longer.
                let expired = match users::key(&users, open_id)? {
                    Some(current) => decode::<StoredSessionKey>(&current)?.expires_at <= now,
                    None => false,
                };
                if expired && users::remove_key(&mut users, open_id)? {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }
}
