//! The feed between session-svc replicas, through MongoDB itself: every replica writes what
//! it revoked or changed (a logout, a RevokeUser, a user's new phone number) and what it was
//! asked to push to the `feed` collection, and reads what the others wrote — by a change stream where MongoDB
//! has them (a replica set, a sharded cluster, nx-27017), else by polling the collection
//! every [`POLL_EVERY`] (a standalone `mongod`). What it reads goes to its own followers
//! (`revocations.rs`), so a revocation taken by any replica reaches every gateway, whichever
//! replica each follows.
//!
//! While this replica cannot read the feed and other replicas are about, its followers cannot
//! trust their caches: their streams are cut (they empty their caches and follow another
//! replica) and new ones are refused until the feed is read again. A replica alone (none
//! seen in [`PRESENCE_WINDOW`]) keeps its followers through an interruption, as a single
//! session-svc always did: nobody else can have revoked anything, and what it wrote itself
//! its followers already have. Replicas say they are about in `replicas` every second.
//!
//! ```text
//! feed      { _id: "<replica>:<n>", origin: "<replica>", at: ISODate, kind: "session" |
//!             "user" | "user_changed", value: "<session id or openId>" }   TTL 10 min
//!           pushes ride it too: kind "push" (value: the messages, protobuf in base64) and
//!           "push_report" (value: JSON, another replica's count for the publisher)
//! replicas  { _id: "<replica>:<n>", origin: "<replica>", at: ISODate }      TTL 1 min
//! ```
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::TryStreamExt as _;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{Bson, DateTime, Document, doc},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    push::{Pushes, ReplicaReport},
    record::now_millis,
    revocations::{RevocationFeed, Revoked},
};

const COLLECTION: &str = "feed";
/// Feed kinds of the push lane (`push.rs`): a push, and a replica's sum of its gateways'
/// counts for the push's publisher.
const PUSH: &str = "push";
const PUSH_REPORT: &str = "push_report";
const REPLICAS: &str = "replicas";
/// A replica not heard from for this long is gone.
pub const PRESENCE_WINDOW: Duration = Duration::from_secs(5);
/// How often a replica says it is about.
const PRESENCE_EVERY: Duration = Duration::from_secs(1);
/// How long an entry is kept: long past any reader's lag, short enough to stay small.
const KEEP: Duration = Duration::from_secs(600);
/// How often a standalone MongoDB is asked for new entries.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// How far back each poll looks again: writers' clocks and commit order may disagree by
/// this much without an entry being missed.
const POLL_OVERLAP: Duration = Duration::from_secs(3);
/// MongoDB's code for "change streams are only supported on replica sets".
const NO_CHANGE_STREAMS: i32 = 40573;
/// How long to wait before asking a server that answered an empty batch at once.
const WATCH_PAUSE: Duration = Duration::from_millis(50);

/// How replicas read the feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FeedMode {
    /// Change streams, or polling when MongoDB has none (a standalone server).
    Auto,
    /// Change streams only: refuse to serve followers without them.
    ChangeStreams,
    /// Polling only.
    Poll,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "_id")]
    id: String,
    origin: String,
    at: DateTime,
    kind: String,
    value: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Presence {
    #[serde(rename = "_id")]
    id: String,
    origin: String,
    at: DateTime,
}

/// This replica's end of the feed.
pub struct ClusterFeed {
    db: Database,
    entries: Collection<Entry>,
    replicas: Collection<Presence>,
    /// Other replicas seen within the presence window, at the last look.
    others: AtomicU64,
    /// This replica's name (random per start).
    origin: String,
    written: AtomicU64,
    mode: FeedMode,
}

impl ClusterFeed {
    pub fn new(db: &Database, origin: String, mode: FeedMode) -> Arc<Self> {
        Arc::new(Self {
            db: db.clone(),
            entries: db.collection(COLLECTION),
            replicas: db.collection(REPLICAS),
            others: AtomicU64::new(0),
            origin,
            written: AtomicU64::new(0),
            mode,
        })
    }

    /// The TTL index. Idempotent.
    async fn prepare(&self) -> Result<(), mongodb::error::Error> {
        let ttl = IndexModel::builder()
            .keys(doc! { "at": 1 })
            .options(
                IndexOptions::builder()
                    .name("at_ttl".to_owned())
                    .expire_after(KEEP)
                    .build(),
            )
            .build();
        self.entries.create_index(ttl).await?;
        let presence = IndexModel::builder()
            .keys(doc! { "at": 1 })
            .options(
                IndexOptions::builder()
                    .name("at_ttl".to_owned())
                    .expire_after(Duration::from_secs(60))
                    .build(),
            )
            .build();
        self.replicas.create_index(presence).await.map(drop)
    }

    /// How many other replicas were about at the last look.
    pub fn others(&self) -> u64 {
        self.others.load(Ordering::Relaxed)
    }

    /// Says this replica is about, and counts the others, every second until `shutdown`;
    /// then says it is gone. Each word is a new document (replacing one in place is where
    /// MongoDB-wire servers differ most), and a replica clears its own old ones.
    pub async fn be_present(self: Arc<Self>, shutdown: CancellationToken) {
        let mut n = 0u64;
        loop {
            n += 1;
            let now = now_millis();
            let said = self
                .replicas
                .insert_one(Presence {
                    id: format!("{}:{n}", self.origin),
                    origin: self.origin.clone(),
                    at: DateTime::from_millis(now),
                })
                .await;
            let since = DateTime::from_millis(now - millis(PRESENCE_WINDOW));
            let found = match self.replicas.find(doc! { "at": { "$gte": since } }).await {
                Ok(cursor) => cursor.try_collect::<Vec<Presence>>().await,
                Err(e) => Err(e),
            };
            match (said, found) {
                (Ok(_), Ok(found)) => {
                    let mut others: Vec<&str> = found
                        .iter()
                        .map(|p| p.origin.as_str())
                        .filter(|o| *o != self.origin)
                        .collect();
                    others.sort_unstable();
                    others.dedup();
                    let others = others.len() as u64;
                    if self.others.swap(others, Ordering::Relaxed) != others {
                        tracing::info!(
                            others,
                            "session-svc replicas on this MongoDB besides this one"
                        );
                    }
                    let _ = self
                        .replicas
                        .delete_many(doc! { "origin": &self.origin, "at": { "$lt": since } })
                        .await;
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(error = %e, "replica presence not updated");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(PRESENCE_EVERY) => {}
            }
        }
        let _ = self
            .replicas
            .delete_many(doc! { "origin": &self.origin })
            .await;
    }

    /// Tells the other replicas. Failing here cannot undo what the store already did: it is
    /// logged, and the other replicas' followers learn of it when their cache entries end.
    pub async fn announce(&self, event: &Event) {
        let (kind, value) = event.parts();
        self.write(kind, value).await;
    }

    /// A push for the other replicas' followers (`push.rs` encodes it).
    pub async fn announce_push(&self, encoded: String) {
        self.write(PUSH, &encoded).await;
    }

    async fn write(&self, kind: &str, value: &str) {
        let n = self.written.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            id: format!("{}:{n}", self.origin),
            origin: self.origin.clone(),
            at: DateTime::now(),
            kind: kind.to_owned(),
            value: value.to_owned(),
        };
        if let Err(e) = self.entries.insert_one(entry).await {
            tracing::error!(error = %e, kind, "cannot tell the other session-svc replicas");
        }
    }

    /// Reads the other replicas' entries into `local` until `shutdown`, suspending `local`
    /// while it cannot.
    pub async fn follow(
        self: Arc<Self>,
        local: Arc<RevocationFeed>,
        pushes: Arc<Pushes>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut prepared = false;
        let mut resume: Option<Document> = None;
        let mut since = now_millis();
        let mut polling = self.mode == FeedMode::Poll;
        loop {
            if !prepared {
                match self.prepare().await {
                    Ok(()) => prepared = true,
                    Err(e) => tracing::debug!(error = %e, "feed index not created yet"),
                }
            }
            let ended = match polling {
                true => self.poll((&local, &pushes), &mut since, &shutdown).await,
                false => self.watch((&local, &pushes), &mut resume, &shutdown).await,
            };
            if matches!(ended, Ended::Shutdown) {
                return;
            }
            if self.others() > 0 {
                local.suspend();
            } else {
                tracing::info!(
                    "no other session-svc replica about: followers keep their caches meanwhile"
                );
            }
            match ended {
                Ended::Shutdown => return,
                Ended::NoChangeStreams if self.mode == FeedMode::Auto => {
                    tracing::warn!(
                        "MongoDB has no change streams (a standalone server): session-svc \
                         replicas share revocations by polling it every {POLL_EVERY:?}; run \
                         MongoDB as a replica set (a single-node one is enough) for change streams"
                    );
                    polling = true;
                    continue;
                }
                Ended::NoChangeStreams => tracing::error!(
                    "MongoDB has no change streams (a standalone server) and \
                     WEAPP_REPLICA_FEED=change-streams: gateways cannot follow this replica; \
                     run MongoDB as a replica set, or set WEAPP_REPLICA_FEED=poll"
                ),
                Ended::Failed(e) => {
                    tracing::warn!(error = %e, "feed between replicas interrupted; followers of this replica move on")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// A change stream, run as the `aggregate` and `getMore` commands themselves rather than
    /// through the driver's typed `watch()`: that one insists on 64-bit cursor ids, which
    /// nx-27017 does not send. Resumes after the last event seen, so a reconnection misses
    /// nothing the server still has.
    async fn watch(
        self: &Arc<Self>,
        (local, pushes): (&RevocationFeed, &Arc<Pushes>),
        resume: &mut Option<Document>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut stage = doc! {};
        if let Some(token) = resume.clone() {
            stage.insert("resumeAfter", token);
        }
        let opened = self
            .db
            .run_command(doc! {
                "aggregate": COLLECTION,
                "pipeline": [
                    { "$changeStream": stage },
                    { "$match": { "operationType": "insert" } },
                ],
                "cursor": {},
            })
            .await;
        let reply = match opened {
            Ok(reply) => reply,
            Err(e) if no_change_streams(&e) => return Ended::NoChangeStreams,
            Err(e) => return Ended::Failed(e.to_string()),
        };
        let Some(mut batch) = Batch::read(&reply, "firstBatch") else {
            return Ended::Failed(format!("unexpected answer to $changeStream: {reply}"));
        };
        // Open: from here on nothing written is missed.
        local.resume();
        tracing::info!("following the other session-svc replicas by change stream");
        loop {
            for event in &batch.events {
                // Read field by field: only these three are needed, and servers differ in
                // how they render the rest (nx-27017 hands `at` back as extended JSON).
                if let Ok(entry) = event.get_document("fullDocument") {
                    let field = |name| entry.get_str(name).unwrap_or_default();
                    self.apply(
                        (local, pushes),
                        field("origin"),
                        field("kind"),
                        field("value"),
                    );
                }
                if let Ok(token) = event.get_document("_id") {
                    *resume = Some(token.clone());
                }
            }
            if let Some(token) = batch.resume_token.take() {
                *resume = Some(token);
            }
            let asked = Instant::now();
            let more = self.db.run_command(doc! {
                "getMore": batch.cursor,
                "collection": COLLECTION,
                "maxTimeMS": 1000,
            });
            let reply = tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                reply = more => reply,
            };
            batch = match reply {
                Ok(reply) => match Batch::read(&reply, "nextBatch") {
                    Some(batch) => batch,
                    None => return Ended::Failed(format!("unexpected answer to getMore: {reply}")),
                },
                Err(e) => return Ended::Failed(e.to_string()),
            };
            // A server that answers an empty batch at once (instead of waiting up to
            // maxTimeMS, as MongoDB does) is asked again a little later.
            if batch.events.is_empty() && asked.elapsed() < WATCH_PAUSE {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ended::Shutdown,
                    _ = tokio::time::sleep(WATCH_PAUSE) => {}
                }
            }
        }
    }

    async fn poll(
        self: &Arc<Self>,
        (local, pushes): (&RevocationFeed, &Arc<Pushes>),
        since: &mut i64,
        shutdown: &CancellationToken,
    ) -> Ended {
        // Entries seen in the overlap window, so each is applied once.
        let mut seen: HashMap<String, i64> = HashMap::new();
        let mut resumed = false;
        loop {
            let from = DateTime::from_millis(*since - millis(POLL_OVERLAP));
            let found = self
                .entries
                .find(doc! { "at": { "$gte": from }, "origin": { "$ne": &self.origin } })
                .sort(doc! { "at": 1 })
                .await;
            let entries: Vec<Entry> = match found {
                Ok(cursor) => match cursor.try_collect().await {
                    Ok(entries) => entries,
                    Err(e) => return Ended::Failed(e.to_string()),
                },
                Err(e) => return Ended::Failed(e.to_string()),
            };
            if !resumed {
                local.resume();
                resumed = true;
                tracing::info!("following the other session-svc replicas by polling MongoDB");
            }
            for entry in entries {
                let at = entry.at.timestamp_millis();
                *since = (*since).max(at);
                if seen.insert(entry.id.clone(), at).is_none() {
                    self.apply((local, pushes), &entry.origin, &entry.kind, &entry.value);
                }
            }
            let horizon = *since - 2 * millis(POLL_OVERLAP);
            seen.retain(|_, at| *at >= horizon);
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }

    fn apply(
        self: &Arc<Self>,
        (local, pushes): (&RevocationFeed, &Arc<Pushes>),
        origin: &str,
        kind: &str,
        value: &str,
    ) {
        if origin == self.origin {
            return;
        }
        match kind {
            PUSH => {
                // Waits for this replica's gateways off the reading path, then writes the sum
                // back for the publisher.
                let (feed, pushes, value, to) = (
                    self.clone(),
                    pushes.clone(),
                    value.to_owned(),
                    origin.to_owned(),
                );
                tokio::spawn(async move {
                    if let Some(report) = pushes.relay(&value).await
                        && let Ok(report) = serde_json::to_string(&Addressed { to, report })
                    {
                        feed.write(PUSH_REPORT, &report).await;
                    }
                });
                return;
            }
            PUSH_REPORT => {
                if let Ok(addressed) = serde_json::from_str::<Addressed>(value)
                    && addressed.to == self.origin
                {
                    pushes.replica_report(&addressed.report);
                }
                return;
            }
            _ => {}
        }
        match Event::from_parts(kind, value) {
            Some(Event::Revoked(revoked)) => local.publish(revoked),
            Some(Event::UserChanged(open_id)) => local.user_changed(&open_id),
            // A newer replica's kind of entry: not ours to act on.
            None => tracing::debug!(kind, "unknown feed entry skipped"),
        }
    }
}

/// A replica's sum for another replica's push.
#[derive(Serialize, Deserialize)]
struct Addressed {
    to: String,
    report: ReplicaReport,
}

/// What one replica tells the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Revoked(Revoked),
    UserChanged(String),
}

impl Event {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Self::Revoked(Revoked::Session(id)) => ("session", id),
            Self::Revoked(Revoked::User(open_id)) => ("user", open_id),
            Self::UserChanged(open_id) => ("user_changed", open_id),
        }
    }

    fn from_parts(kind: &str, value: &str) -> Option<Self> {
        let value = value.to_owned();
        Some(match kind {
            "session" => Self::Revoked(Revoked::Session(value)),
            "user" => Self::Revoked(Revoked::User(value)),
            "user_changed" => Self::UserChanged(value),
            _ => return None,
        })
    }
}

/// One batch of a change stream's cursor.
struct Batch {
    cursor: i64,
    events: Vec<Document>,
    resume_token: Option<Document>,
}

impl Batch {
    fn read(reply: &Document, batch: &str) -> Option<Self> {
        let cursor = reply.get_document("cursor").ok()?;
        let id = match cursor.get("id")? {
            Bson::Int64(id) => *id,
            Bson::Int32(id) => i64::from(*id),
            _ => return None,
        };
        let events = cursor
            .get_array(batch)
            .ok()?
            .iter()
            .filter_map(|event| event.as_document().cloned())
            .collect();
        Some(Self {
            cursor: id,
            events,
            resume_token: cursor.get_document("postBatchResumeToken").ok().cloned(),
        })
    }
}

enum Ended {
    Shutdown,
    NoChangeStreams,
    Failed(String),
}

fn no_change_streams(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(command) => {
            command.code == NO_CHANGE_STREAMS || command.message.contains("replica set")
        }
        _ => false,
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_entry() {
        for event in [
            Event::Revoked(Revoked::Session("s".into())),
            Event::Revoked(Revoked::User("o".into())),
            Event::UserChanged("o".into()),
        ] {
            let (kind, value) = event.parts();
            assert_eq!(Event::from_parts(kind, value), Some(event.clone()));
        }
        assert_eq!(Event::from_parts("push", "x"), None);
    }
}
