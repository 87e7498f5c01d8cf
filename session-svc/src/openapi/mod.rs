//! The open-API proxy (`WEAPP_OPENAPI_LISTEN`): what WeChat Cloud Run's "open-API service"
//! gives a container, on the team's own hosts. A backend sends exactly the request WeChat
//! documents — method, path, query, body — without an access_token; session-svc, which holds
//! the token, adds it, calls WeChat, and hands back WeChat's answer as it came (status,
//! content type, body: JSON, or a mini-program code's image bytes, streamed). When WeChat
//! refuses the token (40001/42001) it is reported (compare-and-refresh, `access_token.rs`)
//! and the call is made once more with the next one.
//!
//! Both request forms work: the path form (`POST http://session-svc:8081/wxa/msg_sec_check`,
//! any Host, so pointing `api.weixin.qq.com` at this listener by DNS works) and the absolute
//! form (the listener as an HTTP proxy for `http://api.weixin.qq.com/…`; no other host).
//! Who may call what is `callers.rs`; every refusal happens before WeChat is called. The
//! token endpoints are never proxied, a caller's own `access_token` never goes on, and no
//! token reaches a log (nor does a query: it is the caller's business).
mod callers;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use http::{HeaderValue, Method, header, request::Parts};
use secrecy::ExposeSecret as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use callers::{Callers, OpenApiSettings};

use crate::{
    access::TOKEN_PATHS,
    access_token::AccessTokens,
    error::OpenApiError,
    live::LiveConfig,
    metrics::SessionMetrics,
    wechat::{Answer, Passthrough, WeChatClient, from_appid, without_fields},
};

/// The host a Cloud Run container calls, the only one the absolute form may name.
const WECHAT_HOST: &str = "api.weixin.qq.com";
/// Cloud Run's open-API answers carry a request id under this name; so do ours (also on
/// refusals), and the log line of the call has it.
const SEQID: &str = "x-openapi-seqid";

pub struct OpenApi {
    wechat: Arc<WeChatClient>,
    live: Arc<LiveConfig>,
    tokens: Arc<AccessTokens>,
    callers: Callers,
    max_body_bytes: usize,
    metrics: Arc<SessionMetrics>,
}

impl OpenApi {
    pub fn new(
        (wechat, live): (Arc<WeChatClient>, Arc<LiveConfig>),
        tokens: Arc<AccessTokens>,
        (callers, max_body_bytes): (Callers, usize),
        metrics: Arc<SessionMetrics>,
    ) -> Self {
        Self {
            wechat,
            live,
            tokens,
            callers,
            max_body_bytes,
            metrics,
        }
    }

    /// Serves the proxy on `listener` until `shutdown`, letting calls in flight finish.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let app = Router::new().fallback(proxy).with_state(self);
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        {
            tracing::warn!(error = %e, "the open-API listener failed");
        }
    }

    async fn forward(&self, peer: SocketAddr, request: Request) -> Result<Response, OpenApiError> {
        let (parts, body) = request.into_parts();
        let path = target_path(&parts)?;
        if TOKEN_PATHS.iter().any(|t| t.eq_ignore_ascii_case(&path)) {
            return Err(OpenApiError::TokenEndpoint(path));
        }
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let (caller, allowed, may_act_for) = self.callers.allowed(authorization, peer.ip())?;
        let Some(label) = allowed.find(&path) else {
            let caller = match allowed.is_empty() {
                true => format!("{caller}, which has no \"wechat.openapi\" scope"),
                false => caller,
            };
            return Err(OpenApiError::NotAllowed { path, caller });
        };
        // Whose token: `from_appid` (Cloud Run's spelling), else the key's first app, else
        // the default. Both the caller and the app must allow the path.
        let apps = self.live.apps();
        let default = apps.default_app().id.clone();
        let named = parts
            .uri
            .query()
            .and_then(from_appid)
            .filter(|a| !a.is_empty());
        let app_id = named.unwrap_or_else(|| may_act_for.first(&default).to_owned());
        let app = apps
            .get(&app_id)
            .cloned()
            .ok_or_else(|| OpenApiError::NotAllowed {
                path: path.clone(),
                caller: format!("app {app_id:?}, which is not served here"),
            })?;
        if !may_act_for.allows(&app.id, &default) {
            return Err(OpenApiError::NotAllowed {
                path,
                caller: format!("{caller} acting for app {app_id:?}, which it may not act for"),
            });
        }
        if app
            .openapi
            .as_ref()
            .is_some_and(|list| list.find(&path).is_none())
        {
            return Err(OpenApiError::NotAllowed {
                path,
                caller: format!("app {:?}", app.name),
            });
        }
        let body = read_body(body, self.max_body_bytes).await?;
        let call = Passthrough {
            method: parts.method,
            path: label,
            query: parts
                .uri
                .query()
                .and_then(|q| without_fields(q, &["access_token", "from_appid"])),
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            body,
        };
        let no_token = |e: crate::error::SessionError| OpenApiError::NoToken(e.to_string());
        let tokens = self.tokens.of(&app.id).map_err(no_token)?;
        let token = tokens.get().await.map_err(no_token)?;
        let mut answer = self.wechat.passthrough(&call, &token.token).await?;
        if answer.refused_token() {
            tracing::info!(
                path = label,
                errcode = answer.errcode,
                "WeChat refused the access_token; refreshing and retrying once"
            );
            let next = tokens
                .report_invalid(token.token.expose_secret())
                .await
                .map_err(no_token)?;
            answer = self.wechat.passthrough(&call, &next.token).await?;
        }
        tracing::debug!(%caller, app = %app.name, path = label, errcode = answer.errcode, status = %answer.status, "open-API call");
        Ok(respond(answer))
    }
}

async fn proxy(
    State(api): State<Arc<OpenApi>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let seqid = seqid();
    let mut response = match api.forward(peer, request).await {
        Ok(response) => response,
        Err(refused) => {
            api.metrics.openapi_refused(refused.reason());
            tracing::info!(%peer, seqid = %seqid, error = %refused, "open-API call not answered by WeChat");
            refused.into_response()
        }
    };
    if let Ok(value) = HeaderValue::from_str(&seqid) {
        response.headers_mut().insert(SEQID, value);
    }
    response
}

/// The normalized path a request asks for, after checking that it is for WeChat.
fn target_path(parts: &Parts) -> Result<String, OpenApiError> {
    if parts.method == Method::CONNECT {
        return Err(OpenApiError::ForeignHost(format!(
            "{} (CONNECT: call http://{WECHAT_HOST}/…; session-svc reaches WeChat over https)",
            parts.uri
        )));
    }
    if let Some(authority) = parts.uri.authority() {
        let wechat = parts.uri.scheme_str() == Some("http")
            && authority.host().eq_ignore_ascii_case(WECHAT_HOST)
            && authority.port_u16().is_none_or(|port| port == 80);
        if !wechat {
            return Err(OpenApiError::ForeignHost(format!(
                "{}://{authority}",
                parts.uri.scheme_str().unwrap_or("?")
            )));
        }
    }
    weapp_wire::path::normalize(parts.uri.path())
        .map(std::borrow::Cow::into_owned)
        .map_err(|refused| OpenApiError::BadRequest(format!("the path is refused: {refused}")))
}

async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, OpenApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        match over {
            true => OpenApiError::BodyTooLarge(limit),
            false => OpenApiError::BadRequest("the request body could not be read".into()),
        }
    })
}

/// WeChat's answer as it came: status, content type (and disposition), body.
fn respond(answer: Answer) -> Response {
    let body = match answer.rest {
        None => Body::from(answer.head),
        Some(rest) => Body::from_stream(
            futures::stream::once(std::future::ready(Ok(answer.head))).chain(rest.bytes_stream()),
        ),
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    if let Some(value) = answer.content_type {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Some(value) = answer.content_disposition {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

fn seqid() -> String {
    let mut bytes = [0u8; 8];
    // A request id, not a secret: a failed random source leaves it zero.
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}
