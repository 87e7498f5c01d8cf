//! The gateway's errors, and the one place they become HTTP answers. Also where session-svc's
//! gRPC statuses are translated: a login failure is the client's or WeChat's story told
//! honestly; a session that cannot be resolved fails closed.
use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;
use std::time::Duration;

use tonic::Code;

use weapp_wire::request_head::Refusal;

use crate::wafer;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    LoginFailed { status: StatusCode, message: String },
    #[error("login failed: the X-WX-Code header is missing")]
    MissingCode,
    /// session-svc answered, but not with what its contract promises.
    #[error("login failed: {0}")]
    BadAnswer(&'static str),
    #[error("{0}")]
    InvalidSession(String),
    #[error("{0}")]
    SessionUnavailable(String),
    #[error("too many WebSocket connections on this gateway")]
    TooManyConnections,
    #[error("this session already has {0} WebSocket connections open; close one first")]
    TooManySessionSockets(usize),
    #[error("login failed: too many logins from this address; retry in {} s", retry_after_secs(*.0))]
    LoginRateLimited(Duration),
    #[error("{message}")]
    LoginRateLimitedFor { wait: Duration, message: String },
    #[error("the request body is over the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the request body could not be read")]
    BadBody,
    #[error("too many connections on this gateway; retry shortly")]
    GatewayFull,
    /// `/readyz`: session-svc is not serving.
    #[error("{0}")]
    NotReady(String),
    /// A forwarded route's upstream refused or dropped the connection (by route prefix).
    #[error("the service behind {0} cannot be reached; retry shortly")]
    UpstreamUnreachable(String),
    /// It failed mid-request.
    #[error("the service behind {0} failed to answer")]
    UpstreamFailed(String),
    /// Its route has as many requests in flight as it may, and none ended in time.
    #[error("the service behind {0} is busy; retry shortly")]
    UpstreamBusy(String),
    /// It did not answer within the route's timeout.
    #[error("the service behind {0} did not answer in time")]
    UpstreamTimeout(String),
    /// It answered a WebSocket upgrade with something else than 101.
    #[error("the service behind {prefix} refused the WebSocket ({status})")]
    UpstreamRefusedSocket { prefix: String, status: StatusCode },
    #[error("the request path cannot be forwarded")]
    BadRequestTarget,
    /// A request head the edge does not read one way only (`request_head.rs`).
    #[error(transparent)]
    Head(Refusal),
    /// A request to a WebSocket path that is not a WebSocket handshake.
    #[error("a WebSocket handshake needs {0}")]
    NotWebSocket(&'static str),
    /// A path that cannot be normalized safely (`path.rs`).
    #[error("the request path is refused: {0}")]
    BadPath(weapp_wire::path::Refused),
    #[error("the phone code is missing: send it in X-WX-Phone-Code or as {{\"code\": …}}")]
    MissingPhoneCode,
    #[error("{message}")]
    PhoneFailed { status: StatusCode, message: String },
}

fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl ApiError {
    /// A failed `Login` RPC.
    pub fn login(status: &tonic::Status) -> Self {
        if key_refused(status) {
            return Self::LoginFailed {
                status: StatusCode::BAD_GATEWAY,
                message: "login failed: the session service refused this gateway".into(),
            };
        }
        // session-svc's per-user limit says when to come back.
        if status.code() == Code::ResourceExhausted {
            if let Some(seconds) = status
                .metadata()
                .get(weapp_proto::metadata::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                return Self::LoginRateLimitedFor {
                    wait: Duration::from_secs(seconds),
                    message: format!("login failed: {}", status.message()),
                };
            }
        }
        let http = match status.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::PermissionDenied | Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded | Code::Cancelled => StatusCode::GATEWAY_TIMEOUT,
            // FailedPrecondition (WeChat refused our AppId/AppSecret), Internal and the rest:
            // the upstream failed, not the client.
            _ => StatusCode::BAD_GATEWAY,
        };
        Self::LoginFailed {
            status: http,
            message: format!("login failed: {}", status.message()),
        }
    }

    /// A failed `GetPhoneNumber` RPC: a bad or used code is the client's to fix; a session
    /// that died on the way is an invalid session; the rest is upstream trouble.
    pub fn phone(status: &tonic::Status) -> Self {
        if key_refused(status) {
            return Self::PhoneFailed {
                status: StatusCode::BAD_GATEWAY,
                message: "the session service refused this gateway's phone-number request \
                          (its key needs the wechat.phone scope)"
                    .into(),
            };
        }
        let http = match status.code() {
            Code::Unauthenticated => return Self::validate(status),
            Code::InvalidArgument | Code::PermissionDenied => StatusCode::BAD_REQUEST,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded | Code::Cancelled => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        Self::PhoneFailed {
            status: http,
            message: format!("no phone number: {}", status.message()),
        }
    }

    /// A failed `Validate` RPC: only a definite "no" from session-svc is an invalid session;
    /// anything else means we do not know, and the request must not go on without one.
    pub fn validate(status: &tonic::Status) -> Self {
        if key_refused(status) {
            return Self::SessionUnavailable(
                "sessions cannot be checked right now (session service refused this gateway); \
                 retry shortly"
                    .into(),
            );
        }
        match status.code() {
            Code::Unauthenticated | Code::InvalidArgument | Code::NotFound => {
                Self::InvalidSession("the session is invalid or has expired; log in again".into())
            }
            _ => Self::SessionUnavailable(format!(
                "sessions cannot be checked right now ({}); retry shortly",
                describe(status.code())
            )),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::LoginFailed { status, .. } => *status,
            Self::MissingCode => StatusCode::BAD_REQUEST,
            Self::BadAnswer(_) => StatusCode::BAD_GATEWAY,
            Self::LoginRateLimited(_)
            | Self::LoginRateLimitedFor { .. }
            | Self::TooManySessionSockets(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidSession(_) => StatusCode::UNAUTHORIZED,
            Self::SessionUnavailable(_)
            | Self::UpstreamBusy(_)
            | Self::TooManyConnections
            | Self::GatewayFull
            | Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Head(Refusal::TooLarge) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadBody
            | Self::Head(Refusal::Malformed(_))
            | Self::BadRequestTarget
            | Self::NotWebSocket(_)
            | Self::BadPath(_)
            | Self::MissingPhoneCode => StatusCode::BAD_REQUEST,
            Self::PhoneFailed { status, .. } => *status,
            Self::UpstreamUnreachable(_) | Self::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            // The business's own refusal (403, 404…) is the client's answer; anything else
            // is the upstream failing.
            Self::UpstreamRefusedSocket { status, .. } if status.is_client_error() => *status,
            Self::UpstreamRefusedSocket { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The JSON body, also sent as the WebSocket error frame.
    pub fn body(&self) -> serde_json::Value {
        let message = self.to_string();
        match self {
            Self::LoginFailed { .. }
            | Self::MissingCode
            | Self::BadAnswer(_)
            | Self::LoginRateLimited(_)
            | Self::LoginRateLimitedFor { .. } => {
                wafer::error_body(wafer::ERR_LOGIN_FAILED, &message)
            }
            Self::InvalidSession(_) => wafer::error_body(wafer::ERR_INVALID_SESSION, &message),
            // No magic key: the session is fine, the client must not drop it.
            Self::SessionUnavailable(_)
            | Self::TooManyConnections
            | Self::GatewayFull
            | Self::TooManySessionSockets(_) => wafer::unavailable_body(&message),
            // The client's mistake, not its session's: no magic key either.
            Self::BodyTooLarge(_) => {
                json!({ "error": wafer::ERR_REQUEST_TOO_LARGE, "message": message })
            }
            Self::BodyTimeout
            | Self::BadBody
            | Self::Head(_)
            | Self::BadRequestTarget
            | Self::NotWebSocket(_)
            | Self::BadPath(_) => {
                json!({ "error": wafer::ERR_BAD_REQUEST, "message": message })
            }
            // No magic key: the session is fine, the business upstream is not.
            Self::UpstreamUnreachable(_)
            | Self::UpstreamFailed(_)
            | Self::UpstreamBusy(_)
            | Self::UpstreamRefusedSocket { .. } => {
                json!({ "error": wafer::ERR_UPSTREAM_UNAVAILABLE, "message": message })
            }
            Self::UpstreamTimeout(_) => {
                json!({ "error": wafer::ERR_UPSTREAM_TIMEOUT, "message": message })
            }
            Self::NotReady(reason) => json!({ "status": "not ready", "reason": reason }),
            Self::MissingPhoneCode | Self::PhoneFailed { .. } => {
                json!({ "error": wafer::ERR_PHONE_NUMBER_FAILED, "message": message })
            }
        }
    }
}

/// session-svc refused this gateway's API key: the operator's mistake, never the client's
/// (its session is not at fault, and must not be dropped). Logged loudly for the operator.
fn key_refused(status: &tonic::Status) -> bool {
    let refused = status
        .metadata()
        .get(weapp_proto::metadata::API_KEY_REFUSED)
        .is_some();
    if refused {
        tracing::error!(
            code = ?status.code(),
            reason = status.message(),
            "session-svc refused this gateway's API key: check WEAPP_SESSION_SVC_KEY_FILE and \
             the key's scopes (validate, login, follow; wechat.phone for /phone-number) in \
             session-svc's WEAPP_API_KEYS_FILE"
        );
    }
    refused
}

fn describe(code: Code) -> &'static str {
    match code {
        Code::DeadlineExceeded | Code::Cancelled => "session service timed out",
        Code::Unavailable => "session service unreachable",
        _ => "session service error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A not-ready answer is a probe's business, asked every few seconds: not a failure.
        if self.status().is_server_error() && !matches!(self, Self::NotReady(_)) {
            tracing::warn!(status = self.status().as_u16(), error = %self, "request failed");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        let retry_after = match &self {
            Self::SessionUnavailable(_)
            | Self::TooManyConnections
            | Self::GatewayFull
            | Self::UpstreamBusy(_) => Some(1),
            Self::TooManySessionSockets(_) => Some(5),
            Self::LoginRateLimited(wait) | Self::LoginRateLimitedFor { wait, .. } => {
                Some(retry_after_secs(*wait).max(1))
            }
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_statuses_are_honest() {
        for (code, http) in [
            (Code::InvalidArgument, 400),
            (Code::PermissionDenied, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 502),
            (Code::Internal, 502),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
        ] {
            let e = ApiError::login(&tonic::Status::new(
                code,
                "WeChat errcode 40029: invalid code",
            ));
            assert_eq!(e.status().as_u16(), http, "{code:?}");
            assert!(e.to_string().contains("40029"));
            assert_eq!(e.body()["error"], wafer::ERR_LOGIN_FAILED);
        }
    }

    #[test]
    fn validation_fails_closed() {
        assert_eq!(
            ApiError::validate(&tonic::Status::unauthenticated("x")).status(),
            401
        );
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
        ] {
            let e = ApiError::validate(&tonic::Status::new(code, "x"));
            assert_eq!(e.status(), 503);
            assert!(e.body().get(wafer::MAGIC_KEY).is_none());
        }
    }
}
