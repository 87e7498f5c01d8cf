//! WeChat's message push at the edge: `/wechat/push` (the default app) and
//! `/wechat/push/{appid}`. The gateway holds no Token or key: it relays the method, the raw
//! query (signatures are over its exact values), the content type and the body (bounded) to
//! session-svc and answers exactly what it is told — the URL check's `echostr` byte for byte,
//! with a Content-Length, never quoted or chunked. If session-svc cannot be asked, 503: WeChat
//! tries again.
use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use weapp_proto::session::v1::WeChatPushRequest;

use crate::{edge::destination::WECHAT_PUSH, state::AppState};

/// WeChat's events are a few KiB; a body past this is nobody's push.
pub const MAX_PUSH_BYTES: usize = 64 * 1024;

/// Longest AppId in a push path (WeChat's are 18 characters).
const MAX_APP_ID: usize = 64;

fn plain(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The app a push path names: `Some("")` for `/wechat/push` (the default app), `None` for a
/// path that names nothing well-formed.
fn app_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(WECHAT_PUSH)?;
    let app = rest.trim_start_matches('/').trim_end_matches('/');
    let well_formed =
        app.len() <= MAX_APP_ID && app.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    well_formed.then_some(app)
}

pub async fn relay(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(app_id) = app_of(uri.path()) else {
        return plain(StatusCode::NOT_FOUND, "no such push URL");
    };
    if body.len() > MAX_PUSH_BYTES {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "too large for a push");
    }
    let request = WeChatPushRequest {
        app_id: app_id.to_owned(),
        method: method.as_str().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: body.to_vec(),
    };
    let answer = match state.sessions.wechat_push(request).await {
        Ok(answer) => answer,
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "message push not relayed: WeChat is told to try again");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "try again");
        }
    };
    let status = u16::try_from(answer.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = HeaderValue::from_str(&answer.content_type)
        .unwrap_or(HeaderValue::from_static("text/plain; charset=utf-8"));
    (status, [(header::CONTENT_TYPE, content_type)], answer.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_path_names_its_app_or_the_default() {
        assert_eq!(app_of("/wechat/push"), Some(""));
        assert_eq!(app_of("/wechat/push/"), Some(""));
        assert_eq!(
            app_of("/wechat/push/wx2c2769f8efd9abc2"),
            Some("wx2c2769f8efd9abc2")
        );
        assert_eq!(app_of("/wechat/push/wx1/extra"), None);
        assert_eq!(app_of("/wechat/push/wx%201"), None);
        assert_eq!(app_of(&format!("/wechat/push/{}", "a".repeat(65))), None);
    }
}
