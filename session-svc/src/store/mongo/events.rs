//! The MongoDB store's [`EventStore`]: `<database>.wechat_events`, one document per event,
//! `_id` = `app/eventId` (so keeping an event and deduplicating it are one insert), written
//! with majority write concern: an event acknowledged to WeChat survives a failover. Replays
//! are caught in `<database>.wechat_nonces` (`_id` = `app/timestamp/nonce`, the body's digest).
//! A replica claims a due event by compare-and-swap on its lease, so one replica delivers it.
use async_trait::async_trait;
use futures::TryStreamExt as _;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{Document, doc},
    options::{CollectionOptions, IndexOptions, WriteConcern},
};
use serde::{Deserialize, Serialize};

use super::{MongoStore, secrets::is_duplicate_key, unavailable};
use crate::{
    record::UnixMillis,
    store::{
        StoreError,
        events::{Event, EventState, EventStore, NonceSeen, OutboxStats, Requeue, event_key},
    },
};

const EVENTS: &str = "wechat_events";
const NONCES: &str = "wechat_nonces";
const DUE_INDEX: &str = "state_nextAt";

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct EventDoc {
    #[serde(rename = "_id")]
    key: String,
    #[serde(flatten)]
    event: Event,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct NonceDoc {
    #[serde(rename = "_id")]
    key: String,
    sha256: String,
    until: i64,
}

#[derive(Clone)]
pub(super) struct Collections {
    events: Collection<EventDoc>,
    nonces: Collection<NonceDoc>,
}

impl Collections {
    pub(super) fn new(db: &Database) -> Self {
        let majority = CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build();
        Self {
            events: db.collection_with_options(EVENTS, majority.clone()),
            nonces: db.collection_with_options(NONCES, majority),
        }
    }

    /// The index a delivery round reads by (idempotent).
    pub(super) async fn prepare(&self) -> Result<(), StoreError> {
        let due = IndexModel::builder()
            .keys(doc! { "state": 1, "nextAt": 1 })
            .options(IndexOptions::builder().name(DUE_INDEX.to_owned()).build())
            .build();
        self.events.create_index(due).await.map_err(unavailable)?;
        Ok(())
    }
}

fn doc_of(event: &Event) -> EventDoc {
    EventDoc {
        key: event.key(),
        event: event.clone(),
    }
}

impl MongoStore {
    /// Up to `limit` events matching `filter`, in `order`.
    async fn find_events(
        &self,
        filter: Document,
        order: Document,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let docs: Vec<EventDoc> = self
            .events
            .events
            .find(filter)
            .sort(order)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        Ok(docs.into_iter().map(|d| d.event).collect())
    }
}

fn with_app(mut filter: Document, app_id: Option<&str>) -> Document {
    if let Some(app) = app_id {
        filter.insert("appId", app);
    }
    filter
}

#[async_trait]
impl EventStore for MongoStore {
    async fn note_nonce(
        &self,
        app_id: &str,
        (timestamp, nonce): (i64, &str),
        body_sha256: &str,
        until: UnixMillis,
    ) -> Result<NonceSeen, StoreError> {
        let key = format!("{app_id}/{timestamp}/{nonce}");
        let doc = NonceDoc {
            key: key.clone(),
            sha256: body_sha256.to_owned(),
            until,
        };
        match self.events.nonces.insert_one(doc).await {
            Ok(_) => Ok(NonceSeen::First),
            Err(e) if is_duplicate_key(&e) => {
                let before = self
                    .events
                    .nonces
                    .find_one(doc! { "_id": &key })
                    .await
                    .map_err(unavailable)?;
                Ok(match before {
                    Some(before) if before.sha256 == body_sha256 => NonceSeen::SameBody,
                    Some(_) => NonceSeen::OtherBody,
                    // Purged in between: long past its window, so the signature is stale.
                    None => NonceSeen::OtherBody,
                })
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn keep_event(&self, event: &Event) -> Result<bool, StoreError> {
        match self.events.events.insert_one(doc_of(event)).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn claim_events(
        &self,
        owner: &str,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let due = doc! {
            "state": EventState::Pending.name(),
            "nextAt": { "$lte": now },
            "leaseUntil": { "$lte": now },
        };
        let due = self.find_events(due, doc! { "nextAt": 1 }, limit).await?;
        let mut claimed = Vec::with_capacity(due.len());
        for event in due {
            // Another replica may have claimed it since it was read: the lease it saw decides.
            let taken = self
                .events
                .events
                .update_one(
                    doc! {
                        "_id": event.key(),
                        "state": EventState::Pending.name(),
                        "leaseUntil": event.lease_until,
                    },
                    doc! { "$set": { "leaseUntil": lease_until, "owner": owner } },
                )
                .await
                .map_err(unavailable)?;
            if taken.modified_count == 1 {
                let mut event = event;
                event.lease_until = lease_until;
                event.owner = owner.to_owned();
                claimed.push(event);
            }
        }
        Ok(claimed)
    }

    async fn settle_event(&self, event: &Event, owner: &str) -> Result<bool, StoreError> {
        let replaced = self
            .events
            .events
            .replace_one(
                doc! {
                    "_id": event.key(),
                    "owner": owner,
                    "state": EventState::Pending.name(),
                },
                doc_of(event),
            )
            .await
            .map_err(unavailable)?;
        Ok(replaced.matched_count == 1)
    }

    async fn dead_letters(
        &self,
        app_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.find_events(
            with_app(doc! { "state": EventState::Dead.name() }, app_id),
            doc! { "receivedAt": 1 },
            limit,
        )
        .await
    }

    async fn requeue_dead(
        &self,
        app_id: Option<&str>,
        which: Requeue<'_>,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let mut filter = with_app(doc! { "state": EventState::Dead.name() }, app_id);
        if let Requeue::Ids(ids) = which {
            match app_id {
                Some(app) => {
                    let keys: Vec<String> = ids.iter().map(|id| event_key(app, id)).collect();
                    filter.insert("_id", doc! { "$in": keys });
                }
                None => {
                    filter.insert("eventId", doc! { "$in": ids.to_vec() });
                }
            }
        }
        let requeued = self
            .events
            .events
            .update_many(
                filter,
                doc! {
                    "$set": {
                        "state": EventState::Pending.name(),
                        "attempts": 0,
                        "nextAt": now,
                        "leaseUntil": 0_i64,
                    },
                    "$unset": { "settledAt": "" },
                },
            )
            .await
            .map_err(unavailable)?;
        Ok(requeued.modified_count)
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let pending = doc! { "state": EventState::Pending.name() };
        let count = self
            .events
            .events
            .count_documents(pending.clone())
            .await
            .map_err(unavailable)?;
        let oldest = self
            .find_events(pending, doc! { "receivedAt": 1 }, 1)
            .await?
            .first()
            .map(|e| e.received_at);
        let dead = self
            .events
            .events
            .count_documents(doc! { "state": EventState::Dead.name() })
            .await
            .map_err(unavailable)?;
        Ok(OutboxStats {
            pending: count,
            oldest_pending: oldest,
            dead,
        })
    }

    async fn purge_events(
        &self,
        delivered_before: UnixMillis,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let events = self
            .events
            .events
            .delete_many(doc! {
                "state": EventState::Delivered.name(),
                "settledAt": { "$lt": delivered_before },
            })
            .await
            .map_err(unavailable)?;
        let nonces = self
            .events
            .nonces
            .delete_many(doc! { "until": { "$lt": now } })
            .await
            .map_err(unavailable)?;
        Ok(events.deleted_count + nonces.deleted_count)
    }
}
