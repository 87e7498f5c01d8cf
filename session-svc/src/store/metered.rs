//! Either store, counted: every operation's latency and outcome goes to the metrics
//! (`weapp_store_operations_total{operation, outcome}`), whatever the store behind it.
use std::{sync::Arc, time::Instant};

use async_trait::async_trait;

use super::{
    Event, EventStore, NonceSeen, OutboxStats, Requeue, SecretStore, SessionStore, StoreError,
    StoredSessionKey, StoredToken, Stream, StreamStore,
};
use crate::{
    metrics::SessionMetrics,
    record::{PhoneNumber, SessionRecord, UnixMillis},
};

pub struct Metered<S: ?Sized> {
    store: Arc<S>,
    metrics: Arc<SessionMetrics>,
}

impl<S: ?Sized> Metered<S> {
    pub fn new(store: Arc<S>, metrics: Arc<SessionMetrics>) -> Self {
        Self { store, metrics }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let outcome = work.await;
        self.metrics
            .store_operation(operation, outcome.is_ok(), started.elapsed());
        outcome
    }
}

#[async_trait]
impl SessionStore for Metered<dyn SessionStore> {
    fn describe(&self) -> String {
        self.store.describe()
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        self.timed("prepare", self.store.prepare()).await
    }

    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.timed("insert", self.store.insert(record)).await
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.timed("get", self.store.get(id)).await
    }

    async fn renew(&self, renewed: &SessionRecord) -> Result<bool, StoreError> {
        self.timed("renew", self.store.renew(renewed)).await
    }

    async fn set_phone(&self, open_id: &str, phone: &PhoneNumber) -> Result<u64, StoreError> {
        self.timed("set_phone", self.store.set_phone(open_id, phone))
            .await
    }

    async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        self.timed("remove", self.store.remove(id)).await
    }

    async fn remove_by_open_id(&self, open_id: &str) -> Result<u64, StoreError> {
        self.timed("remove_by_open_id", self.store.remove_by_open_id(open_id))
            .await
    }

    async fn sessions_of_user(&self, open_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.timed("sessions_of_user", self.store.sessions_of_user(open_id))
            .await
    }

    async fn sessions_of_union(&self, union_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.timed("sessions_of_union", self.store.sessions_of_union(union_id))
            .await
    }

    async fn purge_expired(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.timed("purge_expired", self.store.purge_expired(now))
            .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.timed("count", self.store.count()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.store.ping()).await
    }
}

#[async_trait]
impl SecretStore for Metered<dyn SecretStore> {
    async fn load_token(&self, app_id: &str) -> Result<Option<StoredToken>, StoreError> {
        self.timed("load_token", self.store.load_token(app_id))
            .await
    }

    async fn save_token(&self, app_id: &str, token: &StoredToken) -> Result<(), StoreError> {
        self.timed("save_token", self.store.save_token(app_id, token))
            .await
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: UnixMillis,
        until: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.timed("try_lease", self.store.try_lease(name, holder, now, until))
            .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.timed("release_lease", self.store.release_lease(name, holder))
            .await
    }

    async fn put_session_key(&self, key: &StoredSessionKey, sync: bool) -> Result<(), StoreError> {
        self.timed("put_session_key", self.store.put_session_key(key, sync))
            .await
    }

    async fn get_session_key(&self, open_id: &str) -> Result<Option<StoredSessionKey>, StoreError> {
        self.timed("get_session_key", self.store.get_session_key(open_id))
            .await
    }

    async fn purge_session_keys(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.timed("purge_session_keys", self.store.purge_session_keys(now))
            .await
    }
}

#[async_trait]
impl StreamStore for Metered<dyn StreamStore> {
    async fn load_stream(&self, open_id: &str) -> Result<Option<Stream>, StoreError> {
        self.timed("load_stream", self.store.load_stream(open_id))
            .await
    }

    async fn save_stream(
        &self,
        open_id: &str,
        stream: &Stream,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.timed(
            "save_stream",
            self.store.save_stream(open_id, stream, expected),
        )
        .await
    }
}

#[async_trait]
impl EventStore for Metered<dyn EventStore> {
    async fn note_nonce(
        &self,
        app_id: &str,
        request: (i64, &str),
        body_sha256: &str,
        until: UnixMillis,
    ) -> Result<NonceSeen, StoreError> {
        self.timed(
            "note_nonce",
            self.store.note_nonce(app_id, request, body_sha256, until),
        )
        .await
    }

    async fn keep_event(&self, event: &Event) -> Result<bool, StoreError> {
        self.timed("keep_event", self.store.keep_event(event)).await
    }

    async fn claim_events(
        &self,
        owner: &str,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.timed(
            "claim_events",
            self.store.claim_events(owner, now, lease_until, limit),
        )
        .await
    }

    async fn settle_event(&self, event: &Event, owner: &str) -> Result<bool, StoreError> {
        self.timed("settle_event", self.store.settle_event(event, owner))
            .await
    }

    async fn dead_letters(
        &self,
        app_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.timed("dead_letters", self.store.dead_letters(app_id, limit))
            .await
    }

    async fn requeue_dead(
        &self,
        app_id: Option<&str>,
        which: Requeue<'_>,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.timed("requeue_dead", self.store.requeue_dead(app_id, which, now))
            .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.timed("outbox_stats", self.store.outbox_stats()).await
    }

    async fn purge_events(
        &self,
        delivered_before: UnixMillis,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.timed(
            "purge_events",
            self.store.purge_events(delivered_before, now),
        )
        .await
    }
}
