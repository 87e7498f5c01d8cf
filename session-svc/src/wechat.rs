//! Client for WeChat's `jscode2session`. The only place the AppSecret is used; it travels in
//! the query string WeChat requires, so neither URLs nor reqwest errors (which embed the URL)
//! are ever logged or returned.
use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use url::Url;

/// Largest answer read from WeChat; a real one is under 200 bytes.
const MAX_BODY: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct WeChatSettings {
    pub base_url: Url,
    pub app_id: String,
    pub app_secret: SecretString,
    /// Whole-call budget for one exchange, including waiting for a concurrency slot.
    pub timeout: Duration,
    /// Exchanges in flight at once, so a slow WeChat cannot pile up connections.
    pub max_concurrent: usize,
}

pub use weapp_wire::wechat_answer::{AnswerError, CodeSession, parse_answer};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WeChatError {
    /// WeChat answered with an errcode.
    #[error("WeChat errcode {errcode}: {errmsg}")]
    Refused { errcode: i64, errmsg: String },
    #[error("WeChat did not answer within {0:?}")]
    Timeout(Duration),
    #[error("WeChat is unreachable: {0}")]
    Unreachable(String),
    #[error("WeChat answered HTTP {0}")]
    HttpStatus(u16),
    #[error("WeChat's answer is not in its documented format: {0}")]
    Malformed(String),
}

impl From<AnswerError> for WeChatError {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::Refused { errcode, errmsg } => Self::Refused { errcode, errmsg },
            AnswerError::Malformed(why) => Self::Malformed(why),
        }
    }
}

/// WeChat's errcodes that this service treats specially.
pub mod errcode {
    pub const SYSTEM_BUSY: i64 = -1;
    pub const INVALID_APPSECRET: i64 = 40125;
    pub const INVALID_APPID: i64 = 40013;
    pub const INVALID_CODE: i64 = 40029;
    pub const CODE_USED: i64 = 40163;
    pub const CODE_BLOCKED: i64 = 40226;
    pub const MINUTE_QUOTA: i64 = 45011;
}

pub struct WeChatClient {
    http: reqwest::Client,
    endpoint: Url,
    app_id: String,
    app_secret: SecretString,
    timeout: Duration,
    slots: Arc<Semaphore>,
}

impl WeChatClient {
    pub fn new(settings: &WeChatSettings) -> Result<Self, WeChatError> {
        let endpoint = settings
            .base_url
            .join("sns/jscode2session")
            .map_err(|e| WeChatError::Malformed(format!("bad WeChat base URL: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(3)))
            .pool_max_idle_per_host(settings.max_concurrent)
            .build()
            .map_err(|e| WeChatError::Unreachable(e.without_url().to_string()))?;
        Ok(Self {
            http,
            endpoint,
            app_id: settings.app_id.clone(),
            app_secret: settings.app_secret.clone(),
            timeout: settings.timeout,
            slots: Arc::new(Semaphore::new(settings.max_concurrent)),
        })
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Exchanges a login code. Never retried here: a code is single-use, and a retry after a
    /// lost answer would only turn a success into 40163.
    pub async fn code2session(&self, code: &str) -> Result<CodeSession, WeChatError> {
        tokio::time::timeout(self.timeout, self.exchange(code))
            .await
            .unwrap_or(Err(WeChatError::Timeout(self.timeout)))
    }

    async fn exchange(&self, code: &str) -> Result<CodeSession, WeChatError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| WeChatError::Unreachable("client is shutting down".into()))?;
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("appid", &self.app_id)
            .append_pair("secret", self.app_secret.expose_secret())
            .append_pair("js_code", code)
            .append_pair("grant_type", "authorization_code");
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(WeChatError::HttpStatus(status.as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(WeChatError::Malformed("answer too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(parse_answer(&body)?)
    }

    fn transport_error(&self, e: reqwest::Error) -> WeChatError {
        if e.is_timeout() {
            WeChatError::Timeout(self.timeout)
        } else if e.is_decode() || e.is_body() {
            WeChatError::Malformed(e.without_url().to_string())
        } else {
            WeChatError::Unreachable(e.without_url().to_string())
        }
    }
}
