//! The gateway's open WebSockets, by session and by user: a logout or a revocation closes that
//! session's sockets at once (a revoked session must not keep a live channel), a shutdown
//! closes all, and a push from a backend reaches a user's or a session's sockets through their
//! outboxes.
//!
//! One entry per session, shared by its connections, so holding 10,000 sockets costs little
//! more than holding them.
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use dashmap::DashMap;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{
    sessions::user::User,
    sockets::outbox::{End, Outbox, Position},
};

/// A session's sockets. Revocations and the shutdown reach each through its outbox.
struct Watched {
    /// Whose session it is, to leave the index by user with the last connection.
    open_id: String,
    /// The person (unionId), when WeChat gave one: pushes to a person across apps.
    union_id: Option<String>,
    /// The session's app: pushes narrowed to apps, and an app's removal, match it.
    app_id: Arc<str>,
    /// One per open connection of the session.
    outboxes: Vec<Arc<Outbox>>,
}

#[derive(Default)]
pub struct OpenSockets {
    /// By session id, shared (`Arc<str>`) with the connections' registrations: one copy of
    /// an id per session, not per connection.
    sessions: DashMap<Arc<str>, Watched>,
    /// Ids of the sessions with open sockets, by openId (most users have one). Locked before
    /// `sessions` when both are, never after.
    by_user: DashMap<String, Vec<Arc<str>>>,
    /// The same by unionId (sessions whose user has one), across apps.
    by_person: DashMap<String, Vec<Arc<str>>>,
    /// Set when the gateway stops: a socket registered after that is told at once.
    closed: AtomicBool,
}

/// A push as this gateway hands it to sockets.
pub struct Outgoing<'a> {
    pub text: &'a Utf8Bytes,
    /// Its place in its user's stream (a push to a user that was kept).
    pub position: Option<Position>,
    /// Count the target's sockets, deliver nothing (Presence, a retried publish).
    pub probe: bool,
}

impl<'a> Outgoing<'a> {
    /// A plain push: text only.
    pub fn text(text: &'a Utf8Bytes) -> Self {
        Self {
            text,
            position: None,
            probe: false,
        }
    }
}

/// Who a push is for.
pub enum Target<'a> {
    User(&'a str),
    Session(&'a str),
    /// Every session of a person (unionId), in any app `within` allows.
    Person(&'a str),
}

/// One connection's place in [`OpenSockets`]; leaves it when dropped.
pub struct Registration {
    sockets: Arc<OpenSockets>,
    session_id: Arc<str>,
    /// Messages for this connection from backends; also how it hears of the session's
    /// revocation and the gateway's shutdown.
    pub outbox: Arc<Outbox>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let sockets = &self.sockets;
        let mut last = None;
        sockets
            .sessions
            .remove_if_mut(&self.session_id, |_, watched| {
                watched
                    .outboxes
                    .retain(|outbox| !Arc::ptr_eq(outbox, &self.outbox));
                if watched.outboxes.is_empty() {
                    last = Some((
                        std::mem::take(&mut watched.open_id),
                        watched.union_id.take(),
                    ));
                }
                last.is_some()
            });
        if let Some((open_id, union_id)) = last {
            let leave = |_: &String, ids: &mut Vec<Arc<str>>| {
                // A new connection of the session may have come in meanwhile: it stays.
                if !sockets.sessions.contains_key(&self.session_id) {
                    ids.retain(|id| id != &self.session_id);
                }
                ids.is_empty()
            };
            sockets.by_user.remove_if_mut(&open_id, leave);
            if let Some(union_id) = union_id {
                sockets.by_person.remove_if_mut(&union_id, leave);
            }
        }
    }
}

impl OpenSockets {
    /// A place for one more connection of this session, unless it already has `max`; its
    /// outbox holds up to `queue` messages.
    pub fn register(
        self: &Arc<Self>,
        session_id: &str,
        user: &Arc<User>,
        (max, queue): (usize, usize),
    ) -> Option<Registration> {
        let (id, mut watched) = match self.sessions.get_mut(session_id) {
            Some(watched) => (watched.key().clone(), watched),
            None => {
                let id: Arc<str> = Arc::from(session_id);
                let watched = self.sessions.entry(id.clone()).or_insert_with(|| Watched {
                    open_id: user.open_id.clone(),
                    union_id: user.union_id.clone(),
                    app_id: user.app_id.clone(),
                    outboxes: Vec::new(),
                });
                (id, watched)
            }
        };
        if watched.outboxes.len() >= max {
            return None;
        }
        let outbox = Arc::new(Outbox::new(queue));
        watched.outboxes.push(outbox.clone());
        let first = watched.outboxes.len() == 1;
        drop(watched);
        // After the insertion: either `close_all` saw this outbox, or this sees its flag.
        if self.closed.load(Ordering::SeqCst) {
            outbox.end(End::Shutdown);
        }
        if first {
            let index = |map: &DashMap<String, Vec<Arc<str>>>, key: &str| {
                let mut ids = map.entry(key.to_owned()).or_default();
                if !ids.iter().any(|known| known == &id) {
                    ids.push(id.clone());
                }
            };
            index(&self.by_user, &user.open_id);
            if let Some(union_id) = &user.union_id {
                index(&self.by_person, union_id);
            }
        }
        Some(Registration {
            sockets: self.clone(),
            session_id: id,
            outbox,
        })
    }

    /// Queues `text` on every open socket of `target` whose app `within` lists (empty: any
    /// app); how many took it.
    pub fn deliver(&self, target: Target<'_>, within: &[String], push: &Outgoing<'_>) -> u64 {
        let ids = |index: &DashMap<String, Vec<Arc<str>>>, key: &str| {
            index.get(key).map(|ids| ids.clone()).unwrap_or_default()
        };
        match target {
            Target::Session(id) => self.deliver_to_session(id, within, push),
            Target::User(open_id) => ids(&self.by_user, open_id)
                .iter()
                .map(|id| self.deliver_to_session(id, within, push))
                .sum(),
            Target::Person(union_id) => ids(&self.by_person, union_id)
                .iter()
                .map(|id| self.deliver_to_session(id, within, push))
                .sum(),
        }
    }

    fn deliver_to_session(&self, id: &str, within: &[String], push: &Outgoing<'_>) -> u64 {
        let Some(watched) = self.sessions.get(id) else {
            return 0;
        };
        if !within.is_empty() && !within.iter().any(|app| **app == *watched.app_id) {
            return 0;
        }
        let took = match push.probe {
            true => watched.outboxes.len(),
            false => watched
                .outboxes
                .iter()
                .filter(|outbox| outbox.offer_at(push.text.clone(), push.position.clone()))
                .count(),
        };
        u64::try_from(took).unwrap_or(u64::MAX)
    }

    pub fn revoke_session(&self, session_id: &str) {
        if let Some((_, watched)) = self.sessions.remove(session_id) {
            for outbox in &watched.outboxes {
                outbox.end(End::Revoked);
            }
        }
    }

    /// Tells every open socket, and any registered from now on, that the gateway is stopping.
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for watched in self.sessions.iter() {
            for outbox in &watched.outboxes {
                outbox.end(End::Shutdown);
            }
        }
    }

    pub fn revoke_user(&self, open_id: &str) {
        let ids = self
            .by_user
            .get(open_id)
            .map(|ids| ids.clone())
            .unwrap_or_default();
        for id in ids {
            self.revoke_session(&id);
        }
    }

    /// Closes every socket of an app that is no longer served (1008, like a revocation).
    pub fn revoke_app(&self, app_id: &str) {
        let ids: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|watched| &*watched.app_id == app_id)
            .map(|watched| watched.key().clone())
            .collect();
        for id in ids {
            self.revoke_session(&id);
        }
    }

    /// Ids of the sessions with open sockets.
    pub fn session_ids(&self) -> Vec<String> {
        self.sessions.iter().map(|e| e.key().to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use weapp_wire::UserInfo;

    use super::*;

    fn user(open_id: &str) -> Arc<User> {
        Arc::new(User::new(&UserInfo::code_only(open_id, None)))
    }

    #[test]
    fn revocations_end_the_sessions_sockets_and_only_those() {
        let sockets = Arc::new(OpenSockets::default());
        let (u1, u2) = (user("o1"), user("o2"));
        let register = |id, user| sockets.register(id, user, (8, 4)).unwrap();
        let (a1, a2) = (register("a", &u1), register("a", &u1));
        let (b, c) = (register("b", &u1), register("c", &u2));
        assert_eq!(sockets.session_ids().len(), 3);

        let ended = |r: &Registration| r.outbox.ended();
        sockets.revoke_session("a");
        assert_eq!(
            (ended(&a1), ended(&a2)),
            (Some(End::Revoked), Some(End::Revoked))
        );
        assert_eq!((ended(&b), ended(&c)), (None, None));

        sockets.revoke_user("o1");
        assert_eq!((ended(&b), ended(&c)), (Some(End::Revoked), None));

        sockets.close_all();
        assert_eq!(ended(&c), Some(End::Shutdown));
        let late = register("d", &u2);
        assert_eq!(
            ended(&late),
            Some(End::Shutdown),
            "registered after the stop"
        );
    }

    #[test]
    fn pushes_reach_every_socket_of_a_user_or_of_one_session() {
        let sockets = Arc::new(OpenSockets::default());
        let (u1, u2) = (user("o1"), user("o2"));
        let register = |id, user| sockets.register(id, user, (8, 4)).unwrap();
        let (a1, a2, b, c) = (
            register("a", &u1),
            register("a", &u1),
            register("b", &u1),
            register("c", &u2),
        );
        let text = Utf8Bytes::from("hello");
        assert_eq!(
            sockets.deliver(Target::User("o1"), &[], &Outgoing::text(&text)),
            3
        );
        assert_eq!(
            sockets.deliver(Target::Session("c"), &[], &Outgoing::text(&text)),
            1
        );
        assert_eq!(
            sockets.deliver(Target::User("nobody"), &[], &Outgoing::text(&text)),
            0
        );
        for outbox in [&a1.outbox, &a2.outbox, &b.outbox] {
            assert_eq!(outbox.next().map(|q| q.text).as_deref(), Some("hello"));
        }
        drop((a1, a2));
        assert_eq!(
            sockets.deliver(Target::User("o1"), &[], &Outgoing::text(&text)),
            1,
            "only b is left"
        );
        drop(b);
        assert_eq!(
            sockets.deliver(Target::User("o1"), &[], &Outgoing::text(&text)),
            0
        );
        assert!(
            sockets.by_user.get("o1").is_none(),
            "the index forgets the user"
        );
        drop(c);
    }

    #[test]
    fn the_entry_goes_with_the_last_connection() {
        let sockets = Arc::new(OpenSockets::default());
        let first = sockets.register("a", &user("o"), (2, 4)).unwrap();
        let second = sockets.register("a", &user("o"), (2, 4)).unwrap();
        assert!(
            sockets.register("a", &user("o"), (2, 4)).is_none(),
            "at most two per session"
        );
        drop(first);
        assert_eq!(sockets.session_ids().len(), 1);
        assert!(sockets.register("a", &user("o"), (2, 4)).is_some());
        drop(second);
        assert!(sockets.session_ids().is_empty());
    }
}
