//! Delivers kept events to the team's upstream, at least once. Every replica runs one outbox;
//! a replica claims a due event with a lease (compare-and-swap in the store), so one replica
//! delivers it, and a replica that dies mid-delivery only delays it until its lease ends.
//! The replica that kept an event is woken at once; the others look every few seconds (a quiet
//! store stays quiet). A failed attempt is tried again after 1 s, 2 s, 4 s … up to the
//! longest wait; an event still undelivered after its age limit becomes a dead letter.
//!
//! What the upstream receives: `POST` of the event as WeChat's JSON, with Cloud Run's
//! headers (`X-WX-SOURCE`, `X-WX-APPID`, `X-WX-OPENID` = FromUserName), `X-Weapp-Event-Id`
//! (a string: MsgIds exceed 2^53), `X-Weapp-Delivery-Attempt`, and, when identity keys are
//! configured, `X-Weapp-Assertion`: a JWT verifiable with the JWKS whose `body_sha256` is the
//! body's digest. Any 2xx is a delivery.
use std::{sync::Arc, time::Duration};

use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{MessagePushSettings, PushMetrics};
use crate::{
    identity::IdentitySigner,
    record::{UnixMillis, now_millis},
    store::{Event, EventState, EventStore},
};

/// Events one round claims (delivered side by side).
const BATCH: usize = 16;
/// How often a replica looks for events it was not woken for (another replica's, retries).
const LOOK_EVERY: Duration = Duration::from_secs(10);
/// How often the outbox gauges are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(30);
/// The first wait after a failed attempt; it doubles from there.
const FIRST_RETRY: Duration = Duration::from_secs(1);

pub const SOURCE: &str = "weapp";

pub struct Outbox {
    store: Arc<dyn EventStore>,
    settings: MessagePushSettings,
    signer: Option<Arc<IdentitySigner>>,
    http: reqwest::Client,
    metrics: Arc<PushMetrics>,
    wake: Arc<Notify>,
    /// This replica, as the store's leases name it.
    owner: String,
}

/// How one attempt went.
enum Attempt {
    Delivered,
    Failed(String),
}

impl Outbox {
    pub fn new(
        store: Arc<dyn EventStore>,
        settings: MessagePushSettings,
        (signer, metrics): (Option<Arc<IdentitySigner>>, Arc<PushMetrics>),
        (wake, owner): (Arc<Notify>, String),
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(settings.delivery_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("the delivery client: {e}"))?;
        Ok(Self {
            store,
            settings,
            signer,
            http,
            metrics,
            wake,
            owner,
        })
    }

    /// Delivers until `shutdown`; without an upstream only keeps the gauges.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut stats_due = tokio::time::Instant::now();
        loop {
            let mut wait = LOOK_EVERY;
            if let Some(upstream) = &self.settings.upstream {
                match self.round(upstream).await {
                    // A full batch: more may be due.
                    Ok(soonest) if soonest == Some(Duration::ZERO) => wait = Duration::ZERO,
                    Ok(soonest) => wait = soonest.map_or(wait, |s| s.min(wait)),
                    Err(e) => tracing::warn!(error = %e, "the outbox cannot read the store"),
                }
            }
            if tokio::time::Instant::now() >= stats_due {
                stats_due = tokio::time::Instant::now() + STATS_EVERY;
                match self.store.outbox_stats().await {
                    Ok(stats) => self.metrics.outbox(&stats, now_millis()),
                    Err(e) => tracing::debug!(error = %e, "outbox gauges not refreshed"),
                }
            }
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims what is due and delivers it; how soon this replica's next retry is due
    /// (`Some(0)`: the batch was full).
    async fn round(&self, upstream: &Url) -> Result<Option<Duration>, crate::store::StoreError> {
        let now = now_millis();
        let lease = self.settings.delivery_timeout + Duration::from_secs(30);
        let claimed = self
            .store
            .claim_events(
                &self.owner,
                now,
                now.saturating_add(lease.as_millis() as i64),
                BATCH,
            )
            .await?;
        let full = claimed.len() == BATCH;
        let settled = futures::future::join_all(
            claimed
                .into_iter()
                .map(|event| self.deliver_one(upstream, event)),
        )
        .await;
        if full {
            return Ok(Some(Duration::ZERO));
        }
        let now = now_millis();
        Ok(settled
            .into_iter()
            .flatten()
            .map(|at| Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0)))
            .min())
    }

    /// One attempt and its settlement; when the event is due again, if it is.
    async fn deliver_one(&self, upstream: &Url, mut event: Event) -> Option<UnixMillis> {
        let attempt = self.attempt(upstream, &event).await;
        let now = now_millis();
        event.attempts = event.attempts.saturating_add(1);
        event.lease_until = 0;
        let retry_at = match attempt {
            Attempt::Delivered => {
                event.state = EventState::Delivered;
                event.settled_at = Some(now);
                event.last_error = None;
                let lag = Duration::from_millis(
                    u64::try_from(now.saturating_sub(event.received_at)).unwrap_or(0),
                );
                self.metrics.delivery("delivered", Some(lag));
                None
            }
            Attempt::Failed(why) => {
                let age = now.saturating_sub(event.received_at);
                event.last_error = Some(why.clone());
                if age >= self.settings.dead_after.as_millis() as i64 {
                    event.state = EventState::Dead;
                    event.settled_at = Some(now);
                    self.metrics.delivery("dead", None);
                    tracing::warn!(app = %event.app_id, event = %event.event_id, attempts = event.attempts, error = %why, "an event's delivery gave up: it is a dead letter (session-svc admin dead-letters)");
                    None
                } else {
                    let wait = backoff(event.attempts, self.settings.retry_max);
                    event.next_at = now.saturating_add(wait.as_millis() as i64);
                    self.metrics.delivery("failed", None);
                    tracing::info!(app = %event.app_id, event = %event.event_id, attempts = event.attempts, error = %why, retry_in = ?wait, "an event's delivery failed: tried again later");
                    Some(event.next_at)
                }
            }
        };
        match self.store.settle_event(&event, &self.owner).await {
            Ok(true) => retry_at,
            // Its lease ran out and another replica has it: that one settles it.
            Ok(false) => None,
            Err(e) => {
                // Delivered but not recorded: it is delivered again when its lease ends (at
                // least once).
                tracing::warn!(error = %e, event = %event.event_id, "cannot record a delivery");
                None
            }
        }
    }

    async fn attempt(&self, upstream: &Url, event: &Event) -> Attempt {
        let digest = hex::encode(Sha256::digest(event.body.as_bytes()));
        let mut request = self
            .http
            .post(upstream.clone())
            .header("content-type", "application/json")
            .header("x-wx-source", SOURCE)
            .header("x-wx-appid", &event.app_id)
            .header("x-weapp-app-id", &event.app_id)
            .header("x-weapp-event-id", &event.event_id)
            .header("x-weapp-delivery-attempt", event.attempts.saturating_add(1))
            .body(event.body.clone());
        if !event.open_id.is_empty() {
            request = request.header("x-wx-openid", &event.open_id);
        }
        if let Some(signer) = &self.signer {
            let ids = (&*event.app_id, &*event.open_id, &*event.event_id);
            if let Some(token) = signer.sign_event(ids, &digest, now_millis()) {
                request = request.header("x-weapp-assertion", token);
            }
        }
        match request.send().await {
            Ok(answer) if answer.status().is_success() => Attempt::Delivered,
            Ok(answer) => Attempt::Failed(format!("the upstream answered {}", answer.status())),
            // Without the URL: it is the operator's, and may say more than a log should.
            Err(e) => Attempt::Failed(format!("the upstream: {}", e.without_url())),
        }
    }
}

/// The wait after `attempts` failed attempts: 1 s, 2 s, 4 s … never more than `max`.
fn backoff(attempts: u32, max: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    FIRST_RETRY.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_its_limit() {
        let max = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=11).map(|n| backoff(n, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
