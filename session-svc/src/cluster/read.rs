//! Reading the other replicas' entries: by change stream where MongoDB has them, else by
//! polling (`mod.rs` says when which).
use std::{collections::HashMap, sync::Arc, time::Instant};

use futures::TryStreamExt as _;
use mongodb::bson::{Bson, DateTime, Document, doc};
use tokio_util::sync::CancellationToken;

use super::{
    COLLECTION, ClusterFeed, Ended, Entry, IdlePause, NO_CHANGE_STREAMS, POLL_BUSY, POLL_OVERLAP,
    WATCH_PAUSE, millis,
};
use crate::{push::Pushes, revocations::RevocationFeed};

impl ClusterFeed {
    /// A change stream, run as the `aggregate` and `getMore` commands themselves rather than
    /// through the driver's typed `watch()`: that one insists on 64-bit cursor ids, which
    /// nx-27017 does not send. Resumes after the last event seen, so a reconnection misses
    /// nothing the server still has.
    pub(super) async fn watch(
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
        let mut pause = IdlePause::new(WATCH_PAUSE);
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
            // maxTimeMS, as MongoDB does) is asked again later, the longer the quieter.
            if !batch.events.is_empty() {
                pause.busy();
            } else if asked.elapsed() < WATCH_PAUSE {
                let wait = pause.idle();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ended::Shutdown,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    pub(super) async fn poll(
        self: &Arc<Self>,
        (local, pushes): (&RevocationFeed, &Arc<Pushes>),
        since: &mut i64,
        shutdown: &CancellationToken,
    ) -> Ended {
        // Entries seen in the overlap window, so each is applied once.
        let mut seen: HashMap<String, i64> = HashMap::new();
        let mut resumed = false;
        let mut pause = IdlePause::new(POLL_BUSY);
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
            let mut fresh = false;
            for entry in entries {
                let at = entry.at.timestamp_millis();
                *since = (*since).max(at);
                if seen.insert(entry.id.clone(), at).is_none() {
                    fresh = true;
                    self.apply((local, pushes), &entry.origin, &entry.kind, &entry.value);
                }
            }
            if fresh {
                pause.busy();
            }
            let horizon = *since - 2 * millis(POLL_OVERLAP);
            seen.retain(|_, at| *at >= horizon);
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = tokio::time::sleep(pause.idle()) => {}
            }
        }
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

fn no_change_streams(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(command) => {
            command.code == NO_CHANGE_STREAMS || command.message.contains("replica set")
        }
        _ => false,
    }
}
