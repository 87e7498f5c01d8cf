//! The feed between session-svc replicas, through MongoDB itself: every replica writes what
//! it revoked or changed (a logout, a RevokeUser, a user's new phone number) and what it was
//! asked to push to the `feed` collection, and reads what the others wrote — by a change stream where MongoDB
//! has them (a replica set, a sharded cluster, nx-27017), else by polling the collection
//! (a standalone `mongod`). What it reads goes to its own followers
//! (`revocations.rs`; read in `read.rs`), so a revocation taken by any replica reaches every gateway, whichever
//! replica each follows.
//!
//! While this replica cannot read the feed and other replicas are about, its followers cannot
//! trust their caches: their streams are cut (they empty their caches and follow another
//! replica) and new ones are refused until the feed is read again. A replica alone (none
//! seen in [`PRESENCE_WINDOW`]) keeps its followers through an interruption, as a single
//! session-svc always did: nobody else can have revoked anything, and what it wrote itself
//! its followers already have. Replicas say they are about in `replicas` every few seconds.
//!
//! Quiet when idle: what a replica sends the store on its own clock is a few commands a
//! second, however many replicas there are. A server that answers an empty `getMore` at once
//! (nx-27017; MongoDB waits `maxTimeMS`) and the poll of a standalone server are asked again
//! sooner after an entry and later after each empty answer, never later than
//! [`IDLE_PAUSE_MAX`] — well inside the 1 s in which a revocation reaches every gateway. A
//! replica's presence is one upsert of its own document and one read of everyone's.
//!
//! ```text
//! feed      { _id: "<replica>:<n>", origin: "<replica>", at: ISODate, kind: "session" |
//!             "user" | "user_changed", value: "<session id or openId>" }   TTL 10 min
//!           pushes ride it too: kind "push" (value: the messages, protobuf in base64) and
//!           "push_report" (value: JSON, another replica's count for the publisher)
//! replicas  { _id: "<replica>", origin: "<replica>", at: ISODate }   upserted; TTL 1 min
//! ```
mod presence;
mod read;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use mongodb::{
    Collection, Database, IndexModel,
    bson::{DateTime, Document, doc},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    push::{OtherReplicas, Pushes, ReplicaReport},
    record::now_millis,
    revocations::{RevocationFeed, Revoked},
};

const COLLECTION: &str = "feed";
/// Feed kinds of the push lane (`push.rs`): a push, and a replica's sum of its gateways'
/// counts for the push's publisher.
const PUSH: &str = "push";
const PUSH_REPORT: &str = "push_report";
const REPLICAS: &str = "replicas";
/// A replica not heard from for this long is gone (more than two beats: one lost write does
/// not make it vanish).
pub const PRESENCE_WINDOW: Duration = Duration::from_secs(8);
/// How often a replica says it is about.
const PRESENCE_EVERY: Duration = Duration::from_secs(3);
/// How long an entry is kept: long past any reader's lag, short enough to stay small.
const KEEP: Duration = Duration::from_secs(600);
/// How soon a standalone MongoDB is asked again for new entries after it had some.
const POLL_BUSY: Duration = Duration::from_millis(200);
/// How far back each poll looks again: writers' clocks and commit order may disagree by
/// this much without an entry being missed.
const POLL_OVERLAP: Duration = Duration::from_secs(3);
/// MongoDB's code for "change streams are only supported on replica sets".
const NO_CHANGE_STREAMS: i32 = 40573;
/// How long to wait before asking again a server that answered an empty batch at once, right
/// after an entry (pushes in a burst follow each other closely).
const WATCH_PAUSE: Duration = Duration::from_millis(50);
/// The longest wait between two reads of the feed, however long it has been idle: a
/// revocation reaches the other replicas' followers within it (the budget is 1 s).
pub const IDLE_PAUSE_MAX: Duration = Duration::from_millis(700);

/// The wait before the next read of the feed: short after an entry, doubling with each empty
/// answer up to [`IDLE_PAUSE_MAX`].
#[derive(Clone, Copy, Debug)]
struct IdlePause {
    busy: Duration,
    next: Duration,
}

impl IdlePause {
    fn new(busy: Duration) -> Self {
        Self { busy, next: busy }
    }

    /// Entries came: read again soon.
    fn busy(&mut self) {
        self.next = self.busy;
    }

    /// Nothing came: how long to wait now (and longer next time).
    fn idle(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(IDLE_PAUSE_MAX);
        wait
    }
}

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

    /// Tells the other replicas. Failing here cannot undo what the store already did: it is
    /// logged, and the other replicas' followers learn of it when their cache entries end.
    pub async fn announce(&self, event: &Event) {
        let (kind, value) = event.parts();
        self.write(kind, value).await;
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
                         replicas share revocations by polling it (at least every \
                         {IDLE_PAUSE_MAX:?}); run \
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

#[async_trait::async_trait]
impl OtherReplicas for ClusterFeed {
    fn count(&self) -> u64 {
        self.others()
    }

    async fn push(&self, encoded: String) {
        self.write(PUSH, &encoded).await;
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

enum Ended {
    Shutdown,
    NoChangeStreams,
    Failed(String),
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_feed_is_read_less_often_but_within_the_revocation_budget() {
        let mut pause = IdlePause::new(WATCH_PAUSE);
        let waits: Vec<u128> = (0..7).map(|_| pause.idle().as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 400, 700, 700, 700]);
        pause.busy();
        assert_eq!(pause.idle(), WATCH_PAUSE);
        assert!(IDLE_PAUSE_MAX < Duration::from_secs(1));
    }

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
