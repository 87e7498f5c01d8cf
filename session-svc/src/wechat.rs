//! Client for WeChat's API: `jscode2session` here, the server APIs that need an access_token
//! in `wechat/server_api.rs`. The only place the AppSecret, access_tokens and session_keys
//! travel; they go in query strings and bodies as WeChat requires, so neither URLs, bodies nor
//! reqwest errors (which embed the URL) are ever logged or returned.
mod passthrough;
mod server_api;

pub use passthrough::{Answer, Passthrough, from_appid, without_access_token, without_fields};
pub use server_api::{FreshToken, session_key_signature};
use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use url::Url;
use weapp_common::{
    config::{duration, positive, secret, secret_file},
    otlp::{FinishedSpan, KeyValue, SpanKind, Spans},
    trace,
};

use crate::{
    apps::{App, Apps},
    metrics::SessionMetrics,
};

/// Largest answer read from WeChat; a real one is under 200 bytes.
const MAX_BODY: usize = 64 * 1024;

/// Who we are to WeChat, and how its API is called.
#[derive(clap::Args, Clone, Debug)]
pub struct WeChatSettings {
    /// The mini-program's AppId, for a deployment of one app (or WEAPP_APPS_FILE).
    #[arg(long, env = "WEAPP_APP_ID", conflicts_with = "apps_file")]
    pub app_id: Option<String>,

    /// The apps file: every mini-program served, with its secret file (README, "Several
    /// mini-programs"). Instead of WEAPP_APP_ID and its secret.
    #[arg(id = "apps_file", value_name = "APPS_FILE", long = "apps-file", env = "WEAPP_APPS_FILE", value_parser = Apps::load)]
    pub apps_file: Option<Apps>,

    /// The mini-program's AppSecret. Environment only (a flag would show in `ps`); prefer
    /// WEAPP_APP_SECRET_FILE.
    #[arg(long, env = "WEAPP_APP_SECRET", hide = true, value_parser = secret, conflicts_with = "app_secret_file")]
    pub app_secret: Option<SecretString>,

    /// File holding the AppSecret (or WEAPP_APP_SECRET in the environment).
    #[arg(long, env = "WEAPP_APP_SECRET_FILE", value_parser = secret_file)]
    pub app_secret_file: Option<SecretString>,

    /// File holding the message-push Token typed into WeChat's console (README, "WeChat's
    /// message push"), for a deployment of one app (an apps file names one per app).
    #[arg(
        long,
        env = "WEAPP_WECHAT_PUSH_TOKEN_FILE",
        conflicts_with = "apps_file"
    )]
    pub push_token_file: Option<std::path::PathBuf>,

    /// File holding the message-push EncodingAESKey (compatible or safe mode).
    #[arg(
        long,
        env = "WEAPP_WECHAT_PUSH_AES_KEY_FILE",
        conflicts_with = "apps_file",
        requires = "push_token_file"
    )]
    pub push_aes_key_file: Option<std::path::PathBuf>,

    /// Base URL of WeChat's API (the sandbox's URL for local runs).
    #[arg(id = "wechat_base_url", value_name = "WECHAT_BASE_URL", long = "wechat-base-url", env = "WEAPP_WECHAT_BASE_URL", default_value = "https://api.weixin.qq.com", value_parser = base_url)]
    pub base_url: Url,

    /// Whole-call budget for one code exchange, waiting for a slot included.
    #[arg(id = "wechat_timeout", value_name = "WECHAT_TIMEOUT", long = "wechat-timeout", env = "WEAPP_WECHAT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub timeout: Duration,

    /// Exchanges in flight at once (a slow WeChat cannot pile up connections); further logins
    /// wait within the timeout.
    #[arg(id = "wechat_max_concurrent", value_name = "WECHAT_MAX_CONCURRENT", long = "wechat-max-concurrent", env = "WEAPP_WECHAT_MAX_CONCURRENT", default_value = "64", value_parser = positive)]
    pub max_concurrent: usize,
}

impl WeChatSettings {
    /// The AppSecret from whichever of its two sources was set.
    pub fn app_secret(&self) -> Option<&SecretString> {
        self.app_secret.as_ref().or(self.app_secret_file.as_ref())
    }

    /// The apps served: the apps file's, or the one app of WEAPP_APP_ID and its secret.
    pub fn apps(&self) -> Result<Apps, String> {
        if let Some(apps) = &self.apps_file {
            if self.app_id.is_some() || self.app_secret().is_some() {
                return Err("WEAPP_APPS_FILE names every app and its secret: unset \
                            WEAPP_APP_ID and WEAPP_APP_SECRET(_FILE) (README, \"Several \
                            mini-programs\", moving to an apps file)"
                    .into());
            }
            return Ok(apps.clone());
        }
        let app_id = self.app_id.as_deref().unwrap_or_default().trim();
        if app_id.is_empty() {
            return Err("no app: set WEAPP_APP_ID (and WEAPP_APP_SECRET_FILE), or \
                        WEAPP_APPS_FILE for several mini-programs"
                .into());
        }
        match self.app_secret() {
            Some(s) if !s.expose_secret().is_empty() => Apps::single(
                app_id,
                s.clone(),
                self.push_token_file
                    .as_deref()
                    .map(|token| (token, self.push_aes_key_file.as_deref())),
            ),
            Some(_) => Err("WEAPP_APP_SECRET is empty".into()),
            None => Err(
                "the AppSecret is missing: set WEAPP_APP_SECRET_FILE (or WEAPP_APP_SECRET)".into(),
            ),
        }
    }

    /// What clap cannot check alone.
    pub fn check(&self) -> Result<(), String> {
        self.apps().map(drop)
    }
}

/// An http(s) URL that API paths can be joined to.
fn base_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err("must be an http:// or https:// URL".into());
    }
    Ok(url)
}

/// Why the WeChat client could not be set up (at start-up, never per request).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("WeChat's API paths cannot be joined to the base URL: {0}")]
    BaseUrl(url::ParseError),
    #[error("the HTTP client cannot be built: {0}")]
    Http(String),
    #[error("{0}")]
    Settings(String),
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

impl WeChatError {
    /// How the metrics name it: the errcode, or what went wrong when there was none.
    pub fn label(&self) -> String {
        match self {
            Self::Refused { errcode, .. } => errcode.to_string(),
            Self::Timeout(_) => "timeout".into(),
            Self::Unreachable(_) => "unreachable".into(),
            Self::HttpStatus(status) => format!("http_{}xx", status / 100),
            Self::Malformed(_) => "malformed".into(),
        }
    }
}

impl From<AnswerError> for WeChatError {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::Refused { errcode, errmsg } => Self::Refused { errcode, errmsg },
            AnswerError::Malformed(why) => Self::Malformed(why),
        }
    }
}

/// WeChat's errcodes that this service treats specially (the rest are refusals of the code).
pub mod errcode {
    pub const SYSTEM_BUSY: i64 = -1;
    pub const INVALID_APPSECRET: i64 = 40125;
    pub const INVALID_APPID: i64 = 40013;
    pub const MINUTE_QUOTA: i64 = 45011;
    /// The access_token is invalid or no longer the latest.
    pub const INVALID_TOKEN: i64 = 40001;
    pub const EXPIRED_TOKEN: i64 = 42001;
    /// The calling server's IP is not on the mini-program's whitelist.
    pub const IP_NOT_WHITELISTED: i64 = 40164;
    /// The API's daily quota (stable_token's forced refreshes included).
    pub const DAILY_QUOTA: i64 = 45009;
    /// checksession/resetusersessionkey: the signature (so the session_key) is not valid.
    pub const INVALID_SIGNATURE: i64 = 87009;
}

pub struct WeChatClient {
    http: reqwest::Client,
    base_url: Url,
    timeout: Duration,
    slots: Arc<Semaphore>,
    metrics: Arc<SessionMetrics>,
    spans: Spans,
}

impl WeChatClient {
    pub fn new(
        settings: &WeChatSettings,
        metrics: Arc<SessionMetrics>,
        spans: Spans,
    ) -> Result<Self, SetupError> {
        // Checked once here, so that joining API paths later cannot fail.
        settings
            .base_url
            .join("sns/jscode2session")
            .map_err(SetupError::BaseUrl)?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(3)))
            .pool_max_idle_per_host(settings.max_concurrent)
            .build()
            .map_err(|e| SetupError::Http(e.without_url().to_string()))?;
        Ok(Self {
            http,
            base_url: settings.base_url.clone(),
            timeout: settings.timeout,
            slots: Arc::new(Semaphore::new(settings.max_concurrent)),
            metrics,
            spans,
        })
    }

    /// The budget of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Bounds a call by the client's timeout, counts it, and (when spans are exported) records
    /// it as a client span of the RPC it serves.
    async fn timed<T>(
        &self,
        endpoint: &'static str,
        call: impl Future<Output = Result<T, WeChatError>>,
    ) -> Result<T, WeChatError> {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(WeChatError::Timeout(self.timeout)));
        let label = match &outcome {
            Ok(_) => "0".to_owned(),
            Err(e) => e.label(),
        };
        self.record(endpoint, label, outcome.is_err(), started);
        outcome
    }

    /// Counts a finished call, and (when spans are exported) records it as a client span of
    /// the request it serves.
    fn record(
        &self,
        endpoint: &'static str,
        label: String,
        failed: bool,
        started: std::time::Instant,
    ) {
        self.metrics
            .wechat_call(endpoint, &label, started.elapsed());
        if let Some(context) = trace::current().filter(|c| self.spans.exports(c)) {
            self.spans.record(FinishedSpan {
                context: context.child(),
                name: format!("WeChat {endpoint}").into(),
                kind: SpanKind::Client,
                started,
                attributes: vec![
                    KeyValue::new("server.address", self.host()),
                    KeyValue::new("wechat.endpoint", endpoint),
                    KeyValue::new("wechat.outcome", label.clone()),
                ],
                error: failed.then_some(label),
            });
        }
    }

    fn host(&self) -> String {
        self.base_url.host_str().unwrap_or_default().to_owned()
    }

    /// Exchanges a login code. Never retried here: a code is single-use, and a retry after a
    /// lost answer would only turn a success into 40163.
    pub async fn code2session(&self, app: &App, code: &str) -> Result<CodeSession, WeChatError> {
        self.timed("jscode2session", self.exchange(app, code)).await
    }

    async fn exchange(&self, app: &App, code: &str) -> Result<CodeSession, WeChatError> {
        let mut url = self.endpoint("sns/jscode2session")?;
        url.query_pairs_mut()
            .append_pair("appid", &app.id)
            .append_pair("secret", app.secret().expose_secret())
            .append_pair("js_code", code)
            .append_pair("grant_type", "authorization_code");
        let body = self.send(self.http.get(url)).await?;
        Ok(parse_answer(&body)?)
    }

    /// The URL of one of WeChat's API paths.
    fn endpoint(&self, path: &str) -> Result<Url, WeChatError> {
        self.base_url
            .join(path)
            .map_err(|e| WeChatError::Unreachable(format!("bad API URL for {path}: {e}")))
    }

    /// Sends one call within a concurrency slot and reads the answer (at most [`MAX_BODY`]).
    /// The caller bounds the time.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, WeChatError> {
        let _slot = self.slot().await?;
        let mut response = request.send().await.map_err(|e| self.transport_error(e))?;
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
        Ok(body)
    }

    /// One of the concurrency slots every call to WeChat holds while it is in flight.
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, WeChatError> {
        self.slots
            .acquire()
            .await
            .map_err(|_| WeChatError::Unreachable("client is shutting down".into()))
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
