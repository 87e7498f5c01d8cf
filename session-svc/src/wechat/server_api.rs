//! WeChat's server APIs beyond login: `stable_token` (the access_token), and, with that token,
//! `getuserphonenumber`, `checksession` and `resetusersessionkey`. Each answer is either the
//! documented success or `{errcode, errmsg}` (success answers may carry `errcode: 0`).
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, de::DeserializeOwned};

use super::{WeChatClient, WeChatError};
use crate::apps::App;

/// An access_token as WeChat handed it out.
pub struct FreshToken {
    pub token: SecretString,
    /// Its remaining lifetime, as WeChat says (stable_token's normal mode answers the current
    /// token's, not a fresh 7200 s).
    pub expires_in: Duration,
}

impl std::fmt::Debug for FreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshToken")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The phone number WeChat verified, as `getuserphonenumber` answers it.
#[derive(Clone, PartialEq, Eq)]
pub struct PhoneInfo {
    pub phone_number: String,
    pub pure_phone_number: String,
    pub country_code: String,
    pub watermark_app_id: String,
}

impl std::fmt::Debug for PhoneInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhoneInfo(..)")
    }
}

/// `signature` for checksession and resetusersessionkey: lowercase hex HMAC-SHA256 over
/// `payload` (the empty string for these GET calls), keyed with the session_key's **base64
/// text** as UTF-8 bytes, not the 16 bytes it decodes to.
pub fn session_key_signature(session_key_b64: &str, payload: &[u8]) -> String {
    // ring's HMAC takes a key of any length without a fallible constructor.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, session_key_b64.as_bytes());
    hex::encode(ring::hmac::sign(&key, payload))
}

/// Reads an answer: WeChat's errcode (non-zero) wins over everything else in it.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, WeChatError> {
    #[derive(Deserialize)]
    struct Status {
        errcode: Option<i64>,
        errmsg: Option<String>,
    }
    let status: Status = serde_json::from_slice(body)
        .map_err(|_| WeChatError::Malformed("the answer is not a JSON object".into()))?;
    if let Some(errcode) = status.errcode.filter(|c| *c != 0) {
        return Err(WeChatError::Refused {
            errcode,
            errmsg: status.errmsg.unwrap_or_default(),
        });
    }
    serde_json::from_slice(body).map_err(|e| WeChatError::Malformed(e.to_string()))
}

/// `countryCode` arrives as a string or as a number.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(u64),
    }
    Ok(match Either::deserialize(d)? {
        Either::Text(s) => s,
        Either::Number(n) => n.to_string(),
    })
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct PhoneAnswer {
    phone_info: PhoneInfoAnswer,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhoneInfoAnswer {
    phone_number: String,
    pure_phone_number: String,
    #[serde(deserialize_with = "string_or_number")]
    country_code: String,
    watermark: PhoneWatermark,
}

#[derive(Deserialize)]
struct PhoneWatermark {
    appid: String,
}

#[derive(Deserialize)]
struct ResetAnswer {
    session_key: String,
}

impl WeChatClient {
    /// `POST /cgi-bin/stable_token` (JSON body). `force` invalidates the current token: only
    /// an operator's explicit request may ask for it.
    pub async fn stable_token(&self, app: &App, force: bool) -> Result<FreshToken, WeChatError> {
        self.timed("stable_token", async {
            let url = self.endpoint("cgi-bin/stable_token")?;
            let body = serde_json::json!({
                "grant_type": "client_credential",
                "appid": &*app.id,
                "secret": app.secret().expose_secret(),
                "force_refresh": force,
            });
            let answer: TokenAnswer = parse(&self.send(self.http.post(url).json(&body)).await?)?;
            if answer.access_token.is_empty() || answer.expires_in == 0 {
                return Err(WeChatError::Malformed("an empty access_token".into()));
            }
            Ok(FreshToken {
                token: SecretString::from(answer.access_token),
                expires_in: Duration::from_secs(answer.expires_in),
            })
        })
        .await
    }

    /// `POST /wxa/business/getuserphonenumber`: the phone number behind a phone code.
    pub async fn phone_number(
        &self,
        access_token: &SecretString,
        code: &str,
        open_id: Option<&str>,
    ) -> Result<PhoneInfo, WeChatError> {
        self.timed("getuserphonenumber", async {
            let mut url = self.endpoint("wxa/business/getuserphonenumber")?;
            url.query_pairs_mut()
                .append_pair("access_token", access_token.expose_secret());
            let mut body = serde_json::json!({ "code": code });
            if let Some(open_id) = open_id {
                body["openid"] = open_id.into();
            }
            let answer: PhoneAnswer = parse(&self.send(self.http.post(url).json(&body)).await?)?;
            let info = answer.phone_info;
            Ok(PhoneInfo {
                phone_number: info.phone_number,
                pure_phone_number: info.pure_phone_number,
                country_code: info.country_code,
                watermark_app_id: info.watermark.appid,
            })
        })
        .await
    }

    /// `GET /wxa/checksession`: Ok when `session_key` is the user's valid one; WeChat's 87009
    /// when it is not.
    pub async fn check_session(
        &self,
        access_token: &SecretString,
        open_id: &str,
        session_key: &SecretString,
    ) -> Result<(), WeChatError> {
        self.timed("checksession", async {
            let url = self.signed_url("wxa/checksession", access_token, open_id, session_key)?;
            parse::<serde::de::IgnoredAny>(&self.send(self.http.get(url)).await?)?;
            Ok(())
        })
        .await
    }

    /// `GET /wxa/resetusersessionkey`: WeChat issues the user a new session_key (the old one
    /// stops working) and answers it.
    pub async fn reset_session_key(
        &self,
        access_token: &SecretString,
        open_id: &str,
        session_key: &SecretString,
    ) -> Result<SecretString, WeChatError> {
        self.timed("resetusersessionkey", async {
            let url = self.signed_url(
                "wxa/resetusersessionkey",
                access_token,
                open_id,
                session_key,
            )?;
            let answer: ResetAnswer = parse(&self.send(self.http.get(url)).await?)?;
            if answer.session_key.is_empty() {
                return Err(WeChatError::Malformed("an empty session_key".into()));
            }
            Ok(SecretString::from(answer.session_key))
        })
        .await
    }

    fn signed_url(
        &self,
        path: &str,
        access_token: &SecretString,
        open_id: &str,
        session_key: &SecretString,
    ) -> Result<url::Url, WeChatError> {
        let mut url = self.endpoint(path)?;
        url.query_pairs_mut()
            .append_pair("access_token", access_token.expose_secret())
            .append_pair("openid", open_id)
            .append_pair(
                "signature",
                &session_key_signature(session_key.expose_secret(), b""),
            )
            .append_pair("sig_method", "hmac_sha256");
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_keyed_with_the_base64_text() {
        // WeChat's documented vector.
        let sig = session_key_signature("o0q0otL8aEzpcZL/FT9WsQ==", br#"{"foo":"bar"}"#);
        assert!(sig.starts_with("654571f7"), "{sig}");
        assert_eq!(sig.len(), 64);
        assert_eq!(sig, sig.to_lowercase());
        // GET calls sign the empty string.
        assert_eq!(
            session_key_signature("o0q0otL8aEzpcZL/FT9WsQ==", b"")[..8],
            *"46e043c5"
        );
    }

    #[test]
    fn country_codes_arrive_as_strings_or_numbers() {
        for body in [
            r#"{"errcode":0,"errmsg":"ok","phone_info":{"phoneNumber":"+86 13800138000","purePhoneNumber":"13800138000","countryCode":"86","watermark":{"timestamp":1,"appid":"wx1"}}}"#,
            r#"{"errcode":0,"errmsg":"ok","phone_info":{"phoneNumber":"+86 13800138000","purePhoneNumber":"13800138000","countryCode":86,"watermark":{"timestamp":1,"appid":"wx1"}}}"#,
        ] {
            let answer: PhoneAnswer = parse(body.as_bytes()).unwrap();
            assert_eq!(answer.phone_info.country_code, "86");
        }
    }

    #[test]
    fn an_errcode_wins_and_zero_is_success() {
        let err = parse::<TokenAnswer>(br#"{"errcode":40164,"errmsg":"invalid ip"}"#)
            .err()
            .unwrap();
        assert_eq!(
            err,
            WeChatError::Refused {
                errcode: 40164,
                errmsg: "invalid ip".into()
            }
        );
        let ok: TokenAnswer =
            parse(br#"{"access_token":"t","expires_in":7200,"errcode":0}"#).unwrap();
        assert_eq!(ok.expires_in, 7200);
        assert!(matches!(
            parse::<TokenAnswer>(b"<html>"),
            Err(WeChatError::Malformed(_))
        ));
    }
}
