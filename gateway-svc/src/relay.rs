//! WebSocket relay (`WEAPP_WS_RELAY_URL`): each text message a client sends on `/ws` is POSTed
//! to the business upstream with the user's identity (headers and signed assertion, as on
//! forwarded requests), and the upstream's answer body goes back on that socket. One message
//! at a time per socket, so the upstream sees them in the order they were sent and the
//! answers come back in that order; an upstream error becomes one error frame and the socket
//! stays open. Without the setting, `/ws` echoes as the tutorial did.
use std::{sync::Arc, time::Duration};

use axum::{
    extract::ws::Utf8Bytes,
    http::{HeaderMap, HeaderValue, header},
};
use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    config::RelaySettings,
    outbox::Outbox,
    resolver::{Need, SessionResolver},
};

/// Client messages waiting for the relay on one socket. A client that sends faster than the
/// upstream answers, past this many, is closed (1008): refusing single messages would break
/// the order of the answers, and waiting would stop the socket's keep-alive.
pub const WAITING: usize = 64;

/// Error frames of the relay carry this code.
pub const ERR_RELAY_FAILED: &str = "ERR_RELAY_FAILED";

pub struct Relay {
    url: reqwest::Url,
    timeout: Duration,
    client: reqwest::Client,
    max_answer: usize,
}

impl Relay {
    /// `None` when no relay URL is configured.
    pub fn new(settings: &RelaySettings, max_answer: usize) -> Result<Option<Self>, String> {
        let Some(url) = settings.url.clone() else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| format!("cannot build the relay's HTTP client: {e}"))?;
        Ok(Some(Self {
            url,
            timeout: settings.timeout,
            client,
            max_answer,
        }))
    }
}

impl Relay {
    /// Relays one socket's messages, one at a time, until `messages` ends (the socket closed)
    /// or its outbox overflows.
    pub async fn run(
        &self,
        resolver: &SessionResolver,
        (id, skey): (String, String),
        outbox: Arc<Outbox>,
        mut messages: mpsc::Receiver<Utf8Bytes>,
    ) {
        while let Some(text) = messages.recv().await {
            let frame = match self.relay_one(resolver, &id, &skey, text).await {
                Ok(answer) => answer,
                Err(reason) => error_frame(&reason),
            };
            if !outbox.offer(frame) {
                break;
            }
        }
    }

    async fn relay_one(
        &self,
        resolver: &SessionResolver,
        id: &str,
        skey: &str,
        text: Utf8Bytes,
    ) -> Result<Utf8Bytes, String> {
        // Resolved per message: the session may have been revoked, and the assertion must be
        // fresh (the cache keeps it at most half its life).
        let session = resolver
            .resolve_credentials(id.to_owned(), skey.to_owned(), Need::Assertion)
            .await
            .map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        session.insert_identity(&mut headers, crate::identity::Names::Weapp);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let sent = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .timeout(self.timeout)
            .body(text.as_str().to_owned())
            .send()
            .await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(e) if e.is_timeout() => {
                return Err("the service behind the WebSocket did not answer in time".into());
            }
            Err(e) => {
                tracing::warn!(error = %e, "WebSocket relay request failed");
                return Err("the service behind the WebSocket cannot be reached".into());
            }
        };
        let status = answer.status();
        if !status.is_success() {
            return Err(format!(
                "the service behind the WebSocket answered {}",
                status.as_u16()
            ));
        }
        // Read up to what a WebSocket message may carry, no further.
        let mut body = Vec::new();
        let mut chunks = answer.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk =
                chunk.map_err(|_| "the service behind the WebSocket broke off".to_owned())?;
            if body.len() + chunk.len() > self.max_answer {
                return Err("the answer is larger than a WebSocket message may be".into());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body)
            .map(Utf8Bytes::from)
            .map_err(|_| "the answer is not UTF-8 text".into())
    }
}

/// The frame a client gets when its message could not be relayed.
pub fn error_frame(reason: &str) -> Utf8Bytes {
    json!({ "error": ERR_RELAY_FAILED, "message": reason })
        .to_string()
        .into()
}
