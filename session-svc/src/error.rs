//! session-svc's errors and their one mapping to gRPC status codes; and the open-API
//! proxy's refusals (`openapi/`) and their one mapping to HTTP answers.
use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::StatusCode;
use tonic::{Code, Status, metadata::MetadataValue};

use crate::{
    store::StoreError,
    user_data::UserDataError,
    vault::VaultError,
    wechat::{WeChatError, errcode},
};

pub use weapp_proto::metadata::{
    RETRY_AFTER as RETRY_AFTER_KEY, WECHAT_ERRCODE as WECHAT_ERRCODE_KEY,
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    InvalidArgument(String),
    /// A request named an app this deployment does not serve.
    #[error(transparent)]
    NotServed(#[from] crate::apps::NotServed),
    #[error(transparent)]
    UserData(#[from] UserDataError),
    #[error("invalid or expired session")]
    Unauthenticated,
    /// The caller's API key may not do this for that app.
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    WeChat(#[from] WeChatError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too many logins for this user; retry in {} s", .0.as_secs().max(1))]
    UserRateLimited(std::time::Duration),
    /// A limit of ours or WeChat's; retry after the duration.
    #[error("{message}")]
    Exhausted {
        message: String,
        retry_after: std::time::Duration,
    },
    /// What was asked needs something that is not there (a user's session_key, a
    /// configuration); retrying will not help until it is.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SessionError {
    /// The gRPC code this error answers with, by name: a bounded label for the metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) | Self::UserData(_) | Self::NotServed(_) => "InvalidArgument",
            Self::Unauthenticated => "Unauthenticated",
            Self::PermissionDenied(_) => "PermissionDenied",
            Self::WeChat(w) => match wechat_code(w) {
                Code::PermissionDenied => "PermissionDenied",
                Code::FailedPrecondition => "FailedPrecondition",
                Code::ResourceExhausted => "ResourceExhausted",
                Code::DeadlineExceeded => "DeadlineExceeded",
                Code::Unavailable => "Unavailable",
                _ => "Internal",
            },
            Self::UserRateLimited(_) | Self::Exhausted { .. } => "ResourceExhausted",
            Self::FailedPrecondition(_) | Self::Vault(VaultError::UnknownKey(_)) => {
                "FailedPrecondition"
            }
            Self::Store(StoreError::Unavailable(_)) | Self::Unavailable(_) => "Unavailable",
            Self::Store(_) | Self::Vault(_) | Self::Internal(_) => "Internal",
        }
    }
}

fn wechat_code(e: &WeChatError) -> Code {
    match e {
        WeChatError::Refused { errcode, .. } => match *errcode {
            errcode::MINUTE_QUOTA | errcode::DAILY_QUOTA => Code::ResourceExhausted,
            errcode::SYSTEM_BUSY => Code::Unavailable,
            // Our AppId, AppSecret, token or IP address: only an operator can fix that.
            errcode::INVALID_APPID
            | errcode::INVALID_APPSECRET
            | errcode::INVALID_TOKEN
            | errcode::EXPIRED_TOKEN
            | errcode::IP_NOT_WHITELISTED => Code::FailedPrecondition,
            // 40029 invalid, 40163 used, 40226 blocked, and anything else WeChat refuses.
            _ => Code::PermissionDenied,
        },
        WeChatError::Timeout(_) => Code::DeadlineExceeded,
        WeChatError::Unreachable(_) | WeChatError::HttpStatus(_) => Code::Unavailable,
        WeChatError::Malformed(_) => Code::Internal,
    }
}

/// What an operator should do about an errcode that only they can fix.
fn operator_hint(errcode: i64) -> &'static str {
    match errcode {
        errcode::IP_NOT_WHITELISTED => {
            " (WeChat refused this server's IP address: add it to the mini-program's IP \
             whitelist, mp.weixin.qq.com > Development > Development settings > IP whitelist)"
        }
        errcode::INVALID_APPSECRET => {
            " (the AppSecret is wrong or was reset: update WEAPP_APP_SECRET_FILE)"
        }
        errcode::INVALID_TOKEN => {
            " (WeChat refused the access_token or the AppSecret: check the AppSecret in \
             WEAPP_APP_SECRET_FILE; if it is right, an operator can call ForceRefreshAccessToken)"
        }
        errcode::INVALID_APPID => " (the AppId is wrong: check WEAPP_APP_ID)",
        errcode::DAILY_QUOTA => " (WeChat's daily quota for this API is used up)",
        _ => "",
    }
}

fn retry_after(status: &mut Status, wait: std::time::Duration) {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = MetadataValue::try_from(seconds.max(1).to_string()) {
        status.metadata_mut().insert(RETRY_AFTER_KEY, v);
    }
}

impl From<SessionError> for Status {
    fn from(e: SessionError) -> Self {
        let message = e.to_string();
        match e {
            SessionError::InvalidArgument(_)
            | SessionError::UserData(_)
            | SessionError::NotServed(_) => Status::invalid_argument(message),
            SessionError::Unauthenticated => Status::unauthenticated(message),
            SessionError::PermissionDenied(_) => Status::permission_denied(message),
            SessionError::UserRateLimited(wait)
            | SessionError::Exhausted {
                retry_after: wait, ..
            } => {
                let mut status = Status::resource_exhausted(message);
                retry_after(&mut status, wait);
                status
            }
            SessionError::FailedPrecondition(_)
            | SessionError::Vault(VaultError::UnknownKey(_)) => {
                Status::failed_precondition(message)
            }
            SessionError::Unavailable(_) => Status::unavailable(message),
            SessionError::WeChat(ref w) => {
                let mut status = match w {
                    WeChatError::Refused { errcode, .. } => Status::new(
                        wechat_code(w),
                        format!("{message}{}", operator_hint(*errcode)),
                    ),
                    _ => Status::new(wechat_code(w), message),
                };
                if let WeChatError::Refused { errcode, .. } = w {
                    if let Ok(v) = MetadataValue::try_from(errcode.to_string()) {
                        status.metadata_mut().insert(WECHAT_ERRCODE_KEY, v);
                    }
                }
                status
            }
            SessionError::Store(StoreError::Unavailable(_)) => Status::unavailable(message),
            SessionError::Store(StoreError::Corrupt(_) | StoreError::Misconfigured(_))
            | SessionError::Vault(VaultError::Tampered | VaultError::Random(_))
            | SessionError::Internal(_) => {
                tracing::error!(error = %message, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Why the open-API proxy did not hand a call to WeChat, or has no answer from it. The body
/// is shaped like WeChat's own errors (`errcode`, `errmsg`) so that a backend's WeChat SDK
/// reads it, with an errcode that means the same to it: 41001 no credential, 48001 API not
/// authorized, -1 busy (retry); `errmsg` says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error(
        "send `authorization: Bearer <key>` with a key that has the \"wechat.openapi\" scope, or call from WEAPP_OPENAPI_TRUSTED_NETWORKS"
    )]
    NoCredential,
    #[error("unknown API key")]
    UnknownKey,
    #[error("{path} is not in the open-API allow-list of {caller}")]
    NotAllowed { path: String, caller: String },
    #[error(
        "{0} is never proxied: session-svc keeps the access_token (a backend that needs it asks GetAccessToken)"
    )]
    TokenEndpoint(String),
    #[error("this proxy forwards to api.weixin.qq.com over http:// only, not to {0}")]
    ForeignHost(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is over {0} bytes")]
    BodyTooLarge(usize),
    #[error("no access_token to call WeChat with: {0}")]
    NoToken(String),
    #[error("WeChat: {0}")]
    WeChat(#[from] WeChatError),
}

impl OpenApiError {
    /// A bounded label for the refusals' metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCredential => "no_credential",
            Self::UnknownKey => "unknown_key",
            Self::NotAllowed { .. } => "not_allowed",
            Self::TokenEndpoint(_) => "token_endpoint",
            Self::ForeignHost(_) => "foreign_host",
            Self::BadRequest(_) => "bad_request",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::NoToken(_) => "no_token",
            Self::WeChat(_) => "wechat",
        }
    }
}

impl IntoResponse for OpenApiError {
    fn into_response(self) -> Response {
        let (status, errcode) = match &self {
            Self::NoCredential | Self::UnknownKey => (StatusCode::UNAUTHORIZED, 41001),
            Self::NotAllowed { .. } | Self::TokenEndpoint(_) | Self::ForeignHost(_) => {
                (StatusCode::FORBIDDEN, 48001)
            }
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, 40097),
            Self::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 40097),
            Self::NoToken(_) => (StatusCode::SERVICE_UNAVAILABLE, -1),
            Self::WeChat(WeChatError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, -1),
            Self::WeChat(_) => (StatusCode::BAD_GATEWAY, -1),
        };
        let errmsg = format!("weapp open-API proxy: {self}");
        (
            status,
            Json(serde_json::json!({ "errcode": errcode, "errmsg": errmsg })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(errcode: i64) -> Status {
        SessionError::WeChat(WeChatError::Refused {
            errcode,
            errmsg: "x".into(),
        })
        .into()
    }

    #[test]
    fn wechat_errcodes_map_to_meaningful_codes_and_keep_the_errcode() {
        for (errcode, code) in [
            (40029, Code::PermissionDenied),
            (40163, Code::PermissionDenied),
            (40226, Code::PermissionDenied),
            (40013, Code::FailedPrecondition),
            (40125, Code::FailedPrecondition),
            (45011, Code::ResourceExhausted),
            (-1, Code::Unavailable),
            // The central control server's: only an operator can fix these.
            (40164, Code::FailedPrecondition),
            (40001, Code::FailedPrecondition),
            (42001, Code::FailedPrecondition),
            (45009, Code::ResourceExhausted),
        ] {
            let status = refused(errcode);
            assert_eq!(status.code(), code, "{errcode}");
            assert!(status.message().contains(&errcode.to_string()));
            assert_eq!(
                status
                    .metadata()
                    .get(WECHAT_ERRCODE_KEY)
                    .and_then(|v| v.to_str().ok()),
                Some(errcode.to_string().as_str())
            );
        }
    }

    #[test]
    fn operator_errors_say_what_to_fix() {
        assert!(refused(40164).message().contains("IP whitelist"));
        assert!(refused(40125).message().contains("AppSecret"));
        assert!(refused(40001).message().contains("AppSecret"));
    }

    #[test]
    fn internal_details_stay_inside() {
        let status: Status =
            SessionError::Store(StoreError::Corrupt("secret detail".into())).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret detail"));
    }
}
