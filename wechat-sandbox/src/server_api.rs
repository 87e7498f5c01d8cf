//! WeChat's server APIs as the sandbox plays them: access tokens (`cgi-bin/token` and
//! `cgi-bin/stable_token`, two separate families), `getuserphonenumber`, `checksession` and
//! `resetusersessionkey`, with their documented errors; plus sandbox-only endpoints to mint a
//! phone code, encrypt user data (WeRun-style) with a user's current session_key, make token
//! calls fail, revoke a token, and count the calls.
//!
//! Token facts modelled (WeChat's documentation): stable_token's normal mode answers the
//! current token with its *remaining* lifetime and issues the next one only in the current
//! one's last 300 s (both stay valid until each one's end); `force_refresh` issues a new one at
//! once and leaves the old five minutes, at most 20 a day and 30 s apart; a form-encoded body
//! is 41002. Only a user's latest session_key is valid, and checksession/resetusersessionkey
//! sign the empty string with HMAC-SHA256 keyed by the session_key's base64 text.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json,
    body::Bytes,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    config::{Fault, SandboxConfig},
    crypto,
};

const FORCE_PER_DAY: usize = 20;
const FORCE_INTERVAL: Duration = Duration::from_secs(30);
const ROTATION_WINDOW: Duration = Duration::from_secs(300);
const FORCE_GRACE: Duration = Duration::from_secs(300);
const PHONE_CODE_TTL: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Stable,
    Plain,
}

struct Issued {
    family: Family,
    app_id: String,
    expires: Instant,
    revoked: bool,
}

struct PhoneCode {
    app_id: String,
    openid: String,
    phone_number: String,
    pure_phone_number: String,
    country_code: String,
    country_code_as_number: bool,
    minted: Instant,
    used: bool,
}

/// A failure the next token calls answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenFailure {
    Errcode(i64),
    Fault(Fault),
}

/// How often the token endpoints were called.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStats {
    /// `POST /cgi-bin/stable_token` calls (both modes, failures included).
    pub stable_token: u64,
    /// Of those, with `force_refresh: true`.
    pub stable_token_forced: u64,
    /// `GET /cgi-bin/token` calls.
    pub token: u64,
    /// getuserphonenumber, checksession and resetusersessionkey calls answered 40001/42001.
    pub refused_tokens: u64,
}

/// WeChat's server APIs as the sandbox plays them; in-process methods for tests to drive and
/// inspect them.
pub struct ServerApis {
    config: SandboxConfig,
    state: Mutex<ApiState>,
}

#[derive(Default)]
struct ApiState {
    tokens: HashMap<String, Issued>,
    /// The current stable token of each app.
    stable_current: HashMap<String, String>,
    forced_at: Vec<Instant>,
    failures: VecDeque<TokenFailure>,
    stats: TokenStats,
    phone_codes: HashMap<String, PhoneCode>,
    /// openid → (appid, base64 session_key): each user's latest.
    session_keys: HashMap<String, (String, String)>,
    /// `stable_token` calls that named an app, by its appid.
    stable_token_by_app: HashMap<String, u64>,
}

pub(crate) fn error(errcode: i64, errmsg: &str) -> Value {
    let rid = hex::encode(crypto::random_bytes::<6>());
    json!({ "errcode": errcode, "errmsg": format!("{errmsg}, rid: {rid}") })
}

pub(crate) fn ok(mut fields: Value) -> Value {
    fields["errcode"] = json!(0);
    fields["errmsg"] = json!("ok");
    fields
}

fn new_token() -> String {
    // Real tokens are ~150 characters of [A-Za-z0-9_-]; the prefix says where it came from.
    format!("sbtok_{}", hex::encode(crypto::random_bytes::<48>()))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The signature checksession/resetusersessionkey expect, computed independently of
/// session-svc's code.
fn expected_signature(session_key_b64: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(session_key_b64.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"");
    hex::encode(mac.finalize().into_bytes())
}

impl ApiState {
    fn issue(&mut self, family: Family, app_id: &str, ttl: Duration) -> (String, Duration) {
        let token = new_token();
        self.tokens.insert(
            token.clone(),
            Issued {
                family,
                app_id: app_id.to_owned(),
                expires: Instant::now() + ttl,
                revoked: false,
            },
        );
        self.tokens
            .retain(|_, t| t.expires + Duration::from_secs(60) > Instant::now());
        if family == Family::Stable {
            self.stable_current.insert(app_id.to_owned(), token.clone());
        }
        (token, ttl)
    }

    /// 40001 for a token WeChat does not know (or revoked), 42001 for an expired one.
    fn check_token(&mut self, token: Option<&str>) -> Result<String, Value> {
        let refused = match token.and_then(|t| self.tokens.get(t)) {
            None => error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            ),
            Some(t) if t.revoked => error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            ),
            Some(t) if t.expires <= Instant::now() => error(42001, "access_token expired"),
            Some(t) => return Ok(t.app_id.clone()),
        };
        self.stats.refused_tokens += 1;
        Err(refused)
    }
}

impl ServerApis {
    pub(crate) fn new(config: SandboxConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
        }
    }

    fn apis(&self) -> MutexGuard<'_, ApiState> {
        // A poisoned lock only means another request panicked; the state is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn default_app_id(&self) -> String {
        self.config
            .apps
            .first()
            .map(|a| a.app_id.clone())
            .unwrap_or_default()
    }

    /// WeChat's checks of an appid and secret: 40013, then 40125.
    fn check_app(&self, app_id: &str, secret: Option<&str>) -> Result<(), Value> {
        let Some(app) = self.config.apps.iter().find(|a| a.app_id == app_id) else {
            return Err(error(40013, "invalid appid"));
        };
        if secret != Some(app.app_secret.as_str()) {
            return Err(error(40125, "invalid appsecret"));
        }
        Ok(())
    }

    /// The app a token belongs to, or WeChat's answer to a bad one (40001/42001), as every
    /// API that takes `?access_token=` checks it.
    pub(crate) fn token_app(&self, token: Option<&str>) -> Result<String, Value> {
        self.apis().check_token(token)
    }

    /// Whether `openid` has logged in to `app_id` (WeChat knows the user).
    pub(crate) fn knows_user(&self, app_id: &str, openid: &str) -> bool {
        self.apis()
            .session_keys
            .get(openid)
            .is_some_and(|(app, _)| app == app_id)
    }

    pub(crate) fn remember_session_key(&self, openid: &str, app_id: &str, key_b64: &str) {
        self.apis()
            .session_keys
            .insert(openid.to_owned(), (app_id.to_owned(), key_b64.to_owned()));
    }

    /// How often the token endpoints were called.
    /// `stable_token` calls made for `app_id` (each app's central control server's).
    pub fn stable_token_calls(&self, app_id: &str) -> u64 {
        self.apis()
            .stable_token_by_app
            .get(app_id)
            .copied()
            .unwrap_or_default()
    }

    /// The app an access_token was issued to (any family, expired or not).
    pub fn app_of_token(&self, token: &str) -> Option<String> {
        self.apis().tokens.get(token).map(|t| t.app_id.clone())
    }

    pub fn token_stats(&self) -> TokenStats {
        self.apis().stats
    }

    /// The next `times` token calls (stable_token or token) answer `failure`.
    pub fn fail_token_calls(&self, failure: TokenFailure, times: usize) {
        let mut apis = self.apis();
        apis.failures.clear();
        apis.failures.extend(std::iter::repeat_n(failure, times));
    }

    /// WeChat stops accepting `token` (40001), as after a secret reset or a fork; the app's
    /// next normal-mode stable_token gets a new one. The current stable token when `None`.
    pub fn revoke_token(&self, token: Option<&str>) -> bool {
        let mut apis = self.apis();
        let token = match token {
            Some(t) => Some(t.to_owned()),
            None => apis.stable_current.values().next().cloned(),
        };
        match token.and_then(|t| apis.tokens.get_mut(&t)) {
            Some(issued) => {
                issued.revoked = true;
                true
            }
            None => false,
        }
    }

    /// The session_key WeChat holds as the user's latest (base64), once they have logged in.
    pub fn current_session_key(&self, openid: &str) -> Option<String> {
        self.apis().session_keys.get(openid).map(|(_, k)| k.clone())
    }

    /// A one-time phone code for a user, as the getPhoneNumber button gives it.
    pub fn mint_phone_code(&self, req: PhoneCodeRequest) -> MintedPhoneCode {
        let app_id = req.appid.unwrap_or_else(|| self.default_app_id());
        let country_code = req.country_code.unwrap_or_else(|| "86".into());
        let pure = req.pure_phone_number.unwrap_or_else(|| {
            let n = u64::from_le_bytes(crypto::random_bytes::<8>()) % 1_000_000_000;
            format!("13{n:09}")
        });
        let phone_number = if country_code == "86" {
            pure.clone()
        } else {
            format!("+{country_code} {pure}")
        };
        let code = hex::encode(crypto::random_bytes::<32>());
        self.apis().phone_codes.insert(
            code.clone(),
            PhoneCode {
                app_id,
                openid: req.openid.clone().unwrap_or_default(),
                phone_number: phone_number.clone(),
                pure_phone_number: pure.clone(),
                country_code: country_code.clone(),
                country_code_as_number: req.country_code_as_number,
                minted: Instant::now(),
                used: false,
            },
        );
        MintedPhoneCode {
            code,
            phone_number,
            pure_phone_number: pure,
            country_code,
        }
    }

    /// `data` (plus a watermark) encrypted with the user's current session_key, as
    /// `wx.getWeRunData` and the share APIs hand it to the mini-program. `None` when the user
    /// has never logged in.
    pub fn encrypt_user_data(&self, req: UserDataRequest) -> Option<EncryptedUserData> {
        let (app_id, key_b64) = self.apis().session_keys.get(&req.openid)?.clone();
        let key: [u8; 16] = STANDARD.decode(&key_b64).ok()?.try_into().ok()?;
        let mut data = req.data.unwrap_or_else(|| {
            let now = unix_now();
            json!({ "stepInfoList": [
                { "timestamp": now - now.rem_euclid(86_400) - 86_400, "step": 8_412 },
                { "timestamp": now - now.rem_euclid(86_400), "step": 1_234 },
            ]})
        });
        if !data.is_object() {
            return None;
        }
        data["watermark"] = json!({
            "timestamp": unix_now(),
            "appid": req.watermark_appid.unwrap_or(app_id),
        });
        let iv = crypto::random_bytes::<16>();
        Some(EncryptedUserData {
            encrypted_data: crypto::encrypt(&key, &iv, data.to_string().as_bytes()),
            iv: STANDARD.encode(iv),
            decrypted: data,
        })
    }

    fn stable_token(&self, body: &[u8]) -> Value {
        let mut apis = self.apis();
        apis.stats.stable_token += 1;
        // WeChat reads a JSON body only: a form-encoded one finds no appid.
        let Ok(request) = serde_json::from_slice::<StableTokenRequest>(body) else {
            return error(41002, "appid missing");
        };
        if request.force_refresh {
            apis.stats.stable_token_forced += 1;
        }
        if let Some(app_id) = &request.appid {
            *apis.stable_token_by_app.entry(app_id.clone()).or_default() += 1;
        }
        if let Some(failure) = apis.failures.pop_front() {
            return failure_answer(failure);
        }
        let Some(app_id) = request.appid.filter(|a| !a.is_empty()) else {
            return error(41002, "appid missing");
        };
        if let Err(refused) = self.check_app(&app_id, request.secret.as_deref()) {
            return refused;
        }
        if request.grant_type.as_deref() != Some("client_credential") {
            return error(40002, "invalid grant_type");
        }
        let ttl = self.config.token_ttl;
        let now = Instant::now();
        let current = apis
            .stable_current
            .get(&app_id)
            .and_then(|t| apis.tokens.get(t).map(|i| (t.clone(), i)))
            .filter(|(_, i)| !i.revoked && i.expires > now)
            .map(|(t, i)| (t, i.expires - now));
        if request.force_refresh {
            apis.forced_at
                .retain(|t| t.elapsed() < Duration::from_secs(86_400));
            if apis.forced_at.len() >= FORCE_PER_DAY {
                return error(45009, "reach max api daily quota limit");
            }
            if apis.forced_at.iter().any(|t| t.elapsed() < FORCE_INTERVAL) {
                return error(
                    45011,
                    "api minute-quota reach limit, force refresh 30s apart",
                );
            }
            apis.forced_at.push(now);
            if let Some((old, left)) = &current {
                if let Some(issued) = apis.tokens.get_mut(old) {
                    issued.expires = now + (*left).min(FORCE_GRACE);
                }
            }
            let (token, ttl) = apis.issue(Family::Stable, &app_id, ttl);
            return json!({ "access_token": token, "expires_in": ttl.as_secs() });
        }
        match current {
            Some((token, left)) if left > ROTATION_WINDOW.min(ttl / 2) => {
                json!({ "access_token": token, "expires_in": left.as_secs() })
            }
            _ => {
                let (token, ttl) = apis.issue(Family::Stable, &app_id, ttl);
                json!({ "access_token": token, "expires_in": ttl.as_secs() })
            }
        }
    }

    fn plain_token(&self, q: &TokenQuery) -> Value {
        let mut apis = self.apis();
        apis.stats.token += 1;
        if let Some(failure) = apis.failures.pop_front() {
            return failure_answer(failure);
        }
        let Some(app_id) = q.appid.as_deref().filter(|a| !a.is_empty()) else {
            return error(41002, "appid missing");
        };
        if let Err(refused) = self.check_app(app_id, q.secret.as_deref()) {
            return refused;
        }
        if q.grant_type.as_deref() != Some("client_credential") {
            return error(40002, "invalid grant_type");
        }
        // Every call issues a new token and the previous one of this family stops (the
        // behaviour that makes several refreshers invalidate each other).
        for issued in apis.tokens.values_mut() {
            if issued.family == Family::Plain && issued.app_id == app_id {
                issued.revoked = true;
            }
        }
        let (token, ttl) = apis.issue(Family::Plain, app_id, self.config.token_ttl);
        json!({ "access_token": token, "expires_in": ttl.as_secs() })
    }

    fn phone_number(&self, access_token: Option<&str>, body: &[u8]) -> Value {
        let mut apis = self.apis();
        let app_id = match apis.check_token(access_token) {
            Ok(app_id) => app_id,
            Err(refused) => return refused,
        };
        let Ok(request) = serde_json::from_slice::<PhoneRequest>(body) else {
            return error(47001, "data format error");
        };
        let Some(code) = apis.phone_codes.get_mut(&request.code) else {
            return error(40029, "invalid code");
        };
        let foreign_user = request
            .openid
            .as_deref()
            .is_some_and(|o| !code.openid.is_empty() && o != code.openid);
        if code.used
            || code.app_id != app_id
            || code.minted.elapsed() > PHONE_CODE_TTL
            || foreign_user
        {
            return error(40029, "invalid code");
        }
        code.used = true;
        let country_code = if code.country_code_as_number {
            json!(code.country_code.parse::<u64>().unwrap_or_default())
        } else {
            json!(code.country_code)
        };
        ok(json!({ "phone_info": {
            "phoneNumber": code.phone_number,
            "purePhoneNumber": code.pure_phone_number,
            "countryCode": country_code,
            "watermark": { "timestamp": unix_now(), "appid": app_id },
        }}))
    }

    /// checksession and resetusersessionkey: the token, then the signature over "".
    fn signed_user_call(&self, q: &SignedQuery, reset: bool) -> Value {
        let mut apis = self.apis();
        let app_id = match apis.check_token(q.access_token.as_deref()) {
            Ok(app_id) => app_id,
            Err(refused) => return refused,
        };
        if q.sig_method.as_deref() != Some("hmac_sha256") {
            return error(87008, "invalid sig_method");
        }
        let openid = q.openid.as_deref().unwrap_or_default();
        let valid = apis
            .session_keys
            .get(openid)
            .filter(|(app, _)| *app == app_id)
            .is_some_and(|(_, key)| Some(expected_signature(key)) == q.signature);
        if !valid {
            return error(87009, "invalid signature");
        }
        if !reset {
            return ok(json!({}));
        }
        let key = STANDARD.encode(crypto::random_bytes::<16>());
        apis.session_keys
            .insert(openid.to_owned(), (app_id, key.clone()));
        ok(json!({ "openid": openid, "session_key": key }))
    }
}

fn failure_answer(failure: TokenFailure) -> Value {
    match failure {
        TokenFailure::Errcode(errcode) => error(
            errcode,
            match errcode {
                40164 => "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist",
                45009 => "reach max api daily quota limit",
                40001 => "invalid credential, access_token is invalid or not latest",
                40125 => "invalid appsecret",
                -1 => "system error",
                _ => "sandbox errcode",
            },
        ),
        TokenFailure::Fault(_) => json!({ "sandbox_fault": true }),
    }
}

#[derive(Deserialize)]
struct StableTokenRequest {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    force_refresh: bool,
}

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct AccessTokenQuery {
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct PhoneRequest {
    code: String,
    openid: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct SignedQuery {
    access_token: Option<String>,
    openid: Option<String>,
    signature: Option<String>,
    sig_method: Option<String>,
}

/// What `POST /sandbox/phone-code` takes; every field is optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PhoneCodeRequest {
    pub appid: Option<String>,
    /// The user the code belongs to (getuserphonenumber refuses it for another openid).
    pub openid: Option<String>,
    /// Default: a random mainland number.
    pub pure_phone_number: Option<String>,
    /// Default "86".
    pub country_code: Option<String>,
    /// Answer `countryCode` as a JSON number, as WeChat sometimes does.
    pub country_code_as_number: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintedPhoneCode {
    pub code: String,
    pub phone_number: String,
    pub pure_phone_number: String,
    pub country_code: String,
}

/// What `POST /sandbox/user-data` takes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct UserDataRequest {
    pub openid: String,
    /// The object to encrypt (default: two days of WeRun steps); a watermark is added.
    pub data: Option<Value>,
    /// Put another appid in the watermark.
    pub watermark_appid: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedUserData {
    pub encrypted_data: String,
    pub iv: String,
    /// What it decrypts to.
    pub decrypted: Value,
}

/// WeChat answers these endpoints with HTTP 200 and JSON, errors included.
pub(crate) fn answer(value: Value) -> Response {
    if value.get("sandbox_fault").is_some() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "<html><body>500 Internal Server Error</body></html>",
        )
            .into_response();
    }
    Json(value).into_response()
}

pub(crate) async fn stable_token(State(sandbox): State<Arc<ServerApis>>, body: Bytes) -> Response {
    answer(sandbox.stable_token(&body))
}

pub(crate) async fn token(
    State(sandbox): State<Arc<ServerApis>>,
    Query(q): Query<TokenQuery>,
) -> Response {
    answer(sandbox.plain_token(&q))
}

pub(crate) async fn phone_number(
    State(sandbox): State<Arc<ServerApis>>,
    Query(q): Query<AccessTokenQuery>,
    body: Bytes,
) -> Response {
    answer(sandbox.phone_number(q.access_token.as_deref(), &body))
}

pub(crate) async fn check_session(
    State(sandbox): State<Arc<ServerApis>>,
    Query(q): Query<SignedQuery>,
) -> Response {
    answer(sandbox.signed_user_call(&q, false))
}

pub(crate) async fn reset_session_key(
    State(sandbox): State<Arc<ServerApis>>,
    Query(q): Query<SignedQuery>,
) -> Response {
    answer(sandbox.signed_user_call(&q, true))
}

pub(crate) async fn mint_phone_code(
    State(sandbox): State<Arc<ServerApis>>,
    body: Option<Json<PhoneCodeRequest>>,
) -> Response {
    let request = body.map(|Json(r)| r).unwrap_or_default();
    Json(sandbox.mint_phone_code(request)).into_response()
}

pub(crate) async fn user_data(
    State(sandbox): State<Arc<ServerApis>>,
    Json(request): Json<UserDataRequest>,
) -> Response {
    match sandbox.encrypt_user_data(request) {
        Some(encrypted) => Json(encrypted).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no session_key for this openid (log the user in first), or data is not an object" })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct FailRequest {
    errcode: Option<i64>,
    fault: Option<Fault>,
    #[serde(default = "one")]
    times: usize,
}

fn one() -> usize {
    1
}

pub(crate) async fn fail_tokens(
    State(sandbox): State<Arc<ServerApis>>,
    Json(request): Json<FailRequest>,
) -> Response {
    let failure = match (request.errcode, request.fault) {
        (Some(errcode), None) => TokenFailure::Errcode(errcode),
        (None, Some(fault)) => TokenFailure::Fault(fault),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "give errcode or fault" })),
            )
                .into_response();
        }
    };
    sandbox.fail_token_calls(failure, request.times);
    Json(json!({ "failing": request.times })).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct RevokeRequest {
    access_token: Option<String>,
}

pub(crate) async fn revoke_token(
    State(sandbox): State<Arc<ServerApis>>,
    body: Option<Json<RevokeRequest>>,
) -> Response {
    let request = body.map(|Json(r)| r).unwrap_or_default();
    let revoked = sandbox.revoke_token(request.access_token.as_deref());
    Json(json!({ "revoked": revoked })).into_response()
}

pub(crate) async fn token_stats(State(sandbox): State<Arc<ServerApis>>) -> Response {
    Json(sandbox.token_stats()).into_response()
}
