//! Coalesces concurrent calls with the same key into one: the first caller starts the work,
//! later callers with the same key wait for that same result. Nothing is cached: the entry is
//! gone the moment the work finishes, so a later call with the key starts afresh.
use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::future::{BoxFuture, FutureExt as _, Shared};

type Calls<K, V> = Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, Option<V>>>>>>;

pub struct SingleFlight<K, V> {
    calls: Calls<K, V>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            calls: Arc::default(),
        }
    }
}

fn lock<K, V>(
    calls: &Calls<K, V>,
) -> MutexGuard<'_, HashMap<K, Shared<BoxFuture<'static, Option<V>>>>> {
    // The map stays consistent even if a holder panicked: every critical section is one call.
    calls.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` unless a call with `key` is already in flight, in which case its result is
    /// shared. The work runs on its own task, so it finishes (and its entry is removed) even if
    /// every caller gives up; it carries the trace of the caller that started it (calls it
    /// makes are that request's children). `None` if the work panicked.
    pub async fn run<F>(&self, key: K, work: F) -> Option<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let shared = {
            let mut calls = lock(&self.calls);
            if let Some(existing) = calls.get(&key) {
                existing.clone()
            } else {
                let registry = self.calls.clone();
                let own_key = key.clone();
                let task =
                    tokio::spawn(crate::trace::within(crate::trace::current(), async move {
                        let value = work.await;
                        lock(&registry).remove(&own_key);
                        value
                    }));
                let shared = task.map(Result::ok).boxed().shared();
                calls.insert(key, shared.clone());
                shared
            }
        };
        shared.await
    }

    /// Calls in flight right now.
    pub fn in_flight(&self) -> usize {
        lock(&self.calls).len()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_one_run_and_nothing_is_cached() {
        let flight = Arc::new(SingleFlight::<String, usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let call = |flight: Arc<SingleFlight<String, usize>>, runs: Arc<AtomicUsize>| async move {
            flight
                .run("code".to_owned(), async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
        };
        let (a, b) = tokio::join!(
            call(flight.clone(), runs.clone()),
            call(flight.clone(), runs.clone())
        );
        assert_eq!((a, b), (Some(1), Some(1)));
        assert_eq!(flight.in_flight(), 0);
        assert_eq!(call(flight.clone(), runs.clone()).await, Some(2));
    }

    #[tokio::test]
    async fn work_finishes_when_the_caller_gives_up() {
        let flight = Arc::new(SingleFlight::<u8, u8>::default());
        let abandoned = flight.run(1, async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            7
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(5), abandoned)
                .await
                .is_err()
        );
        assert_eq!(flight.in_flight(), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(flight.in_flight(), 0);
    }

    #[tokio::test]
    async fn the_work_carries_the_trace_of_the_caller_that_started_it() {
        use crate::trace::{self, TraceContext};
        let flight = SingleFlight::<u8, Option<TraceContext>>::default();
        let context = TraceContext::start(1.0);
        let seen = trace::within(Some(context), flight.run(1, async { trace::current() })).await;
        assert_eq!(seen, Some(Some(context)));
    }
}
