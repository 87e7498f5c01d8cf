//! WeChat's message push on the shipped binaries, sent as WeChat's servers send it: every
//! request is signed and encrypted by `tests/wechat/sender.py`, written from WeChat's
//! documentation and sharing no code with weapp. A recording upstream receives the events; it
//! checks the assertion with PyJWT against the gateway's JWKS (`tests/wechat/verify_assertion.py`).
//!
//! * `events_are_verified_kept_and_delivered_once`: two session-svc replicas on one
//!   MongoDB-wire store (nx-27017), one gateway, three apps (safe mode, safe mode, plaintext):
//!   the URL check, XML and JSON events, every kind of forgery, WeChat's retries, an upstream
//!   that is down, the metrics, and no secret in any log.
//! * `wechats_worked_example_is_delivered_and_dead_letters_are_requeued`: WeChat's own worked
//!   example, byte for byte (a freshness window wide enough for its 2014 timestamp), on the
//!   embedded store, with no upstream until its delivery is a dead letter; `session-svc admin`
//!   lists it and requeues it.
use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use weapp_tests::{
    WeChat,
    mongo::MongoServer,
    ports::Port,
    services::{ServiceProcess, binary},
    upstream::Upstream,
};

/// WeChat's worked example ("message encryption and decryption" in its documentation).
const EXAMPLE_APP: &str = "wx2c2769f8efd9abc2";
const EXAMPLE_TOKEN: &str = "spamtest";
const EXAMPLE_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const EXAMPLE_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";
/// What WeChat's URL check asks to be echoed (quotes, spaces and `+`: a framework that quotes
/// or re-encodes it fails the check).
const ECHOSTR: &str = "7302946531203417\"quoted\" & 4+2=6";
const EXAMPLE_MSG_SIGNATURE: &str = "5d197aaffba7e9b25a30732f161a50dee96bd5fa";

fn python() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../target/test-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: scripts/test.sh installs tests/requirements.txt there",
        python.display()
    );
    python
}

/// Runs one of `tests/wechat/*.py` with `input` on stdin; its JSON output.
fn run_python(script: &str, input: &Value) -> Value {
    use std::io::Write as _;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new(python())
        .arg(root.join("wechat").join(script))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn random_alnum(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).unwrap();
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

fn random_app_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    format!("wx{}", hex::encode(bytes))
}

/// One mini-program's message-push settings, as typed into WeChat's console.
#[derive(Clone)]
struct Console {
    app_id: String,
    token: String,
    /// None: plaintext mode.
    key: Option<String>,
}

impl Console {
    fn new(app_id: String, key: bool) -> Self {
        Self {
            app_id,
            token: random_alnum(24),
            key: key.then(|| random_alnum(43)),
        }
    }

    /// What WeChat's servers send: `mode` is url_check, plaintext, compatible or safe.
    fn request(
        &self,
        mode: &str,
        format: &str,
        fields: &Value,
        (timestamp, nonce): (u64, &str),
    ) -> Signed {
        let signed = run_python(
            "sender.py",
            &json!({
                "token": self.token,
                "encoding_aes_key": self.key,
                "appid": self.app_id,
                "mode": mode,
                "format": format,
                "fields": fields,
                "timestamp": timestamp.to_string(),
                "nonce": nonce,
                "echostr": ECHOSTR,
            }),
        );
        let field = |name: &str| signed[name].as_str().unwrap().to_owned();
        Signed {
            method: field("method"),
            query: field("query"),
            body: field("body"),
            content_type: field("content_type"),
        }
    }

    fn event(&self, format: &str, fields: &Value) -> Signed {
        let mode = if self.key.is_some() {
            "safe"
        } else {
            "plaintext"
        };
        self.request(mode, format, fields, (now(), &random_alnum(10)))
    }
}

#[derive(Clone, Debug)]
struct Signed {
    method: String,
    query: String,
    body: String,
    content_type: String,
}

impl Signed {
    /// The same request with one query parameter replaced.
    fn with_param(&self, name: &str, value: &str) -> Self {
        let query = url::form_urlencoded::parse(self.query.as_bytes())
            .map(|(k, v)| {
                let v = if k == name {
                    value.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect::<Vec<_>>();
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        Self {
            query,
            ..self.clone()
        }
    }
}

fn write_apps(dir: &Path, apps: &[&Console], default: &str) {
    let mut text = format!("default = \"{default}\"\n");
    for console in apps {
        let app = &console.app_id;
        std::fs::write(dir.join(format!("{app}.secret")), random_alnum(32)).unwrap();
        std::fs::write(dir.join(format!("{app}.push-token")), &console.token).unwrap();
        text.push_str(&format!(
            "\n[[app]]\nappid = \"{app}\"\nsecret_file = \"{app}.secret\"\npush_token_file = \"{app}.push-token\"\n"
        ));
        if let Some(key) = &console.key {
            std::fs::write(dir.join(format!("{app}.push-aeskey")), key).unwrap();
            text.push_str(&format!("push_aes_key_file = \"{app}.push-aeskey\"\n"));
        }
    }
    std::fs::write(dir.join("apps.toml"), text).unwrap();
}

fn write_keys(dir: &Path) -> (String, String) {
    let (gateway, admin) = (random_alnum(40), random_alnum(40));
    std::fs::write(dir.join("gateway.key"), &gateway).unwrap();
    std::fs::write(dir.join("admin.key"), &admin).unwrap();
    std::fs::write(
        dir.join("api-keys.toml"),
        r#"
[[key]]
name = "gateway"
file = "gateway.key"
scopes = ["validate", "login", "follow", "wechat.push"]

[[key]]
name = "operator"
file = "admin.key"
scopes = ["admin"]
apps = ["*"]
"#,
    )
    .unwrap();
    (gateway, admin)
}

struct Edge {
    gateway: ServiceProcess,
    http: reqwest::Client,
}

impl Edge {
    /// Sends `request` to the push URL at `path`, as WeChat's servers do.
    async fn send(
        &self,
        path: &str,
        request: &Signed,
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let url = format!("{}{path}?{}", self.gateway.url(), request.query);
        let mut builder = match request.method.as_str() {
            "GET" => self.http.get(url),
            _ => self.http.post(url).body(request.body.clone()),
        };
        if !request.content_type.is_empty() {
            builder = builder.header("content-type", &request.content_type);
        }
        let answer = builder.send().await.unwrap();
        let (status, headers) = (answer.status().as_u16(), answer.headers().clone());
        (status, answer.text().await.unwrap(), headers)
    }

    async fn jwks(&self) -> Value {
        self.http
            .get(format!("{}/.well-known/jwks.json", self.gateway.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_until_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self
                .http
                .get(format!("{}/readyz", self.gateway.url()))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway never became ready:\n{}", self.gateway.log());
    }
}

/// The events the upstream received, by event id.
fn delivered(upstream: &Upstream) -> Vec<Value> {
    upstream.seen()
}

fn delivered_ids(upstream: &Upstream) -> Vec<String> {
    delivered(upstream)
        .iter()
        .map(|seen| {
            seen["headers"]["x-weapp-event-id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

async fn wait_for_delivery(upstream: &Upstream, event_id: &str, within: Duration) -> Value {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(seen) = delivered(upstream)
            .into_iter()
            .find(|seen| seen["headers"]["x-weapp-event-id"] == event_id)
        {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "event {event_id} was not delivered within {within:?}: {:?}",
        delivered_ids(upstream)
    );
}

/// The body the upstream received, as JSON (the upstream records the first KiB).
fn body_of(seen: &Value) -> Value {
    serde_json::from_str(seen["text"].as_str().unwrap()).unwrap()
}

/// The delivery's assertion, verified by PyJWT against the gateway's JWKS; its claims.
async fn verified_claims(edge: &Edge, seen: &Value) -> Value {
    let token = seen["headers"]["x-weapp-assertion"]
        .as_str()
        .expect("a signed assertion");
    let claims = run_python(
        "verify_assertion.py",
        &json!({ "jwks": edge.jwks().await, "token": token, "issuer": "weapp" }),
    );
    assert_eq!(
        claims["body_sha256"], seen["sha256"],
        "the assertion covers the body"
    );
    claims
}

fn text_message(from: &str, msg_id: u64) -> Value {
    json!({
        "ToUserName": "gh_0123456789ab",
        "FromUserName": from,
        "CreateTime": now(),
        "MsgType": "text",
        "Content": "我想问一下订单 <&> \"quoted\"",
        "MsgId": msg_id,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_are_verified_kept_and_delivered_once() {
    let wechat = WeChat::start().await;
    let mongo = MongoServer::start();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let shop = Console::new(random_app_id(), true);
    let club = Console::new(random_app_id(), true);
    let plain = Console::new(random_app_id(), false);
    write_apps(dir.path(), &[&shop, &club, &plain], &shop.app_id);
    let (gateway_key, _) = write_keys(dir.path());
    let identity = dir.path().join("identity.pem");
    std::fs::write(&identity, weapp_tests::stack::new_identity_key()).unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let env = vec![
        ("WEAPP_APPS_FILE", path("apps.toml")),
        ("WEAPP_API_KEYS_FILE", path("api-keys.toml")),
        ("WEAPP_IDENTITY_KEY_FILES", identity.display().to_string()),
        ("WEAPP_WECHAT_BASE_URL", wechat.base_url()),
        ("WEAPP_MONGODB_URI", mongo.uri()),
        ("WEAPP_MONGODB_DATABASE", "weapp_push".into()),
        (
            "WEAPP_WECHAT_PUSH_UPSTREAM",
            format!("{}/events", upstream.url()),
        ),
        ("WEAPP_WECHAT_PUSH_RETRY_MAX", "1s".into()),
    ];
    let replicas = [
        ServiceProcess::session_svc(&env),
        ServiceProcess::session_svc(&env),
    ];
    let edge = Edge {
        gateway: ServiceProcess::gateway(&[
            (
                "WEAPP_SESSION_SVC_URL",
                format!("{},{}", replicas[0].url(), replicas[1].url()),
            ),
            ("WEAPP_SESSION_SVC_KEY_FILE", path("gateway.key")),
        ]),
        http: reqwest::Client::new(),
    };
    edge.wait_until_ready().await;
    let (shop_url, club_url, plain_url) = (
        format!("/wechat/push/{}", shop.app_id),
        format!("/wechat/push/{}", club.app_id),
        format!("/wechat/push/{}", plain.app_id),
    );

    // The URL check: echostr byte for byte, text/plain with a Content-Length, on the default
    // app's path and on each app's.
    let check = shop.request("url_check", "xml", &json!({}), (now(), "1320562132"));
    for path in ["/wechat/push", shop_url.as_str()] {
        let (status, body, headers) = edge.send(path, &check).await;
        assert_eq!((status, body.as_str()), (200, ECHOSTR));
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(
            headers["content-length"],
            ECHOSTR.len().to_string().as_str()
        );
        assert!(!headers.contains_key("transfer-encoding"));
    }
    // Signed with another app's Token, or at another app's URL: 401, nothing echoed.
    let forged = club.request("url_check", "xml", &json!({}), (now(), "1320562132"));
    let (status, body, _) = edge.send(&shop_url, &forged).await;
    assert_eq!(status, 401);
    assert!(!body.contains(ECHOSTR), "{body}");
    let (status, _, _) = edge.send(&club_url, &forged).await;
    assert_eq!(status, 200);
    // An app with no message push configured, or none served: 404.
    let (status, _, _) = edge.send("/wechat/push/wx0000000000000000", &check).await;
    assert_eq!(status, 404);

    // Safe mode, XML and JSON: the same event delivered as the same JSON, MsgId exact.
    let xml_event = text_message("o-shop-user", 6054768590064713728);
    let mut json_event = xml_event.clone();
    json_event["MsgId"] = json!(6054768590064713729u64);
    for (format, fields) in [("xml", &xml_event), ("json", &json_event)] {
        let (status, body, _) = edge.send(&shop_url, &shop.event(format, fields)).await;
        assert_eq!((status, body.as_str()), (200, "success"), "{format}");
    }
    let from_xml =
        wait_for_delivery(&upstream, "6054768590064713728", Duration::from_secs(5)).await;
    let from_json =
        wait_for_delivery(&upstream, "6054768590064713729", Duration::from_secs(5)).await;
    assert_eq!(
        body_of(&from_xml),
        xml_event,
        "XML mapped to WeChat's JSON shape"
    );
    assert_eq!(body_of(&from_json), json_event);
    for seen in [&from_xml, &from_json] {
        let headers = &seen["headers"];
        assert_eq!(seen["method"], "POST");
        assert_eq!(headers["x-wx-source"], "weapp");
        assert_eq!(headers["x-wx-appid"], shop.app_id.as_str());
        assert_eq!(headers["x-wx-openid"], "o-shop-user");
        assert!(
            headers["content-type"]
                .as_str()
                .unwrap()
                .starts_with("application/json")
        );
        let claims = verified_claims(&edge, seen).await;
        assert_eq!(claims["sub"], "o-shop-user");
        assert_eq!(claims["appid"], shop.app_id.as_str());
        assert_eq!(claims["event_id"], headers["x-weapp-event-id"]);
    }

    // A subscribe event: List is an object for one item (XML repeated elements: an array).
    let popup = json!({
        "ToUserName": "gh_0123456789ab",
        "FromUserName": "o-club-user",
        "CreateTime": now(),
        "MsgType": "event",
        "Event": "subscribe_msg_popup_event",
        "List": { "TemplateId": "tpl-1", "SubscribeStatusString": "accept", "PopupScene": "0" },
    });
    let (status, _, _) = edge.send(&club_url, &club.event("xml", &popup)).await;
    assert_eq!(status, 200);
    let popup_id = format!(
        "o-club-user:{}:subscribe_msg_popup_event",
        popup["CreateTime"]
    );
    let seen = wait_for_delivery(&upstream, &popup_id, Duration::from_secs(5)).await;
    assert_eq!(body_of(&seen), popup);
    assert_eq!(seen["headers"]["x-wx-appid"], club.app_id.as_str());

    // Forgeries, each refused with nothing delivered.
    let before = delivered(&upstream).len();
    let forged_event = text_message("o-forger", 7000000000000000001);
    let genuine = shop.event("xml", &forged_event);
    // A wrong msg_signature; a wrong signature.
    let bad_msg = genuine.with_param("msg_signature", &"0".repeat(40));
    assert_eq!(edge.send(&shop_url, &bad_msg).await.0, 401);
    let bad_sig = genuine.with_param("signature", &"0".repeat(40));
    assert_eq!(edge.send(&shop_url, &bad_sig).await.0, 401);
    // Another app's ciphertext, signed with ours: the appid inside is club's.
    let other_app = Console {
        app_id: club.app_id.clone(),
        ..shop.clone()
    }
    .event("xml", &forged_event);
    assert_eq!(edge.send(&shop_url, &other_app).await.0, 403);
    // Club's request replayed at shop's URL.
    assert_eq!(
        edge.send(&shop_url, &club.event("xml", &forged_event))
            .await
            .0,
        401
    );
    // Stale: ten minutes old, and ten minutes ahead.
    for at in [now() - 600, now() + 600] {
        let stale = shop.request("safe", "xml", &forged_event, (at, "stale-nonce"));
        assert_eq!(edge.send(&shop_url, &stale).await.0, 403);
    }
    // Malformed: not XML or JSON, truncated ciphertext, a DOCTYPE inside.
    let mut garbage = genuine.clone();
    garbage.body = "<xml><Encrypt>".into();
    assert_eq!(edge.send(&shop_url, &garbage).await.0, 400, "not XML");
    // A ciphertext changed in flight: msg_signature is over Encrypt.
    let mut tampered = genuine.clone();
    tampered.body = genuine.body.replacen("<![CDATA[", "<![CDATA[A", 2);
    assert_eq!(edge.send(&shop_url, &tampered).await.0, 401);
    let doctype = plain.request("plaintext", "xml", &json!({}), (now(), "doctype-nonce"));
    let doctype = Signed {
        body: "<!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><xml><FromUserName>&x;</FromUserName></xml>".into(),
        ..doctype
    };
    assert_eq!(edge.send(&plain_url, &doctype).await.0, 400);
    // Plaintext mode: a captured signature replayed with another body.
    let first = plain.request(
        "plaintext",
        "json",
        &text_message("o-plain-user", 7100000000000000001),
        (now(), "plain-nonce-1"),
    );
    assert_eq!(edge.send(&plain_url, &first).await.1, "success");
    let replay = Signed {
        body: text_message("o-victim", 7100000000000000002).to_string(),
        ..first.clone()
    };
    let (status, body, _) = edge.send(&plain_url, &replay).await;
    assert_eq!((status, body.contains("nonce")), (403, true), "{body}");
    let plain_seen =
        wait_for_delivery(&upstream, "7100000000000000001", Duration::from_secs(5)).await;
    assert_eq!(plain_seen["headers"]["x-wx-openid"], "o-plain-user");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<String> = delivered_ids(&upstream).into_iter().skip(before).collect();
    assert_eq!(
        after,
        ["7100000000000000001"],
        "only the genuine plaintext event"
    );

    // WeChat's retries (the same request three times) delivered once; two distinct events
    // of one second from one user both delivered.
    let retried = shop.event("json", &text_message("o-retry", 7200000000000000001));
    for _ in 0..3 {
        assert_eq!(edge.send(&shop_url, &retried).await.1, "success");
    }
    let second = now();
    let enter = json!({"ToUserName": "gh_0123456789ab", "FromUserName": "o-busy", "CreateTime": second, "MsgType": "event", "Event": "user_enter_tempsession", "SessionFrom": "sf"});
    let popup = json!({"ToUserName": "gh_0123456789ab", "FromUserName": "o-busy", "CreateTime": second, "MsgType": "event", "Event": "subscribe_msg_popup_event", "List": [{"TemplateId": "a", "SubscribeStatusString": "accept", "PopupScene": "0"}, {"TemplateId": "b", "SubscribeStatusString": "reject", "PopupScene": "0"}]});
    for event in [&enter, &popup] {
        let request = shop.request("safe", "xml", event, (second, &random_alnum(10)));
        assert_eq!(edge.send(&shop_url, &request).await.1, "success");
    }
    wait_for_delivery(&upstream, "7200000000000000001", Duration::from_secs(5)).await;
    let popup_seen = wait_for_delivery(
        &upstream,
        &format!("o-busy:{second}:subscribe_msg_popup_event"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        body_of(&popup_seen)["List"],
        popup["List"],
        "several items: an array"
    );
    wait_for_delivery(
        &upstream,
        &format!("o-busy:{second}:user_enter_tempsession"),
        Duration::from_secs(5),
    )
    .await;

    // The upstream down: WeChat is still answered at once; the event is delivered once it is
    // back (retries with backoff, by one replica).
    upstream.set_down(true);
    let started = Instant::now();
    let patient = shop.event("xml", &text_message("o-patient", 7300000000000000001));
    assert_eq!(edge.send(&shop_url, &patient).await.1, "success");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!delivered_ids(&upstream).contains(&"7300000000000000001".to_owned()));
    upstream.set_down(false);
    wait_for_delivery(&upstream, "7300000000000000001", Duration::from_secs(10)).await;

    // Every event exactly once, whichever replica kept it and however often WeChat sent it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids = delivered_ids(&upstream);
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "delivered twice: {ids:?}");
    assert_eq!(ids.len(), 8, "{ids:?}");

    // What the operator sees.
    let mut metrics = String::new();
    for replica in &replicas {
        metrics.push_str(&replica.metrics().await);
    }
    let count = |outcome: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("weapp_wechat_push_requests_total{")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(count("duplicate"), 2.0, "{metrics}");
    assert_eq!(count("replay"), 1.0);
    assert_eq!(count("stale"), 2.0);
    assert_eq!(count("other_app"), 1.0);
    assert!(count("bad_signature") >= 4.0);
    assert_eq!(count("accepted"), 8.0);
    assert!(metrics.contains("weapp_wechat_push_deliveries_total{outcome=\"failed\"}"));
    assert!(metrics.contains("weapp_wechat_push_answer_seconds"));
    assert!(metrics.contains("weapp_wechat_push_outbox_pending"));

    // No Token, EncodingAESKey or API key in any log.
    let mut logs = edge.gateway.log();
    for replica in &replicas {
        logs.push_str(&replica.log());
    }
    for console in [&shop, &club, &plain] {
        assert!(!logs.contains(&console.token), "a Token in the logs");
        if let Some(key) = &console.key {
            assert!(
                !logs.contains(key.as_str()),
                "an EncodingAESKey in the logs"
            );
        }
    }
    assert!(!logs.contains(&gateway_key));
    assert!(!metrics.contains(&shop.token));
    drop(mongo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechats_worked_example_is_delivered_and_dead_letters_are_requeued() {
    let wechat = WeChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let example = Console {
        app_id: EXAMPLE_APP.into(),
        token: EXAMPLE_TOKEN.into(),
        key: Some(EXAMPLE_KEY.into()),
    };
    write_apps(dir.path(), &[&example], EXAMPLE_APP);
    let (gateway_key, admin_key) = write_keys(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    // Nothing listens there until the test starts the upstream.
    let upstream_port = Port::reserve();
    let session = ServiceProcess::session_svc(&[
        ("WEAPP_APPS_FILE", path("apps.toml")),
        ("WEAPP_API_KEYS_FILE", path("api-keys.toml")),
        ("WEAPP_WECHAT_BASE_URL", wechat.base_url()),
        ("WEAPP_DATA_DIR", path("data")),
        (
            "WEAPP_WECHAT_PUSH_UPSTREAM",
            format!("http://{}/events", upstream_port.addr()),
        ),
        // The example's timestamp is from 2014.
        ("WEAPP_WECHAT_PUSH_WINDOW", "36500d".into()),
        ("WEAPP_WECHAT_PUSH_RETRY_MAX", "500ms".into()),
        ("WEAPP_WECHAT_PUSH_DEAD_AFTER", "2s".into()),
    ]);
    let edge = Edge {
        gateway: ServiceProcess::gateway(&[
            ("WEAPP_SESSION_SVC_URL", session.url()),
            ("WEAPP_SESSION_SVC_KEY_FILE", path("gateway.key")),
        ]),
        http: reqwest::Client::new(),
    };
    edge.wait_until_ready().await;

    // WeChat's request, byte for byte as its documentation shows it (the documentation gives
    // the msg_signature; the URL signature over Token, timestamp and nonce is the sender's).
    let sender = example.request("url_check", "xml", &json!({}), (1409735669, "1320562132"));
    let signature = url::form_urlencoded::parse(sender.query.as_bytes())
        .find(|(k, _)| k == "signature")
        .unwrap()
        .1
        .into_owned();
    let request = Signed {
        method: "POST".into(),
        query: format!(
            "signature={signature}&timestamp=1409735669&nonce=1320562132&encrypt_type=aes&msg_signature={EXAMPLE_MSG_SIGNATURE}"
        ),
        body: format!(
            "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><Encrypt><![CDATA[{EXAMPLE_ENCRYPT}]]></Encrypt></xml>"
        ),
        content_type: "text/xml".into(),
    };
    let (status, body, _) = edge.send("/wechat/push", &request).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "success"),
        "{}",
        session.log()
    );

    // Nobody listens at the upstream: after 2 s of attempts, a dead letter.
    let admin = |args: &[&str]| -> Value {
        let output = std::process::Command::new(binary("session-svc"))
            .arg("admin")
            .args(args)
            .args(["--url", &session.url(), "--key-file", &path("admin.key")])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let started = Instant::now();
    let dead = loop {
        let listed = admin(&["dead-letters"]);
        if let Some(first) = listed["dead_letters"].as_array().and_then(|d| d.first()) {
            break first.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no dead letter: {}",
            session.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dead["event_id"], "6054768590064713728");
    assert_eq!(dead["app_id"], EXAMPLE_APP);
    assert!(dead["attempts"].as_u64().unwrap() >= 2, "{dead}");
    assert!(
        !dead["last_error"]
            .as_str()
            .unwrap()
            .contains(&upstream_port.addr().to_string())
    );

    // The upstream is back: the operator requeues, and it is delivered.
    let upstream = Upstream::start_at(upstream_port.addr()).await;
    assert_eq!(admin(&["requeue", "--all"]), json!({ "requeued": 1 }));
    let seen = wait_for_delivery(&upstream, "6054768590064713728", Duration::from_secs(5)).await;
    let event = body_of(&seen);
    assert_eq!(event["Content"], "abcdteT");
    assert_eq!(event["MsgId"], json!(6054768590064713728u64));
    assert_eq!(event["ToUserName"], "gh_10f6c3c3ac5a");
    assert_eq!(
        seen["sha256"],
        hex::encode(Sha256::digest(seen["text"].as_str().unwrap().as_bytes()))
    );
    assert_eq!(admin(&["dead-letters"]), json!({ "dead_letters": [] }));

    // WeChat's URL check with the example's Token.
    let (status, body, _) = edge.send("/wechat/push", &sender).await;
    assert_eq!((status, body.as_str()), (200, ECHOSTR));
    let logs = session.log() + &edge.gateway.log();
    for secret in [EXAMPLE_KEY, EXAMPLE_TOKEN, &gateway_key, &admin_key] {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
}
