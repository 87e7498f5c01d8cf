//! What an operator watches of WeChat's message push: requests by outcome and their answer
//! time (WeChat waits 5 s), deliveries by outcome and their lag, the outbox's backlog, its
//! oldest pending event and the dead letters (the shipped alert rules watch the last three).
use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use metrics::{Counter, Gauge, Histogram};
use weapp_common::metrics::Registry;

use crate::store::OutboxStats;

pub struct PushMetrics {
    registry: Registry,
    /// By (app, outcome).
    requests: DashMap<(Arc<str>, &'static str), Counter>,
    answer: Histogram,
    /// By outcome: delivered, failed (tried again later), dead.
    deliveries: DashMap<&'static str, Counter>,
    lag: Histogram,
    pending: Gauge,
    oldest: Gauge,
    dead: Gauge,
}

impl PushMetrics {
    pub fn new(registry: &Registry) -> Arc<Self> {
        for (name, help) in [
            (
                "weapp_wechat_push_requests_total",
                "Requests to the message-push URL, by app and outcome (accepted, duplicate, url_check, bad_signature, stale, replay, other_app, bad_ciphertext, bad_body, bad_query, no_key, bad_method, store_unavailable, not_configured).",
            ),
            (
                "weapp_wechat_push_answer_seconds",
                "Time to answer WeChat's push (WeChat retries after 5 s).",
            ),
            (
                "weapp_wechat_push_deliveries_total",
                "Delivery attempts to the upstream, by outcome (delivered, failed: tried again later, dead).",
            ),
            (
                "weapp_wechat_push_delivery_lag_seconds",
                "From WeChat's push to its delivery to the upstream.",
            ),
            (
                "weapp_wechat_push_outbox_pending",
                "Events kept and not delivered yet (every replica sees the whole outbox).",
            ),
            (
                "weapp_wechat_push_outbox_oldest_seconds",
                "Age of the oldest event not delivered yet (0: none).",
            ),
            (
                "weapp_wechat_push_dead_letters",
                "Events whose delivery gave up (session-svc admin dead-letters, requeue).",
            ),
        ] {
            registry.describe(name, help);
        }
        Arc::new(Self {
            requests: DashMap::new(),
            answer: registry.histogram("weapp_wechat_push_answer_seconds", &[]),
            deliveries: DashMap::new(),
            lag: registry.histogram("weapp_wechat_push_delivery_lag_seconds", &[]),
            pending: registry.gauge("weapp_wechat_push_outbox_pending", &[]),
            oldest: registry.gauge("weapp_wechat_push_outbox_oldest_seconds", &[]),
            dead: registry.gauge("weapp_wechat_push_dead_letters", &[]),
            registry: registry.clone(),
        })
    }

    /// One request answered. `app` is a served app, or `unknown`.
    pub fn request(&self, app: &Arc<str>, outcome: &'static str, elapsed: Duration) {
        self.requests
            .entry((app.clone(), outcome))
            .or_insert_with(|| {
                self.registry.counter(
                    "weapp_wechat_push_requests_total",
                    &[("app", app), ("outcome", outcome)],
                )
            })
            .increment(1);
        self.answer.record(elapsed.as_secs_f64());
    }

    /// One delivery attempt; `lag` when it delivered.
    pub fn delivery(&self, outcome: &'static str, lag: Option<Duration>) {
        self.deliveries
            .entry(outcome)
            .or_insert_with(|| {
                self.registry.counter(
                    "weapp_wechat_push_deliveries_total",
                    &[("outcome", outcome)],
                )
            })
            .increment(1);
        if let Some(lag) = lag {
            self.lag.record(lag.as_secs_f64());
        }
    }

    pub fn outbox(&self, stats: &OutboxStats, now: crate::record::UnixMillis) {
        self.pending.set(stats.pending as f64);
        let oldest = stats
            .oldest_pending
            .map_or(0.0, |at| (now.saturating_sub(at)).max(0) as f64 / 1000.0);
        self.oldest.set(oldest);
        self.dead.set(stats.dead as f64);
    }
}
