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
use clap::Args;
use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::mpsc;
use weapp_common::config::duration;

use crate::{identity, outbox::Outbox, resolver::Need, state::AppState};

/// Client messages waiting for the relay on one socket. A client that sends faster than the
/// upstream answers, past this many, is closed (1008): refusing single messages would break
/// the order of the answers, and waiting would stop the socket's keep-alive.
const WAITING: usize = 64;

/// Error frames of the relay carry this code.
pub const ERR_RELAY_FAILED: &str = "ERR_RELAY_FAILED";

#[derive(Args, Clone, Debug)]
pub struct RelaySettings {
    /// Upstream URL that receives each WebSocket text message as a POST with the user's
    /// identity; its answer body goes back on the socket. None: `/ws` echoes (the tutorial).
    #[arg(id = "ws_relay_url", value_name = "WS_RELAY_URL", long = "ws-relay-url", env = "WEAPP_WS_RELAY_URL", value_parser = relay_url)]
    pub url: Option<reqwest::Url>,

    /// Longest wait for the relay upstream's answer to one message.
    #[arg(id = "ws_relay_timeout", value_name = "WS_RELAY_TIMEOUT", long = "ws-relay-timeout", env = "WEAPP_WS_RELAY_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
}

fn relay_url(value: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        _ => Err("must be an http:// or https:// URL".into()),
    }
}

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

/// Starts relaying one socket's messages; the relay ends when the sender is dropped.
pub fn start(
    state: AppState,
    id: String,
    skey: String,
    outbox: Arc<Outbox>,
) -> mpsc::Sender<Utf8Bytes> {
    let (sender, mut messages) = mpsc::channel::<Utf8Bytes>(WAITING);
    tokio::spawn(async move {
        let Some(relay) = &state.relay else {
            return;
        };
        while let Some(text) = messages.recv().await {
            let frame = match relay_one(&state, relay, &id, &skey, text).await {
                Ok(answer) => answer,
                Err(reason) => error_frame(&reason),
            };
            if !outbox.offer(frame) {
                break;
            }
        }
    });
    sender
}

/// The frame a client gets when its message could not be relayed.
pub fn error_frame(reason: &str) -> Utf8Bytes {
    json!({ "error": ERR_RELAY_FAILED, "message": reason })
        .to_string()
        .into()
}

async fn relay_one(
    state: &AppState,
    relay: &Relay,
    id: &str,
    skey: &str,
    text: Utf8Bytes,
) -> Result<Utf8Bytes, String> {
    // Resolved per message: the session may have been revoked, and the assertion must be
    // fresh (the cache keeps it at most half its life).
    let session = state
        .resolver
        .resolve_credentials(id.to_owned(), skey.to_owned(), Need::Assertion)
        .await
        .map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    identity::insert(&mut headers, &session);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let sent = relay
        .client
        .post(relay.url.clone())
        .headers(headers)
        .timeout(relay.timeout)
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
        let chunk = chunk.map_err(|_| "the service behind the WebSocket broke off".to_owned())?;
        if body.len() + chunk.len() > relay.max_answer {
            return Err("the answer is larger than a WebSocket message may be".into());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body)
        .map(Utf8Bytes::from)
        .map_err(|_| "the answer is not UTF-8 text".into())
}
