//! HTTP side of the sandbox: WeChat's `jscode2session` and the sandbox-only mint endpoint; the
//! server APIs called with an access_token are in `server_api.rs`.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt as _,
};
use base64::{
    Engine as _, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::{App, Fault, SandboxConfig};
use crate::{
    crypto,
    server_api::{self, ServerApis},
    wxa::{self, WxaApis},
};

/// The user profile WeChat reveals in `wx.getUserInfo()`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub nick_name: String,
    pub gender: i32,
    pub language: String,
    pub city: String,
    pub province: String,
    pub country: String,
    pub avatar_url: String,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            nick_name: "Sandbox User".into(),
            gender: 1,
            language: "zh_CN".into(),
            city: "Guangzhou".into(),
            province: "Guangdong".into(),
            country: "China".into(),
            avatar_url: "https://sandbox.invalid/avatar.png".into(),
        }
    }
}

/// What `POST /sandbox/mint` takes; every field is optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MintRequest {
    /// App the code belongs to (default: the first registered app).
    pub appid: Option<String>,
    /// The user's openid (default: a new random one, i.e. a new user).
    pub openid: Option<String>,
    /// Include a unionid in the exchange and the user data.
    pub unionid: Option<String>,
    /// Profile inside encryptedData/rawData (default: [`Profile::default`]).
    pub profile: Option<Profile>,
    /// Put another appid in the encrypted data's watermark.
    pub watermark_appid: Option<String>,
    /// Watermark timestamp in Unix seconds (default: now).
    pub watermark_timestamp: Option<i64>,
    /// Make the exchange of this code answer this WeChat errcode instead of succeeding.
    pub errcode: Option<i64>,
    /// Make the exchange of this code misbehave at the transport level.
    pub fault: Option<Fault>,
    /// Delay the answer to the exchange of this code, in milliseconds.
    pub delay_ms: Option<u64>,
    /// More fields for the encrypted user data, as WeChat adds them over time (they win over
    /// the profile's; the ids and the watermark are always the sandbox's).
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What `POST /sandbox/mint` answers: everything a mini-program holds after `wx.login()` and
/// `wx.getUserInfo()`, named as the client SDK names it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintedLogin {
    pub code: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub encrypted_data: String,
    pub iv: String,
    pub raw_data: String,
    pub signature: String,
    pub profile: Profile,
    /// What `encryptedData` decrypts to: the user object wafer kept as
    /// `req.session.userInfo`, and so what `/me` must answer.
    pub decrypted: serde_json::Value,
}

/// How often a code was presented to `jscode2session`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CodeStats {
    pub exchanges: u64,
    pub used: bool,
}

struct CodeEntry {
    app_id: String,
    openid: String,
    unionid: Option<String>,
    session_key_b64: String,
    minted: Instant,
    used: bool,
    exchanges: u64,
    errcode: Option<i64>,
    fault: Option<Fault>,
    delay: Option<Duration>,
}

/// Shared sandbox state; cheap to clone. Tests can mint in-process through it.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

/// The server-API handlers need only their own part of the sandbox.
impl axum::extract::FromRef<Sandbox> for Arc<ServerApis> {
    fn from_ref(sandbox: &Sandbox) -> Self {
        sandbox.inner.apis.clone()
    }
}

/// So do the other server APIs' handlers (`wxa.rs`).
impl axum::extract::FromRef<Sandbox> for Arc<WxaApis> {
    fn from_ref(sandbox: &Sandbox) -> Self {
        sandbox.inner.wxa.clone()
    }
}

/// The codes minted, and the order they were minted in: a mint forgets the expired ones from
/// the front of that order, so it costs the same however many codes are outstanding.
#[derive(Default)]
struct Codes {
    by_code: HashMap<String, CodeEntry>,
    minted: VecDeque<(Instant, String)>,
}

impl Codes {
    fn get(&self, code: &str) -> Option<&CodeEntry> {
        self.by_code.get(code)
    }

    fn get_mut(&mut self, code: &str) -> Option<&mut CodeEntry> {
        self.by_code.get_mut(code)
    }

    /// Forgets codes minted `keep` ago or more (twice their life: long enough to answer an
    /// expired code with 40029 rather than "unknown"), then keeps `entry`.
    fn insert(&mut self, code: String, entry: CodeEntry, keep: Duration) {
        while let Some((minted, _)) = self.minted.front() {
            if minted.elapsed() < keep {
                break;
            }
            if let Some((_, old)) = self.minted.pop_front() {
                self.by_code.remove(&old);
            }
        }
        self.minted.push_back((entry.minted, code.clone()));
        self.by_code.insert(code, entry);
    }
}

struct Inner {
    config: SandboxConfig,
    codes: Mutex<Codes>,
    apis: Arc<ServerApis>,
    wxa: Arc<WxaApis>,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("appid {0} is not registered with the sandbox")]
    UnknownApp(String),
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Self {
        let apis = Arc::new(ServerApis::new(config.clone()));
        Self {
            inner: Arc::new(Inner {
                wxa: Arc::new(WxaApis::new(apis.clone())),
                apis,
                config,
                codes: Mutex::new(Codes::default()),
            }),
        }
    }

    fn codes(&self) -> MutexGuard<'_, Codes> {
        // A poisoned lock only means another request panicked; the map itself is still sound.
        self.inner.codes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// WeChat's server APIs as the sandbox plays them (tokens, phone numbers, session_keys),
    /// for tests to drive and inspect in-process.
    pub fn apis(&self) -> &ServerApis {
        &self.inner.apis
    }

    /// Content security, subscribe messages, mini-program codes and URL links (`wxa.rs`).
    pub fn wxa(&self) -> &WxaApis {
        &self.inner.wxa
    }

    /// Mints a one-time code and the user data that goes with it.
    pub fn mint(&self, req: MintRequest) -> Result<MintedLogin, MintError> {
        let config = &self.inner.config;
        let app_id = match req.appid {
            Some(id) => id,
            None => config
                .apps
                .first()
                .map(|a| a.app_id.clone())
                .ok_or_else(|| MintError::UnknownApp(String::new()))?,
        };
        // Codes for unregistered apps are allowed on purpose: they model a code from another
        // mini-program, which WeChat answers with 40029 when exchanged with our appid.
        let openid = req.openid.unwrap_or_else(|| {
            format!(
                "o{}",
                &URL_SAFE_NO_PAD.encode(crypto::random_bytes::<21>())[..27]
            )
        });
        let profile = req.profile.unwrap_or_default();
        let session_key = crypto::random_bytes::<16>();
        let session_key_b64 = STANDARD.encode(session_key);
        let iv = crypto::random_bytes::<16>();

        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let mut user = serde_json::to_value(&profile).unwrap_or_else(|_| json!({}));
        if let (Some(fields), Some(extra)) = (user.as_object_mut(), &req.extra) {
            fields.extend(extra.clone());
        }
        user["openId"] = json!(openid);
        if let Some(unionid) = &req.unionid {
            user["unionId"] = json!(unionid);
        }
        user["watermark"] = json!({
            "timestamp": req.watermark_timestamp.unwrap_or(now_secs),
            "appid": req.watermark_appid.clone().unwrap_or_else(|| app_id.clone()),
        });
        let encrypted_data = crypto::encrypt(&session_key, &iv, user.to_string().as_bytes());
        let raw_data = serde_json::to_string(&profile).unwrap_or_default();
        let signature = crypto::signature(&raw_data, &session_key_b64);

        let code = format!("sb{}", hex::encode(crypto::random_bytes::<15>()));
        let mut codes = self.codes();
        codes.insert(
            code.clone(),
            CodeEntry {
                app_id,
                openid: openid.clone(),
                unionid: req.unionid.clone(),
                session_key_b64,
                minted: Instant::now(),
                used: false,
                exchanges: 0,
                errcode: req.errcode,
                fault: req.fault,
                delay: req.delay_ms.map(Duration::from_millis),
            },
            config.code_ttl * 2,
        );
        Ok(MintedLogin {
            code,
            openid,
            unionid: req.unionid,
            encrypted_data,
            iv: STANDARD.encode(iv),
            raw_data,
            signature,
            profile,
            decrypted: user,
        })
    }

    /// How often `code` reached `jscode2session`.
    pub fn code_stats(&self, code: &str) -> Option<CodeStats> {
        self.codes().get(code).map(|e| CodeStats {
            exchanges: e.exchanges,
            used: e.used,
        })
    }

    /// The session_key WeChat hands out with `code` (base64), for tests that must check it
    /// never shows up where it should not.
    pub fn session_key(&self, code: &str) -> Option<String> {
        self.codes().get(code).map(|e| e.session_key_b64.clone())
    }

    fn exchange(&self, q: &Code2SessionQuery) -> Exchange {
        let Some(app) = self
            .inner
            .config
            .apps
            .iter()
            .find(|a| Some(a.app_id.as_str()) == q.appid.as_deref())
        else {
            return Exchange::error(40013, "invalid appid");
        };
        if q.secret.as_deref() != Some(app.app_secret.as_str()) {
            return Exchange::error(40125, "invalid appsecret");
        }
        if q.grant_type.as_deref() != Some("authorization_code") {
            return Exchange::error(40002, "invalid grant_type");
        }
        let Some(code) = q.js_code.as_deref().filter(|c| !c.is_empty()) else {
            return Exchange::error(41008, "missing code");
        };
        let ttl = self.inner.config.code_ttl;
        let mut codes = self.codes();
        let Some(entry) = codes.get_mut(code) else {
            return Exchange::error(40029, "invalid code");
        };
        entry.exchanges += 1;
        if entry.app_id != app.app_id || entry.minted.elapsed() > ttl {
            return Exchange::error(40029, "invalid code");
        }
        let delay = entry.delay;
        if let Some(errcode) = entry.errcode {
            let msg = match errcode {
                40226 => "code blocked",
                45011 => "api minute-quota reach limit mustslower retry next minute",
                -1 => "system error",
                _ => "sandbox errcode",
            };
            return Exchange {
                delay,
                ..Exchange::error(errcode, msg)
            };
        }
        if entry.used {
            return Exchange {
                delay,
                ..Exchange::error(40163, "code been used")
            };
        }
        entry.used = true;
        // This login's session_key is now the user's only valid one.
        self.inner
            .apis
            .remember_session_key(&entry.openid, &app.app_id, &entry.session_key_b64);
        if let Some(fault) = entry.fault {
            return Exchange {
                delay,
                body: ExchangeBody::Fault(fault),
            };
        }
        let mut ok = json!({ "openid": entry.openid, "session_key": entry.session_key_b64 });
        if let Some(unionid) = &entry.unionid {
            ok["unionid"] = json!(unionid);
        }
        Exchange {
            delay,
            body: ExchangeBody::Json(ok),
        }
    }
}

enum ExchangeBody {
    Json(serde_json::Value),
    Fault(Fault),
}

struct Exchange {
    delay: Option<Duration>,
    body: ExchangeBody,
}

impl Exchange {
    fn error(errcode: i64, errmsg: &str) -> Self {
        let rid = hex::encode(crypto::random_bytes::<6>());
        Self {
            delay: None,
            body: ExchangeBody::Json(
                json!({ "errcode": errcode, "errmsg": format!("{errmsg}, rid: {rid}") }),
            ),
        }
    }
}

#[derive(Deserialize)]
struct Code2SessionQuery {
    appid: Option<String>,
    secret: Option<String>,
    js_code: Option<String>,
    grant_type: Option<String>,
}

async fn jscode2session(
    State(sandbox): State<Sandbox>,
    Query(q): Query<Code2SessionQuery>,
) -> Response {
    let exchange = sandbox.exchange(&q);
    if let Some(delay) = exchange.delay {
        tokio::time::sleep(delay).await;
    }
    // WeChat answers this endpoint with HTTP 200 and `text/plain`, errors included.
    let text_plain = [(header::CONTENT_TYPE, "text/plain")];
    match exchange.body {
        ExchangeBody::Json(v) => (StatusCode::OK, text_plain, v.to_string()).into_response(),
        ExchangeBody::Fault(Fault::Http500) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>500 Internal Server Error</body></html>",
        )
            .into_response(),
        ExchangeBody::Fault(Fault::Malformed) => (
            StatusCode::OK,
            text_plain,
            "<html>system maintenance</html>",
        )
            .into_response(),
        ExchangeBody::Fault(Fault::Truncated) => (
            StatusCode::OK,
            text_plain,
            r#"{"openid":"o-truncated","session_k"#,
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct MintFormat {
    /// `headers`: answer with the `X-WX-*` login headers, one per line, for `curl -H @file`.
    format: Option<String>,
}

async fn mint(
    State(sandbox): State<Sandbox>,
    Query(format): Query<MintFormat>,
    body: Option<Json<MintRequest>>,
) -> Response {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let minted = match sandbox.mint(req) {
        Ok(minted) => minted,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": e.to_string() })),
            )
                .into_response();
        }
    };
    match format.format.as_deref() {
        Some("headers") => {
            let lines = format!(
                "X-WX-Code: {}\nX-WX-Encrypted-Data: {}\nX-WX-IV: {}\n",
                minted.code, minted.encrypted_data, minted.iv
            );
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain")],
                lines,
            )
                .into_response()
        }
        Some(other) => (
            StatusCode::BAD_REQUEST,
            Json(
                json!({ "error": format!("unknown format {other:?}; use format=headers or none") }),
            ),
        )
            .into_response(),
        None => Json(minted).into_response(),
    }
}

async fn code_stats(State(sandbox): State<Sandbox>, Path(code): Path<String>) -> Response {
    match sandbox.code_stats(&code) {
        Some(stats) => Json(stats).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "unknown code" })),
        )
            .into_response(),
    }
}

/// The sandbox's routes over `sandbox`'s state.
pub fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/sns/jscode2session", get(jscode2session))
        .route("/cgi-bin/token", get(server_api::token))
        .route("/cgi-bin/stable_token", post(server_api::stable_token))
        .route(
            "/wxa/business/getuserphonenumber",
            post(server_api::phone_number),
        )
        .route("/wxa/checksession", get(server_api::check_session))
        .route(
            "/wxa/resetusersessionkey",
            get(server_api::reset_session_key),
        )
        .route("/sandbox/mint", post(mint).get(mint))
        .route("/sandbox/codes/{code}", get(code_stats))
        .route("/sandbox/phone-code", post(server_api::mint_phone_code))
        .route("/sandbox/user-data", post(server_api::user_data))
        .route("/sandbox/tokens/fail", post(server_api::fail_tokens))
        .route("/sandbox/tokens/revoke", post(server_api::revoke_token))
        .route("/sandbox/tokens/stats", get(server_api::token_stats))
        .merge(wxa::routes())
        .with_state(sandbox)
}

/// Serves the sandbox on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    sandbox: Sandbox,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Like WeChat's own servers, answer without Nagle delays.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(sandbox))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(minted: Instant) -> CodeEntry {
        CodeEntry {
            app_id: "wx".into(),
            openid: "o".into(),
            unionid: None,
            session_key_b64: String::new(),
            minted,
            used: false,
            exchanges: 0,
            errcode: None,
            fault: None,
            delay: None,
        }
    }

    #[test]
    fn a_mint_forgets_only_the_codes_past_their_keep_from_the_front() {
        let mut codes = Codes::default();
        let now = Instant::now();
        let long_ago = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        let keep = Duration::from_secs(30);
        codes.insert("old".into(), entry(long_ago), keep);
        codes.insert("recent".into(), entry(now), keep);
        assert!(codes.get("old").is_none(), "expired codes go");
        assert!(codes.get("recent").is_some());
        codes.insert("newest".into(), entry(now), keep);
        assert_eq!(codes.by_code.len(), 2);
        assert_eq!(codes.minted.len(), 2, "the order holds each code once");
    }
}
