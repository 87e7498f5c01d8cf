//! A WebSocket's queue of messages sent to it from elsewhere (pushes from backends, relayed
//! answers): the socket's own task sends them in order. Bounded: a client that does not read
//! fills it, and is then closed with [`SLOW_CLIENT`] instead of holding ever more memory.
//! Small when idle — no allocation until something is queued — since every open socket has
//! one.
use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
};

use axum::extract::ws::Utf8Bytes;
use futures::task::AtomicWaker;

/// Close code for a client that did not read its messages (private-use range, RFC 6455
/// §7.4.2): its queue reached the limit.
pub const SLOW_CLIENT: u16 = 4008;

/// One socket's queue. Kept small on purpose (an `AtomicWaker`, not a `Notify`; a `u32`
/// capacity): there is one per open socket, and its waiting future lives in every socket's task.
pub struct Outbox {
    queue: Mutex<VecDeque<Utf8Bytes>>,
    /// The socket's task, which alone sends what is queued.
    task: AtomicWaker,
    capacity: u32,
    overflowed: AtomicBool,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            task: AtomicWaker::new(),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            overflowed: AtomicBool::new(false),
        }
    }

    /// Queues `text`; false (and the socket is to be closed) when the queue is full. An
    /// outbox of capacity 0 belongs to a socket that takes no pushes (one forwarded to a
    /// business upstream speaks the business's protocol): it refuses, and that is all.
    pub fn offer(&self, text: Utf8Bytes) -> bool {
        if self.capacity == 0 {
            return false;
        }
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= self.capacity as usize {
            drop(queue);
            self.overflowed.store(true, Ordering::Release);
            self.task.wake();
            return false;
        }
        queue.push_back(text);
        drop(queue);
        self.task.wake();
        true
    }

    /// Waits until something is queued or the queue overflowed. For the socket's own task
    /// only (it holds the one waker).
    pub async fn ready(&self) {
        poll_fn(|cx| {
            self.task.register(cx.waker());
            let waiting = !self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            match waiting || self.overflowed() {
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
