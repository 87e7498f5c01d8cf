//! The threads client connections run on: one single-threaded tokio runtime per thread,
//! connections dealt to them in turn as they are accepted (actix-web's and nginx's workers'
//! model). A connection's requests, its forwarding and its WebSocket then stay on one thread:
//! no work-stealing scheduler between a request and its answer, no wake-up of another core
//! per event. Forwarding measured 7–10% more requests per second on 2 cores than with every
//! connection on the multi-threaded runtime (bench/README.md). Each thread also holds its own
//! connection to every session-svc replica (`sessions/replicas.rs`), so a login or a Validate
//! made by a request is written, answered and resumed on the request's thread: crossing to the
//! multi-threaded runtime and back cost the gateway about a fifth of its CPU per login. The
//! multi-threaded runtime keeps the accept loop, the revocation streams, the probes and the
//! background tasks.
use std::{
    io,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::{runtime::Handle, sync::oneshot};

pub struct IoThreads {
    runtimes: Vec<(Handle, oneshot::Sender<()>)>,
    next: AtomicUsize,
}

impl IoThreads {
    /// `count` threads (0: one per CPU).
    pub fn start(count: usize) -> io::Result<Self> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let mut runtimes = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("{THREAD_PREFIX}{i}"))
                // Runs until the sender goes (at drop): then the runtime and what is left
                // on it go with it.
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })?;
            runtimes.push((handle, stop));
        }
        Ok(Self {
            runtimes,
            next: AtomicUsize::new(0),
        })
    }

    /// Each thread's runtime, in thread order: what runs on one of them (a session-svc
    /// connection of its own, `sessions/replicas.rs`) is then served without leaving it.
    pub fn handles(&self) -> Vec<Handle> {
        self.runtimes.iter().map(|(h, _)| h.clone()).collect()
    }

    /// The runtime for the next connection.
    pub fn next(&self) -> &Handle {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        // `start` made at least one.
        &self.runtimes[turn % self.runtimes.len()].0
    }
}

/// The connection thread the caller runs on, by its index in [`IoThreads::handles`]; `None`
/// off them (the multi-threaded runtime, a test). Read off the thread's name, which
/// [`IoThreads::start`] gives it: no state of its own.
pub fn current() -> Option<usize> {
    std::thread::current()
        .name()?
        .strip_prefix(THREAD_PREFIX)?
        .parse()
        .ok()
}

const THREAD_PREFIX: &str = "gateway-io-";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_dealt_in_turn_and_the_threads_end_with_the_pool() {
        let threads = IoThreads::start(2).unwrap();
        let mut names = Vec::new();
        for _ in 0..4 {
            let name = threads
                .next()
                .spawn(async { std::thread::current().name().map(str::to_owned) })
                .await
                .unwrap();
            names.push(name.unwrap());
        }
        assert_eq!(
            names,
            [
                "gateway-io-0",
                "gateway-io-1",
                "gateway-io-0",
                "gateway-io-1"
            ]
        );
        let indexes: Vec<Option<usize>> = futures::future::join_all(
            threads
                .handles()
                .iter()
                .map(|h| h.spawn(async { current() })),
        )
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
        assert_eq!(indexes, [Some(0), Some(1)]);
        assert_eq!(current(), None, "the test's own thread is none of them");
        let handle = threads.next().clone();
        drop(threads);
        // The runtime shuts down: what is spawned on it now never runs.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let late = handle.spawn(async {});
        assert!(late.await.is_err(), "the runtime is gone");
    }
}
