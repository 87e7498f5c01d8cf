//! session-svc's errors and their one mapping to gRPC status codes.
use tonic::{Code, Status, metadata::MetadataValue};

use crate::{
    store::StoreError,
    user_data::UserDataError,
    wechat::{WeChatError, errcode},
};

pub use weapp_proto::metadata::{
    RETRY_AFTER as RETRY_AFTER_KEY, WECHAT_ERRCODE as WECHAT_ERRCODE_KEY,
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    UserData(#[from] UserDataError),
    #[error("invalid or expired session")]
    Unauthenticated,
    #[error(transparent)]
    WeChat(#[from] WeChatError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too many logins for this user; retry in {} s", .0.as_secs().max(1))]
    UserRateLimited(std::time::Duration),
    #[error("internal error: {0}")]
    Internal(String),
}

fn wechat_code(e: &WeChatError) -> Code {
    match e {
        WeChatError::Refused { errcode, .. } => match *errcode {
            errcode::MINUTE_QUOTA => Code::ResourceExhausted,
            errcode::SYSTEM_BUSY => Code::Unavailable,
            // Our AppId/AppSecret are wrong: only an operator can fix that.
            errcode::INVALID_APPID | errcode::INVALID_APPSECRET => Code::FailedPrecondition,
            // 40029 invalid, 40163 used, 40226 blocked, and anything else WeChat refuses.
            _ => Code::PermissionDenied,
        },
        WeChatError::Timeout(_) => Code::DeadlineExceeded,
        WeChatError::Unreachable(_) | WeChatError::HttpStatus(_) => Code::Unavailable,
        WeChatError::Malformed(_) => Code::Internal,
    }
}

impl From<SessionError> for Status {
    fn from(e: SessionError) -> Self {
        let message = e.to_string();
        match e {
            SessionError::InvalidArgument(_) | SessionError::UserData(_) => {
                Status::invalid_argument(message)
            }
            SessionError::Unauthenticated => Status::unauthenticated(message),
            SessionError::UserRateLimited(wait) => {
                let mut status = Status::resource_exhausted(message);
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                if let Ok(v) = MetadataValue::try_from(seconds.max(1).to_string()) {
                    status.metadata_mut().insert(RETRY_AFTER_KEY, v);
                }
                status
            }
            SessionError::WeChat(ref w) => {
                let mut status = Status::new(wechat_code(w), message);
                if let WeChatError::Refused { errcode, .. } = w {
                    if let Ok(v) = MetadataValue::try_from(errcode.to_string()) {
                        status.metadata_mut().insert(WECHAT_ERRCODE_KEY, v);
                    }
                }
                status
            }
            SessionError::Store(StoreError::Unavailable(_)) => Status::unavailable(message),
            SessionError::Store(StoreError::Corrupt(_) | StoreError::Misconfigured(_))
            | SessionError::Internal(_) => {
                tracing::error!(error = %message, "internal error");
                Status::internal("internal error")
            }
        }
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
    fn internal_details_stay_inside() {
        let status: Status =
            SessionError::Store(StoreError::Corrupt("secret detail".into())).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret detail"));
    }
}
