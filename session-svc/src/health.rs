//! gRPC health that means something: SERVING only while the session store answers. Also
//! where the store's one-time set-up (MongoDB's indexes) is retried until it succeeds, with a
//! log line per attempt, so a session-svc started before its database waits visibly instead
//! of crash-looping.
use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};
use weapp_proto::session::v1::session_service_server::SERVICE_NAME;

use crate::store::SessionStore;

/// How long the start-up count of stored sessions may take before it is skipped.
const COUNT_WAIT: Duration = Duration::from_millis(500);

/// Longest wait between two attempts while the store is down.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Checks the store every `every` while it answers, with a growing back-off while it does not.
pub struct StoreWatch {
    pub store: Arc<dyn SessionStore>,
    pub reporter: HealthReporter,
    pub every: Duration,
    /// Bound on one check, so a hung store reads as down.
    pub check_timeout: Duration,
}

impl StoreWatch {
    /// Sets the overall status ("") and the session service's, which always agree.
    pub async fn set(reporter: &HealthReporter, status: ServingStatus) {
        for service in ["", SERVICE_NAME] {
            reporter.set_service_status(service, status).await;
        }
    }

    /// One round: set-up if still needed, else a ping; an error when the store did not answer.
    async fn check(&self, prepared: &mut bool) -> Result<(), String> {
        let attempt = async {
            if !*prepared {
                self.store.prepare().await?;
                *prepared = true;
                // How many sessions survived the restart: the first thing an operator wants
                // to know after one. Best effort and bounded: a large collection may take
                // longer to count than readiness should wait.
                match tokio::time::timeout(COUNT_WAIT, self.store.count()).await {
                    Ok(Ok(sessions)) => {
                        tracing::info!(store = %self.store.describe(), sessions, "session store ready");
                    }
                    _ => tracing::info!(store = %self.store.describe(), "session store ready"),
                }
                Ok(())
            } else {
                self.store.ping().await
            }
        };
        match tokio::time::timeout(self.check_timeout, attempt).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.check_timeout)),
        }
    }

    /// Runs one check right away (so the first health answer is true), then keeps watching.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut prepared = false;
        let mut healthy = None;
        let mut backoff = Duration::from_secs(1);
        loop {
            let outcome = self.check(&mut prepared).await;
            let now_healthy = outcome.is_ok();
            if healthy != Some(now_healthy) {
                let status = if now_healthy {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                Self::set(&self.reporter, status).await;
            }
            let wait = match outcome {
                Ok(()) => {
                    if healthy == Some(false) {
                        tracing::info!(store = %self.store.describe(), "session store reachable again");
                    }
                    backoff = Duration::from_secs(1);
                    self.every
                }
                Err(e) => {
                    tracing::warn!(
                        store = %self.store.describe(),
                        error = %e,
                        retry_in = ?backoff,
                        "session store unreachable; sessions cannot be created or checked until it is back"
                    );
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            healthy = Some(now_healthy);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
