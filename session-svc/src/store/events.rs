//! WeChat's pushed events, as the stores keep them: the inbox that answers WeChat and the
//! outbox that delivers to the team's upstream are one record per event. The record's key is
//! the app and the event id (MsgId, or FromUserName:CreateTime:Event), so keeping an event and
//! remembering it for deduplication are one insert: WeChat's retries find it there, and an
//! event WeChat was told `success` for is always in the outbox.
//!
//! Delivery claims a due event with a lease (one replica delivers it), then settles it:
//! delivered, tried again later, or dead (a dead letter, until an operator requeues it).
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::record::UnixMillis;

/// Where an event is in its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    Pending,
    Delivered,
    Dead,
}

impl EventState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }
}

/// One event WeChat pushed, verified, and its delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub app_id: String,
    /// MsgId (a decimal string: it exceeds 2^53), or FromUserName:CreateTime:Event.
    pub event_id: String,
    /// FromUserName: the user the event is about (empty for events about no user).
    pub open_id: String,
    /// The event as the upstream receives it (WeChat's JSON shape).
    pub body: String,
    pub received_at: UnixMillis,
    pub state: EventState,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (pending events).
    pub next_at: UnixMillis,
    /// A replica claimed it until then (0: nobody).
    #[serde(default)]
    pub lease_until: UnixMillis,
    #[serde(default)]
    pub owner: String,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was delivered or given up on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<UnixMillis>,
}

impl Event {
    /// The store's key: the app and the event id (event ids are per app).
    pub fn key(&self) -> String {
        event_key(&self.app_id, &self.event_id)
    }
}

pub fn event_key(app_id: &str, event_id: &str) -> String {
    format!("{app_id}/{event_id}")
}

/// What a `(timestamp, nonce)` was seen with before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceSeen {
    /// Never: remembered now.
    First,
    /// With the same body: WeChat's retry of one request.
    SameBody,
    /// With another body: a replay of a captured signature.
    OtherBody,
}

/// The outbox at a glance (metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: u64,
    pub oldest_pending: Option<UnixMillis>,
    pub dead: u64,
}

/// Which dead letters a requeue takes.
#[derive(Clone, Copy, Debug)]
pub enum Requeue<'a> {
    /// These event ids (of `app`).
    Ids(&'a [String]),
    All,
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Remembers that `(timestamp, nonce)` came with a body of this digest (until `until`),
    /// or says what it came with before.
    async fn note_nonce(
        &self,
        app_id: &str,
        (timestamp, nonce): (i64, &str),
        body_sha256: &str,
        until: UnixMillis,
    ) -> Result<NonceSeen, StoreError>;

    /// Keeps `event` durably unless one with its key is kept already (false: a duplicate).
    async fn keep_event(&self, event: &Event) -> Result<bool, StoreError>;

    /// Up to `limit` pending events due by `now` that nobody holds, each leased to `owner`
    /// until `lease_until`, oldest due first.
    async fn claim_events(
        &self,
        owner: &str,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// Stores `event` (its new state) if `owner` still holds it; false otherwise.
    async fn settle_event(&self, event: &Event, owner: &str) -> Result<bool, StoreError>;

    /// Dead letters (of one app, or all), oldest first.
    async fn dead_letters(
        &self,
        app_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// Puts dead letters back in the outbox, due `now`, their attempts reset; how many.
    async fn requeue_dead(
        &self,
        app_id: Option<&str>,
        which: Requeue<'_>,
        now: UnixMillis,
    ) -> Result<u64, StoreError>;

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;

    /// Forgets delivered events settled before `delivered_before` (their ids no longer
    /// deduplicate: WeChat's retries are long over) and nonces past their time; how many.
    async fn purge_events(
        &self,
        delivered_before: UnixMillis,
        now: UnixMillis,
    ) -> Result<u64, StoreError>;
}
