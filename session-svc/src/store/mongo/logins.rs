//! What logins write, written together: new sessions and their users' session_keys, in
//! groups. The logins that arrive while a group is being written go in the next one — one
//! `insert` of all their sessions and one `update` of all their keys — so N concurrent logins
//! cost the store two commands, not 2N (a single-threaded store such as nx-27017 spends most of
//! a small write on the command itself). A login alone is written at once, as before; each
//! login still answers only once its own session is stored. Keys first: a group whose keys
//! cannot be written stores no session (the login fails whole).
use std::sync::{Arc, Mutex, PoisonError};

use mongodb::{
    Collection, Database,
    bson::{Document, doc},
};
use tokio::sync::oneshot;

use super::SessionDoc;

/// The writes waiting for the next group.
#[derive(Default)]
struct Queue {
    sessions: Vec<(SessionDoc, oneshot::Sender<Result<(), String>>)>,
    /// Users' session_keys as upsert statements, by openId (queued by a login just before
    /// its session).
    keys: Vec<(String, Document)>,
    /// A writer is running and will take whatever is queued.
    writing: bool,
}

#[derive(Clone)]
pub(super) struct LoginWrites {
    queue: Arc<Mutex<Queue>>,
    sessions: Collection<SessionDoc>,
    db: Database,
    session_keys: &'static str,
}

/// If a writer's task ends mid-group (a panic, the runtime shutting down), the next login
/// starts another, and whoever waits on a group that will never be written hears so.
struct WriterGuard {
    queue: Arc<Mutex<Queue>>,
    finished: bool,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        if !self.finished {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.writing = false;
            queue.sessions.clear();
        }
    }
}

impl LoginWrites {
    pub(super) fn new(
        db: &Database,
        sessions: Collection<SessionDoc>,
        session_keys: &'static str,
    ) -> Self {
        Self {
            queue: Arc::default(),
            sessions,
            db: db.clone(),
            session_keys,
        }
    }

    /// Queues a user's session_key: written with the next group of sessions.
    pub(super) fn queue_key(&self, open_id: &str, upsert: Document) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .push((open_id.to_owned(), upsert));
    }

    /// Drops a user's queued keys: a newer one is being written now, and an older key waiting
    /// for a session must never land after it.
    pub(super) fn forget_keys(&self, open_id: &str) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .retain(|(user, _)| user != open_id);
    }

    /// Stores `session` (and the keys queued before it) with whatever else is queued.
    pub(super) async fn insert(&self, session: SessionDoc) -> Result<(), String> {
        let (done, written) = oneshot::channel();
        let start_writer = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.sessions.push((session, done));
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            // A task of its own: a caller that gives up (its deadline) does not stop the group.
            let writes = self.clone();
            tokio::spawn(async move {
                let mut guard = WriterGuard {
                    queue: writes.queue.clone(),
                    finished: false,
                };
                writes.write_groups().await;
                guard.finished = true;
            });
        }
        written
            .await
            .map_err(|_| "the login writer stopped".to_owned())?
    }

    async fn write_groups(&self) {
        loop {
            let (sessions, keys) = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.sessions.is_empty() {
                    queue.writing = false;
                    return;
                }
                (
                    std::mem::take(&mut queue.sessions),
                    std::mem::take(&mut queue.keys),
                )
            };
            let (docs, waiting): (Vec<SessionDoc>, Vec<_>) = sessions.into_iter().unzip();
            let keys = keys.into_iter().map(|(_, upsert)| upsert).collect();
            let outcome = self.write_group(docs, keys).await;
            for done in waiting {
                let _ = done.send(outcome.clone());
            }
        }
    }

    async fn write_group(
        &self,
        sessions: Vec<SessionDoc>,
        keys: Vec<Document>,
    ) -> Result<(), String> {
        if !keys.is_empty() {
            // In order: a user's later key replaces an earlier one of the same group.
            let answer = self
                .db
                .run_command(doc! {
                    "update": self.session_keys,
                    "updates": keys,
                    "ordered": true,
                })
                .await
                .map_err(|e| format!("MongoDB: {e}"))?;
            if let Ok(errors) = answer.get_array("writeErrors")
                && !errors.is_empty()
            {
                return Err(format!("MongoDB refused a session_key: {errors:?}"));
            }
        }
        // Ids are random: nothing but the store itself can make one of these fail.
        self.sessions
            .insert_many(sessions)
            .await
            .map(drop)
            .map_err(|e| format!("MongoDB: {e}"))
    }
}
