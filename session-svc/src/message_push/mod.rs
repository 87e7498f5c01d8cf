//! WeChat's message push: the events WeChat posts to the URL configured in an app's console
//! (customer-service messages, `user_enter_tempsession`, subscribe-message events,
//! `wxa_media_check` results, …), relayed by a gateway that holds no secret.
//!
//! * `keys.rs`: each app's Token and EncodingAESKey, from files.
//! * `intake.rs`: one request judged (weapp-wire's `push_request` checks the signatures,
//!   the freshness and the ciphertext), replays refused, the event kept (deduplicated) before
//!   WeChat hears `success`.
//! * `outbox.rs`: each kept event delivered at least once to the team's upstream, by one
//!   replica, with backoff, until it is delivered or dead.
//! * `metrics.rs`: what an operator watches (answer time against WeChat's 5 s, the outbox).
pub mod intake;
pub mod keys;
pub mod metrics;
pub mod outbox;

use std::time::Duration;

use url::Url;
use weapp_common::config::duration;

pub use intake::Intake;
pub use metrics::PushMetrics;
pub use outbox::Outbox;

/// How events are judged and delivered (every app's alike).
#[derive(clap::Args, Clone, Debug)]
pub struct MessagePushSettings {
    /// Where verified events are delivered (POST, JSON, Cloud Run's headers and a signed
    /// assertion). Without it, events are kept and wait in the outbox until one is set.
    #[arg(id = "wechat_push_upstream", value_name = "WECHAT_PUSH_UPSTREAM", long = "wechat-push-upstream", env = "WEAPP_WECHAT_PUSH_UPSTREAM", value_parser = upstream_url)]
    pub upstream: Option<Url>,

    /// How far a push's timestamp may be from now, either way.
    #[arg(id = "wechat_push_window", value_name = "WECHAT_PUSH_WINDOW", long = "wechat-push-window", env = "WEAPP_WECHAT_PUSH_WINDOW", default_value = "300s", value_parser = duration)]
    pub window: Duration,

    /// How long keeping an event may take before WeChat is answered 503 (it retries; it
    /// waits 5 s for an answer).
    #[arg(id = "wechat_push_store_timeout", value_name = "WECHAT_PUSH_STORE_TIMEOUT", long = "wechat-push-store-timeout", env = "WEAPP_WECHAT_PUSH_STORE_TIMEOUT", default_value = "3s", value_parser = duration)]
    pub store_timeout: Duration,

    /// One delivery attempt's time limit.
    #[arg(id = "wechat_push_delivery_timeout", value_name = "WECHAT_PUSH_DELIVERY_TIMEOUT", long = "wechat-push-delivery-timeout", env = "WEAPP_WECHAT_PUSH_DELIVERY_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub delivery_timeout: Duration,

    /// Longest wait between two attempts (it doubles from 1 s up to this).
    #[arg(id = "wechat_push_retry_max", value_name = "WECHAT_PUSH_RETRY_MAX", long = "wechat-push-retry-max", env = "WEAPP_WECHAT_PUSH_RETRY_MAX", default_value = "5m", value_parser = duration)]
    pub retry_max: Duration,

    /// An event still not delivered this long after it arrived becomes a dead letter
    /// (`session-svc admin dead-letters`, `requeue`).
    #[arg(id = "wechat_push_dead_after", value_name = "WECHAT_PUSH_DEAD_AFTER", long = "wechat-push-dead-after", env = "WEAPP_WECHAT_PUSH_DEAD_AFTER", default_value = "24h", value_parser = duration)]
    pub dead_after: Duration,

    /// How long a delivered event is remembered (its id still deduplicates WeChat's retries).
    #[arg(id = "wechat_push_keep_delivered", value_name = "WECHAT_PUSH_KEEP_DELIVERED", long = "wechat-push-keep-delivered", env = "WEAPP_WECHAT_PUSH_KEEP_DELIVERED", default_value = "24h", value_parser = duration)]
    pub keep_delivered: Duration,
}

/// An http(s) URL (credentials in it are refused: they would show in logs and errors).
fn upstream_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials".into());
    }
    Ok(url)
}
