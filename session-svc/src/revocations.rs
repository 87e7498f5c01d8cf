//! The revocation feed: every Logout and RevokeUser is announced to the callers that cache
//! Validate answers (gateways), so a revocation takes effect everywhere within a bound instead
//! of when each cache entry happens to expire. Pushes to WebSockets travel on it too
//! (`push.rs`), in order with the revocations: one stream per gateway, not two; and so does
//! word that a user's sessions changed (a verified phone number), for caches to forget them.
//!
//! The feed only carries what went through this process. Sessions removed behind its back
//! (another session-svc on the same MongoDB, a manual delete) reach caches when their entries
//! expire: run one session-svc per store, or turn the gateway's cache off.
use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use tokio::sync::broadcast;
use tokio_stream::{StreamExt, wrappers::BroadcastStream, wrappers::IntervalStream};
use tonic::Status;
use weapp_proto::session::v1::{Heartbeat, Push, PushMessage, Revocation, revocation::Event};

use crate::push::{Deliveries, Outcome};

/// How often an idle stream says it is alive. Gateways stop trusting their cache after a
/// second of silence, so this leaves room for three missed beats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);

/// Revocations a slow subscriber may fall behind by before its stream is cut (it then starts
/// over with an empty cache, which is always safe).
const BACKLOG: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revoked {
    Session(String),
    User(String),
}

#[derive(Clone, Debug)]
enum FeedEvent {
    Revoked(Revoked),
    Push(Arc<(u64, Vec<PushMessage>)>),
    /// A user's sessions changed (not revoked): caches of them are stale.
    UserChanged(String),
}

pub struct RevocationFeed {
    sender: broadcast::Sender<FeedEvent>,
    deliveries: Arc<Deliveries>,
}

impl Default for RevocationFeed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            deliveries: Arc::default(),
        }
    }
}

pub type RevocationStream = Pin<Box<dyn Stream<Item = Result<Revocation, Status>> + Send>>;

impl RevocationFeed {
    /// Announces a revocation that has already been applied to the store.
    pub fn publish(&self, revoked: Revoked) {
        // No subscribers is fine: nobody has anything cached.
        let _ = self.sender.send(FeedEvent::Revoked(revoked));
    }

    /// Announces that a user's sessions changed in the store (a verified phone number), so
    /// that caches forget them; they stay valid.
    pub fn user_changed(&self, open_id: &str) {
        let _ = self.sender.send(FeedEvent::UserChanged(open_id.to_owned()));
    }

    /// Sends `messages` to every follower and waits (at most `wait`) for their reports.
    pub async fn push(&self, messages: Vec<PushMessage>, wait: Duration) -> Outcome {
        let count = messages.len();
        let opened = self.deliveries.open(count);
        let _ = self
            .sender
            .send(FeedEvent::Push(Arc::new((opened.id, messages))));
        self.deliveries.settle(opened, count, wait).await
    }

    /// A follower's report on a push.
    pub fn report(&self, push: u64, follower: u64, sockets: &[u64]) {
        self.deliveries.report(push, follower, sockets);
    }

    /// A stream for one subscriber: a heartbeat at once, then revocations and heartbeats.
    pub fn subscribe(&self) -> RevocationStream {
        let heartbeat = || Revocation {
            event: Some(Event::Heartbeat(Heartbeat {
                heartbeat_interval: prost_types::Duration::try_from(HEARTBEAT_INTERVAL).ok(),
            })),
        };
        // Subscribed before the first heartbeat goes out, so nothing published after the
        // subscriber has seen that heartbeat can be missed. Joined as a follower for as long as
        // the stream lives: pushes wait for its report until then.
        let following = self.deliveries.join();
        let revocations = BroadcastStream::new(self.sender.subscribe()).map(move |item| {
            // The whole guard lives in the closure (not just its id): the stream's life.
            let following = &following;
            match item {
                Ok(FeedEvent::Revoked(Revoked::Session(id))) => Ok(Revocation {
                    event: Some(Event::SessionId(id)),
                }),
                Ok(FeedEvent::Revoked(Revoked::User(open_id))) => Ok(Revocation {
                    event: Some(Event::OpenId(open_id)),
                }),
                Ok(FeedEvent::UserChanged(open_id)) => Ok(Revocation {
                    event: Some(Event::UserChanged(open_id)),
                }),
                Ok(FeedEvent::Push(push)) => Ok(Revocation {
                    event: Some(Event::Push(Push {
                        id: push.0,
                        follower: following.id,
                        messages: push.1.clone(),
                    })),
                }),
                Err(_lagged) => Err(Status::resource_exhausted(
                    "revocation subscriber fell behind; resubscribe with an empty cache",
                )),
            }
        });
        let beats = IntervalStream::new(tokio::time::interval_at(
            tokio::time::Instant::now() + HEARTBEAT_INTERVAL,
            HEARTBEAT_INTERVAL,
        ))
        .map(move |_| Ok(heartbeat()));
        // A lagged subscriber's stream ends at the error: tonic closes the call after it.
        Box::pin(tokio_stream::once(Ok(heartbeat())).chain(beats.merge(revocations)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_a_heartbeat_first_then_revocations_in_order() {
        let feed = RevocationFeed::default();
        let mut stream = feed.subscribe();
        feed.publish(Revoked::Session("a".into()));
        feed.publish(Revoked::User("o".into()));
        let mut events = Vec::new();
        while events.len() < 3 {
            match stream.next().await {
                Some(Ok(Revocation { event: Some(e) })) => match e {
                    Event::Heartbeat(_) if !events.is_empty() => {}
                    e => events.push(e),
                },
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(matches!(events[0], Event::Heartbeat(_)));
        assert_eq!(events[1], Event::SessionId("a".into()));
        assert_eq!(events[2], Event::OpenId("o".into()));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_an_error() {
        let feed = RevocationFeed::default();
        let mut stream = feed.subscribe();
        for i in 0..BACKLOG + 10 {
            feed.publish(Revoked::Session(i.to_string()));
        }
        let mut saw_error = false;
        for _ in 0..BACKLOG + 20 {
            match stream.next().await {
                Some(Err(status)) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                    saw_error = true;
                    break;
                }
                Some(Ok(_)) => {}
                None => break,
            }
        }
        assert!(saw_error);
    }
}
