//! The login flow: check the request, exchange the code with WeChat (once per code, however
//! many identical requests are in flight), check the user data, then create the session. A
//! session is only created when every step succeeded.
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use secrecy::ExposeSecret;
use weapp_common::{config::duration, singleflight::SingleFlight};

use crate::{
    apps::{App, AppUser},
    credentials::{Credentials, short_hash},
    error::SessionError,
    live::LiveConfig,
    login_limit::LoginLimit,
    metrics::SessionMetrics,
    record::{SessionRecord, UserInfo},
    session::SessionManager,
    session_keys::SessionKeys,
    user_data::{self, Expected},
    wechat::{CodeSession, WeChatClient, WeChatError},
};

/// How logins for an app that is not served are counted (the label set stays the apps
/// file's, whatever clients send).
const UNKNOWN_APP: &str = "unknown";

/// Longest login code accepted (WeChat's are 32 characters).
const MAX_CODE_LEN: usize = 128;

/// What a login must satisfy beyond WeChat's word.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct LoginPolicy {
    /// Encrypted user data whose watermark is further than this from now is refused.
    #[arg(id = "login_max_data_age", value_name = "LOGIN_MAX_DATA_AGE", long = "login-max-data-age", env = "WEAPP_LOGIN_MAX_DATA_AGE", default_value = "10m", value_parser = duration)]
    pub max_data_age: Duration,

    /// Sessions one user (openId) may create a minute; more logins get RESOURCE_EXHAUSTED
    /// (0: no limit). A client stuck in a login loop, or a stolen account being farmed, stops
    /// filling the store.
    #[arg(
        id = "login_rate_per_user",
        long = "login-rate-per-user",
        env = "WEAPP_LOGIN_RATE_PER_USER",
        default_value_t = 20
    )]
    pub max_per_user_per_minute: u32,
}

impl LoginPolicy {
    /// The defaults written on the arguments above, as shipped (environment ignored).
    pub fn shipped() -> Result<Self, clap::Error> {
        weapp_common::config::defaults()
    }
}

/// A login as the client sent it.
#[derive(Clone, Debug, Default)]
pub struct LoginInput {
    pub code: String,
    pub encrypted_data: Option<String>,
    pub iv: Option<String>,
    pub raw_data: Option<String>,
    pub signature: Option<String>,
    /// The app the gateway decided the login is for (empty: the default app).
    pub app_id: String,
}

type Exchange = Result<Arc<CodeSession>, WeChatError>;

pub struct LoginService {
    wechat: Arc<WeChatClient>,
    live: Arc<LiveConfig>,
    sessions: Arc<SessionManager>,
    session_keys: Arc<SessionKeys>,
    metrics: Arc<SessionMetrics>,
    policy: LoginPolicy,
    in_flight: SingleFlight<String, Exchange>,
    per_user: LoginLimit,
}

/// Present-and-non-empty, so that an empty header counts as absent.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl LoginService {
    pub fn new(
        (wechat, live): (Arc<WeChatClient>, Arc<LiveConfig>),
        sessions: Arc<SessionManager>,
        session_keys: Arc<SessionKeys>,
        (policy, metrics, per_user): (LoginPolicy, Arc<SessionMetrics>, LoginLimit),
    ) -> Self {
        Self {
            metrics,
            wechat,
            live,
            sessions,
            session_keys,
            policy,
            in_flight: SingleFlight::default(),
            per_user,
        }
    }

    /// Counts a login of `open_id`; refuses it past the per-user rate.
    async fn admit_user(&self, open_id: &str) -> Result<(), SessionError> {
        self.per_user.admit(open_id).await.inspect_err(|e| {
            if matches!(e, SessionError::UserRateLimited(_)) {
                self.metrics.login_rate_limited.increment(1);
                tracing::info!(user = %short_hash(open_id), "login refused: too many for this user");
            }
        })
    }

    /// Logs in, counting the outcome.
    pub async fn login(
        &self,
        input: LoginInput,
    ) -> Result<(Credentials, SessionRecord), SessionError> {
        // The app first: a login for an app not served ends here, before WeChat is called.
        let app = self.live.apps().resolve(&input.app_id);
        let label = match &app {
            Ok(app) => app.id.clone(),
            Err(_) => Arc::from(UNKNOWN_APP),
        };
        let outcome = match app {
            Ok(app) => self.log_in(input, &app).await,
            Err(e) => Err(SessionError::from(e)),
        };
        self.metrics.login(
            &label,
            match &outcome {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            },
        );
        outcome
    }

    async fn log_in(
        &self,
        input: LoginInput,
        app: &Arc<App>,
    ) -> Result<(Credentials, SessionRecord), SessionError> {
        let code = input.code.trim();
        if code.is_empty() {
            return Err(SessionError::InvalidArgument(
                "the login code (X-WX-Code) is missing".into(),
            ));
        }
        if code.len() > MAX_CODE_LEN || !code.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SessionError::InvalidArgument(
                "the login code (X-WX-Code) is malformed".into(),
            ));
        }
        // Everything that can be checked without the session_key is checked before the
        // single-use code is spent.
        let encrypted = match (given(&input.encrypted_data), given(&input.iv)) {
            (Some(data), Some(iv)) => Some(user_data::precheck_encrypted(data, iv)?),
            (None, None) => None,
            _ => {
                return Err(SessionError::InvalidArgument(
                    "encryptedData and iv must be sent together".into(),
                ));
            }
        };
        let signed = match (given(&input.raw_data), given(&input.signature)) {
            (Some(raw), Some(sig)) => {
                user_data::precheck_signature(raw, sig)?;
                Some((raw, sig))
            }
            (None, None) => None,
            _ => {
                return Err(SessionError::InvalidArgument(
                    "rawData and signature must be sent together".into(),
                ));
            }
        };

        let exchanged = self.exchange(app, code).await?;
        self.admit_user(&exchanged.open_id).await?;
        let session_key = exchanged.session_key.expose_secret();

        let mut user = match encrypted {
            Some((ciphertext, iv)) => {
                let plaintext = user_data::decrypt(session_key, &ciphertext, &iv)?;
                let now_secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or_default();
                user_data::parse_decrypted(
                    &plaintext,
                    &Expected {
                        app_id: &app.id,
                        open_id: &exchanged.open_id,
                        union_id: exchanged.union_id.as_deref(),
                        now_secs,
                        max_age: self.policy.max_data_age,
                    },
                )?
            }
            None => UserInfo::code_only(&exchanged.open_id, exchanged.union_id.as_deref()),
        };
        if let Some((raw, sig)) = signed {
            user_data::verify_signature(raw, session_key, sig)?;
            user_data::merge_raw_profile(&mut user, raw)?;
        }

        // The user's latest session_key replaces the one kept from their previous login
        // (WeChat has just invalidated it), before the session exists: no session is created
        // whose user's key could not be kept.
        let user_of_app = AppUser {
            app_id: app.id.clone(),
            open_id: exchanged.open_id.clone(),
        };
        self.session_keys
            .remember(&user_of_app, &exchanged.session_key, false)
            .await?;
        let (credentials, record) = self.sessions.create(user, &app.id).await?;
        tracing::info!(
            app = %app.name,
            session = %short_hash(&record.id),
            user = %short_hash(record.user.open_id()),
            "login succeeded"
        );
        Ok((credentials, record))
    }

    /// One WeChat exchange per code in flight: double taps and client retries share it (a
    /// code sent for two apps is two exchanges: at most one can succeed).
    async fn exchange(&self, app: &Arc<App>, code: &str) -> Result<Arc<CodeSession>, SessionError> {
        let wechat = self.wechat.clone();
        let owned = code.to_owned();
        let key = format!("{}\n{code}", app.id);
        let app = app.clone();
        let outcome = self
            .in_flight
            .run(key, async move {
                wechat.code2session(&app, &owned).await.map(Arc::new)
            })
            .await
            .ok_or_else(|| SessionError::Internal("the WeChat exchange task failed".into()))?;
        outcome.map_err(|e| {
            tracing::warn!(error = %e, "WeChat code exchange failed");
            SessionError::WeChat(e)
        })
    }
}
