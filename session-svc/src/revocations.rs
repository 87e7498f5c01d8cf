//! The revocation feed: every Logout and RevokeUser is announced to the callers that cache
//! Validate answers (gateways), so a revocation takes effect everywhere within a bound instead
//! of when each cache entry happens to expire; and so is word that a user's sessions changed
//! (a verified phone number), for caches to forget them. Pushes to WebSockets reach the same
//! followers on the same gRPC stream but in a lane of their own (`push.rs`): no burst of
//! them can fill this feed's buffer or hold a revocation up.
//!
use std::{
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use futures::Stream;
use tokio::sync::broadcast;
use tokio_stream::{StreamExt, wrappers::BroadcastStream, wrappers::IntervalStream};
use tonic::Status;
use weapp_proto::session::v1::{Heartbeat, Revocation, revocation::Event};

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
    /// A user's sessions changed (not revoked): caches of them are stale.
    UserChanged(String),
    /// An app is no longer served: its sessions are refused, its sockets closed.
    AppRemoved(String),
    /// What other replicas revoke cannot be heard: followers must not trust their caches.
    Suspended,
}

pub struct RevocationFeed {
    sender: broadcast::Sender<FeedEvent>,
    live: AtomicBool,
}

impl Default for RevocationFeed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            live: AtomicBool::new(true),
        }
    }
}

pub type RevocationStream = Pin<Box<dyn Stream<Item = Result<Revocation, Status>> + Send>>;

impl RevocationFeed {
    /// A feed that refuses followers until [`RevocationFeed::resume`]: a replica's, before it
    /// hears the other replicas.
    pub fn suspended() -> Self {
        let feed = Self::default();
        feed.live.store(false, Ordering::SeqCst);
        feed
    }

    /// Cuts every follower's stream and refuses new ones, until resumed.
    pub fn suspend(&self) {
        if self.live.swap(false, Ordering::SeqCst) {
            let _ = self.sender.send(FeedEvent::Suspended);
        }
    }

    pub fn resume(&self) {
        self.live.store(true, Ordering::SeqCst);
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

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

    /// Announces that this replica no longer serves `app_id` (a reload removed it): followers
    /// forget its cached sessions and close its sockets. Its sessions stay in the store.
    pub fn app_removed(&self, app_id: &str) {
        let _ = self.sender.send(FeedEvent::AppRemoved(app_id.to_owned()));
    }

    /// A stream for one subscriber: a heartbeat at once, then revocations and heartbeats.
    pub fn subscribe(&self) -> RevocationStream {
        if !self.is_live() {
            return Box::pin(tokio_stream::once(Err(suspended())));
        }
        let heartbeat = || Revocation {
            event: Some(Event::Heartbeat(Heartbeat {
                heartbeat_interval: prost_types::Duration::try_from(HEARTBEAT_INTERVAL).ok(),
            })),
        };
        // Subscribed before the first heartbeat goes out, so nothing published after the
        // subscriber has seen that heartbeat can be missed.
        let revocations =
            BroadcastStream::new(self.sender.subscribe()).map(move |item| match item {
                Ok(FeedEvent::Revoked(Revoked::Session(id))) => Ok(Revocation {
                    event: Some(Event::SessionId(id)),
                }),
                Ok(FeedEvent::Revoked(Revoked::User(open_id))) => Ok(Revocation {
                    event: Some(Event::OpenId(open_id)),
                }),
                Ok(FeedEvent::UserChanged(open_id)) => Ok(Revocation {
                    event: Some(Event::UserChanged(open_id)),
                }),
                Ok(FeedEvent::AppRemoved(app_id)) => Ok(Revocation {
                    event: Some(Event::AppRemoved(app_id)),
                }),
                Ok(FeedEvent::Suspended) => Err(suspended()),
                Err(_lagged) => Err(Status::resource_exhausted(
                    "revocation subscriber fell behind; resubscribe with an empty cache",
                )),
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

fn suspended() -> Status {
    Status::unavailable(
        "this replica cannot hear the other replicas' revocations right now; follow another",
    )
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

    #[tokio::test]
    async fn a_suspended_feed_cuts_its_followers_and_refuses_new_ones() {
        let feed = RevocationFeed::default();
        let mut stream = feed.subscribe();
        assert!(
            matches!(stream.next().await, Some(Ok(_))),
            "the first heartbeat"
        );
        feed.suspend();
        let cut = loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        };
        assert_eq!(cut.unwrap().unwrap_err().code(), tonic::Code::Unavailable);
        let mut refused = feed.subscribe();
        assert_eq!(
            refused.next().await.unwrap().unwrap_err().code(),
            tonic::Code::Unavailable
        );
        assert!(refused.next().await.is_none());
        feed.resume();
        assert!(matches!(feed.subscribe().next().await, Some(Ok(_))));
    }
}
