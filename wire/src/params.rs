//! wafer's parameters as `wafer-client-sdk` sends them: session id and skey on every request,
//! the login code and user data at login, in headers or in the query string.
use http::HeaderMap;

pub const HEADER_ID: &str = "x-wx-id";
pub const HEADER_SKEY: &str = "x-wx-skey";
pub const HEADER_CODE: &str = "x-wx-code";
pub const HEADER_ENCRYPTED_DATA: &str = "x-wx-encrypted-data";
pub const HEADER_IV: &str = "x-wx-iv";
pub const HEADER_RAW_DATA: &str = "x-wx-raw-data";
pub const HEADER_SIGNATURE: &str = "x-wx-signature";

/// A wafer parameter: from the headers (names are case-insensitive there anyway), else from
/// the query string, whose names are matched case-insensitively too. Empty counts as absent.
/// Header values are read as UTF-8, since rawData carries nicknames in any script.
pub fn param(headers: &HeaderMap, query: Option<&str>, name: &str) -> Option<String> {
    if let Some(value) = headers.get(name) {
        return Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
            .filter(|v| !v.is_empty());
    }
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The session parameters of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionParams {
    /// Neither X-WX-Id nor X-WX-Skey: the request goes on without a session.
    Absent,
    /// At least one of them: the pair must resolve, or the request is refused (a lone id or
    /// skey is an invalid session, not an anonymous request).
    Present { id: String, skey: String },
}

pub fn session_params(headers: &HeaderMap, query: Option<&str>) -> SessionParams {
    let id = param(headers, query, HEADER_ID);
    let skey = param(headers, query, HEADER_SKEY);
    if id.is_none() && skey.is_none() {
        SessionParams::Absent
    } else {
        SessionParams::Present {
            id: id.unwrap_or_default(),
            skey: skey.unwrap_or_default(),
        }
    }
}

/// What a login request carries. Session parameters are deliberately not read: a stale
/// session must never block a fresh login.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginParams {
    pub code: Option<String>,
    pub encrypted_data: Option<String>,
    pub iv: Option<String>,
    pub raw_data: Option<String>,
    pub signature: Option<String>,
}

pub fn login_params(headers: &HeaderMap, query: Option<&str>) -> LoginParams {
    LoginParams {
        code: param(headers, query, HEADER_CODE),
        encrypted_data: param(headers, query, HEADER_ENCRYPTED_DATA),
        iv: param(headers, query, HEADER_IV),
        raw_data: param(headers, query, HEADER_RAW_DATA),
        signature: param(headers, query, HEADER_SIGNATURE),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn headers_win_over_query_and_names_are_case_insensitive() {
        let mut headers = HeaderMap::new();
        headers.insert("X-WX-Id", HeaderValue::from_static("from-header"));
        let params = session_params(&headers, Some("x-wx-id=from-query&X-WX-SKEY=k"));
        assert_eq!(
            params,
            SessionParams::Present {
                id: "from-header".into(),
                skey: "k".into()
            }
        );
    }

    #[test]
    fn absent_partial_and_empty() {
        let none = HeaderMap::new();
        assert_eq!(session_params(&none, None), SessionParams::Absent);
        assert_eq!(
            session_params(&none, Some("x-wx-id=&other=1")),
            SessionParams::Absent
        );
        assert_eq!(
            session_params(&none, Some("X-WX-Id=abc")),
            SessionParams::Present {
                id: "abc".into(),
                skey: String::new()
            }
        );
    }

    #[test]
    fn query_values_are_url_decoded_like_node_does() {
        // '+' becomes a space, as in Node's querystring: session-svc repairs base64 for it.
        let p = login_params(&HeaderMap::new(), Some("X-WX-Code=c&X-WX-IV=ab+c%2Bd"));
        assert_eq!(p.iv.as_deref(), Some("ab c+d"));
    }

    #[test]
    fn utf8_header_values_survive() {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_RAW_DATA,
            HeaderValue::from_bytes("{\"nickName\":\"小明\"}".as_bytes()).unwrap(),
        );
        let p = login_params(&headers, None);
        assert_eq!(p.raw_data.as_deref(), Some("{\"nickName\":\"小明\"}"));
    }
}
