//! The server APIs a mini-program's backend calls most, beyond login — what session-svc's
//! open-API proxy passes through — as the sandbox plays them, each with its documented
//! errors and all behind `?access_token=` (40001/42001 as for every API):
//!
//! * `POST /wxa/msg_sec_check` (content security, v2: `{content, version: 2, scene, openid}`
//!   → `result {suggest, label}`; the openid must be a user of the app, 40003);
//! * `POST /cgi-bin/message/subscribe/send` (`{touser, template_id, page, data}`; each time
//!   the user accepted a template in `wx.requestSubscribeMessage` allows one message, else
//!   43101 "user refuse to accept the msg");
//! * `POST /wxa/getwxacodeunlimit` (`scene` of 1 to 32 characters; the answer is the image's
//!   bytes, a JSON errcode body on error);
//! * `POST /wxa/generate_urllink` (→ `url_link`).
//!
//! Sandbox-only: `POST /sandbox/subscribe` stands for the user accepting a template, and
//! `GET /sandbox/wxa/calls` lists the calls made, with the access_token each carried.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRef, Query, State},
    http::header,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    crypto,
    server_api::{ServerApis, answer, error, ok},
};

/// Words the sandbox's content check finds risky (label 20006, illegal), so a test can get
/// each answer on purpose.
pub const RISKY_WORDS: [&str; 3] = ["sandbox-risky", "赌博", "代开发票"];
/// `scene`'s documented limit, in characters.
const MAX_SCENE: usize = 32;

/// One call to these APIs, as WeChat received it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WxaCall {
    pub path: String,
    pub access_token: Option<String>,
    /// The errcode answered (0 for an image).
    pub errcode: i64,
}

/// A subscribe message WeChat accepted for delivery.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SentMessage {
    pub touser: String,
    pub template_id: String,
    pub data: Value,
}

pub struct WxaApis {
    apis: Arc<ServerApis>,
    state: Mutex<WxaState>,
}

#[derive(Default)]
struct WxaState {
    calls: Vec<WxaCall>,
    /// (openid, template_id) → messages the user still accepts.
    accepted: HashMap<(String, String), u32>,
    sent: Vec<SentMessage>,
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// The user tapped "allow" for a template (`POST /sandbox/subscribe`).
#[derive(Debug, Deserialize, Serialize)]
pub struct Subscription {
    pub openid: String,
    pub template_id: String,
    /// How many messages it allows (one per acceptance, as WeChat's one-time subscriptions).
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

/// The sandbox's mini-program code for `scene` and `page`: a valid PNG (1×1) carrying both in
/// `tEXt` chunks, padded with an ancillary chunk to `width` × 256 bytes of noise so that the
/// image is as large as a real code (hundreds of KB) and has to stream.
pub fn wxacode_image(scene: &str, page: &str, width: u32) -> Vec<u8> {
    fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        png.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_be_bytes());
        let start = png.len();
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        let crc = crc32fast::hash(&png[start..]);
        png.extend_from_slice(&crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    // 1×1, 8-bit RGBA.
    chunk(&mut png, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0]);
    chunk(&mut png, b"tEXt", format!("scene\0{scene}").as_bytes());
    chunk(&mut png, b"tEXt", format!("page\0{page}").as_bytes());
    let mut noise = Vec::with_capacity(width as usize * 256);
    let mut block: [u8; 32] = Sha256::digest(format!("{scene}|{page}|{width}")).into();
    while noise.len() < width as usize * 256 {
        noise.extend_from_slice(&block);
        block = Sha256::digest(block).into();
    }
    chunk(&mut png, b"wxNo", &noise);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

impl WxaApis {
    pub(crate) fn new(apis: Arc<ServerApis>) -> Self {
        Self {
            apis,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, WxaState> {
        // A poisoned lock only means another request panicked; the state is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The calls made so far, oldest first.
    pub fn calls(&self) -> Vec<WxaCall> {
        self.state().calls.clone()
    }

    /// The subscribe messages accepted so far.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.state().sent.clone()
    }

    /// The user accepts `template_id` (`times` messages).
    pub fn subscribe(&self, subscription: Subscription) {
        *self
            .state()
            .accepted
            .entry((subscription.openid, subscription.template_id))
            .or_default() += subscription.times;
    }

    fn record(&self, path: &str, token: Option<&str>, answer: &Value) {
        self.state().calls.push(WxaCall {
            path: path.to_owned(),
            access_token: token.map(str::to_owned),
            errcode: answer.get("errcode").and_then(Value::as_i64).unwrap_or(0),
        });
    }

    /// Checks the token and the JSON body, runs `call`, records it.
    fn json_call(
        &self,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        call: impl FnOnce(&Self, &str, Value) -> Value,
    ) -> Value {
        let answer = match self.apis.token_app(token) {
            Err(refused) => refused,
            Ok(app_id) => match serde_json::from_slice::<Value>(body) {
                Ok(request) if request.is_object() => call(self, &app_id, request),
                _ => error(47001, "data format error"),
            },
        };
        self.record(path, token, &answer);
        answer
    }

    fn msg_sec_check(&self, app_id: &str, request: Value) -> Value {
        let content = request["content"].as_str().unwrap_or_default();
        if content.is_empty() || content.chars().count() > 2500 {
            return error(
                40097,
                "invalid args: content must hold 1 to 2500 characters",
            );
        }
        let risky = RISKY_WORDS.iter().any(|w| content.contains(w));
        if request["version"].as_i64() != Some(2) {
            // Version 1: pass, or 87014 for risky content.
            return match risky {
                true => error(87014, "risky content"),
                false => ok(json!({})),
            };
        }
        let openid = request["openid"].as_str().unwrap_or_default();
        if !self.apis.knows_user(app_id, openid) {
            return error(40003, "invalid openid");
        }
        if !matches!(request["scene"].as_i64(), Some(1..=4)) {
            return error(40097, "invalid args: scene must be 1, 2, 3 or 4");
        }
        let (suggest, label) = match risky {
            true => ("risky", 20006),
            false => ("pass", 100),
        };
        ok(json!({
            "result": { "suggest": suggest, "label": label },
            "detail": [{
                "strategy": "content_model", "errcode": 0,
                "suggest": suggest, "label": label, "prob": if risky { 90 } else { 0 },
            }],
            "trace_id": hex::encode(crypto::random_bytes::<12>()),
        }))
    }

    fn subscribe_send(&self, app_id: &str, request: Value) -> Value {
        let touser = request["touser"].as_str().unwrap_or_default();
        let template_id = request["template_id"].as_str().unwrap_or_default();
        if !self.apis.knows_user(app_id, touser) {
            return error(40003, "invalid openid");
        }
        if template_id.is_empty() {
            return error(40037, "invalid template_id");
        }
        let data = &request["data"];
        let values_ok = data.as_object().is_some_and(|fields| {
            !fields.is_empty() && fields.values().all(|f| f["value"].is_string())
        });
        if !values_ok {
            return error(47003, "argument invalid! data.value invalid");
        }
        let mut state = self.state();
        let key = (touser.to_owned(), template_id.to_owned());
        match state.accepted.get_mut(&key) {
            Some(left) if *left > 0 => *left -= 1,
            _ => return error(43101, "user refuse to accept the msg"),
        }
        state.sent.push(SentMessage {
            touser: key.0,
            template_id: key.1,
            data: data.clone(),
        });
        ok(json!({ "msgid": u64::from_be_bytes(crypto::random_bytes::<8>()) >> 12 }))
    }

    fn generate_urllink(&self, _app_id: &str, request: Value) -> Value {
        let path = request["path"].as_str().unwrap_or_default();
        if path.starts_with('/') || path.contains('?') {
            return error(
                40165,
                "invalid weapp pagepath: no leading / and no query (use the query field)",
            );
        }
        let query = request["query"].as_str().unwrap_or_default();
        if query.len() > 1024 {
            return error(40212, "invalid query: over 1024 characters");
        }
        let id = hex::encode(crypto::random_bytes::<5>());
        ok(json!({ "url_link": format!("https://wxaurl.cn/{id}") }))
    }

    /// getwxacodeunlimit: the image, or a JSON error.
    fn wxacode(&self, token: Option<&str>, body: &[u8]) -> Result<Vec<u8>, Value> {
        let outcome = (|| {
            self.apis.token_app(token)?;
            let request: Value = serde_json::from_slice(body)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| error(47001, "data format error"))?;
            let scene = request["scene"].as_str().unwrap_or_default();
            if scene.is_empty() || scene.chars().count() > MAX_SCENE {
                return Err(error(
                    40169,
                    "invalid length for scene, or the data is not json string",
                ));
            }
            let page = request["page"].as_str().unwrap_or_default();
            if page.starts_with('/') || page.contains('?') {
                return Err(error(41030, "invalid page"));
            }
            let width = request["width"].as_u64().unwrap_or(430).clamp(280, 1280);
            Ok(wxacode_image(scene, page, width as u32))
        })();
        let errcode = match &outcome {
            Ok(_) => json!({ "errcode": 0 }),
            Err(e) => e.clone(),
        };
        self.record("/wxa/getwxacodeunlimit", token, &errcode);
        outcome
    }
}

/// What an API with a JSON body answers, given the app its token belongs to and the body.
type JsonApi = fn(&WxaApis, &str, Value) -> Value;

/// The APIs with a JSON body and a JSON answer, by path.
const JSON_APIS: [(&str, JsonApi); 3] = [
    ("/wxa/msg_sec_check", WxaApis::msg_sec_check),
    ("/cgi-bin/message/subscribe/send", WxaApis::subscribe_send),
    ("/wxa/generate_urllink", WxaApis::generate_urllink),
];

/// These APIs' routes and the sandbox's own, for any state that holds a [`WxaApis`].
pub(crate) fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<WxaApis>: FromRef<S>,
{
    let mut router = Router::new()
        .route("/wxa/getwxacodeunlimit", post(getwxacodeunlimit))
        .route("/sandbox/subscribe", post(subscribe))
        .route("/sandbox/wxa/calls", get(calls));
    for (path, api) in JSON_APIS {
        let handler = move |State(wxa): State<Arc<WxaApis>>,
                            Query(q): Query<TokenQuery>,
                            body: Bytes| async move {
            answer(wxa.json_call(path, q.access_token.as_deref(), &body, api))
        };
        router = router.route(path, post(handler));
    }
    router
}

async fn getwxacodeunlimit(
    State(wxa): State<Arc<WxaApis>>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    match wxa.wxacode(q.access_token.as_deref(), &body) {
        Ok(image) => ([(header::CONTENT_TYPE, "image/png")], image).into_response(),
        Err(refused) => answer(refused),
    }
}

async fn subscribe(
    State(wxa): State<Arc<WxaApis>>,
    Json(subscription): Json<Subscription>,
) -> Response {
    wxa.subscribe(subscription);
    Json(json!({ "ok": true })).into_response()
}

async fn calls(State(wxa): State<Arc<WxaApis>>) -> Response {
    Json(json!({ "calls": wxa.calls(), "sent": wxa.sent() })).into_response()
}
