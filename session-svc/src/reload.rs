//! The configuration that changes without a restart: the apps served and the API keys.
//! `SIGHUP` (systemd's `ExecReload`) reads both files again, and `WEAPP_CONFIG_WATCH` polls
//! them (Kubernetes updates a mounted Secret in place, and sends no signal). All or nothing:
//! when either file (or a file it names) is wrong, the old configuration stays and the log
//! says which entry is at fault. What a reload removes takes effect on every gateway at once:
//! a removed app is announced on the revocation stream (its cached sessions forgotten, its
//! sockets closed), its access_token refresher stops, its sessions stay in the store so that
//! adding it back restores them.
use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    access_token::AccessTokens, live::LiveConfig, metrics::SessionMetrics,
    revocations::RevocationFeed,
};

/// Applies reloads and says what they changed to those who hold per-app state.
pub struct Reloader {
    pub live: Arc<LiveConfig>,
    pub feed: Arc<RevocationFeed>,
    pub tokens: Arc<AccessTokens>,
    pub metrics: Arc<SessionMetrics>,
}

/// What one reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied { added: usize, removed: usize },
    Unchanged,
}

impl Reloader {
    fn count(&self, outcome: &Result<Outcome, String>) {
        let label = match outcome {
            Ok(Outcome::Applied { .. }) => "applied",
            Ok(Outcome::Unchanged) => "unchanged",
            Err(_) => "error",
        };
        self.metrics.config_reload(label);
    }

    /// `signalled`: an operator asked, so an unchanged file is logged as read.
    fn apply(&self, signalled: bool) -> Result<Outcome, String> {
        let (apps, keys) = self.live.read()?;
        if self.live.unchanged(&apps, keys.as_ref()) {
            if signalled {
                tracing::info!("configuration read again: unchanged");
            }
            return Ok(Outcome::Unchanged);
        }
        let before = self.live.apps();
        let removed = before.removed_in(&apps);
        let added = apps.ids().filter(|id| before.get(id).is_none()).count();
        let count = apps.len();
        let default = apps.default_app().id.clone();
        self.live.put(apps, keys);
        for app in &removed {
            self.tokens.forget(app);
            self.feed.app_removed(app);
            tracing::warn!(app = %app, "app removed: its logins are refused and its sessions with them (kept in the store until they expire)");
        }
        self.metrics.apps_configured(count);
        tracing::info!(
            apps = count,
            added,
            removed = removed.len(),
            %default,
            "configuration reloaded"
        );
        Ok(Outcome::Applied {
            added,
            removed: removed.len(),
        })
    }

    /// Reloads on `SIGHUP`, and every `watch` when the files changed, until `shutdown`.
    pub async fn run(self, watch: Option<Duration>, shutdown: CancellationToken) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP cannot be handled: reload by restart");
                    None
                }
            };
        let mut tick = watch.map(|every| {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        // A watch logs a bad file once, not every tick, until it changes.
        let mut last_error: Option<String> = None;
        loop {
            let signalled = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup(&mut hangups) => true,
                _ = async { match &mut tick { Some(t) => { t.tick().await; } None => std::future::pending().await } } => false,
            };
            let outcome = self.apply(signalled);
            // A watch counts and logs what changed, not every look at the same files.
            let repeated = !signalled
                && match &outcome {
                    Err(e) => last_error.as_ref() == Some(e),
                    Ok(Outcome::Unchanged) => true,
                    Ok(Outcome::Applied { .. }) => false,
                };
            if let Err(e) = &outcome
                && !repeated
            {
                tracing::error!(error = %e, "configuration not reloaded: the previous one stays in force");
            }
            if !repeated {
                self.count(&outcome);
            }
            last_error = outcome.err();
        }
    }
}

async fn hangup(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
