//! Client for WeChat's `jscode2session`. The only place the AppSecret is used; it travels in
//! the query string WeChat requires, so neither URLs nor reqwest errors (which embed the URL)
//! are ever logged or returned.
use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
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

/// A successful exchange. `session_key` stays inside session-svc.
pub struct CodeSession {
    pub open_id: String,
    pub union_id: Option<String>,
    pub session_key: SecretString,
}

impl std::fmt::Debug for CodeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeSession")
            .field("union_id", &self.union_id.is_some())
            .finish_non_exhaustive()
    }
}

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

#[derive(Deserialize)]
struct Answer {
    openid: Option<String>,
    session_key: Option<String>,
    unionid: Option<String>,
    errcode: Option<i64>,
    errmsg: Option<String>,
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
        parse_answer(&body)
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

/// Reads a jscode2session answer. WeChat sends `text/plain`, so the body is parsed whatever
/// its content type says.
pub fn parse_answer(body: &[u8]) -> Result<CodeSession, WeChatError> {
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| WeChatError::Malformed(format!("not JSON ({e})")))?;
    if let Some(errcode) = answer.errcode.filter(|c| *c != 0) {
        return Err(WeChatError::Refused {
            errcode,
            errmsg: answer.errmsg.unwrap_or_default(),
        });
    }
    match (answer.openid, answer.session_key) {
        (Some(open_id), Some(session_key)) if !open_id.is_empty() && !session_key.is_empty() => {
            Ok(CodeSession {
                open_id,
                union_id: answer.unionid.filter(|u| !u.is_empty()),
                session_key: SecretString::from(session_key),
            })
        }
        _ => Err(WeChatError::Malformed(
            "openid or session_key missing".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_success_and_errors() {
        let ok = parse_answer(br#"{"openid":"o1","session_key":"a2V5","unionid":"u1"}"#).unwrap();
        assert_eq!(ok.open_id, "o1");
        assert_eq!(ok.union_id.as_deref(), Some("u1"));
        assert_eq!(ok.session_key.expose_secret(), "a2V5");
        assert!(!format!("{ok:?}").contains("a2V5"));

        let err =
            parse_answer(br#"{"errcode":40029,"errmsg":"invalid code, rid: 1"}"#).unwrap_err();
        assert_eq!(
            err,
            WeChatError::Refused {
                errcode: 40029,
                errmsg: "invalid code, rid: 1".into()
            }
        );
        // errcode 0 with the fields present is a success (WeChat sometimes includes it).
        assert!(parse_answer(br#"{"errcode":0,"openid":"o","session_key":"k"}"#).is_ok());
    }

    #[test]
    fn malformed_answers_are_refused() {
        for body in [
            &b"<html>"[..],
            b"{\"openid\":\"o\",\"sess",
            b"{}",
            b"{\"openid\":\"o\"}",
            b"[]",
            b"",
        ] {
            assert!(
                matches!(parse_answer(body), Err(WeChatError::Malformed(_))),
                "{body:?}"
            );
        }
    }
}
