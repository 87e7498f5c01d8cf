//! One request to an app's message-push URL, as a gateway relayed it: judged before anything
//! in it is believed (`weapp_wire::push_request`: signature first, then freshness, then the
//! ciphertext and its appid), then — for an event — its `(timestamp, nonce)` checked against
//! replays, and the event kept in the store (its id deduplicates WeChat's retries) before
//! `success` is answered. A store that cannot keep it in time gets WeChat a 503: WeChat tries
//! again, and an event acknowledged is always an event kept.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use weapp_proto::session::v1::{WeChatPushRequest, WeChatPushResponse};
use weapp_wire::{
    push_request::{self, Secrets, Verdict},
    wechat_event,
};

use super::{MessagePushSettings, PushMetrics};
use crate::{
    apps::App,
    live::LiveConfig,
    record::{UnixMillis, now_millis},
    store::{Event, EventState, EventStore, NonceSeen, StoreError},
};

/// A nonce is remembered this much longer than the window lets its timestamp be accepted.
const NONCE_MARGIN: Duration = Duration::from_secs(60);

pub struct Intake {
    live: Arc<LiveConfig>,
    store: Arc<dyn EventStore>,
    settings: MessagePushSettings,
    metrics: Arc<PushMetrics>,
    /// Wakes this replica's outbox: a new event is delivered at once.
    wake: Arc<Notify>,
}

/// What WeChat is answered.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }

    fn into_response(self) -> WeChatPushResponse {
        WeChatPushResponse {
            status: u32::from(self.status),
            content_type: "text/plain; charset=utf-8".into(),
            body: self.body,
        }
    }
}

/// What became of an event.
enum Kept {
    New,
    Duplicate,
    Replay,
}

impl Intake {
    pub fn new(
        (live, store): (Arc<LiveConfig>, Arc<dyn EventStore>),
        settings: MessagePushSettings,
        metrics: Arc<PushMetrics>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            live,
            store,
            settings,
            metrics,
            wake,
        }
    }

    pub async fn handle(&self, request: &WeChatPushRequest) -> WeChatPushResponse {
        let started = Instant::now();
        let apps = self.live.apps();
        let app = apps
            .resolve(&request.app_id)
            .ok()
            .filter(|app| app.push.is_some());
        let Some(app) = app else {
            // Not a URL this deployment serves: the same answer whether the app is unknown or
            // has no Token, so it tells a prober nothing.
            self.metrics
                .request(&Arc::from("unknown"), "not_configured", started.elapsed());
            return Answer::text(404, "no message push is configured here").into_response();
        };
        let (outcome, answer) = self.judge(&app, request).await;
        self.metrics.request(&app.id, outcome, started.elapsed());
        if answer.status >= 400 {
            tracing::info!(app = %app.name, outcome, status = answer.status, "message push refused");
        }
        answer.into_response()
    }

    async fn judge(&self, app: &App, request: &WeChatPushRequest) -> (&'static str, Answer) {
        let Some(keys) = &app.push else {
            return ("not_configured", Answer::text(404, "no message push"));
        };
        let now = now_millis();
        let window = i64::try_from(self.settings.window.as_secs()).unwrap_or(i64::MAX);
        let secrets = Secrets {
            token: keys.token(),
            aes_key: keys.aes_key(),
            app_id: &app.id,
        };
        let verdict = push_request::verify(
            (&request.method, &request.query, &request.body),
            &secrets,
            (now.div_euclid(1000), window),
        );
        let (fields, timestamp, nonce) = match verdict {
            Err(refusal) => {
                return (
                    refusal.outcome(),
                    Answer::text(refusal.status(), refusal.to_string()),
                );
            }
            // Byte for byte: WeChat compares what it sent with what it gets.
            Ok(Verdict::UrlCheck(echostr)) => return ("url_check", Answer::text(200, echostr)),
            Ok(Verdict::Event {
                fields,
                timestamp,
                nonce,
                ..
            }) => (fields, timestamp, nonce),
        };
        let Some(event_id) = wechat_event::dedupe_key(&fields) else {
            return (
                "bad_body",
                Answer::text(
                    400,
                    "the event has neither MsgId nor FromUserName and CreateTime",
                ),
            );
        };
        let open_id = match fields.get("FromUserName") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let event = Event {
            app_id: app.id.to_string(),
            event_id,
            open_id,
            body: Value::Object(fields).to_string(),
            received_at: now,
            state: EventState::Pending,
            attempts: 0,
            next_at: now,
            lease_until: 0,
            owner: String::new(),
            last_error: None,
            settled_at: None,
        };
        let digest = hex::encode(Sha256::digest(&request.body));
        let remember_until = now
            .saturating_add(window.saturating_mul(2000))
            .saturating_add(NONCE_MARGIN.as_millis() as i64);
        let kept = tokio::time::timeout(
            self.settings.store_timeout,
            self.keep(&event, (timestamp, &nonce), &digest, remember_until),
        )
        .await;
        match kept {
            Ok(Ok(Kept::New)) => {
                self.wake.notify_one();
                ("accepted", Answer::text(200, "success"))
            }
            Ok(Ok(Kept::Duplicate)) => ("duplicate", Answer::text(200, "success")),
            Ok(Ok(Kept::Replay)) => (
                "replay",
                Answer::text(
                    403,
                    "this timestamp and nonce came before with another body",
                ),
            ),
            Ok(Err(e)) => {
                tracing::warn!(app = %app.name, error = %e, "cannot keep a pushed event: WeChat is told to try again");
                ("store_unavailable", Answer::text(503, "try again"))
            }
            Err(_) => {
                tracing::warn!(app = %app.name, timeout = ?self.settings.store_timeout, "keeping a pushed event took too long: WeChat is told to try again");
                ("store_unavailable", Answer::text(503, "try again"))
            }
        }
    }

    /// The nonce first (a replay keeps nothing), then the event: one insert that is also the
    /// deduplication. WeChat's retry of a request comes with the same body, so the same nonce
    /// lets it through to find its event kept.
    async fn keep(
        &self,
        event: &Event,
        request: (i64, &str),
        digest: &str,
        until: UnixMillis,
    ) -> Result<Kept, StoreError> {
        let seen = self
            .store
            .note_nonce(&event.app_id, request, digest, until)
            .await?;
        if seen == NonceSeen::OtherBody {
            return Ok(Kept::Replay);
        }
        Ok(match self.store.keep_event(event).await? {
            true => Kept::New,
            false => Kept::Duplicate,
        })
    }
}
