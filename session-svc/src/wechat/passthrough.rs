//! Any of WeChat's server APIs, called as a backend asked for it through the open-API proxy
//! (`openapi/`): its method, path, query and body, with session-svc's access_token put in the
//! query. The answer is handed back as WeChat sent it; only its start is read here, to learn
//! the errcode of a JSON answer (a refused token is retried by the caller) — the rest of a
//! large answer, like a mini-program code's image, streams on.
use axum::body::Bytes;
use http::{HeaderValue, Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use super::{WeChatClient, WeChatError};

/// How much of an answer is read before it is handed on: every JSON answer of the APIs a
/// mini-program calls fits, and so does any errcode body.
const PEEK: usize = 64 * 1024;

/// One call as the backend made it, minus its own access_token.
pub struct Passthrough {
    pub method: Method,
    /// The allow-listed path (it labels the call's metrics, so it is never a raw path).
    pub path: &'static str,
    /// The backend's query string without any `access_token`, as it was encoded.
    pub query: Option<String>,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// WeChat's answer: its head, and the body's start (whole when `rest` is `None`).
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub content_disposition: Option<HeaderValue>,
    pub head: Bytes,
    pub rest: Option<reqwest::Response>,
    /// The errcode of a whole JSON answer that has one (0 included).
    pub errcode: Option<i64>,
}

impl Answer {
    /// WeChat refused the access_token itself (40001 invalid or not the latest, 42001 expired).
    pub fn refused_token(&self) -> bool {
        use super::errcode::{EXPIRED_TOKEN, INVALID_TOKEN};
        matches!(self.errcode, Some(INVALID_TOKEN | EXPIRED_TOKEN))
    }
}

/// `query` without its `access_token` parameters (however the name is encoded), the rest of it
/// byte for byte.
pub fn without_access_token(query: &str) -> Option<String> {
    without_fields(query, &["access_token"])
}

/// `query` without the fields named `names` (however encoded, any case), `None` if nothing
/// is left: `access_token` is session-svc's to add, `from_appid` (Cloud Run's) is read by
/// the proxy and never reaches WeChat.
pub fn without_fields(query: &str, names: &[&str]) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let decoded: String = url::form_urlencoded::parse(name.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect();
            !pair.is_empty() && !names.iter().any(|n| decoded.trim().eq_ignore_ascii_case(n))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// The `from_appid` of a query (Cloud Run's name for the app whose token to call with).
pub fn from_appid(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("from_appid"))
        .map(|(_, v)| v.trim().to_owned())
}

impl WeChatClient {
    /// Makes `call` with `token`, counting it under its path and WeChat's errcode.
    pub async fn passthrough(
        &self,
        call: &Passthrough,
        token: &SecretString,
    ) -> Result<Answer, WeChatError> {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.send_through(call, token))
            .await
            .unwrap_or(Err(WeChatError::Timeout(self.timeout)));
        let label = match &outcome {
            Ok(answer) => match answer.errcode {
                Some(errcode) => errcode.to_string(),
                None if answer.status.is_success() => "0".to_owned(),
                None => format!("http_{}xx", answer.status.as_u16() / 100),
            },
            Err(e) => e.label(),
        };
        let failed =
            !matches!(&outcome, Ok(a) if a.status.is_success() && a.errcode.unwrap_or(0) == 0);
        self.record(call.path, label, failed, started);
        outcome
    }

    async fn send_through(
        &self,
        call: &Passthrough,
        token: &SecretString,
    ) -> Result<Answer, WeChatError> {
        let mut url = self.endpoint(call.path.trim_start_matches('/'))?;
        let mut query = call.query.clone().unwrap_or_default();
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("access_token=");
        query.extend(url::form_urlencoded::byte_serialize(
            token.expose_secret().as_bytes(),
        ));
        url.set_query(Some(&query));
        let mut request = self
            .http
            .request(call.method.clone(), url)
            .body(call.body.clone());
        if let Some(content_type) = &call.content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type.clone());
        }
        let _slot = self.slot().await?;
        let mut response = request.send().await.map_err(|e| self.transport_error(e))?;
        let header = |name| response.headers().get(name).cloned();
        let (content_type, content_disposition) = (
            header(http::header::CONTENT_TYPE),
            header(http::header::CONTENT_DISPOSITION),
        );
        let mut head = Vec::new();
        let mut whole = false;
        while head.len() < PEEK {
            match response
                .chunk()
                .await
                .map_err(|e| self.transport_error(e))?
            {
                Some(chunk) => head.extend_from_slice(&chunk),
                None => {
                    whole = true;
                    break;
                }
            }
        }
        let errcode = whole.then(|| errcode_of(&head)).flatten();
        Ok(Answer {
            status: response.status(),
            content_type,
            content_disposition,
            head: head.into(),
            rest: (!whole).then_some(response),
            errcode,
        })
    }
}

/// The errcode of a JSON object answer (WeChat labels some JSON `text/plain`, so the body,
/// not its type, decides).
fn errcode_of(body: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Status {
        errcode: Option<i64>,
    }
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'{' {
        return None;
    }
    serde_json::from_slice::<Status>(body).ok()?.errcode
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_access_token_never_goes_on() {
        assert_eq!(without_access_token("access_token=theirs"), None);
        assert_eq!(
            without_access_token("a=1&access_token=x&b=%20&ACCESS_TOKEN=y&access%5Ftoken=z&c"),
            Some("a=1&b=%20&c".into())
        );
        assert_eq!(without_access_token("&&a=1"), Some("a=1".into()));
    }

    #[test]
    fn only_a_json_object_has_an_errcode() {
        assert_eq!(
            errcode_of(br#" {"errcode":40001,"errmsg":"x"}"#),
            Some(40001)
        );
        assert_eq!(errcode_of(br#"{"errcode":0,"result":{}}"#), Some(0));
        assert_eq!(errcode_of(br#"{"url_link":"x"}"#), None);
        assert_eq!(errcode_of(b"\x89PNG\r\n"), None);
        assert_eq!(errcode_of(b"[1]"), None);
    }
}
