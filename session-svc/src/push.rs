//! Pushes to users' WebSockets, all of it: a backend publishes here; the messages go to every
//! gateway that follows this replica, in a lane of their own beside the revocations on the
//! same stream (`revocations.rs` keeps that one small and first), and, on MongoDB, to the
//! other replicas' followers through the feed between replicas (`cluster/`). Each gateway
//! hands them to its open sockets and reports how many took each one (`ReportDelivery`); each
//! other replica sums its own gateways' reports and writes the sum back to the feed; the
//! publisher gets the total. A follower that goes away, or a replica that does not answer in
//! time, stops being waited for.
use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures::Stream;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};
use tokio_stream::{StreamExt as _, wrappers::BroadcastStream};
use tonic::Status;
use weapp_proto::session::v1::{
    Push, PushMessage, Revocation, push_message::Target, revocation::Event,
};

use crate::error::SessionError;

/// The other replicas, as the push lane sees them (the feed between replicas, `cluster/`,
/// implements it).
#[async_trait::async_trait]
pub trait OtherReplicas: Send + Sync {
    /// How many are about now: a publish waits for that many sums.
    fn count(&self) -> u64;
    /// Hands them a push (`publish` encodes it; their `relay` reads it).
    async fn push(&self, encoded: String);
}

/// Largest message text: the gateway's default WebSocket message limit.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Most users one Presence call asks about.
pub const MAX_PRESENCE: usize = 1_000;
/// Most messages in one PublishBatch.
pub const MAX_BATCH: usize = 10_000;
/// Most text in one PublishBatch.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Longest a publish waits for the gateways' reports.
pub const MAX_WAIT: Duration = Duration::from_secs(2);
/// Longest another replica waits for its gateways before writing their sum back: inside the
/// publisher's own wait, with room for the way back.
const RELAY_WAIT: Duration = Duration::from_millis(1500);
/// Pushes a follower may fall behind by. Past it, the oldest are dropped for that follower
/// (its clients miss them; its cache and its revocations are untouched).
const BACKLOG: usize = 4096;

/// Refuses what no gateway should be asked to send.
pub fn check(messages: &[PushMessage]) -> Result<(), SessionError> {
    if messages.len() > MAX_BATCH {
        return Err(SessionError::InvalidArgument(format!(
            "at most {MAX_BATCH} messages per batch, not {}",
            messages.len()
        )));
    }
    let mut total = 0usize;
    for (index, message) in messages.iter().enumerate() {
        let empty_target = match &message.target {
            None => true,
            Some(Target::OpenId(id) | Target::SessionId(id) | Target::UnionId(id)) => id.is_empty(),
        };
        if empty_target {
            return Err(SessionError::InvalidArgument(format!(
                "message #{}: say whom it is for (open_id, union_id or session_id)",
                index + 1
            )));
        }
        if message.idempotency_key.len() > crate::streams::MAX_KEY_LEN {
            return Err(SessionError::InvalidArgument(format!(
                "message #{}: an idempotency key of at most {} characters",
                index + 1,
                crate::streams::MAX_KEY_LEN
            )));
        }
        if message.text.len() > MAX_TEXT_BYTES {
            return Err(SessionError::InvalidArgument(format!(
                "message #{}: {} bytes of text, more than the {MAX_TEXT_BYTES} a WebSocket \
                 message may carry",
                index + 1,
                message.text.len()
            )));
        }
        total += message.text.len();
    }
    if total > MAX_BATCH_BYTES {
        return Err(SessionError::InvalidArgument(format!(
            "{total} bytes of text in one batch, more than {MAX_BATCH_BYTES}"
        )));
    }
    Ok(())
}

/// What a publish learned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Sockets that took each message.
    pub sockets: Vec<u64>,
    pub gateways: u32,
    pub answered: u32,
}

struct Pending {
    waiting: HashSet<u64>,
    /// Other replicas whose sums are still to come.
    replicas_waiting: u64,
    followers: u32,
    answered: u32,
    sockets: Vec<u64>,
    done: Option<oneshot::Sender<()>>,
}

impl Pending {
    fn settle_if_done(&mut self) {
        if self.waiting.is_empty()
            && self.replicas_waiting == 0
            && let Some(done) = self.done.take()
        {
            let _ = done.send(());
        }
    }
}

#[derive(Default)]
struct State {
    followers: HashSet<u64>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
}

/// The followers and the pushes waiting for their reports.
#[derive(Default)]
pub struct Deliveries {
    state: Mutex<State>,
}

/// A follower's place; leaving it (the stream ended) stops pushes from waiting for it.
pub struct Following {
    pub id: u64,
    deliveries: Arc<Deliveries>,
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut state = self.deliveries.lock();
        state.followers.remove(&self.id);
        for pending in state.pending.values_mut() {
            pending.waiting.remove(&self.id);
            pending.settle_if_done();
        }
    }
}

/// A push on its way: its id, and the wait for the reports.
pub struct Opened {
    pub id: u64,
    done: Option<oneshot::Receiver<()>>,
}

impl Deliveries {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn join(self: &Arc<Self>) -> Following {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.followers.insert(id);
        Following {
            id,
            deliveries: self.clone(),
        }
    }

    /// Starts waiting for the reports on a push of `count` messages, from the followers
    /// connected now and from `replicas` other replicas.
    pub fn open(&self, count: usize, replicas: u64) -> Opened {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        if state.followers.is_empty() && replicas == 0 {
            return Opened { id, done: None };
        }
        let (done, wait) = oneshot::channel();
        let waiting = state.followers.clone();
        let followers = u32::try_from(waiting.len()).unwrap_or(u32::MAX);
        state.pending.insert(
            id,
            Pending {
                waiting,
                replicas_waiting: replicas,
                followers,
                answered: 0,
                sockets: vec![0; count],
                done: Some(done),
            },
        );
        Opened {
            id,
            done: Some(wait),
        }
    }

    /// Waits (at most `wait`) for every follower's report on `opened`, and sums them.
    pub async fn settle(&self, opened: Opened, count: usize, wait: Duration) -> Outcome {
        if let Some(done) = opened.done {
            let _ = tokio::time::timeout(wait, done).await;
        }
        let Some(pending) = self.lock().pending.remove(&opened.id) else {
            return Outcome {
                sockets: vec![0; count],
                ..Outcome::default()
            };
        };
        Outcome {
            sockets: pending.sockets,
            gateways: pending.followers,
            answered: pending.answered,
        }
    }

    /// Another replica's sum over its followers. Late ones change nothing.
    pub fn replica_report(&self, report: &ReplicaReport) {
        let mut state = self.lock();
        let Some(pending) = state.pending.get_mut(&report.push) else {
            return;
        };
        if pending.replicas_waiting == 0 {
            return;
        }
        pending.replicas_waiting -= 1;
        pending.followers = pending.followers.saturating_add(report.gateways);
        pending.answered = pending.answered.saturating_add(report.answered);
        for (total, took) in pending.sockets.iter_mut().zip(&report.sockets) {
            *total += took;
        }
        pending.settle_if_done();
    }

    /// A follower's report. Late, repeated or foreign reports change nothing.
    pub fn report(&self, push: u64, follower: u64, sockets: &[u64]) {
        let mut state = self.lock();
        let Some(pending) = state.pending.get_mut(&push) else {
            return;
        };
        if !pending.waiting.remove(&follower) {
            return;
        }
        pending.answered += 1;
        for (total, took) in pending.sockets.iter_mut().zip(sockets) {
            *total += took;
        }
        pending.settle_if_done();
    }
}

/// What another replica's gateways did with a push, written back to its publisher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// The push's id at its publisher.
    pub push: u64,
    pub gateways: u32,
    pub answered: u32,
    pub sockets: Vec<u64>,
}

type Shared = Arc<(u64, Vec<PushMessage>)>;

pub type PushStream = Pin<Box<dyn Stream<Item = Result<Revocation, Status>> + Send>>;

/// The push lane of one replica.
pub struct Pushes {
    sender: broadcast::Sender<Shared>,
    deliveries: Arc<Deliveries>,
    others: Option<Arc<dyn OtherReplicas>>,
}

impl Pushes {
    pub fn new(others: Option<Arc<dyn OtherReplicas>>) -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            deliveries: Arc::default(),
            others,
        }
    }

    /// Sends `messages` to every gateway (this replica's followers, and the other replicas'
    /// through the feed) and waits (at most `wait`) for their counts.
    pub async fn publish(&self, messages: Vec<PushMessage>, wait: Duration) -> Outcome {
        let count = messages.len();
        let replicas = self.others.as_ref().map_or(0, |o| o.count());
        let opened = self.deliveries.open(count, replicas);
        if let Some(others) = &self.others {
            let push = Push {
                id: opened.id,
                follower: 0,
                messages: messages.clone(),
            };
            others.push(STANDARD.encode(push.encode_to_vec())).await;
        }
        let _ = self.sender.send(Arc::new((opened.id, messages)));
        self.deliveries.settle(opened, count, wait).await
    }

    /// Another replica's push (`push` as `publish` wrote it): sent to this replica's
    /// followers, and their sum returned for the feed.
    pub async fn relay(&self, encoded: &str) -> Option<ReplicaReport> {
        let push = STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| Push::decode(bytes.as_slice()).ok())?;
        let count = push.messages.len();
        let opened = self.deliveries.open(count, 0);
        let _ = self.sender.send(Arc::new((opened.id, push.messages)));
        let outcome = self.deliveries.settle(opened, count, RELAY_WAIT).await;
        Some(ReplicaReport {
            push: push.id,
            gateways: outcome.gateways,
            answered: outcome.answered,
            sockets: outcome.sockets,
        })
    }

    /// Another replica's sum for one of this replica's pushes.
    pub fn replica_report(&self, report: &ReplicaReport) {
        self.deliveries.replica_report(report);
    }

    /// A follower's report on a push.
    pub fn report(&self, push: u64, follower: u64, sockets: &[u64]) {
        self.deliveries.report(push, follower, sockets);
    }

    /// One follower's pushes, as `Revocation` events for its stream. Joined as a follower for
    /// as long as the stream lives: pushes wait for its report until then. A follower that
    /// falls behind loses the oldest pushes, nothing else.
    pub fn subscribe(&self) -> PushStream {
        let following = self.deliveries.join();
        let pushes = BroadcastStream::new(self.sender.subscribe()).filter_map(move |item| {
            // The whole guard lives in the closure (not just its id): the stream's life.
            let following = &following;
            match item {
                Ok(push) => Some(Ok(Revocation {
                    event: Some(Event::Push(Push {
                        id: push.0,
                        follower: following.id,
                        messages: push.1.clone(),
                    })),
                })),
                Err(lagged) => {
                    tracing::warn!(%lagged, "a gateway fell behind on pushes; the oldest were dropped for it");
                    None
                }
            }
        });
        Box::pin(pushes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> PushMessage {
        PushMessage {
            target: Some(Target::OpenId("o".into())),
            text: text.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn reports_are_summed_and_a_follower_that_leaves_is_not_waited_for() {
        let deliveries = Arc::new(Deliveries::default());
        let (a, b) = (deliveries.join(), deliveries.join());
        let opened = deliveries.open(2, 0);
        deliveries.report(opened.id, a.id, &[1, 2]);
        deliveries.report(opened.id, a.id, &[5, 5]);
        drop(b);
        let outcome = deliveries.settle(opened, 2, Duration::from_secs(5)).await;
        assert_eq!(outcome.sockets, [1, 2], "a repeated report counts once");
        assert_eq!((outcome.gateways, outcome.answered), (2, 1));
    }

    #[tokio::test]
    async fn nobody_following_means_nobody_took_it_at_once() {
        let deliveries = Arc::new(Deliveries::default());
        let opened = deliveries.open(3, 0);
        let outcome = deliveries.settle(opened, 3, Duration::from_secs(5)).await;
        assert_eq!(outcome.sockets, [0, 0, 0]);
        assert_eq!(outcome.gateways, 0);
    }

    #[test]
    fn oversize_and_aimless_messages_are_refused() {
        assert!(check(&[message("hi")]).is_ok());
        assert!(check(&[message(&"x".repeat(MAX_TEXT_BYTES + 1))]).is_err());
        let aimless = PushMessage {
            target: None,
            text: "x".into(),
            ..Default::default()
        };
        assert!(check(&[aimless]).is_err());
        assert!(check(&vec![message(""); MAX_BATCH + 1]).is_err());
    }
}
