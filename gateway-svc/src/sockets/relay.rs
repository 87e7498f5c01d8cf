//! WebSocket relay (`WEAPP_WS_RELAY_URL`): each text message a client sends on `/ws` is POSTed
//! to the business upstream with the user's identity (headers and signed assertion, as on
//! forwarded requests), and the upstream's answer body goes back on that socket. One message
//! at a time per socket, so the upstream sees them in the order they were sent and the
//! answers come back in that order; an upstream error becomes one error frame and the socket
//! stays open. Without the setting, `/ws` echoes as the tutorial did. The upstream is reached
//! as business routes' upstreams are: over a keep-alive pool of its own (`upstream.rs`).
use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{HeaderValue, Request, header},
};
use http_body_util::{BodyExt as _, Limited};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{
    business::upstream::Upstream,
    config::RelaySettings,
    sessions::resolver::{Need, SessionResolver},
    sockets::outbox::Outbox,
};

/// Client messages waiting for the relay on one socket. A client that sends faster than the
/// upstream answers, past this many, is closed (1008): refusing single messages would break
/// the order of the answers, and waiting would stop the socket's keep-alive.
pub const WAITING: usize = 64;

/// Error frames of the relay carry this code.
pub const ERR_RELAY_FAILED: &str = "ERR_RELAY_FAILED";

pub struct Relay {
    upstream: Arc<Upstream>,
    /// The URL's path and query, what each POST asks for.
    target: http::uri::PathAndQuery,
    /// The URL's host (and port), the Host of each POST.
    host: HeaderValue,
    timeout: Duration,
    max_answer: usize,
}

impl Relay {
    /// `None` when no relay URL is configured.
    pub fn new(settings: &RelaySettings, max_answer: usize) -> Result<Option<Self>, String> {
        let Some(url) = settings.url.clone() else {
            return Ok(None);
        };
        let authority = url.authority().ok_or("WEAPP_WS_RELAY_URL names no host")?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| "WEAPP_WS_RELAY_URL has an unusable host")?;
        // A URL without a port means port 80, as for any http:// URL.
        let address = match authority.port() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        let connect_timeout = settings.timeout.min(Duration::from_secs(5));
        Ok(Some(Self {
            upstream: Arc::new(Upstream::new(address, connect_timeout)),
            target: url
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            host,
            timeout: settings.timeout,
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
        let mut request = Request::post(self.target.clone())
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from(text.as_str().to_owned()))
            .map_err(|_| "the relay URL cannot be requested".to_owned())?;
        session.insert_identity(
            request.headers_mut(),
            crate::sessions::identity::Names::Weapp,
        );
        let late = || "the service behind the WebSocket did not answer in time".to_owned();
        // One deadline for the answer, body included.
        let body = tokio::time::timeout(self.timeout, async {
            let answer = self.upstream.send(request).await.map_err(|e| {
                tracing::warn!(error = %e, "WebSocket relay request failed");
                "the service behind the WebSocket cannot be reached".to_owned()
            })?;
            let status = answer.status();
            if !status.is_success() {
                return Err(format!(
                    "the service behind the WebSocket answered {}",
                    status.as_u16()
                ));
            }
            // Read up to what a WebSocket message may carry, no further.
            let body = Limited::new(answer.into_body(), self.max_answer)
                .collect()
                .await
                .map_err(|e| match e.is::<http_body_util::LengthLimitError>() {
                    true => "the answer is larger than a WebSocket message may be".to_owned(),
                    false => "the service behind the WebSocket broke off".to_owned(),
                })?;
            Ok(body.to_bytes())
        })
        .await
        .map_err(|_| late())??;
        String::from_utf8(body.to_vec())
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
