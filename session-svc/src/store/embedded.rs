//! The default store: one redb file under the data directory. No server to run, crash-safe
//! (every commit is durable before the RPC answers), so a restart loses nothing.
//!
//! New sessions are committed in groups: logins that arrive while a commit is in flight are
//! written together by the next one, so N concurrent logins cost one fsync instead of N, and
//! each login still answers only once its session is on disk.
mod events;
mod expiry;
mod secrets;
mod streams;
mod users;

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use async_trait::async_trait;
use redb::{
    Database, Durability, MultimapTableDefinition, MultimapTableHandle as _, ReadableTable as _,
    ReadableTableMetadata as _, TableDefinition, WriteTransaction,
};

use self::expiry::Expiring;
use super::{SessionStore, StoreError, StoredSessionKey};
use crate::record::{PhoneNumber, SessionRecord, UnixMillis};

/// id → the session record as JSON (readable with any redb tool).
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// unionId → ids of that person's sessions (in any app), for pushing to and revoking a
/// person. Filled from the sessions when a store from before it is opened.
const BY_UNION_ID: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("sessions_by_union_id");

pub const FILE_NAME: &str = "sessions.redb";

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: std::path::PathBuf,
    inserts: Arc<Mutex<InsertQueue>>,
    /// Users' streams waiting for the next group commit (`embedded/streams.rs`).
    streams: Arc<Mutex<streams::StreamQueue>>,
}

/// Sessions waiting for the next group commit.
#[derive(Default)]
struct InsertQueue {
    pending: Vec<PendingInsert>,
    /// Users' session_keys, written by the next batch (a login queues its user's key just
    /// before its session).
    session_keys: Vec<StoredSessionKey>,
    /// A committer is running and will pick up whatever is pending.
    committing: bool,
}

struct PendingInsert {
    record: SessionRecord,
    bytes: Vec<u8>,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// If a committer panics, lets the next insert start another one (the batch in hand fails;
/// what is still pending is picked up by that next committer).
struct CommitterGuard(Arc<Mutex<InsertQueue>>);

impl Drop for CommitterGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .committing = false;
        }
    }
}

fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}

fn decode(bytes: &[u8]) -> Result<SessionRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            // redb holds a lock on the file for as long as a process has it open.
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Misconfigured(format!(
                "{} is in use by another session-svc: the embedded store serves one process \
                 per data directory. Stop the other one, give this one its own \
                 WEAPP_DATA_DIR (its own sessions), or run replicas on MongoDB \
                 (WEAPP_MONGODB_URI), which they share",
                path.display()
            )),
            e => StoreError::Unavailable(format!("cannot open {}: {e}", path.display())),
        })?;
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(SESSIONS).map_err(unavailable)?;
        users::migrate(&txn)?;
        expiry::migrate(&txn)?;
        index_union_ids(&txn)?;
        txn.open_table(secrets::TOKENS).map_err(unavailable)?;
        txn.open_table(streams::STREAMS).map_err(unavailable)?;
        txn.open_table(events::EVENTS).map_err(unavailable)?;
        txn.open_table(events::OUTBOX).map_err(unavailable)?;
        txn.open_table(events::DEAD).map_err(unavailable)?;
        txn.open_table(events::NONCES).map_err(unavailable)?;
        txn.open_table(secrets::LEASES).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(Self {
            db: Arc::new(db),
            path,
            inserts: Arc::default(),
            streams: Arc::default(),
        })
    }

    /// The sessions whose ids `ids_of` reads (from an index), in one read transaction.
    async fn listed<F>(&self, ids_of: F) -> Result<Vec<SessionRecord>, StoreError>
    where
        F: FnOnce(&redb::ReadTransaction) -> Result<Vec<String>, StoreError> + Send + 'static,
    {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let ids = ids_of(&txn)?;
            let sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
            let mut records = Vec::new();
            for id in ids {
                if let Some(bytes) = sessions.get(id.as_str()).map_err(unavailable)? {
                    records.push(decode(bytes.value())?);
                }
            }
            Ok(records)
        })
        .await
    }

    /// Queues a user's session_key for the next batch of inserts.
    fn queue_session_key(&self, key: StoredSessionKey) {
        self.inserts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .session_keys
            .push(key);
    }

    /// Drops what is queued for a user's session_key (a newer one is being written).
    fn unqueue_session_key(&self, open_id: &str) {
        self.inserts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .session_keys
            .retain(|k| k.open_id != open_id);
    }

    /// Commits pending inserts, one durable transaction per batch, until none are left.
    ///
    /// Holds the database only while committing, never while answering: once a caller has its
    /// answer, closing the store really closes the file (a restart reopens it at once).
    fn commit_inserts(db: &Weak<Database>, queue: &Mutex<InsertQueue>) {
        loop {
            let batch = {
                let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.pending.is_empty() {
                    // Under the same lock as the check, so no insert can slip in unseen.
                    queue.committing = false;
                    return;
                }
                (
                    std::mem::take(&mut queue.pending),
                    std::mem::take(&mut queue.session_keys),
                )
            };
            let (batch, keys) = batch;
            let outcome = match db.upgrade() {
                Some(db) => insert_batch(&db, &batch, &keys).map_err(|e| e.to_string()),
                None => Err("the store is closed".to_owned()),
            };
            for pending in batch {
                let _ = pending.done.send(outcome.clone());
            }
        }
    }

    /// Runs blocking redb work off the async runtime.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// Same as [`Self::blocking`] inside one write transaction, committed if `work` succeeds.
    ///
    /// Logins and revocations are `Immediate`: durable before the RPC answers. Renewals and
    /// sweeps are `Eventual`: they sit on the request path of a busy session, an fsync there
    /// can outlast the gateway's deadline, and a crash that loses one only makes a session end
    /// a little early (or be swept again).
    async fn write<T, F>(&self, durability: Durability, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(unavailable)?;
            txn.set_durability(durability);
            let out = work(&txn)?;
            txn.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
    }
}

fn insert_batch(
    db: &Database,
    batch: &[PendingInsert],
    keys: &[StoredSessionKey],
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(Durability::Immediate);
    secrets::put_keys_in(&txn, keys)?;
    {
        let mut sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
        let mut users = txn.open_multimap_table(users::USERS).map_err(unavailable)?;
        let mut by_expiry = txn.open_table(expiry::BY_EXPIRY).map_err(unavailable)?;
        let mut by_union_id = txn.open_multimap_table(BY_UNION_ID).map_err(unavailable)?;
        for PendingInsert { record, bytes, .. } in batch {
            let id = record.id.as_str();
            sessions.insert(id, bytes.as_slice()).map_err(unavailable)?;
            users::add_session(&mut users, record.user.open_id(), id)?;
            if let Some(union_id) = record.user.union_id() {
                by_union_id.insert(union_id, id).map_err(unavailable)?;
            }
            by_expiry
                .insert((record.expires_at, id), ())
                .map_err(unavailable)?;
        }
    }
    txn.commit().map_err(unavailable)
}

/// Creates the unionId index, filling it from the stored sessions when it is new (a store
/// written before it existed).
fn index_union_ids(txn: &WriteTransaction) -> Result<(), StoreError> {
    let new = txn
        .list_multimap_tables()
        .map_err(unavailable)?
        .all(|t| t.name() != "sessions_by_union_id");
    let mut index = txn.open_multimap_table(BY_UNION_ID).map_err(unavailable)?;
    if !new {
        return Ok(());
    }
    let sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
    for entry in sessions.iter().map_err(unavailable)? {
        let (id, bytes) = entry.map_err(unavailable)?;
        let record = decode(bytes.value())?;
        if let Some(union_id) = record.user.union_id() {
            index.insert(union_id, id.value()).map_err(unavailable)?;
        }
    }
    Ok(())
}

/// The ids of a user's sessions.
fn session_ids_of(txn: &WriteTransaction, open_id: &str) -> Result<Vec<String>, StoreError> {
    let users = txn.open_multimap_table(users::USERS).map_err(unavailable)?;
    users::session_ids(&users, open_id)
}

/// Deletes a session and its index entries inside `txn`; the record it removed.
fn remove_in(txn: &WriteTransaction, id: &str) -> Result<Option<SessionRecord>, StoreError> {
    let mut sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
    let Some(bytes) = sessions.remove(id).map_err(unavailable)? else {
        return Ok(None);
    };
    let record = decode(bytes.value())?;
    drop(bytes);
    users::remove_session(
        &mut txn.open_multimap_table(users::USERS).map_err(unavailable)?,
        record.user.open_id(),
        id,
    )?;
    if let Some(union_id) = record.user.union_id() {
        txn.open_multimap_table(BY_UNION_ID)
            .map_err(unavailable)?
            .remove(union_id, id)
            .map_err(unavailable)?;
    }
    txn.open_table(expiry::BY_EXPIRY)
        .map_err(unavailable)?
        .remove((record.expires_at, id))
        .map_err(unavailable)?;
    Ok(Some(record))
}

#[async_trait]
impl SessionStore for EmbeddedStore {
    fn describe(&self) -> String {
        format!("embedded store {}", self.path.display())
    }

    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (done, committed) = tokio::sync::oneshot::channel();
        let start_committer = {
            let mut queue = self.inserts.lock().unwrap_or_else(PoisonError::into_inner);
            queue.pending.push(PendingInsert {
                record: record.clone(),
                bytes,
                done,
            });
            !std::mem::replace(&mut queue.committing, true)
        };
        if start_committer {
            let (db, queue) = (Arc::downgrade(&self.db), self.inserts.clone());
            tokio::task::spawn_blocking(move || {
                let _guard = CommitterGuard(queue.clone());
                Self::commit_inserts(&db, &queue);
            });
        }
        committed
            .await
            .map_err(|_| StoreError::Unavailable("the store's committer failed".into()))?
            .map_err(StoreError::Unavailable)
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(SESSIONS).map_err(unavailable)?;
            match table.get(id.as_str()).map_err(unavailable)? {
                Some(bytes) => decode(bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn renew(&self, renewed: &SessionRecord) -> Result<bool, StoreError> {
        let renewed = renewed.clone();
        self.write(Durability::Eventual, move |txn| {
            let id = renewed.id.as_str();
            let mut sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
            let mut record = match sessions.get(id).map_err(unavailable)? {
                Some(bytes) => decode(bytes.value())?,
                None => return Ok(false),
            };
            let old_expiry = record.expires_at;
            record.last_seen_at = renewed.last_seen_at;
            record.expires_at = renewed.expires_at;
            let bytes =
                serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sessions.insert(id, bytes.as_slice()).map_err(unavailable)?;
            let mut by_expiry = txn.open_table(expiry::BY_EXPIRY).map_err(unavailable)?;
            by_expiry.remove((old_expiry, id)).map_err(unavailable)?;
            by_expiry
                .insert((record.expires_at, id), ())
                .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn set_phone(&self, open_id: &str, phone: &PhoneNumber) -> Result<u64, StoreError> {
        let (open_id, phone) = (open_id.to_owned(), phone.clone());
        self.write(Durability::Immediate, move |txn| {
            let ids = session_ids_of(txn, &open_id)?;
            let mut sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
            let mut updated = 0;
            for id in ids {
                let Some(mut record) = (match sessions.get(id.as_str()).map_err(unavailable)? {
                    Some(bytes) => Some(decode(bytes.value())?),
                    None => None,
                }) else {
                    continue;
                };
                record.phone = Some(phone.clone());
                let bytes =
                    serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sessions
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(unavailable)?;
                updated += 1;
            }
            Ok(updated)
        })
        .await
    }

    async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(Durability::Immediate, move |txn| {
            Ok(remove_in(txn, &id)?.is_some())
        })
        .await
    }

    async fn remove_by_open_id(&self, open_id: &str) -> Result<u64, StoreError> {
        let open_id = open_id.to_owned();
        self.write(Durability::Immediate, move |txn| {
            let ids = session_ids_of(txn, &open_id)?;
            let mut removed = 0;
            for id in ids {
                if remove_in(txn, &id)?.is_some() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn sessions_of_user(&self, open_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let open_id = open_id.to_owned();
        self.listed(move |txn| {
            let users = txn.open_multimap_table(users::USERS).map_err(unavailable)?;
            users::session_ids(&users, &open_id)
        })
        .await
    }

    async fn sessions_of_union(&self, union_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let union_id = union_id.to_owned();
        self.listed(move |txn| {
            let index = txn.open_multimap_table(BY_UNION_ID).map_err(unavailable)?;
            index
                .get(union_id.as_str())
                .map_err(unavailable)?
                .map(|id| id.map(|id| id.value().to_owned()).map_err(unavailable))
                .collect()
        })
        .await
    }

    async fn purge_expired(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.write(Durability::Eventual, move |txn| {
            let due = expiry::due(txn, now, |e| matches!(e, Expiring::Session(_)))?;
            let mut removed = 0;
            for (_, id) in due {
                if remove_in(txn, &id)?.is_some() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            txn.open_table(SESSIONS)
                .map_err(unavailable)?
                .len()
                .map_err(unavailable)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|db| db.begin_read().map(drop).map_err(unavailable))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableHandle as _;

    use crate::{store::StoredSessionKey, vault::Sealed};

    fn record(id: &str, open_id: &str) -> SessionRecord {
        let now = crate::record::now_millis();
        SessionRecord {
            id: id.into(),
            skey_hash: "ab".repeat(32),
            user: serde_json::from_value(serde_json::json!({"openId": open_id})).unwrap(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + 60_000,
            max_expires_at: now + 120_000,
            phone: None,
            app_id: None,
        }
    }

    fn key(open_id: &str, expires_at: i64) -> StoredSessionKey {
        StoredSessionKey {
            open_id: open_id.into(),
            app_id: None,
            sealed: Sealed {
                key_id: "k1".into(),
                nonce: "n".into(),
                ciphertext: format!("c-{open_id}"),
            },
            updated_at: 1,
            expires_at,
        }
    }

    /// A file as session-svc wrote it before `users` (sessions_by_open_id and session_keys,
    /// tables of their own) opens with every user's sessions and key, in the new table only.
    #[tokio::test]
    async fn a_store_from_before_the_users_table_is_moved_over_when_opened() {
        use crate::store::SecretStore as _;
        let dir = tempfile::tempdir().unwrap();
        let now = crate::record::now_millis();
        let (a, b, c) = (
            record(&"a".repeat(32), "o1"),
            record(&"b".repeat(32), "o1"),
            record(&"c".repeat(32), "o2"),
        );
        {
            let old_by_open_id: MultimapTableDefinition<&str, &str> =
                MultimapTableDefinition::new("sessions_by_open_id");
            let old_keys: TableDefinition<&str, &[u8]> = TableDefinition::new("session_keys");
            const OLD_KEYS_BY_EXPIRY: TableDefinition<(i64, &str), ()> =
                TableDefinition::new("session_keys_by_expiry");
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut sessions = txn.open_table(SESSIONS).unwrap();
                let mut by_open_id = txn.open_multimap_table(old_by_open_id).unwrap();
                let mut by_expiry = txn.open_table(expiry::BY_EXPIRY).unwrap();
                for r in [&a, &b, &c] {
                    let bytes = serde_json::to_vec(r).unwrap();
                    sessions.insert(r.id.as_str(), bytes.as_slice()).unwrap();
                    by_open_id.insert(r.user.open_id(), r.id.as_str()).unwrap();
                    by_expiry.insert((r.expires_at, r.id.as_str()), ()).unwrap();
                }
                let mut keys = txn.open_table(old_keys).unwrap();
                let mut keys_by_expiry = txn.open_table(OLD_KEYS_BY_EXPIRY).unwrap();
                for (open_id, expires_at) in [("o1", now + 60_000), ("o3", now - 1)] {
                    let bytes = serde_json::to_vec(&key(open_id, expires_at)).unwrap();
                    keys.insert(open_id, bytes.as_slice()).unwrap();
                    keys_by_expiry.insert((expires_at, open_id), ()).unwrap();
                }
            }
            txn.commit().unwrap();
        }

        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut of_o1 = store.sessions_of_user("o1").await.unwrap();
        of_o1.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(of_o1, vec![a.clone(), b.clone()]);
        assert_eq!(store.sessions_of_user("o2").await.unwrap(), vec![c]);
        assert_eq!(
            store.get_session_key("o1").await.unwrap(),
            Some(key("o1", now + 60_000))
        );
        assert_eq!(store.get_session_key("o2").await.unwrap(), None);
        // What was indexed before is swept and revoked as before.
        assert_eq!(store.purge_session_keys(now).await.unwrap(), 1);
        assert_eq!(store.get_session_key("o3").await.unwrap(), None);
        assert_eq!(store.remove_by_open_id("o1").await.unwrap(), 2);
        assert_eq!(store.get(&a.id).await.unwrap(), None);
        assert!(
            store.get_session_key("o1").await.unwrap().is_some(),
            "a key outlives revocation"
        );

        let txn = store.db.begin_read().unwrap();
        let left: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .chain(
                txn.list_multimap_tables()
                    .unwrap()
                    .map(|t| t.name().to_owned()),
            )
            .collect();
        assert!(left.iter().any(|t| t == "users"), "{left:?}");
        assert!(
            !left
                .iter()
                .any(|t| t == "sessions_by_open_id" || t == "session_keys"),
            "the old tables are gone: {left:?}"
        );
        drop(txn);
        drop(store);
        // Opened again: nothing to move, nothing lost.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.sessions_of_user("o2").await.unwrap().len(), 1);
        assert!(store.get_session_key("o1").await.unwrap().is_some());
    }

    #[test]
    fn a_second_process_on_the_same_data_directory_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let first = EmbeddedStore::open(dir.path()).unwrap();
        let Err(StoreError::Misconfigured(message)) = EmbeddedStore::open(dir.path()) else {
            panic!("a second store on the same directory must be refused");
        };
        assert!(
            message.contains("in use by another session-svc"),
            "{message}"
        );
        assert!(message.contains("WEAPP_MONGODB_URI"), "{message}");
        drop(first);
        assert!(
            EmbeddedStore::open(dir.path()).is_ok(),
            "free again once closed"
        );
    }
}
