//! The threads client connections run on: one single-threaded tokio runtime per thread,
//! connections dealt to them in turn as they are accepted (actix-web's and nginx's workers'
//! model). A connection's requests, its forwarding and its WebSocket then stay on one thread:
//! no work-stealing scheduler between a request and its answer, no wake-up of another core
//! per event. Forwarding measured 7–10% more requests per second on 2 cores than with every
//! connection on the multi-threaded runtime (bench/README.md). The multi-threaded runtime
//! keeps the accept loop, the gRPC clients and the background tasks.
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
                .name(format!("gateway-io-{i}"))
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

    /// The runtime for the next connection.
    pub fn next(&self) -> &Handle {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        // `start` made at least one.
        &self.runtimes[turn % self.runtimes.len()].0
    }
}

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
        let handle = threads.next().clone();
        drop(threads);
        // The runtime shuts down: what is spawned on it now never runs.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let late = handle.spawn(async {});
        assert!(late.await.is_err(), "the runtime is gone");
    }
}
