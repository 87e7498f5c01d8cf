//! A WebSocket's queue of messages sent to it from elsewhere (pushes from backends, relayed
//! answers): the socket's own task sends them in order. Bounded: a client that does not read
//! fills it, and is then closed with [`SLOW_CLIENT`] instead of holding ever more memory.
//! Small when idle — no allocation until something is queued — since every open socket has
//! one.
use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

/// Close code for a client that did not read its messages (private-use range, RFC 6455
/// §7.4.2): its queue reached the limit.
pub const SLOW_CLIENT: u16 = 4008;

pub struct Outbox {
    queue: Mutex<VecDeque<Utf8Bytes>>,
    capacity: usize,
    overflowed: AtomicBool,
    wake: Notify,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            overflowed: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Queues `text`; false (and the socket is to be closed) when the queue is full.
    pub fn offer(&self, text: Utf8Bytes) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= self.capacity {
            drop(queue);
            self.overflowed.store(true, Ordering::Relaxed);
            self.wake.notify_one();
            return false;
        }
        queue.push_back(text);
        drop(queue);
        self.wake.notify_one();
        true
    }

    /// Waits until something is queued (or the queue overflowed).
    pub async fn ready(&self) {
        self.wake.notified().await
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// The next queued message.
    pub fn next(&self) -> Option<Utf8Bytes> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let next = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 16 {
            // A burst is over: give its memory back.
            queue.shrink_to_fit();
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
        assert_eq!(outbox.next().as_deref(), Some("a"));
        assert_eq!(outbox.next().as_deref(), Some("b"));
        assert_eq!(outbox.next(), None);
    }
}
