//! A cache of validated sessions, so that a busy session costs session-svc one Validate per
//! TTL instead of one per request — without weakening revocation or expiry:
//!
//! * An entry never outlives the session: it lasts the TTL or half of the session's remaining
//!   idle time (`expires_in` as session-svc measured it, counted from before the call was
//!   sent), whichever is shorter. Sliding renewal keeps working: a session in use goes back to
//!   session-svc, which renews it, while it still has half its idle time left.
//! * Revocations (followed in `follower.rs`) evict at once. The cache is only
//!   consulted while that stream is open and has been heard from within [`REVOCATION_BOUND`];
//!   a silent or broken stream empties it. A logout is therefore effective on every gateway
//!   within the bound (in practice within milliseconds).
//! * An answer that was in flight while a revocation arrived is not cached (the epoch check
//!   in [`SessionCache::insert`]), so a Validate that raced a Logout cannot bring the session
//!   back.
//! * Bounded: past its capacity the least recently used entries are evicted, so a surge of
//!   new sessions replaces old entries instead of turning the cache off.
//! * Only a hash of the skey is kept, compared in constant time.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use moka::{notification::RemovalCause, policy::EvictionPolicy, sync::Cache};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{metrics::CacheEvictions, sessions::identity::Identity, sessions::user::User};

/// Longest time a revocation can take to reach this gateway's cache: past this much silence
/// from session-svc's revocation stream, the cache is not used.
pub const REVOCATION_BOUND: Duration = Duration::from_secs(1);

const NEVER: u64 = u64::MAX;

/// What a Validate answer leaves in the cache.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub user: Arc<User>,
    /// The identity headers with the signed assertion, when they were asked for. Kept here
    /// and not in `User`, which open WebSockets hold on to: they have no use for them.
    pub identity: Option<Arc<Identity>>,
}

impl From<Arc<User>> for Resolved {
    fn from(user: Arc<User>) -> Self {
        Self {
            user,
            identity: None,
        }
    }
}

struct Entry {
    skey_hash: [u8; 32],
    resolved: Resolved,
    /// How long the entry may live from its insertion.
    lifetime: Duration,
}

/// Each entry's own lifetime (moka's per-entry expiry).
struct EntryLifetime;

impl moka::Expiry<String, Arc<Entry>> for EntryLifetime {
    fn expire_after_create(
        &self,
        _id: &String,
        entry: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }
}

pub struct SessionCache {
    entries: Cache<String, Arc<Entry>>,
    ttl: Duration,
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
    /// A cache of at most `capacity` sessions, each kept at most `ttl`; either at zero turns
    /// it off. What it drops is counted in `evictions`.
    pub fn new(ttl: Duration, capacity: u64, evictions: CacheEvictions) -> Self {
        let ttl = if capacity == 0 { Duration::ZERO } else { ttl };
        Self {
            entries: Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(EntryLifetime)
                .eviction_listener(move |_, _, cause| match cause {
                    RemovalCause::Size => evictions.capacity.increment(1),
                    RemovalCause::Expired => evictions.expired.increment(1),
                    RemovalCause::Explicit => evictions.invalidated.increment(1),
                    // A fresher answer for the same session: nothing left the cache.
                    RemovalCause::Replaced => {}
                })
                .build(),
            ttl,
            epoch: AtomicU64::new(0),
            last_heard: AtomicU64::new(NEVER),
            origin: Instant::now(),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero()
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

    /// A cached, unexpired session whose skey matches.
    pub fn get(&self, id: &str, skey: &str) -> Option<Resolved> {
        if !self.enabled() || !self.live() {
            return None;
        }
        let entry = self.entries.get(id)?;
        bool::from(entry.skey_hash.ct_eq(&hash(skey))).then(|| entry.resolved.clone())
    }

    pub fn ticket(&self) -> Ticket {
        Ticket {
            epoch: self.epoch.load(Ordering::SeqCst),
            started: Instant::now(),
        }
    }

    /// Caches a Validate answer obtained with `ticket`. `expires_in` is what is left of the
    /// shorter-lived of the session and the assertion.
    pub fn insert(
        &self,
        ticket: Ticket,
        id: &str,
        skey: &str,
        resolved: impl Into<Resolved>,
        expires_in: Duration,
    ) {
        if !self.enabled() || !self.live() || self.epoch.load(Ordering::SeqCst) != ticket.epoch {
            return;
        }
        let until = ticket.started + self.ttl.min(expires_in / 2);
        let lifetime = until.saturating_duration_since(Instant::now());
        if lifetime.is_zero() {
            return;
        }
        let entry = Arc::new(Entry {
            skey_hash: hash(skey),
            resolved: resolved.into(),
            lifetime,
        });
        self.entries.insert(id.to_owned(), entry);
        // A revocation bumps the epoch before it evicts. If it bumped after the check above,
        // either its eviction comes after this insert (and removes it), or it came before and
        // the epoch read here shows it: both ways the answer does not survive.
        if self.epoch.load(Ordering::SeqCst) != ticket.epoch {
            self.entries.invalidate(id);
        }
    }

    pub fn revoke_session(&self, id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(id);
    }

    pub fn revoke_user(&self, open_id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // Rare (bans, "log out everywhere"), so a scan is fine; an index by user would cost
        // every insert instead.
        for (id, entry) in &self.entries {
            if entry.resolved.user.open_id == open_id {
                self.entries.invalidate(id.as_str());
            }
        }
    }

    /// Sessions cached now (approximate: expired entries leave lazily).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Time since the revocation stream was last heard from (`MAX` before it ever was).
    pub fn silence(&self) -> Duration {
        match self.last_heard.load(Ordering::SeqCst) {
            NEVER => Duration::MAX,
            heard => Duration::from_millis(self.elapsed_ms().saturating_sub(heard)),
        }
    }

    /// The revocation stream spoke: everything revoked until now has been applied.
    pub fn heard(&self) {
        self.last_heard.store(self.elapsed_ms(), Ordering::SeqCst);
    }

    /// Forgets everything: the stream broke, so revocations may have been missed.
    pub fn reset(&self) {
        self.last_heard.store(NEVER, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use weapp_wire::UserInfo;

    use super::*;

    fn user(open_id: &str) -> Arc<User> {
        Arc::new(User::new(&UserInfo::code_only(open_id, None)))
    }

    /// Caches a session of `open_id` with a fresh ticket.
    fn put(cache: &SessionCache, id: &str, skey: &str, open_id: &str, expires_in: Duration) {
        cache.insert(cache.ticket(), id, skey, user(open_id), expires_in);
    }

    fn live_cache() -> SessionCache {
        let cache = SessionCache::new(Duration::from_secs(30), 100, CacheEvictions::default());
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
        let cache = SessionCache::new(Duration::from_secs(30), 100, CacheEvictions::default());
        put(&cache, "id", "skey", "o", Duration::from_secs(60));
        cache.heard();
        assert!(
            cache.get("id", "skey").is_none(),
            "not cached while not live"
        );
        put(&cache, "id", "skey", "o", Duration::from_secs(60));
        assert!(cache.get("id", "skey").is_some());
        cache.reset();
        assert!(cache.get("id", "skey").is_none());
        cache.heard();
        assert!(cache.get("id", "skey").is_none(), "a reset forgets");
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
        for id in ["a", "b", "c"] {
            assert!(cache.get(id, "k").is_none(), "{id}");
        }
    }

    // Real time, with wide margins: tokio's paused clock would need its test-util feature, and
    // that feature in one crate's dev-dependencies changes tokio for every test build.
    #[test]
    fn entries_end_at_half_the_session_or_the_ttl_whichever_is_first() {
        let cache = SessionCache::new(Duration::from_secs(1), 100, CacheEvictions::default());
        cache.heard();
        let start = Instant::now();
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
    fn a_full_cache_evicts_old_sessions_for_new_ones() {
        let cache = SessionCache::new(Duration::from_secs(30), 10, CacheEvictions::default());
        cache.heard();
        for i in 0..100 {
            put(&cache, &format!("s{i}"), "k", "o", Duration::from_secs(60));
            cache.entries.run_pending_tasks();
        }
        assert!(cache.entries.entry_count() <= 10);
        assert!(
            cache.get("s99", "k").is_some(),
            "the newest session is cached: a surge does not turn the cache off"
        );
    }

    #[test]
    fn what_leaves_the_cache_is_counted_by_cause() {
        let registry = weapp_common::metrics::Registry::new();
        let eviction =
            |cause| registry.counter("weapp_session_cache_evictions_total", &[("cause", cause)]);
        let evictions = CacheEvictions {
            capacity: eviction("capacity"),
            expired: eviction("expired"),
            invalidated: eviction("invalidated"),
        };
        let cache = SessionCache::new(Duration::from_secs(30), 10, evictions);
        cache.heard();
        for i in 0..30 {
            put(&cache, &format!("s{i}"), "k", "o", Duration::from_secs(60));
            cache.entries.run_pending_tasks();
        }
        put(&cache, "s29", "k", "o", Duration::from_secs(60));
        assert!(cache.get("s29", "k").is_some());
        cache.revoke_session("s29");
        cache.entries.run_pending_tasks();
        let text = registry.render();
        let count = |cause: &str| -> f64 {
            let series = format!("weapp_session_cache_evictions_total{{cause=\"{cause}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&series)?.parse().ok())
                .unwrap_or(0.0)
        };
        assert!(count("capacity") >= 20.0, "{text}");
        assert_eq!(count("invalidated"), 1.0, "{text}");
        assert_eq!(count("expired"), 0.0, "{text}");
    }

    #[test]
    fn a_zero_ttl_or_capacity_turns_the_cache_off() {
        for cache in [
            SessionCache::new(Duration::ZERO, 10, CacheEvictions::default()),
            SessionCache::new(Duration::from_secs(30), 0, CacheEvictions::default()),
        ] {
            cache.heard();
            put(&cache, "id", "k", "o", Duration::from_secs(60));
            assert!(cache.get("id", "k").is_none());
        }
    }
}
