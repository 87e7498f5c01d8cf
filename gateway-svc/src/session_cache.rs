//! A cache of validated sessions, so that a busy session costs session-svc one Validate per
//! TTL instead of one per request — without weakening revocation or expiry:
//!
//! * An entry never outlives the session: it lasts the TTL or half of the session's remaining
//!   idle time (`expires_in` as session-svc measured it, counted from before the call was
//!   sent), whichever is shorter. Sliding renewal keeps working: a session in use goes back to
//!   session-svc, which renews it, while it still has half its idle time left.
//! * Revocations arrive on session-svc's `WatchRevocations` stream and evict at once. The cache
//!   is only consulted while that stream is open and has been heard from within
//!   [`REVOCATION_BOUND`]; a silent or broken stream empties it. A logout is therefore effective
//!   on every gateway within the bound (in practice within milliseconds).
//! * An answer that was in flight while a revocation arrived is not cached (the epoch check
//!   below), so a Validate that raced a Logout cannot bring the session back.
//! * Only a hash of the skey is kept, compared in constant time.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weapp_proto::session::v1::revocation::Event;

use crate::{open_sockets::OpenSockets, session_client::SessionClient, wafer::User};

/// Longest time a revocation can take to reach this gateway's cache: past this much silence
/// from session-svc's revocation stream, the cache is not used.
pub const REVOCATION_BOUND: Duration = Duration::from_secs(1);

const NEVER: u64 = u64::MAX;

struct Entry {
    skey_hash: [u8; 32],
    user: Arc<User>,
    until: Instant,
}

pub struct SessionCache {
    entries: DashMap<String, Entry>,
    ttl: Duration,
    capacity: usize,
    /// Bumped by every revocation and every reset; answers fetched across a bump are not cached.
    epoch: AtomicU64,
    /// Milliseconds after `origin` when the revocation stream last spoke, or NEVER.
    last_heard: AtomicU64,
    origin: Instant,
}

/// Taken before a Validate call; the answer is cached only if nothing was revoked meanwhile.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    epoch: u64,
    started: Instant,
}

fn hash(skey: &str) -> [u8; 32] {
    Sha256::digest(skey.as_bytes()).into()
}

impl SessionCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: DashMap::new(),
            ttl,
            capacity,
            epoch: AtomicU64::new(0),
            last_heard: AtomicU64::new(NEVER),
            origin: Instant::now(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.capacity > 0
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    /// Whether revocations are reaching us, i.e. whether cached answers may be used.
    pub fn live(&self) -> bool {
        let heard = self.last_heard.load(Ordering::SeqCst);
        heard != NEVER
            && self.elapsed_ms().saturating_sub(heard)
                < u64::try_from(REVOCATION_BOUND.as_millis()).unwrap_or(u64::MAX)
    }

    /// The user of a cached, unexpired session whose skey matches.
    pub fn get(&self, id: &str, skey: &str) -> Option<Arc<User>> {
        if !self.enabled() || !self.live() {
            return None;
        }
        let entry = self.entries.get(id)?;
        if entry.until <= Instant::now() {
            return None;
        }
        bool::from(entry.skey_hash.ct_eq(&hash(skey))).then(|| entry.user.clone())
    }

    pub fn ticket(&self) -> Ticket {
        Ticket {
            epoch: self.epoch.load(Ordering::SeqCst),
            started: Instant::now(),
        }
    }

    /// Caches a Validate answer obtained with `ticket`.
    pub fn insert(
        &self,
        ticket: Ticket,
        id: &str,
        skey: &str,
        user: Arc<User>,
        expires_in: Duration,
    ) {
        if !self.enabled() || !self.live() || self.entries.len() >= self.capacity {
            return;
        }
        let until = ticket.started + self.ttl.min(expires_in / 2);
        if until <= Instant::now() {
            return;
        }
        // The epoch is checked under the entry's shard lock, which eviction also takes: either
        // the revocation is seen here, or its eviction runs after this insert.
        let slot = self.entries.entry(id.to_owned());
        if self.epoch.load(Ordering::SeqCst) != ticket.epoch {
            return;
        }
        slot.insert(Entry {
            skey_hash: hash(skey),
            user,
            until,
        });
    }

    pub fn revoke_session(&self, id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(id);
    }

    pub fn revoke_user(&self, open_id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.retain(|_, e| e.user.info.open_id != open_id);
    }

    fn heard(&self) {
        self.last_heard.store(self.elapsed_ms(), Ordering::SeqCst);
    }

    /// Forgets everything: the stream broke, so revocations may have been missed.
    fn reset(&self) {
        self.last_heard.store(NEVER, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.entries.retain(|_, e| e.until > now);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Follows session-svc's revocation stream for as long as the gateway runs, reconnecting with
/// a short backoff: each revocation evicts the session from the cache and closes its open
/// WebSockets. Also sweeps expired entries so the cache does not fill up with them.
pub async fn follow_revocations(
    cache: Arc<SessionCache>,
    sockets: Arc<OpenSockets>,
    sessions: SessionClient,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let mut sweep = tokio::time::interval(cache.ttl.max(Duration::from_secs(1)));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            stream = sessions.watch_revocations() => stream,
        };
        // Revocations may have been missed while there was no stream: once this one has
        // spoken, the sessions of open sockets are checked again.
        let mut recheck = true;
        match stream {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sweep.tick() => { cache.sweep(); continue; }
                    next = tokio::time::timeout(REVOCATION_BOUND, stream.message()) => next,
                };
                match next {
                    Ok(Ok(Some(revocation))) => {
                        match revocation.event {
                            Some(Event::SessionId(id)) => {
                                cache.revoke_session(&id);
                                sockets.revoke_session(&id);
                            }
                            Some(Event::OpenId(open_id)) => {
                                cache.revoke_user(&open_id);
                                sockets.revoke_user(&open_id);
                            }
                            Some(Event::Heartbeat(_)) | None => {}
                        }
                        // After applying the event: "heard" means "up to date".
                        cache.heard();
                        backoff = Duration::from_millis(50);
                        if std::mem::take(&mut recheck) {
                            tokio::spawn(recheck_open_sockets(
                                sockets.clone(),
                                sessions.clone(),
                                shutdown.clone(),
                            ));
                        }
                    }
                    Ok(Ok(None)) => {
                        tracing::info!("revocation stream ended; session cache emptied");
                        break;
                    }
                    Ok(Err(status)) => {
                        tracing::warn!(code = ?status.code(), message = status.message(), "revocation stream failed; session cache emptied");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!("revocation stream silent; session cache emptied");
                        break;
                    }
                }
            },
            Err(status) => {
                tracing::debug!(code = ?status.code(), "cannot open the revocation stream yet");
            }
        }
        cache.reset();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Most ids sent in one CheckSessions call (session-svc takes up to 10,000).
const CHECK_BATCH: usize = 5_000;

/// Closes the open sockets of sessions that ended while the revocation stream was down. Run
/// after the stream is back, so later revocations arrive through it; retried a few times if
/// session-svc cannot answer, and again at the next reconnection in any case.
async fn recheck_open_sockets(
    sockets: Arc<OpenSockets>,
    sessions: SessionClient,
    shutdown: CancellationToken,
) {
    let ids = sockets.session_ids();
    if ids.is_empty() {
        return;
    }
    let mut closed = 0usize;
    for batch in ids.chunks(CHECK_BATCH) {
        let mut attempt = 0;
        let ended = loop {
            match sessions.ended_sessions(batch.to_vec()).await {
                Ok(ended) => break ended,
                Err(status) if attempt < 3 => {
                    attempt += 1;
                    tracing::debug!(code = ?status.code(), "cannot recheck open sockets yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), "open sockets not rechecked after a revocation stream outage");
                    return;
                }
            }
        };
        closed += ended.len();
        for id in ended {
            sockets.revoke_session(&id);
        }
    }
    if closed > 0 {
        tracing::info!(
            closed,
            "closed sockets of sessions revoked while the revocation stream was down"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(open_id: &str) -> Arc<User> {
        Arc::new(User::new(weapp_proto::session::v1::UserInfo {
            open_id: open_id.into(),
            ..Default::default()
        }))
    }

    /// Caches a session of `open_id` with a fresh ticket.
    fn put(cache: &SessionCache, id: &str, skey: &str, open_id: &str, expires_in: Duration) {
        cache.insert(cache.ticket(), id, skey, user(open_id), expires_in);
    }

    fn live_cache() -> SessionCache {
        let cache = SessionCache::new(Duration::from_secs(30), 100);
        cache.heard();
        cache
    }

    #[test]
    fn a_cached_session_needs_the_right_skey() {
        let cache = live_cache();
        put(&cache, "id", "skey", "o", Duration::from_secs(60));
        assert!(cache.get("id", "skey").is_some());
        assert!(cache.get("id", "skeY").is_none());
        assert!(cache.get("other", "skey").is_none());
    }

    #[test]
    fn nothing_is_used_or_cached_without_a_live_revocation_stream() {
        let cache = SessionCache::new(Duration::from_secs(30), 100);
        put(&cache, "id", "skey", "o", Duration::from_secs(60));
        assert!(cache.is_empty());
        cache.heard();
        put(&cache, "id", "skey", "o", Duration::from_secs(60));
        assert!(cache.get("id", "skey").is_some());
        cache.reset();
        assert!(cache.get("id", "skey").is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn an_answer_fetched_across_a_revocation_is_not_cached() {
        let cache = live_cache();
        let ticket = cache.ticket();
        cache.revoke_session("id");
        cache.insert(ticket, "id", "skey", user("o"), Duration::from_secs(60));
        assert!(cache.get("id", "skey").is_none());
    }

    #[test]
    fn revocations_evict_sessions_and_users() {
        let cache = live_cache();
        for (id, open_id) in [("a", "o1"), ("b", "o1"), ("c", "o2")] {
            put(&cache, id, "k", open_id, Duration::from_secs(60));
        }
        cache.revoke_session("c");
        assert!(cache.get("c", "k").is_none());
        cache.revoke_user("o1");
        assert!(cache.is_empty());
    }

    // Real time, with wide margins: tokio's paused clock would need its test-util feature, and
    // that feature in one crate's dev-dependencies changes tokio for every test build.
    #[test]
    fn entries_end_at_half_the_session_or_the_ttl_whichever_is_first() {
        let cache = SessionCache::new(Duration::from_secs(1), 100);
        cache.heard();
        let start = std::time::Instant::now();
        // Half of 200 ms: gone after 100 ms. The TTL (1 s) ends the other one.
        put(&cache, "short", "k", "o", Duration::from_millis(200));
        put(&cache, "long", "k", "o", Duration::from_secs(3600));
        assert!(cache.get("short", "k").is_some());
        std::thread::sleep(Duration::from_millis(150));
        cache.heard();
        assert!(cache.get("short", "k").is_none());
        if start.elapsed() < Duration::from_millis(900) {
            assert!(cache.get("long", "k").is_some());
        }
        std::thread::sleep(Duration::from_millis(1050).saturating_sub(start.elapsed()));
        cache.heard();
        assert!(cache.get("long", "k").is_none());
    }

    #[test]
    fn a_silent_stream_stops_the_cache_within_the_bound() {
        let cache = live_cache();
        put(&cache, "id", "k", "o", Duration::from_secs(60));
        assert!(cache.get("id", "k").is_some());
        std::thread::sleep(REVOCATION_BOUND + Duration::from_millis(10));
        assert!(cache.get("id", "k").is_none());
    }

    #[test]
    fn a_full_cache_takes_no_more() {
        let cache = SessionCache::new(Duration::from_secs(30), 1);
        cache.heard();
        put(&cache, "a", "k", "o", Duration::from_secs(60));
        put(&cache, "b", "k", "o", Duration::from_secs(60));
        assert_eq!(cache.len(), 1);
    }
}
