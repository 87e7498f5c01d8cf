//! Sessions: what a session is, how long it lives, and the create/validate/logout life cycle on
//! top of whichever store is configured.
use std::{sync::Arc, time::Duration};

use futures::{StreamExt as _, TryStreamExt as _};
use weapp_common::config::duration;

use crate::{
    cluster::{ClusterFeed, Event},
    credentials::{self, Credentials},
    error::SessionError,
    record::{PhoneNumber, SessionRecord, UserInfo, now_millis},
    revocations::{RevocationFeed, Revoked},
    store::SessionStore,
};

/// Most ids one CheckSessions call may ask about.
pub const MAX_CHECKED_SESSIONS: usize = 10_000;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How long sessions live.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct SessionPolicy {
    /// A session unused this long expires; each use pushes the expiry out again.
    #[arg(id = "session_idle_ttl", value_name = "SESSION_IDLE_TTL", long = "session-idle-ttl", env = "WEAPP_SESSION_IDLE_TTL", default_value = "2h", value_parser = duration)]
    pub idle_ttl: Duration,

    /// No session lives longer than this, used or not.
    #[arg(id = "session_max_age", value_name = "SESSION_MAX_AGE", long = "session-max-age", env = "WEAPP_SESSION_MAX_AGE", default_value = "7d", value_parser = duration)]
    pub max_age: Duration,

    /// Renewal is written at most this often, so a busy session does not turn every request
    /// into a store write. The idle expiry may therefore be up to this much early.
    #[arg(id = "session_renew_after", value_name = "SESSION_RENEW_AFTER", long = "session-renew-after", env = "WEAPP_SESSION_RENEW_AFTER", default_value = "1m", value_parser = duration)]
    pub renew_after: Duration,
}

impl SessionPolicy {
    /// The defaults written on the arguments above, as shipped (environment ignored).
    pub fn shipped() -> Result<Self, clap::Error> {
        weapp_common::config::defaults()
    }
}

impl SessionPolicy {
    pub fn check(&self) -> Result<(), String> {
        if self.idle_ttl.is_zero() || self.max_age.is_zero() {
            return Err("session lifetimes must be positive".into());
        }
        if self.idle_ttl > self.max_age {
            return Err("the session idle TTL cannot exceed the session max age".into());
        }
        if self.renew_after >= self.idle_ttl {
            return Err("the renewal interval must be shorter than the idle TTL".into());
        }
        Ok(())
    }
}

/// Creates, resolves and revokes sessions.
pub struct SessionManager {
    store: Arc<dyn SessionStore>,
    policy: SessionPolicy,
    revocations: Arc<RevocationFeed>,
    /// The other replicas, on MongoDB.
    cluster: Option<Arc<ClusterFeed>>,
}

impl SessionManager {
    pub fn new(store: Arc<dyn SessionStore>, policy: SessionPolicy) -> Self {
        Self {
            store,
            policy,
            revocations: Arc::default(),
            cluster: None,
        }
    }

    /// A replica among others: what it revokes is announced to them, and its followers wait
    /// until it hears them (`cluster/`).
    pub fn in_cluster(
        store: Arc<dyn SessionStore>,
        policy: SessionPolicy,
        cluster: Arc<ClusterFeed>,
    ) -> Self {
        Self {
            store,
            policy,
            revocations: Arc::new(RevocationFeed::suspended()),
            cluster: Some(cluster),
        }
    }

    /// The local feed, shared with the reader of the other replicas' announcements.
    pub fn feed(&self) -> Arc<RevocationFeed> {
        self.revocations.clone()
    }

    async fn announce(&self, event: Event) {
        if let Some(cluster) = &self.cluster {
            cluster.announce(&event).await;
        }
    }

    /// The feed gateways follow: logouts, user revocations and user changes (for caches of
    /// Validate answers and open sockets), and the pushes that ride it.
    pub fn revocations(&self) -> &RevocationFeed {
        &self.revocations
    }

    /// Stores a new session for `user`; the returned credentials are the only copy of the skey.
    pub async fn create(
        &self,
        user: UserInfo,
        app_id: &str,
    ) -> Result<(Credentials, SessionRecord), SessionError> {
        let credentials = Credentials::generate()
            .map_err(|e| SessionError::Internal(format!("OS random source: {e}")))?;
        let now = now_millis();
        let max_expires_at = now.saturating_add(millis(self.policy.max_age));
        let record = SessionRecord {
            id: credentials.id.clone(),
            skey_hash: credentials.skey_hash(),
            user,
            created_at: now,
            last_seen_at: now,
            expires_at: now
                .saturating_add(millis(self.policy.idle_ttl))
                .min(max_expires_at),
            max_expires_at,
            phone: None,
            app_id: Some(app_id.to_owned()),
        };
        self.store.insert(&record).await?;
        Ok((credentials, record))
    }

    /// Resolves id + skey to a live session, renewing its idle expiry when due.
    pub async fn validate(&self, id: &str, skey: &str) -> Result<SessionRecord, SessionError> {
        let mut record = self.authenticate(id, skey).await?;
        let now = now_millis();
        if now.saturating_sub(record.last_seen_at) >= millis(self.policy.renew_after) {
            record.last_seen_at = now;
            record.expires_at = now
                .saturating_add(millis(self.policy.idle_ttl))
                .min(record.max_expires_at);
            if !self.store.renew(&record).await? {
                // Revoked between our read and our write.
                return Err(SessionError::Unauthenticated);
            }
        }
        Ok(record)
    }

    /// Records a verified phone number on every session of the user; how many. Caches of
    /// those sessions (every gateway's) are told to forget them.
    pub async fn set_phone(&self, open_id: &str, phone: &PhoneNumber) -> Result<u64, SessionError> {
        let updated = self.store.set_phone(open_id, phone).await?;
        self.revocations.user_changed(open_id);
        self.announce(Event::UserChanged(open_id.to_owned())).await;
        Ok(updated)
    }

    /// Revokes the session at once.
    pub async fn logout(&self, id: &str, skey: &str) -> Result<(), SessionError> {
        let record = self.authenticate(id, skey).await?;
        self.store.remove(&record.id).await?;
        self.revocations
            .publish(Revoked::Session(record.id.clone()));
        self.announce(Event::Revoked(Revoked::Session(record.id)))
            .await;
        Ok(())
    }

    /// Revokes every session of a user; how many there were.
    pub async fn revoke_user(&self, open_id: &str) -> Result<u64, SessionError> {
        if open_id.is_empty() || open_id.len() > 128 {
            return Err(SessionError::InvalidArgument(
                "open_id must be 1 to 128 characters".into(),
            ));
        }
        let revoked = self.store.remove_by_open_id(open_id).await?;
        // Announced even when the store had none: a cache may still hold one that expired
        // in the store a moment ago.
        self.revocations.publish(Revoked::User(open_id.to_owned()));
        self.announce(Event::Revoked(Revoked::User(open_id.to_owned())))
            .await;
        tracing::info!(user = %credentials::short_hash(open_id), revoked, "user's sessions revoked");
        Ok(revoked)
    }

    /// Revokes every session of a user (openId) if each is of an app `may_act_for` allows;
    /// otherwise refuses and revokes nothing. `everything`: the caller may act for every app
    /// served, so nothing is read first.
    pub async fn revoke_user_within(
        &self,
        open_id: &str,
        (everything, may_act_for): (bool, impl Fn(Option<&str>) -> bool),
    ) -> Result<u64, SessionError> {
        if !everything && !open_id.is_empty() && open_id.len() <= 128 {
            let sessions = self.store.sessions_of_user(open_id).await?;
            if let Some(other) = sessions.iter().find(|r| !may_act_for(r.app_id.as_deref())) {
                return Err(SessionError::PermissionDenied(format!(
                    "this user's sessions are of app {:?}, which this API key may not act for",
                    other.app_id.as_deref().unwrap_or("(the default app)")
                )));
            }
        }
        self.revoke_user(open_id).await
    }

    /// Revokes every session of a person (unionId) in the apps `may_act_for` allows: the
    /// openIds found are revoked as users (each gateway's cache and sockets of them end).
    /// How many sessions there were.
    pub async fn revoke_person(
        &self,
        union_id: &str,
        may_act_for: impl Fn(Option<&str>) -> bool,
    ) -> Result<u64, SessionError> {
        if union_id.is_empty() || union_id.len() > 128 {
            return Err(SessionError::InvalidArgument(
                "union_id must be 1 to 128 characters".into(),
            ));
        }
        let mut users: Vec<String> = self
            .store
            .sessions_of_union(union_id)
            .await?
            .into_iter()
            .filter(|r| may_act_for(r.app_id.as_deref()))
            .map(|r| r.user.open_id().to_owned())
            .collect();
        users.sort();
        users.dedup();
        let mut revoked = 0;
        for open_id in users {
            revoked += self.revoke_user(&open_id).await?;
        }
        Ok(revoked)
    }

    /// Which of `ids` no longer name a live session (one of an app no longer `served` has
    /// ended too). Asked by id alone, for callers that hold something open per session and
    /// may have missed revocations.
    pub async fn ended(
        &self,
        ids: Vec<String>,
        served: impl Fn(Option<&str>) -> bool,
    ) -> Result<Vec<String>, SessionError> {
        if ids.len() > MAX_CHECKED_SESSIONS {
            return Err(SessionError::InvalidArgument(format!(
                "at most {MAX_CHECKED_SESSIONS} session ids per call"
            )));
        }
        let now = now_millis();
        let (store, served) = (&self.store, &served);
        let answers: Vec<Option<String>> = futures::stream::iter(ids)
            .map(|id| async move {
                if !credentials::well_formed_id(&id) {
                    return Ok(Some(id));
                }
                let live = store
                    .get(&id)
                    .await?
                    .is_some_and(|r| !r.is_expired(now) && served(r.app_id.as_deref()));
                Ok::<_, SessionError>((!live).then_some(id))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        Ok(answers.into_iter().flatten().collect())
    }

    async fn authenticate(&self, id: &str, skey: &str) -> Result<SessionRecord, SessionError> {
        if !credentials::well_formed(id, skey) {
            return Err(SessionError::Unauthenticated);
        }
        let record = self
            .store
            .get(id)
            .await?
            .ok_or(SessionError::Unauthenticated)?;
        if !credentials::skey_matches(skey, &record.skey_hash) {
            return Err(SessionError::Unauthenticated);
        }
        if record.is_expired(now_millis()) {
            // The sweeper would get to it; removing it now keeps the store honest sooner.
            if let Err(e) = self.store.remove(&record.id).await {
                tracing::debug!(error = %e, "could not remove an expired session");
            }
            return Err(SessionError::Unauthenticated);
        }
        Ok(record)
    }
}
