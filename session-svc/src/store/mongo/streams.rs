//! The MongoDB store's [`StreamStore`]: one document per user in `<database>.streams`,
//! `{ _id: openId, epoch, top, appId?, entries: [{o, t, at, k?}] }`, replaced by
//! compare-and-swap on `top` with majority write concern: an offset acknowledged once survives
//! a failover, so it is never handed out again.
use async_trait::async_trait;
use mongodb::{
    Collection, Database,
    bson::doc,
    options::{CollectionOptions, WriteConcern},
};

use super::{MongoStore, secrets::is_duplicate_key, unavailable};
use crate::store::{
    StoreError,
    streams::{Stream, StreamStore},
};

const STREAMS: &str = "streams";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct StreamDoc {
    #[serde(rename = "_id")]
    open_id: String,
    #[serde(flatten)]
    stream: Stream,
}

pub(super) fn collection(db: &Database) -> Collection<StreamDoc> {
    db.collection_with_options(
        STREAMS,
        CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build(),
    )
}

#[async_trait]
impl StreamStore for MongoStore {
    async fn load_stream(&self, open_id: &str) -> Result<Option<Stream>, StoreError> {
        let doc = self
            .streams
            .find_one(doc! { "_id": open_id })
            .await
            .map_err(unavailable)?;
        Ok(doc.map(|d| d.stream))
    }

    async fn save_stream(
        &self,
        open_id: &str,
        stream: &Stream,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
        let doc = StreamDoc {
            open_id: open_id.to_owned(),
            stream: stream.clone(),
        };
        match expected {
            // The first write: an insert, which a concurrent first write makes fail.
            None => match self.streams.insert_one(doc).await {
                Ok(_) => Ok(true),
                Err(e) if is_duplicate_key(&e) => Ok(false),
                Err(e) => Err(unavailable(e)),
            },
            Some(top) => {
                let top = i64::try_from(top).unwrap_or(i64::MAX);
                let replaced = self
                    .streams
                    .replace_one(doc! { "_id": open_id, "top": top }, doc)
                    .await
                    .map_err(unavailable)?;
                Ok(replaced.matched_count == 1)
            }
        }
    }
}
