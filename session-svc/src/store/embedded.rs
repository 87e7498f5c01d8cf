//! The default store: one redb file under the data directory. No server to run, crash-safe
//! (every commit is durable before the RPC answers), so a restart loses nothing.
//!
//! New sessions are committed in groups: logins that arrive while a commit is in flight are
//! written together by the next one, so N concurrent logins cost one fsync instead of N, and
//! each login still answers only once its session is on disk.
mod events;
mod secrets;
mod streams;

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use async_trait::async_trait;
use redb::{
    Database, Durability, MultimapTableDefinition, MultimapTableHandle as _,
    ReadableMultimapTable as _, ReadableTable as _, ReadableTableMetadata as _, TableDefinition,
    WriteTransaction,
};

use super::{SessionStore, StoreError, StoredSessionKey};
use crate::record::{PhoneNumber, SessionRecord, UnixMillis};

/// id → the session record as JSON (readable with any redb tool).
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// openId → ids of that user's sessions, for revoking them all.
const BY_OPEN_ID: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("sessions_by_open_id");
/// unionId → ids of that person's sessions (in any app), for pushing to and revoking a
/// person. Filled from the sessions when a store from before it is opened.
const BY_UNION_ID: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("sessions_by_union_id");
/// (expires_at, id), so the sweeper reads only what has expired.
const BY_EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("sessions_by_expiry");

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
        txn.open_multimap_table(BY_OPEN_ID).map_err(unavailable)?;
        txn.open_table(BY_EXPIRY).map_err(unavailable)?;
        index_union_ids(&txn)?;
        txn.open_table(secrets::TOKENS).map_err(unavailable)?;
        txn.open_table(streams::STREAMS).map_err(unavailable)?;
        txn.open_table(events::EVENTS).map_err(unavailable)?;
        txn.open_table(events::OUTBOX).map_err(unavailable)?;
        txn.open_table(events::DEAD).map_err(unavailable)?;
        txn.open_table(events::NONCES).map_err(unavailable)?;
        txn.open_table(secrets::LEASES).map_err(unavailable)?;
        txn.open_table(secrets::SESSION_KEYS).map_err(unavailable)?;
        txn.open_table(secrets::SESSION_KEYS_BY_EXPIRY)
            .map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(Self {
            db: Arc::new(db),
            path,
            inserts: Arc::default(),
            streams: Arc::default(),
        })
    }

    /// The sessions an index lists under `key`.
    async fn indexed(
        &self,
        index: MultimapTableDefinition<'static, &'static str, &'static str>,
        key: &str,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let index = txn.open_multimap_table(index).map_err(unavailable)?;
            let sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
            let mut records = Vec::new();
            for id in index.get(key.as_str()).map_err(unavailable)? {
                let id = id.map_err(unavailable)?;
                if let Some(bytes) = sessions.get(id.value()).map_err(unavailable)? {
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
        let mut by_open_id = txn.open_multimap_table(BY_OPEN_ID).map_err(unavailable)?;
        let mut by_expiry = txn.open_table(BY_EXPIRY).map_err(unavailable)?;
        let mut by_union_id = txn.open_multimap_table(BY_UNION_ID).map_err(unavailable)?;
        for PendingInsert { record, bytes, .. } in batch {
            let id = record.id.as_str();
            sessions.insert(id, bytes.as_slice()).map_err(unavailable)?;
            by_open_id
                .insert(record.user.open_id(), id)
                .map_err(unavailable)?;
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

/// The ids of a user's sessions, from the index.
fn session_ids_of(txn: &WriteTransaction, open_id: &str) -> Result<Vec<String>, StoreError> {
    let index = txn.open_multimap_table(BY_OPEN_ID).map_err(unavailable)?;
    let values = index.get(open_id).map_err(unavailable)?;
    values
        .map(|v| v.map(|g| g.value().to_owned()).map_err(unavailable))
        .collect()
}

/// Deletes a session and its index entries inside `txn`; the record it removed.
fn remove_in(txn: &WriteTransaction, id: &str) -> Result<Option<SessionRecord>, StoreError> {
    let mut sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
    let Some(bytes) = sessions.remove(id).map_err(unavailable)? else {
        return Ok(None);
    };
    let record = decode(bytes.value())?;
    drop(bytes);
    txn.open_multimap_table(BY_OPEN_ID)
        .map_err(unavailable)?
        .remove(record.user.open_id(), id)
        .map_err(unavailable)?;
    if let Some(union_id) = record.user.union_id() {
        txn.open_multimap_table(BY_UNION_ID)
            .map_err(unavailable)?
            .remove(union_id, id)
            .map_err(unavailable)?;
    }
    txn.open_table(BY_EXPIRY)
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
            let mut by_expiry = txn.open_table(BY_EXPIRY).map_err(unavailable)?;
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
        self.indexed(BY_OPEN_ID, open_id).await
    }

    async fn sessions_of_union(&self, union_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.indexed(BY_UNION_ID, union_id).await
    }

    async fn purge_expired(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.write(Durability::Eventual, move |txn| {
            let due: Vec<String> = {
                let by_expiry = txn.open_table(BY_EXPIRY).map_err(unavailable)?;
                let range = by_expiry
                    .range(..(now.saturating_add(1), ""))
                    .map_err(unavailable)?;
                range
                    .map(|entry| {
                        entry
                            .map(|(k, _)| k.value().1.to_owned())
                            .map_err(unavailable)
                    })
                    .collect::<Result<_, _>>()?
            };
            let mut removed = 0;
            for id in due {
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
