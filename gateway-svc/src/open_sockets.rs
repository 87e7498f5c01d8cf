//! The gateway's open WebSockets, by session: a logout or a revocation closes that session's
//! sockets at once (a revoked session must not keep a live channel), a shutdown closes all.
//!
//! One entry per session, shared by its connections, so holding 10,000 sockets costs little
//! more than holding them.
use std::sync::Arc;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::user::User;

struct Watched {
    /// Cancelled when the session is revoked; a child of the shutdown token, so it also fires
    /// when the gateway stops.
    revoked: CancellationToken,
    user: Arc<User>,
    connections: usize,
}

#[derive(Default)]
pub struct OpenSockets {
    sessions: DashMap<String, Watched>,
}

/// One connection's place in [`OpenSockets`]; leaves it when dropped.
pub struct Registration {
    sockets: Arc<OpenSockets>,
    session_id: String,
    /// Fires on the session's revocation or the gateway's shutdown.
    pub ended: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sockets
            .sessions
            .remove_if_mut(&self.session_id, |_, watched| {
                watched.connections = watched.connections.saturating_sub(1);
                watched.connections == 0
            });
    }
}

impl OpenSockets {
    /// A place for one more connection of this session, unless it already has `max`.
    pub fn register(
        self: &Arc<Self>,
        session_id: &str,
        user: &Arc<User>,
        shutdown: &CancellationToken,
        max: usize,
    ) -> Option<Registration> {
        let mut watched = self
            .sessions
            .entry(session_id.to_owned())
            .or_insert_with(|| Watched {
                revoked: shutdown.child_token(),
                user: user.clone(),
                connections: 0,
            });
        if watched.connections >= max {
            return None;
        }
        watched.connections += 1;
        Some(Registration {
            sockets: self.clone(),
            session_id: session_id.to_owned(),
            ended: watched.revoked.clone(),
        })
    }

    pub fn revoke_session(&self, session_id: &str) {
        if let Some((_, watched)) = self.sessions.remove(session_id) {
            watched.revoked.cancel();
        }
    }

    pub fn revoke_user(&self, open_id: &str) {
        self.sessions.retain(|_, watched| {
            let keep = watched.user.open_id != open_id;
            if !keep {
                watched.revoked.cancel();
            }
            keep
        });
    }

    /// Ids of the sessions with open sockets.
    pub fn session_ids(&self) -> Vec<String> {
        self.sessions.iter().map(|e| e.key().clone()).collect()
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
        let shutdown = CancellationToken::new();
        let (u1, u2) = (user("o1"), user("o2"));
        let register = |id, user| sockets.register(id, user, &shutdown, 8).unwrap();
        let (a1, a2) = (register("a", &u1), register("a", &u1));
        let (b, c) = (register("b", &u1), register("c", &u2));
        assert_eq!(sockets.session_ids().len(), 3);

        sockets.revoke_session("a");
        assert!(a1.ended.is_cancelled() && a2.ended.is_cancelled());
        assert!(!b.ended.is_cancelled() && !c.ended.is_cancelled());

        sockets.revoke_user("o1");
        assert!(b.ended.is_cancelled() && !c.ended.is_cancelled());

        shutdown.cancel();
        assert!(c.ended.is_cancelled());
    }

    #[test]
    fn the_entry_goes_with_the_last_connection() {
        let sockets = Arc::new(OpenSockets::default());
        let shutdown = CancellationToken::new();
        let first = sockets.register("a", &user("o"), &shutdown, 2).unwrap();
        let second = sockets.register("a", &user("o"), &shutdown, 2).unwrap();
        assert!(
            sockets.register("a", &user("o"), &shutdown, 2).is_none(),
            "at most two per session"
        );
        drop(first);
        assert_eq!(sockets.session_ids().len(), 1);
        assert!(sockets.register("a", &user("o"), &shutdown, 2).is_some());
        drop(second);
        assert!(sockets.session_ids().is_empty());
    }
}
