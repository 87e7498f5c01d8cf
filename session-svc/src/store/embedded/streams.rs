//! The embedded store's [`StreamStore`]: one more table in the same redb file, each write one
//! durable transaction (a restart keeps every acknowledged offset).
use async_trait::async_trait;
use redb::{Durability, ReadableTable as _, TableDefinition};

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
        let (open_id, bytes) = (
            open_id.to_owned(),
            serde_json::to_vec(stream).map_err(corrupt)?,
        );
        self.write(Durability::Immediate, move |txn| {
            let mut table = txn.open_table(STREAMS).map_err(unavailable)?;
            let stored: Option<u64> = match table.get(open_id.as_str()).map_err(unavailable)? {
                Some(bytes) => Some(
                    serde_json::from_slice::<Stream>(bytes.value())
                        .map_err(corrupt)?
                        .top,
                ),
                None => None,
            };
            if stored != expected {
                return Ok(false);
            }
            table
                .insert(open_id.as_str(), bytes.as_slice())
                .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }
}
