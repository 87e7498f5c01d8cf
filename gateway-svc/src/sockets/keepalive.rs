//! Keep-alive for every `/ws` socket on one timer wheel, instead of a timer in each socket's
//! task: a tokio `Sleep` is 112 bytes that every open socket would carry for its whole life,
//! and at 100,000 sockets that is 11 MB of timers to say "ping me in 25 s".
//!
//! The wheel is a ring of slots, one per tick (an eighth of the shorter of the ping interval
//! and the pong timeout, between 10 ms and 1 s). A socket is scheduled by putting a weak
//! reference to its outbox in the slot of its due tick and writing that tick into the outbox;
//! the wheel's one task visits each slot as its tick passes and wakes the sockets that are
//! due through their outboxes (`Outbox::keepalive_due`). Scheduling again just writes a new
//! due tick: the old entry is recognised as stale and dropped when its slot comes round, so
//! nothing is ever searched for. Each socket costs one entry (16 bytes) and the work per
//! tick is the sockets due in it: flat in the number of sockets.
use std::{
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{config::WsSettings, sockets::outbox::Outbox};

/// The most slots a wheel has; a socket due further out waits in its slot for more rounds.
const MAX_SLOTS: u64 = 4096;

pub struct KeepAlive {
    tick: Duration,
    started: Instant,
    slots: Box<[Mutex<Vec<Entry>>]>,
}

struct Entry {
    due: u64,
    outbox: Weak<Outbox>,
}

impl KeepAlive {
    pub fn new(settings: &WsSettings) -> Self {
        let shortest = settings.ping_interval.min(settings.pong_timeout);
        let tick = (shortest / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let longest = settings.ping_interval.max(settings.pong_timeout);
        let slots = u64::try_from(longest.as_nanos() / tick.as_nanos())
            .unwrap_or(MAX_SLOTS)
            .saturating_add(2)
            .min(MAX_SLOTS);
        Self {
            tick,
            started: Instant::now(),
            slots: (0..slots).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// The first tick at or after `at`.
    fn tick_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.started).as_nanos();
        let tick = self.tick.as_nanos();
        u64::try_from(since.div_ceil(tick)).unwrap_or(u64::MAX)
    }

    fn slot(&self, tick: u64) -> &Mutex<Vec<Entry>> {
        // The slot count is at most MAX_SLOTS, so the index fits any usize.
        let index = usize::try_from(tick % self.slots.len() as u64).unwrap_or(0);
        &self.slots[index]
    }

    /// Wakes `outbox`'s socket at `at` (at most a tick later), unless it is scheduled again
    /// before then.
    pub fn schedule(&self, outbox: &Arc<Outbox>, at: Instant) {
        let due = self.tick_at(at);
        outbox.set_due(due);
        let entry = Entry {
            due,
            outbox: Arc::downgrade(outbox),
        };
        self.slot(due)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }

    /// Turns the wheel until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next = 1;
        loop {
            // The tick is at most a second, so its nanoseconds times any tick number reached
            // in practice fit a u64 (584 years).
            let tick_nanos = u64::try_from(self.tick.as_nanos()).unwrap_or(u64::MAX);
            let at = self.started + Duration::from_nanos(tick_nanos.saturating_mul(next));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(at) => {}
            }
            // A late wake-up (a busy machine) catches up on every tick it missed, but never
            // visits a slot twice in one go.
            let now = self.tick_at(Instant::now()).max(next);
            let first = next.max(now.saturating_sub(self.slots.len() as u64 - 1));
            for tick in first..=now {
                self.expire(tick, now);
            }
            next = now + 1;
        }
    }

    /// Wakes the sockets of `tick`'s slot that are due by `now`; keeps those due in a later
    /// round; forgets stale entries and closed sockets.
    fn expire(&self, tick: u64, now: u64) {
        let slot = self.slot(tick);
        let entries = std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()));
        let mut later = Vec::new();
        for entry in entries {
            let Some(outbox) = entry.outbox.upgrade() else {
                continue;
            };
            if outbox.due() != entry.due {
                continue;
            }
            match entry.due <= now {
                true => outbox.keepalive_due(),
                false => later.push(entry),
            }
        }
        if !later.is_empty() {
            slot.lock().unwrap_or_else(|e| e.into_inner()).extend(later);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel(ping: u64, pong: u64) -> Arc<KeepAlive> {
        Arc::new(KeepAlive::new(&WsSettings {
            ping_interval: Duration::from_millis(ping),
            pong_timeout: Duration::from_millis(pong),
            max_message_size: 1024,
            max_connections: 1,
            send_queue: 1,
            max_per_session: 1,
        }))
    }

    /// The wheel's bookkeeping, turned by hand: exact, whatever the machine's load.
    #[test]
    fn a_socket_is_woken_when_due_and_only_by_its_latest_schedule() {
        // Ticks of 10 ms, 10 slots: one turn is 100 ms.
        let wheel = wheel(80, 80);
        let at = |ms| wheel.started + Duration::from_millis(ms);
        let (early, late) = (Arc::new(Outbox::new(1)), Arc::new(Outbox::new(1)));
        wheel.schedule(&early, at(60));
        wheel.schedule(&late, at(60));
        // Scheduled again before it was due: the first schedule no longer counts. Due beyond
        // one turn of the wheel (tick 45, slot 5), it waits in its slot for rounds.
        wheel.schedule(&late, at(450));

        for tick in 1..6 {
            wheel.expire(tick, tick);
        }
        assert!(!early.take_keepalive(), "not due before tick 6");
        wheel.expire(6, 6);
        assert!(early.take_keepalive(), "due at tick 6");
        assert!(!late.take_keepalive(), "its tick-6 entry is stale");
        wheel.expire(15, 15);
        assert!(
            !late.take_keepalive(),
            "slot 5 a round early: kept, not woken"
        );
        wheel.expire(45, 45);
        assert!(late.take_keepalive(), "due at tick 45");
        assert!(!early.take_keepalive(), "told once");
    }

    /// The wheel's own task, in real time: a wake-up is never early by construction, and gets
    /// a wide margin for a busy machine.
    #[tokio::test]
    async fn the_wheel_turns_by_itself() {
        let wheel = wheel(80, 80);
        let shutdown = CancellationToken::new();
        tokio::spawn(wheel.clone().run(shutdown.clone()));
        let outbox = Arc::new(Outbox::new(1));
        wheel.schedule(&outbox, Instant::now() + Duration::from_millis(30));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(outbox.take_keepalive());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_closed_socket_leaves_nothing_behind() {
        let wheel = wheel(80, 80);
        tokio::spawn(wheel.clone().run(CancellationToken::new()));
        let outbox = Arc::new(Outbox::new(1));
        wheel.schedule(&outbox, Instant::now() + Duration::from_millis(20));
        drop(outbox);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let entries: usize = wheel
            .slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum();
        assert_eq!(entries, 0);
    }
}
