//! A WebSocket's queue of messages sent to it from elsewhere (pushes from backends, relayed
//! answers): the socket's own task sends them in order. Bounded: a client that does not read
//! fills it, and is then closed with [`SLOW_CLIENT`] instead of holding ever more memory.
//! Small when idle — no allocation until something is queued — since every open socket has
//! one. It is also the one thing a socket's task waits on for anything from elsewhere: its
//! end (a revocation, the shutdown: [`End`]) and its keep-alive (`keepalive.rs`).
use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    task::Poll,
};

use futures::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Close code for a client that did not read its messages (private-use range, RFC 6455
/// §7.4.2): its queue reached the limit.
pub const SLOW_CLIENT: u16 = 4008;

/// Why a socket is to close, told through its outbox (the one thing its task already waits
/// on, rather than one more waiting future in every socket's task).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Its session was revoked (logout, `RevokeUser`).
    Revoked = 1,
    /// The gateway is stopping.
    Shutdown = 2,
}

/// A message waiting for its socket. A push to a user carries its place in the user's stream:
/// a socket that resumed sends it as a positioned frame, merging by offset; a plain socket
/// sends the text.
pub struct Queued {
    pub text: Utf8Bytes,
    pub position: Option<Position>,
}

/// A push's place in its user's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: std::sync::Arc<str>,
    pub offset: u64,
}

/// One socket's queue. Kept small on purpose (an `AtomicWaker`, not a `Notify`; a `u32`
/// capacity): there is one per open socket, and its waiting future lives in every socket's task.
pub struct Outbox {
    /// None while empty: an idle socket's queue is one pointer, not a `VecDeque`'s four words.
    #[expect(clippy::box_collection, reason = "one word while idle, the point")]
    queue: Mutex<Option<Box<VecDeque<Queued>>>>,
    /// The socket's task, which alone sends what is queued.
    task: AtomicWaker,
    capacity: u32,
    overflowed: AtomicBool,
    /// 0 while open, else an [`End`]: the first reason given stays.
    ended: AtomicU8,
    /// The keep-alive wheel's tick at which the socket is next due (`keepalive.rs`).
    due: AtomicU64,
    /// Set by the wheel when that tick has passed; taken by the socket.
    keepalive: AtomicBool,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(None),
            task: AtomicWaker::new(),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            overflowed: AtomicBool::new(false),
            ended: AtomicU8::new(0),
            due: AtomicU64::new(u64::MAX),
            keepalive: AtomicBool::new(false),
        }
    }

    /// Queues `text`; false (and the socket is to be closed) when the queue is full. An
    /// outbox of capacity 0 belongs to a socket that takes no pushes (one forwarded to a
    /// business upstream speaks the business's protocol): it refuses, and that is all.
    pub fn offer(&self, text: Utf8Bytes) -> bool {
        self.offer_at(text, None)
    }

    /// Queues a push with its place in its user's stream (`offer` otherwise).
    pub fn offer_at(&self, text: Utf8Bytes, position: Option<Position>) -> bool {
        if self.capacity == 0 {
            return false;
        }
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let took = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let queue = queue.get_or_insert_default();
            let room = queue.len() < self.capacity as usize;
            if room {
                queue.push_back(Queued { text, position });
            }
            room
        };
        if !took {
            self.overflowed.store(true, Ordering::Release);
        }
        self.task.wake();
        took
    }

    pub fn set_due(&self, tick: u64) {
        self.due.store(tick, Ordering::Release);
    }

    pub fn due(&self) -> u64 {
        self.due.load(Ordering::Acquire)
    }

    /// The keep-alive wheel's word that the socket's ping (or its pong) is due.
    pub fn keepalive_due(&self) {
        self.keepalive.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Whether the keep-alive is due; the socket acts on it, so it is told once.
    pub fn take_keepalive(&self) -> bool {
        self.keepalive.swap(false, Ordering::AcqRel)
    }

    /// Whether there is anything but the keep-alive to act on: messages, an overflow, an end.
    pub fn has_news(&self) -> bool {
        self.overflowed()
            || self.ended().is_some()
            || self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    /// Tells the socket to close, and why.
    pub fn end(&self, why: End) {
        let _ = self
            .ended
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
        self.task.wake();
    }

    /// Whether, and why, the socket is to close.
    pub fn ended(&self) -> Option<End> {
        match self.ended.load(Ordering::Acquire) {
            0 => None,
            1 => Some(End::Revoked),
            _ => Some(End::Shutdown),
        }
    }

    /// Waits until the socket is to close. For a socket whose task does not wait on
    /// [`Outbox::ready`] (one forwarded to a business upstream): the outbox has one waker.
    pub async fn until_ended(&self) -> End {
        poll_fn(|cx| {
            self.task.register(cx.waker());
            self.ended().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    /// Waits until something is queued, the queue overflowed, the socket is to close or its
    /// keep-alive is due. For the socket's own task only (it holds the one waker).
    pub async fn ready(&self) {
        poll_fn(|cx| {
            self.task.register(cx.waker());
            match self.keepalive.load(Ordering::Acquire) || self.has_news() {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        })
        .await
    }

    /// Waits until the queue overflows (while a send to a client that does not read hangs).
    pub async fn overflow(&self) {
        poll_fn(|cx| {
            self.task.register(cx.waker());
            match self.overflowed() {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        })
        .await
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// The next queued message.
    pub fn next(&self) -> Option<Queued> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let next = queue.as_mut()?.pop_front();
        if queue.as_ref().is_some_and(|q| q.is_empty()) {
            // Drained: its memory goes back, and an empty queue is None.
            *queue = None;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_out_in_order_until_the_queue_overflows() {
        let outbox = Outbox::new(2);
        assert!(outbox.offer("a".into()) && outbox.offer("b".into()));
        assert!(!outbox.offer("c".into()));
        assert!(outbox.overflowed());
        assert!(
            !outbox.offer("d".into()),
            "an overflowed queue takes nothing more"
        );
        assert_eq!(outbox.next().map(|q| q.text).as_deref(), Some("a"));
        assert_eq!(outbox.next().map(|q| q.text).as_deref(), Some("b"));
        assert!(outbox.next().is_none());
    }

    #[tokio::test]
    async fn an_end_wakes_the_socket_and_the_first_reason_stays() {
        let outbox = std::sync::Arc::new(Outbox::new(2));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                outbox.ready().await;
                outbox.ended()
            }
        });
        tokio::task::yield_now().await;
        outbox.end(End::Revoked);
        outbox.end(End::Shutdown);
        assert_eq!(waiting.await.unwrap(), Some(End::Revoked));
        assert_eq!(outbox.until_ended().await, End::Revoked);
    }
}
