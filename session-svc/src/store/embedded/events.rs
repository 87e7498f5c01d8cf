//! The embedded store's [`EventStore`]: WeChat's events in the same redb file, with two small
//! indexes (the outbox by due time, the dead letters) so a delivery round reads only what is
//! due. Every write is durable before it returns: an event is on disk before WeChat hears
//! `success`.
use async_trait::async_trait;
use redb::{Durability, ReadableTable as _, TableDefinition, WriteTransaction};

use super::{EmbeddedStore, unavailable};
use crate::{
    record::UnixMillis,
    store::{
        StoreError,
        events::{Event, EventState, EventStore, NonceSeen, OutboxStats, Requeue, event_key},
    },
};

/// app/eventId → the event as JSON.
pub(super) const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("wechat_events");
/// (due, app/eventId) of every pending event.
pub(super) const OUTBOX: TableDefinition<(i64, &str), ()> = TableDefinition::new("wechat_outbox");
/// app/eventId of every dead letter.
pub(super) const DEAD: TableDefinition<&str, ()> = TableDefinition::new("wechat_dead_letters");
/// app/timestamp/nonce → (the body's SHA-256, kept until).
pub(super) const NONCES: TableDefinition<&str, (&str, i64)> = TableDefinition::new("wechat_nonces");

fn encode(event: &Event) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(event).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<Event, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn load_in(txn: &WriteTransaction, key: &str) -> Result<Option<Event>, StoreError> {
    let table = txn.open_table(EVENTS).map_err(unavailable)?;
    let found = table.get(key).map_err(unavailable)?;
    found.map(|bytes| decode(bytes.value())).transpose()
}

/// Writes `event` and keeps the indexes in step with its state (`before`: what was stored).
fn store_in(
    txn: &WriteTransaction,
    before: Option<&Event>,
    event: &Event,
) -> Result<(), StoreError> {
    let key = event.key();
    let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
    let mut dead = txn.open_table(DEAD).map_err(unavailable)?;
    if let Some(before) = before {
        match before.state {
            EventState::Pending => {
                outbox
                    .remove((before.next_at, key.as_str()))
                    .map_err(unavailable)?;
            }
            EventState::Dead => {
                dead.remove(key.as_str()).map_err(unavailable)?;
            }
            EventState::Delivered => {}
        }
    }
    match event.state {
        EventState::Pending => {
            outbox
                .insert((event.next_at, key.as_str()), ())
                .map_err(unavailable)?;
        }
        EventState::Dead => {
            dead.insert(key.as_str(), ()).map_err(unavailable)?;
        }
        EventState::Delivered => {}
    }
    let bytes = encode(event)?;
    txn.open_table(EVENTS)
        .map_err(unavailable)?
        .insert(key.as_str(), bytes.as_slice())
        .map_err(unavailable)?;
    Ok(())
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn note_nonce(
        &self,
        app_id: &str,
        (timestamp, nonce): (i64, &str),
        body_sha256: &str,
        until: UnixMillis,
    ) -> Result<NonceSeen, StoreError> {
        let key = format!("{app_id}/{timestamp}/{nonce}");
        let digest = body_sha256.to_owned();
        self.write(Durability::Immediate, move |txn| {
            let mut nonces = txn.open_table(NONCES).map_err(unavailable)?;
            let seen = nonces
                .get(key.as_str())
                .map_err(unavailable)?
                .map(|v| v.value().0 == digest);
            match seen {
                Some(true) => Ok(NonceSeen::SameBody),
                Some(false) => Ok(NonceSeen::OtherBody),
                None => {
                    nonces
                        .insert(key.as_str(), (digest.as_str(), until))
                        .map_err(unavailable)?;
                    Ok(NonceSeen::First)
                }
            }
        })
        .await
    }

    async fn keep_event(&self, event: &Event) -> Result<bool, StoreError> {
        let event = event.clone();
        self.write(Durability::Immediate, move |txn| {
            if load_in(txn, &event.key())?.is_some() {
                return Ok(false);
            }
            store_in(txn, None, &event)?;
            Ok(true)
        })
        .await
    }

    async fn claim_events(
        &self,
        owner: &str,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let owner = owner.to_owned();
        self.write(Durability::Immediate, move |txn| {
            let due: Vec<String> = {
                let outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
                let mut due = Vec::new();
                for entry in outbox.range(..=(now, "\u{10FFFF}")).map_err(unavailable)? {
                    let (key, _) = entry.map_err(unavailable)?;
                    due.push(key.value().1.to_owned());
                }
                due
            };
            let mut claimed = Vec::new();
            for key in due {
                if claimed.len() >= limit {
                    break;
                }
                let Some(mut event) = load_in(txn, &key)? else {
                    continue;
                };
                if event.state != EventState::Pending || event.lease_until > now {
                    continue;
                }
                let before = event.clone();
                event.lease_until = lease_until;
                event.owner.clone_from(&owner);
                store_in(txn, Some(&before), &event)?;
                claimed.push(event);
            }
            Ok(claimed)
        })
        .await
    }

    async fn settle_event(&self, event: &Event, owner: &str) -> Result<bool, StoreError> {
        let (event, owner) = (event.clone(), owner.to_owned());
        self.write(Durability::Immediate, move |txn| {
            let Some(before) = load_in(txn, &event.key())? else {
                return Ok(false);
            };
            if before.owner != owner || before.state != EventState::Pending {
                return Ok(false);
            }
            store_in(txn, Some(&before), &event)?;
            Ok(true)
        })
        .await
    }

    async fn dead_letters(
        &self,
        app_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let app_id = app_id.map(str::to_owned);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let dead = txn.open_table(DEAD).map_err(unavailable)?;
            let events = txn.open_table(EVENTS).map_err(unavailable)?;
            let mut found = Vec::new();
            for entry in dead.iter().map_err(unavailable)? {
                let (key, _) = entry.map_err(unavailable)?;
                if let Some(bytes) = events.get(key.value()).map_err(unavailable)? {
                    let event = decode(bytes.value())?;
                    if app_id.as_deref().is_none_or(|a| a == event.app_id) {
                        found.push(event);
                    }
                }
            }
            found.sort_by_key(|e| e.received_at);
            found.truncate(limit);
            Ok(found)
        })
        .await
    }

    async fn requeue_dead(
        &self,
        app_id: Option<&str>,
        which: Requeue<'_>,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let app_id = app_id.map(str::to_owned);
        let ids: Option<Vec<String>> = match which {
            Requeue::Ids(ids) => Some(ids.to_vec()),
            Requeue::All => None,
        };
        self.write(Durability::Immediate, move |txn| {
            let keys: Vec<String> = match (&ids, &app_id) {
                (Some(ids), Some(app)) => ids.iter().map(|id| event_key(app, id)).collect(),
                _ => {
                    let dead = txn.open_table(DEAD).map_err(unavailable)?;
                    let mut keys = Vec::new();
                    for entry in dead.iter().map_err(unavailable)? {
                        keys.push(entry.map_err(unavailable)?.0.value().to_owned());
                    }
                    keys
                }
            };
            let mut requeued = 0;
            for key in keys {
                let Some(before) = load_in(txn, &key)? else {
                    continue;
                };
                let named = ids
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&before.event_id));
                let of_app = app_id.as_deref().is_none_or(|a| a == before.app_id);
                if before.state != EventState::Dead || !named || !of_app {
                    continue;
                }
                let mut event = before.clone();
                event.state = EventState::Pending;
                (event.attempts, event.next_at, event.lease_until) = (0, now, 0);
                event.settled_at = None;
                store_in(txn, Some(&before), &event)?;
                requeued += 1;
            }
            Ok(requeued)
        })
        .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.blocking(|db| {
            use redb::ReadableTableMetadata as _;
            let txn = db.begin_read().map_err(unavailable)?;
            let outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
            let dead = txn.open_table(DEAD).map_err(unavailable)?;
            let events = txn.open_table(EVENTS).map_err(unavailable)?;
            let mut oldest: Option<UnixMillis> = None;
            // The outbox is ordered by due time, not by arrival: read each pending event's.
            for entry in outbox.iter().map_err(unavailable)? {
                let (key, _) = entry.map_err(unavailable)?;
                if let Some(bytes) = events.get(key.value().1).map_err(unavailable)? {
                    let at = decode(bytes.value())?.received_at;
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
            }
            Ok(OutboxStats {
                pending: outbox.len().map_err(unavailable)?,
                oldest_pending: oldest,
                dead: dead.len().map_err(unavailable)?,
            })
        })
        .await
    }

    async fn purge_events(
        &self,
        delivered_before: UnixMillis,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.write(Durability::Eventual, move |txn| {
            let mut events = txn.open_table(EVENTS).map_err(unavailable)?;
            let old = events
                .extract_if(|_, bytes| {
                    decode(bytes).is_ok_and(|e| {
                        e.state == EventState::Delivered
                            && e.settled_at.is_some_and(|at| at < delivered_before)
                    })
                })
                .map_err(unavailable)?
                .count();
            let mut nonces = txn.open_table(NONCES).map_err(unavailable)?;
            let stale = nonces
                .extract_if(|_, (_, until)| until < now)
                .map_err(unavailable)?
                .count();
            Ok(u64::try_from(old + stale).unwrap_or(u64::MAX))
        })
        .await
    }
}
