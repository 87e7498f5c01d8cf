//! One request of WeChat's message push, judged before anything in it is believed: the URL
//! check (GET with `signature`, `timestamp`, `nonce`, `echostr`), or an event (POST) — its
//! timestamp within a window of now, its `signature` (and in safe mode `msg_signature` over
//! the `Encrypt` field) compared in constant time, the ciphertext decrypted and its appid
//! checked; in compatible mode only the decrypted copy counts. XML and JSON are both read
//! whatever the console says (a switch there takes effect at once). No I/O and no state:
//! the caller refuses replays (a `(timestamp, nonce)` seen with another body) and keeps the
//! event.
use serde_json::{Map, Value};

use crate::{
    wechat_event::{self, EventError},
    wechat_push::{self, AesKey, PushCryptoError},
};

/// What a push endpoint holds for one app.
pub struct Secrets<'a> {
    pub token: &'a str,
    /// None: the console is in plaintext mode (a safe-mode push is then refused).
    pub aes_key: Option<&'a AesKey>,
    pub app_id: &'a str,
}

/// What a request is.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The URL check: answer `echostr` byte for byte.
    UrlCheck(String),
    /// An event, verified (and decrypted), as WeChat's JSON object.
    Event {
        fields: Map<String, Value>,
        timestamp: i64,
        nonce: String,
        /// It came encrypted (safe or compatible mode).
        encrypted: bool,
    },
}

/// Why a request is refused (the status a caller answers: 400, 401 or 403).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a query parameter is missing or malformed: {0}")]
    Query(&'static str),
    #[error("the signature does not match")]
    Signature,
    #[error("the timestamp is {0} s from now, outside the window")]
    Stale(i64),
    #[error("the body: {0}")]
    Body(EventError),
    #[error("the ciphertext: {0}")]
    Crypto(PushCryptoError),
    #[error("an encrypted push, but no EncodingAESKey is configured")]
    NoKey,
    #[error("only GET (the URL check) and POST (events)")]
    Method,
}

impl Refusal {
    /// The HTTP status a push endpoint answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Signature => 401,
            Self::Stale(_) | Self::Crypto(PushCryptoError::AppId) => 403,
            Self::Method => 405,
            _ => 400,
        }
    }

    /// A bounded label for the metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Query(_) => "bad_query",
            Self::Signature => "bad_signature",
            Self::Stale(_) => "stale",
            Self::Body(_) => "bad_body",
            Self::Crypto(PushCryptoError::AppId) => "other_app",
            Self::Crypto(_) => "bad_ciphertext",
            Self::NoKey => "no_key",
            Self::Method => "bad_method",
        }
    }
}

/// The value of a query parameter (decoded; empty counts as absent).
fn param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Judges one request; `now` in Unix seconds, `window` in seconds either way.
pub fn verify(
    (method, query, body): (&str, &str, &[u8]),
    secrets: &Secrets<'_>,
    (now, window): (i64, i64),
) -> Result<Verdict, Refusal> {
    let signature = param(query, "signature").ok_or(Refusal::Query("signature"))?;
    let timestamp = param(query, "timestamp").ok_or(Refusal::Query("timestamp"))?;
    let nonce = param(query, "nonce").ok_or(Refusal::Query("nonce"))?;
    if timestamp.len() > 12 || nonce.len() > 64 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::Query("timestamp"));
    }
    // Checked first: a forged request learns nothing else.
    if !wechat_push::signature_matches(&signature, &[secrets.token, &timestamp, &nonce]) {
        return Err(Refusal::Signature);
    }
    let at: i64 = timestamp.parse().map_err(|_| Refusal::Query("timestamp"))?;
    if (now - at).abs() > window {
        return Err(Refusal::Stale(now - at));
    }
    match method {
        "GET" => {
            let echostr = param(query, "echostr").ok_or(Refusal::Query("echostr"))?;
            Ok(Verdict::UrlCheck(echostr))
        }
        "POST" => {
            let outer = wechat_event::parse(body).map_err(Refusal::Body)?;
            let encrypted = outer
                .get("Encrypt")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let encrypted = encrypted.as_deref();
            let safe = param(query, "encrypt_type").is_some_and(|t| t == "aes");
            let fields = match (encrypted, safe) {
                // Safe or compatible mode: only the decrypted copy counts.
                (Some(ciphertext), _) => {
                    let key = secrets.aes_key.ok_or(Refusal::NoKey)?;
                    let msg_signature =
                        param(query, "msg_signature").ok_or(Refusal::Query("msg_signature"))?;
                    if !wechat_push::signature_matches(
                        &msg_signature,
                        &[secrets.token, &timestamp, &nonce, ciphertext],
                    ) {
                        return Err(Refusal::Signature);
                    }
                    let inner = wechat_push::decrypt(key, ciphertext, secrets.app_id)
                        .map_err(Refusal::Crypto)?;
                    wechat_event::parse(&inner.message).map_err(Refusal::Body)?
                }
                // The query says safe mode, the body has no ciphertext: refused.
                (None, true) => return Err(Refusal::Body(EventError::Format)),
                (None, false) => outer,
            };
            Ok(Verdict::Event {
                fields,
                timestamp: at,
                nonce,
                encrypted: encrypted.is_some(),
            })
        }
        _ => Err(Refusal::Method),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WeChat's worked example: Token `spamtest`, the EncodingAESKey below, appid
    /// `wx2c2769f8efd9abc2`, timestamp 1409735669, nonce 1320562132, and its `Encrypt`.
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";
    const NOW: i64 = 1_409_735_669;

    fn query(msg_signature: &str) -> String {
        let signature = wechat_push::signature(&["spamtest", "1409735669", "1320562132"]);
        format!(
            "signature={signature}&timestamp=1409735669&nonce=1320562132&encrypt_type=aes&msg_signature={msg_signature}"
        )
    }

    #[test]
    fn wechats_worked_example_is_a_verified_event() {
        let key = AesKey::from_encoding(KEY).unwrap();
        let secrets = Secrets {
            token: "spamtest",
            aes_key: Some(&key),
            app_id: "wx2c2769f8efd9abc2",
        };
        let body = format!(
            "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><Encrypt><![CDATA[{ENCRYPT}]]></Encrypt></xml>"
        );
        let q = query("5d197aaffba7e9b25a30732f161a50dee96bd5fa");
        let verdict = verify(("POST", &q, body.as_bytes()), &secrets, (NOW, 300)).unwrap();
        let Verdict::Event {
            fields, encrypted, ..
        } = verdict
        else {
            panic!("an event");
        };
        assert!(encrypted);
        assert_eq!(fields["Content"], "abcdteT");
        assert_eq!(fields["MsgId"], serde_json::json!(6054768590064713728u64));

        // The same in JSON, as a console switched to JSON sends it.
        let json = format!(r#"{{"ToUserName":"gh_10f6c3c3ac5a","Encrypt":"{ENCRYPT}"}}"#);
        assert!(verify(("POST", &q, json.as_bytes()), &secrets, (NOW, 300)).is_ok());

        // A forged msg_signature, a stale timestamp, another app, no key: refused.
        let forged = query("5d197aaffba7e9b25a30732f161a50dee96bd5fb");
        assert_eq!(
            verify(("POST", &forged, body.as_bytes()), &secrets, (NOW, 300)),
            Err(Refusal::Signature)
        );
        assert_eq!(
            verify(("POST", &q, body.as_bytes()), &secrets, (NOW + 301, 300)),
            Err(Refusal::Stale(301))
        );
        let other = Secrets {
            app_id: "wx0000000000000000",
            ..secrets
        };
        let refused = verify(("POST", &q, body.as_bytes()), &other, (NOW, 300)).unwrap_err();
        assert_eq!((refused.status(), refused.outcome()), (403, "other_app"));
        let plaintext_only = Secrets {
            aes_key: None,
            ..other
        };
        assert_eq!(
            verify(("POST", &q, body.as_bytes()), &plaintext_only, (NOW, 300)),
            Err(Refusal::NoKey)
        );
    }

    #[test]
    fn the_url_check_echoes_only_when_signed() {
        let secrets = Secrets {
            token: "spamtest",
            aes_key: None,
            app_id: "wx2c2769f8efd9abc2",
        };
        let signature = wechat_push::signature(&["spamtest", "1409735669", "1320562132"]);
        let q = format!(
            "signature={signature}&timestamp=1409735669&nonce=1320562132&echostr=4%2B2%3D6%22x"
        );
        assert_eq!(
            verify(("GET", &q, b""), &secrets, (NOW, 300)),
            Ok(Verdict::UrlCheck("4+2=6\"x".into()))
        );
        let forged = q.replace(&signature[..4], "0000");
        assert_eq!(
            verify(("GET", &forged, b""), &secrets, (NOW, 300)),
            Err(Refusal::Signature)
        );
        for missing in ["signature", "timestamp", "nonce", "echostr"] {
            let q = q
                .split('&')
                .filter(|p| !p.starts_with(missing))
                .collect::<Vec<_>>()
                .join("&");
            assert!(
                verify(("GET", &q, b""), &secrets, (NOW, 300)).is_err(),
                "{missing}"
            );
        }
        assert_eq!(
            verify(("PUT", &q, b""), &secrets, (NOW, 300)),
            Err(Refusal::Method)
        );
    }

    #[test]
    fn plaintext_mode_events_are_signed_too() {
        let secrets = Secrets {
            token: "spamtest",
            aes_key: None,
            app_id: "wx2c2769f8efd9abc2",
        };
        let signature = wechat_push::signature(&["spamtest", "1409735669", "1320562132"]);
        let q = format!("signature={signature}&timestamp=1409735669&nonce=1320562132");
        let body = br#"{"ToUserName":"gh_1","FromUserName":"o-user","CreateTime":1409735669,"MsgType":"event","Event":"user_enter_tempsession"}"#;
        let Ok(Verdict::Event {
            fields,
            encrypted,
            nonce,
            ..
        }) = verify(("POST", &q, body), &secrets, (NOW, 300))
        else {
            panic!("an event");
        };
        assert!(!encrypted);
        assert_eq!(nonce, "1320562132");
        assert_eq!(fields["Event"], "user_enter_tempsession");
        // The query says safe mode but the body is plain: refused, not believed.
        let safe = format!("{q}&encrypt_type=aes&msg_signature=00");
        assert!(verify(("POST", &safe, body), &secrets, (NOW, 300)).is_err());
    }
}
