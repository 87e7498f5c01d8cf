//! Pushes to users' WebSockets. A backend publishes here; the messages travel to every gateway
//! on the stream the gateways already follow (`revocations.rs`), each gateway hands them to
//! its open sockets and reports how many took each one (`ReportDelivery`), and the publisher
//! gets the sum. This file keeps the accounting: which followers are connected, and which of
//! them a push still waits for. A follower that goes away stops being waited for.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::oneshot;
use weapp_proto::session::v1::{PushMessage, push_message::Target};

use crate::error::SessionError;

/// Largest message text: the gateway's default WebSocket message limit.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Most messages in one PublishBatch.
pub const MAX_BATCH: usize = 10_000;
/// Most text in one PublishBatch.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Longest a publish waits for the gateways' reports.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

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
            Some(Target::OpenId(id) | Target::SessionId(id)) => id.is_empty(),
        };
        if empty_target {
            return Err(SessionError::InvalidArgument(format!(
                "message #{}: say whom it is for (open_id or session_id)",
                index + 1
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
    followers: u32,
    answered: u32,
    sockets: Vec<u64>,
    done: Option<oneshot::Sender<()>>,
}

impl Pending {
    fn settle_if_done(&mut self) {
        if self.waiting.is_empty()
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
    /// connected now.
    pub fn open(&self, count: usize) -> Opened {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        if state.followers.is_empty() {
            return Opened { id, done: None };
        }
        let (done, wait) = oneshot::channel();
        let waiting = state.followers.clone();
        let followers = u32::try_from(waiting.len()).unwrap_or(u32::MAX);
        state.pending.insert(
            id,
            Pending {
                waiting,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> PushMessage {
        PushMessage {
            target: Some(Target::OpenId("o".into())),
            text: text.into(),
        }
    }

    #[tokio::test]
    async fn reports_are_summed_and_a_follower_that_leaves_is_not_waited_for() {
        let deliveries = Arc::new(Deliveries::default());
        let (a, b) = (deliveries.join(), deliveries.join());
        let opened = deliveries.open(2);
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
        let opened = deliveries.open(3);
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
        };
        assert!(check(&[aimless]).is_err());
        assert!(check(&vec![message(""); MAX_BATCH + 1]).is_err());
    }
}
