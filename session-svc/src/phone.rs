//! Users' phone numbers, as WeChat verifies them: the mini-program's phone button
//! (`<button open-type="getPhoneNumber">`) gives it a one-time code, which session-svc
//! exchanges at `getuserphonenumber` with the access_token. The number is personal data: it
//! is kept on the user's sessions (so Validate answers and forwarded identities carry it),
//! and never logged.
use std::sync::Arc;

use crate::{
    access_token::AccessTokens,
    apps::AppUser,
    credentials::short_hash,
    error::SessionError,
    record::{PhoneNumber, now_millis},
    session::SessionManager,
    wechat::WeChatClient,
};

/// Longest phone code accepted (WeChat's are 64 hex characters).
const MAX_CODE_LEN: usize = 256;

pub struct PhoneNumbers {
    wechat: Arc<WeChatClient>,
    tokens: Arc<AccessTokens>,
    sessions: Arc<SessionManager>,
}

impl PhoneNumbers {
    pub fn new(
        wechat: Arc<WeChatClient>,
        tokens: Arc<AccessTokens>,
        sessions: Arc<SessionManager>,
    ) -> Self {
        Self {
            wechat,
            tokens,
            sessions,
        }
    }

    /// Exchanges a phone code for the user's number and records it on their sessions.
    pub async fn verify(&self, user: &AppUser, code: &str) -> Result<PhoneNumber, SessionError> {
        let open_id = user.open_id.as_str();
        let code = code.trim();
        if code.is_empty() {
            return Err(SessionError::InvalidArgument(
                "the phone code is missing (getPhoneNumber's e.detail.code)".into(),
            ));
        }
        if code.len() > MAX_CODE_LEN || !code.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SessionError::InvalidArgument(
                "the phone code is malformed".into(),
            ));
        }
        let info = self
            .tokens
            .of(&user.app_id)?
            .call(|token| {
                let wechat = self.wechat.clone();
                async move { wechat.phone_number(&token, code, Some(open_id)).await }
            })
            .await?;
        if info.watermark_app_id != *user.app_id {
            return Err(SessionError::InvalidArgument(
                "the phone number's watermark does not name this mini-program".into(),
            ));
        }
        let phone = PhoneNumber {
            phone_number: info.phone_number,
            pure_phone_number: info.pure_phone_number,
            country_code: info.country_code,
            verified_at: now_millis(),
        };
        let sessions = self.sessions.set_phone(open_id, &phone).await?;
        tracing::info!(user = %short_hash(open_id), sessions, "phone number verified");
        Ok(phone)
    }
}
