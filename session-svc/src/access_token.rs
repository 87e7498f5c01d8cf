//! WeChat's access_token, fetched and refreshed by session-svc alone: the app's "central
//! control server" (中控服务器). Every other backend asks it over gRPC instead of calling
//! WeChat, which is what keeps processes from refreshing and invalidating each other's tokens.
//!
//! * Fetched with `stable_token` in normal mode, which answers the current token and its
//!   *remaining* lifetime and rotates it only in its last five minutes.
//! * Refreshed by a background task `refresh_ahead` before it expires (inside that window), so
//!   a caller never waits on WeChat while a valid token exists. The task starts with the first
//!   request, so a deployment that never asks for a token never calls WeChat for one.
//! * One refresher: a lock in the process, and a lease in the store across replicas. Whoever
//!   holds both first re-reads the store, and calls WeChat only if what it finds does not
//!   already answer the need (double-checked, so N waiting callers cause one call).
//! * "This token was refused" refreshes only if that token is still the current one
//!   (compare-and-refresh), and then in normal mode: a hundred backends reporting one stale
//!   token cause one call.
//! * A forced refresh (it invalidates the current token at WeChat) is an operator's act only,
//!   kept within WeChat's 20 a day, 30 s apart, counted in the store for every replica.
//! * The token is stored sealed (`vault.rs`), so it survives restarts and replicas share it.
//! * WeChat unreachable: the current token is served until its real expiry (in its last
//!   seconds each call first tries WeChat once more); then UNAVAILABLE.
//! * One of everything above per app ([`AccessTokens`] holds an [`AppToken`] per AppId):
//!   token, lease, refresher and forced-refresh budget are each app's own (WeChat counts
//!   them per app), and a removed app's refresher stops.
use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use weapp_common::config::duration;

use dashmap::DashMap;

use crate::{
    credentials,
    error::SessionError,
    live::LiveConfig,
    metrics::SessionMetrics,
    record::{UnixMillis, now_millis},
    store::{SecretStore, StoredToken},
    vault::Vault,
    wechat::{WeChatClient, WeChatError, errcode},
};

/// WeChat's limits on forced refreshes.
const FORCE_PER_DAY: usize = 20;
const FORCE_MIN_INTERVAL: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// WeChat hands out the next token in the current one's last five minutes.
const ROTATION_WINDOW: Duration = Duration::from_secs(300);
/// Shortest pause between two scheduled refreshes, whatever WeChat answers.
const MIN_RETRY: Duration = Duration::from_secs(15);
/// Longest pause between retries while WeChat fails.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often a replica waiting on another's refresh looks at the store.
const LEASE_POLL: Duration = Duration::from_millis(100);
/// A token this close to its end is not handed out (a caller needs time to use it).
const MIN_REMAINING: Duration = Duration::from_secs(10);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[derive(clap::Args, Clone, Copy, Debug)]
pub struct AccessTokenSettings {
    /// The access_token is refreshed this long before it expires; at most 5m (WeChat hands
    /// out the next token only in the current one's last five minutes).
    #[arg(id = "access_token_refresh_ahead", value_name = "ACCESS_TOKEN_REFRESH_AHEAD", long = "access-token-refresh-ahead", env = "WEAPP_ACCESS_TOKEN_REFRESH_AHEAD", default_value = "4m", value_parser = duration)]
    pub refresh_ahead: Duration,
}

impl AccessTokenSettings {
    /// The defaults written on the arguments above, as shipped (environment ignored).
    pub fn shipped() -> Result<Self, clap::Error> {
        weapp_common::config::defaults()
    }
}

impl AccessTokenSettings {
    pub fn check(&self) -> Result<(), String> {
        if self.refresh_ahead > ROTATION_WINDOW || self.refresh_ahead < MIN_REMAINING * 2 {
            return Err("WEAPP_ACCESS_TOKEN_REFRESH_AHEAD must be between 20s and 5m".into());
        }
        Ok(())
    }
}

/// A token as handed out.
#[derive(Clone)]
pub struct CurrentToken {
    pub token: SecretString,
    pub expires_at: UnixMillis,
    pub fetched_at: UnixMillis,
}

impl CurrentToken {
    fn usable(&self, now: UnixMillis) -> bool {
        self.expires_at - now > millis(MIN_REMAINING)
    }

    fn is(&self, token: &str) -> bool {
        bool::from(
            self.token
                .expose_secret()
                .as_bytes()
                .ct_eq(token.as_bytes()),
        )
    }
}

/// Why a refresh is wanted; decides whether a token found meanwhile already answers it.
enum Need<'a> {
    /// No usable token in this process.
    Missing,
    /// The scheduled refresh.
    Due,
    /// A caller reports that WeChat refused this token.
    Replace(&'a str),
    /// An operator asks WeChat for a new token, invalidating the current one.
    Force,
}

/// The access_tokens of every app served, each created on first use.
pub struct AccessTokens {
    per_app: DashMap<Arc<str>, Arc<AppToken>>,
    live: Arc<LiveConfig>,
    wechat: Arc<WeChatClient>,
    store: Arc<dyn SecretStore>,
    vault: Arc<Vault>,
    settings: AccessTokenSettings,
    /// This replica's name in the refresh leases.
    holder: String,
    shutdown: CancellationToken,
    metrics: Arc<SessionMetrics>,
}

impl AccessTokens {
    pub fn new(
        (wechat, live): (Arc<WeChatClient>, Arc<LiveConfig>),
        store: Arc<dyn SecretStore>,
        vault: Arc<Vault>,
        settings: AccessTokenSettings,
        (metrics, shutdown): (Arc<SessionMetrics>, CancellationToken),
    ) -> Result<Self, SessionError> {
        let holder = credentials::Credentials::generate()
            .map_err(|e| SessionError::Internal(format!("OS random source: {e}")))?
            .id;
        Ok(Self {
            per_app: DashMap::new(),
            live,
            wechat,
            store,
            vault,
            settings,
            holder,
            shutdown,
            metrics,
        })
    }

    /// The token of `app_id` (empty: the default app); an app not served is the caller's
    /// mistake.
    pub fn of(&self, app_id: &str) -> Result<Arc<AppToken>, SessionError> {
        let app = self.live.apps().resolve(app_id)?;
        if let Some(token) = self.per_app.get(&app.id) {
            return Ok(token.clone());
        }
        Ok(self
            .per_app
            .entry(app.id.clone())
            .or_insert_with(|| {
                Arc::new(AppToken::new(
                    app.id.clone(),
                    (self.wechat.clone(), self.live.clone()),
                    (self.store.clone(), self.vault.clone()),
                    (self.settings, self.holder.clone()),
                    (self.metrics.clone(), self.shutdown.child_token()),
                ))
            })
            .clone())
    }

    /// `app_id` is no longer served: its refresher stops (its stored token stays, for when
    /// it is added back).
    pub fn forget(&self, app_id: &str) {
        if let Some((_, token)) = self.per_app.remove(app_id) {
            token.shutdown.cancel();
            // No longer handed out: its gauges say so (an expiry of 0 raises no alert).
            self.metrics.token(&token.app_id, 0.0, 0.0);
        }
    }
}

/// One app's access_token.
pub struct AppToken {
    app_id: Arc<str>,
    live: Arc<LiveConfig>,
    wechat: Arc<WeChatClient>,
    store: Arc<dyn SecretStore>,
    vault: Arc<Vault>,
    settings: AccessTokenSettings,
    /// This replica's name in the refresh lease.
    holder: String,
    lease_name: String,
    lease_ttl: Duration,
    current: Mutex<Option<CurrentToken>>,
    /// When WeChat last answered a refresh with the very token reported as refused: reports
    /// of it within [`MIN_RETRY`] do not ask WeChat again (it would answer the same).
    confirmed_at: Mutex<Option<std::time::Instant>>,
    /// The in-process half of single flight (the store's lease is the other).
    refreshing: tokio::sync::Mutex<()>,
    started: AtomicBool,
    shutdown: CancellationToken,
    metrics: Arc<SessionMetrics>,
}

impl AppToken {
    fn new(
        app_id: Arc<str>,
        (wechat, live): (Arc<WeChatClient>, Arc<LiveConfig>),
        (store, vault): (Arc<dyn SecretStore>, Arc<Vault>),
        (settings, holder): (AccessTokenSettings, String),
        (metrics, shutdown): (Arc<SessionMetrics>, CancellationToken),
    ) -> Self {
        // Long enough for a WeChat call and the store writes around it: a lease that lapses
        // mid-refresh would let a second replica call WeChat too.
        let lease_ttl = (wechat.timeout() * 3).max(Duration::from_secs(30));
        Self {
            lease_name: format!("access_token:{app_id}"),
            app_id,
            live,
            wechat,
            store,
            vault,
            settings,
            holder,
            lease_ttl,
            current: Mutex::new(None),
            confirmed_at: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            started: AtomicBool::new(false),
            shutdown,
            metrics,
        }
    }

    pub fn app_id(&self) -> &Arc<str> {
        &self.app_id
    }

    fn context(&self) -> String {
        format!("access_token:{}", self.app_id)
    }

    fn cached(&self) -> Option<CurrentToken> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn adopt(&self, token: CurrentToken) -> CurrentToken {
        self.metrics.token(
            &self.app_id,
            token.expires_at as f64 / 1000.0,
            token.fetched_at as f64 / 1000.0,
        );
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.clone());
        token
    }

    /// The current token. Waits on WeChat only when there is no usable one: the first call,
    /// or a token in its last seconds because WeChat could not be reached for its refresh.
    /// Then a token that WeChat still accepts is handed out until its real end.
    pub async fn get(self: &Arc<Self>) -> Result<CurrentToken, SessionError> {
        self.start();
        let cached = self.cached();
        if let Some(current) = &cached {
            if current.usable(now_millis()) {
                return Ok(current.clone());
            }
        }
        match self.refresh(Need::Missing).await {
            Ok(fresh) => Ok(fresh),
            Err(e) => match cached {
                Some(current) if current.expires_at > now_millis() => Ok(current),
                _ => Err(e),
            },
        }
    }

    /// A caller says WeChat refused `token`: refreshes only if it is still the current one.
    pub async fn report_invalid(
        self: &Arc<Self>,
        token: &str,
    ) -> Result<CurrentToken, SessionError> {
        if token.is_empty() {
            return Err(SessionError::InvalidArgument(
                "access_token is empty".into(),
            ));
        }
        self.start();
        match self.cached() {
            Some(current) if !current.is(token) && current.usable(now_millis()) => Ok(current),
            Some(current) if current.usable(now_millis()) && self.just_confirmed() => Ok(current),
            _ => self.refresh(Need::Replace(token)).await,
        }
    }

    /// WeChat answered the current token again to a report of it, a moment ago.
    fn just_confirmed(&self) -> bool {
        self.confirmed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < MIN_RETRY)
    }

    /// An operator's forced refresh: a new token at WeChat, the old one dead five minutes on.
    pub async fn force_refresh(
        self: &Arc<Self>,
        reason: &str,
    ) -> Result<CurrentToken, SessionError> {
        if reason.trim().is_empty() || reason.len() > 200 {
            return Err(SessionError::InvalidArgument(
                "a forced refresh needs a reason (1 to 200 characters), for the log".into(),
            ));
        }
        self.start();
        tracing::warn!(reason = %reason.trim(), "forced access_token refresh requested");
        self.refresh(Need::Force).await
    }

    /// Calls a WeChat API with the token; on 40001/42001 reports it and retries once with the
    /// next (a phone code or session_key call is not spent by a refused token).
    pub async fn call<T, F, Fut>(self: &Arc<Self>, call: F) -> Result<T, SessionError>
    where
        F: Fn(SecretString) -> Fut,
        Fut: Future<Output = Result<T, WeChatError>>,
    {
        let current = self.get().await?;
        match call(current.token.clone()).await {
            Err(WeChatError::Refused { errcode, .. })
                if errcode == errcode::INVALID_TOKEN || errcode == errcode::EXPIRED_TOKEN =>
            {
                tracing::info!(
                    errcode,
                    "WeChat refused the access_token; refreshing and retrying once"
                );
                let next = self.report_invalid(current.token.expose_secret()).await?;
                call(next.token).await.map_err(SessionError::WeChat)
            }
            other => other.map_err(SessionError::WeChat),
        }
    }

    /// Starts the background refresher once.
    fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut backoff: Option<Duration> = None;
            loop {
                let Some(tokens) = me.upgrade() else { return };
                let wait = backoff.unwrap_or_else(|| tokens.until_due());
                drop(tokens);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                let Some(tokens) = me.upgrade() else { return };
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    outcome = tokens.refresh(Need::Due) => outcome,
                };
                match outcome {
                    Ok(_) => backoff = None,
                    Err(e) => {
                        let next =
                            backoff.map_or(Duration::from_secs(1), |b| (b * 2).min(MAX_BACKOFF));
                        let serving = tokens.cached().is_some_and(|c| c.usable(now_millis()));
                        tracing::warn!(error = %e, retry_in = ?next, serving, "access_token refresh failed");
                        backoff = Some(next);
                    }
                }
            }
        });
    }

    /// How long until the scheduled refresh (never less than [`MIN_RETRY`]: WeChat may
    /// answer the same token again if asked just before its rotation window).
    fn until_due(&self) -> Duration {
        let Some(current) = self.cached() else {
            return MIN_RETRY;
        };
        let due = current.expires_at - millis(self.settings.refresh_ahead) - now_millis();
        Duration::from_millis(u64::try_from(due).unwrap_or_default()).max(MIN_RETRY)
    }

    fn answers(&self, need: &Need<'_>, token: &CurrentToken, now: UnixMillis) -> bool {
        match need {
            Need::Missing => token.usable(now),
            Need::Due => token.expires_at - now > millis(self.settings.refresh_ahead),
            Need::Replace(refused) => !token.is(refused) && token.usable(now),
            Need::Force => false,
        }
    }

    async fn refresh(&self, need: Need<'_>) -> Result<CurrentToken, SessionError> {
        let _in_process = self.refreshing.lock().await;
        if let Some(current) = self.cached() {
            if self.answers(&need, &current, now_millis()) {
                return Ok(current);
            }
        }
        let give_up_at = now_millis() + millis(self.lease_ttl + self.wechat.timeout());
        loop {
            let stored = self.load().await?;
            if let Some((token, _)) = &stored {
                if self.answers(&need, token, now_millis()) {
                    return Ok(self.adopt(token.clone()));
                }
            }
            let now = now_millis();
            if self
                .store
                .try_lease(
                    &self.lease_name,
                    &self.holder,
                    now,
                    now + millis(self.lease_ttl),
                )
                .await?
            {
                // Read again under the lease: the previous holder may have stored a token
                // between our read and our taking it over.
                let outcome = match self.load().await {
                    Ok(Some((token, _))) if self.answers(&need, &token, now_millis()) => {
                        Ok(self.adopt(token))
                    }
                    Ok(stored) => self.fetch(&need, stored).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = self
                    .store
                    .release_lease(&self.lease_name, &self.holder)
                    .await
                {
                    tracing::warn!(error = %e, "could not release the access_token lease (it lapses by itself)");
                }
                return outcome;
            }
            if now > give_up_at {
                return match self.cached() {
                    Some(current) if current.usable(now) && !matches!(need, Need::Force) => Ok(current),
                    _ => Err(SessionError::Unavailable(
                        "another session-svc replica holds the access_token refresh and has not finished".into(),
                    )),
                };
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// The stored token, opened. One that no configured key opens counts as none (a new one
    /// is fetched and sealed with the current key).
    async fn load(&self) -> Result<Option<(CurrentToken, StoredToken)>, SessionError> {
        let Some(stored) = self.store.load_token(&self.app_id).await? else {
            return Ok(None);
        };
        match self.vault.open(&stored.sealed, &self.context()) {
            Ok(token) => Ok(Some((
                CurrentToken {
                    token,
                    expires_at: stored.expires_at,
                    fetched_at: stored.fetched_at,
                },
                stored,
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "the stored access_token cannot be opened; fetching another");
                Ok(None)
            }
        }
    }

    /// Calls WeChat (holding the lease) and stores what it answers.
    async fn fetch(
        &self,
        need: &Need<'_>,
        stored: Option<(CurrentToken, StoredToken)>,
    ) -> Result<CurrentToken, SessionError> {
        let now = now_millis();
        let mut forced_at: Vec<UnixMillis> = stored
            .as_ref()
            .map(|(_, s)| s.forced_at.clone())
            .unwrap_or_default();
        forced_at.retain(|t| now - t < millis(DAY));
        let force = matches!(need, Need::Force);
        if force {
            check_force_limits(&forced_at, now)?;
        }
        let reason = match need {
            Need::Missing => "missing",
            Need::Due => "due",
            Need::Replace(_) => "reported",
            Need::Force => "forced",
        };
        let app = self.live.apps().get(&self.app_id).cloned().ok_or_else(|| {
            SessionError::InvalidArgument(format!("app {:?} is not served here", self.app_id))
        })?;
        let fresh = self.wechat.stable_token(&app, force).await;
        self.metrics.token_refresh(reason, fresh.is_ok());
        let fresh = fresh.inspect_err(|e| {
            tracing::warn!(error = %e, force, "WeChat's stable_token failed");
        })?;
        let fetched_at = now_millis();
        let token = CurrentToken {
            token: fresh.token,
            expires_at: fetched_at + millis(fresh.expires_in),
            fetched_at,
        };
        if force {
            forced_at.push(fetched_at);
        }
        let previous = stored.map(|(t, _)| t);
        let rotated = previous
            .as_ref()
            .is_none_or(|p| !p.is(token.token.expose_secret()));
        if let Need::Replace(refused) = need {
            if token.is(refused) {
                *self
                    .confirmed_at
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(std::time::Instant::now());
                tracing::warn!(
                    "WeChat still answers the access_token reported as refused; if calls keep \
                     failing with 40001, an operator can call ForceRefreshAccessToken"
                );
            }
        }
        let sealed = self
            .vault
            .seal(token.token.expose_secret().as_bytes(), &self.context())
            .map_err(|e| SessionError::Internal(e.to_string()))?;
        let record = StoredToken {
            sealed,
            expires_at: token.expires_at,
            fetched_at,
            forced_at,
        };
        if let Err(e) = self.store.save_token(&self.app_id, &record).await {
            // Served from memory all the same; other replicas will fetch it themselves.
            tracing::warn!(error = %e, "the new access_token could not be stored");
        }
        tracing::info!(
            app = %app.name,
            rotated,
            force,
            expires_in_s = (token.expires_at - fetched_at) / 1000,
            "access_token refreshed"
        );
        Ok(self.adopt(token))
    }
}

/// WeChat allows 20 forced refreshes a day, 30 s apart.
fn check_force_limits(forced_at: &[UnixMillis], now: UnixMillis) -> Result<(), SessionError> {
    if let Some(last) = forced_at.iter().max() {
        let since = now - last;
        if since < millis(FORCE_MIN_INTERVAL) {
            let wait = Duration::from_millis(
                u64::try_from(millis(FORCE_MIN_INTERVAL) - since).unwrap_or(1),
            );
            return Err(SessionError::Exhausted {
                message: format!(
                    "the access_token was force-refreshed {} s ago; WeChat allows one every 30 s",
                    since / 1000
                ),
                retry_after: wait,
            });
        }
    }
    if forced_at.len() >= FORCE_PER_DAY {
        let oldest = forced_at.iter().min().copied().unwrap_or(now);
        let wait = Duration::from_millis(u64::try_from(oldest + millis(DAY) - now).unwrap_or(1));
        return Err(SessionError::Exhausted {
            message: format!(
                "{FORCE_PER_DAY} forced access_token refreshes in the last 24 h: WeChat's daily limit"
            ),
            retry_after: wait,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_refreshes_keep_within_wechats_limits() {
        let now = 10 * millis(DAY);
        assert!(check_force_limits(&[], now).is_ok());
        let err = check_force_limits(&[now - 10_000], now).unwrap_err();
        assert!(
            matches!(err, SessionError::Exhausted { retry_after, .. } if retry_after == Duration::from_secs(20))
        );
        let day: Vec<_> = (0..20).map(|i| now - 3_600_000 - i * 60_000).collect();
        assert!(matches!(
            check_force_limits(&day, now),
            Err(SessionError::Exhausted { .. })
        ));
        assert!(check_force_limits(&day[..19], now).is_ok());
    }

    #[test]
    fn the_refresh_ahead_must_fall_in_wechats_rotation_window() {
        assert!(AccessTokenSettings::shipped().unwrap().check().is_ok());
        for bad in [Duration::from_secs(301), Duration::from_secs(5)] {
            assert!(AccessTokenSettings { refresh_ahead: bad }.check().is_err());
        }
    }
}
