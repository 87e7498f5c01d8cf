//! The embedded store's [`StreamStore`]: one more table in the same redb file. Writes are
//! committed in groups, as new sessions are: the stream writes that arrive while a commit is
//! in flight go together in the next durable transaction (one fsync for many publishes), each
//! checked against the top it was computed from, in arrival order, inside that transaction.
//! Each publish still answers only once its push is on disk.
use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable as _, TableDefinition};

use super::{EmbeddedStore, unavailable};
use crate::store::{
    StoreError,
    streams::{Stream, StreamStore},
};

/// openId → the user's stream as JSON.
pub(super) const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Stream writes waiting for the next group commit.
#[derive(Default)]
pub(super) struct StreamQueue {
    pending: Vec<PendingSave>,
    /// A committer is running and will pick up whatever is pending.
    committing: bool,
}

struct PendingSave {
    open_id: String,
    bytes: Vec<u8>,
    expected: Option<u64>,
    done: tokio::sync::oneshot::Sender<Result<bool, String>>,
}

/// If a committer panics, lets the next write start another one.
struct CommitterGuard(Arc<Mutex<StreamQueue>>);

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

/// The stored stream's top for `open_id` inside `table` (what this transaction wrote
/// included).
fn stored_top(
    table: &redb::Table<'_, &str, &[u8]>,
    open_id: &str,
) -> Result<Option<u64>, StoreError> {
    match table.get(open_id).map_err(unavailable)? {
        Some(bytes) => Ok(Some(
            serde_json::from_slice::<Stream>(bytes.value())
                .map_err(corrupt)?
                .top,
        )),
        None => Ok(None),
    }
}

/// One durable transaction for a batch: each write lands if its expected top is still the
/// stored one (earlier writes of the batch included).
fn commit_batch(db: &Database, batch: &[PendingSave]) -> Result<Vec<bool>, StoreError> {
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(Durability::Immediate);
    let mut landed = Vec::with_capacity(batch.len());
    {
        let mut table = txn.open_table(STREAMS).map_err(unavailable)?;
        for save in batch {
            let fits = stored_top(&table, &save.open_id)? == save.expected;
            if fits {
                table
                    .insert(save.open_id.as_str(), save.bytes.as_slice())
                    .map_err(unavailable)?;
            }
            landed.push(fits);
        }
    }
    txn.commit().map_err(unavailable)?;
    Ok(landed)
}

fn commit_pending(db: &Weak<Database>, queue: &Mutex<StreamQueue>) {
    loop {
        let batch = {
            let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.pending.is_empty() {
                queue.committing = false;
                return;
            }
            std::mem::take(&mut queue.pending)
        };
        let outcome = match db.upgrade() {
            Some(db) => commit_batch(&db, &batch).map_err(|e| e.to_string()),
            None => Err("the store is closed".to_owned()),
        };
        match outcome {
            Ok(landed) => {
                for (save, landed) in batch.into_iter().zip(landed) {
                    let _ = save.done.send(Ok(landed));
                }
            }
            Err(e) => {
                for save in batch {
                    let _ = save.done.send(Err(e.clone()));
                }
            }
        }
    }
}

#[async_trait]
impl StreamStore for EmbeddedStore {
    async fn load_stream(&self, open_id: &str) -> Result<Option<Stream>, StoreError> {
        let open_id = open_id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(STREAMS).map_err(unavailable)?;
            match table.get(open_id.as_str()).map_err(unavailable)? {
                Some(bytes) => serde_json::from_slice(bytes.value())
                    .map(Some)
                    .map_err(corrupt),
                None => Ok(None),
            }
        })
        .await
    }

    async fn save_stream(
        &self,
        open_id: &str,
        stream: &Stream,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(stream).map_err(corrupt)?;
        let (done, landed) = tokio::sync::oneshot::channel();
        let start_committer = {
            let mut queue = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
            queue.pending.push(PendingSave {
                open_id: open_id.to_owned(),
                bytes,
                expected,
                done,
            });
            !std::mem::replace(&mut queue.committing, true)
        };
        if start_committer {
            let (db, queue) = (Arc::downgrade(&self.db), self.streams.clone());
            tokio::task::spawn_blocking(move || {
                let _guard = CommitterGuard(queue.clone());
                commit_pending(&db, &queue);
            });
        }
        landed
            .await
            .map_err(|_| StoreError::Unavailable("the store's committer failed".into()))?
            .map_err(StoreError::Unavailable)
    }
}
