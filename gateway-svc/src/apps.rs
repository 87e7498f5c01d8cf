//! Which mini-program a login is for, decided at the gateway (which holds no secret) and sent
//! to session-svc as `LoginRequest.app_id`. First that applies: an operator's rule in the
//! routes file (`[[login]]`: a Host and/or an extra login path → an app); the AppId in the
//! `Referer` WeChat's runtime writes on `wx.request` (mini-program code cannot change it);
//! else session-svc's default app. Never a client header alone: a rule is the operator's, and
//! a Referer can at worst name an app whose code the client does not hold — WeChat binds a
//! code to the app that minted it, so a wrong choice fails the login, it never makes a
//! session of another app. A rule and a Referer that disagree are refused before any call.
use std::sync::Arc;

use http::HeaderMap;
use serde::Deserialize;

/// One `[[login]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginEntry {
    host: Option<String>,
    path: Option<String>,
    app: String,
}

/// An operator's rule: logins on this Host and/or this path are for `app`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRule {
    /// Lowercase, without a port.
    pub host: Option<String>,
    /// An extra login path (the gateway serves it as it serves `WEAPP_LOGIN_PATH`).
    pub path: Option<String>,
    pub app: Arc<str>,
}

/// Longest AppId accepted (WeChat's are 18 characters).
const MAX_APP_ID: usize = 64;

/// `id` if it is spelled like an AppId (letters, digits, `_`), for the routes file's checks.
pub fn app_id(id: &str) -> Result<&str, String> {
    let id = id.trim();
    if id.is_empty()
        || id.len() > MAX_APP_ID
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!(
            "{id:?} is not an AppId like \"wx0123456789abcdef\""
        ));
    }
    Ok(id)
}

impl LoginRule {
    pub fn parse_all(entries: Vec<LoginEntry>) -> Result<Vec<Self>, String> {
        let mut rules: Vec<Self> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let problem = |what: String| format!("[[login]] #{}: {what}", index + 1);
            let host = entry
                .host
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty());
            if let Some(host) = &host
                && (host.contains(['/', ' ', '@', ':']) || !host.is_ascii())
            {
                return Err(problem(format!(
                    "host {host:?} must be a bare host name (no scheme, port or path)"
                )));
            }
            let path = entry
                .path
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty());
            if let Some(path) = &path
                && (!path.starts_with('/')
                    || !matches!(
                        weapp_wire::path::normalize(path),
                        Ok(std::borrow::Cow::Borrowed(_))
                    )
                    || path.contains(['?', '#']))
            {
                return Err(problem(format!(
                    "path {path:?} must be a plain path like /club/login"
                )));
            }
            if host.is_none() && path.is_none() {
                return Err(problem("say which logins: a host, a path, or both".into()));
            }
            let app = Arc::from(app_id(&entry.app).map_err(problem)?);
            let rule = Self { host, path, app };
            if rules
                .iter()
                .any(|r| r.host == rule.host && r.path == rule.path)
            {
                return Err(problem("the same host and path are listed twice".into()));
            }
            rules.push(rule);
        }
        Ok(rules)
    }

    fn applies(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(rule), Some(host)) => rule.eq_ignore_ascii_case(host),
            (Some(_), None) => false,
        };
        host_ok && self.path.as_deref().is_none_or(|p| p == path)
    }
}

/// Why the gateway will not say which app a login is for.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this login names two apps: the gateway's rule for it says {rule:?}, WeChat's Referer says {referer:?}"
)]
pub struct Disagreement {
    pub rule: Arc<str>,
    pub referer: String,
}

/// The app a login on `path` with these headers is for; `None`: session-svc's default app.
pub fn login_app(
    rules: &[LoginRule],
    headers: &HeaderMap,
    path: &str,
) -> Result<Option<Arc<str>>, Disagreement> {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(without_port);
    let rule = rules
        .iter()
        .find(|r| r.applies(host, path))
        .map(|r| r.app.clone());
    let referer = headers
        .get(http::header::REFERER)
        .and_then(|r| weapp_wire::referer::mini_program_app_id(r.as_bytes()));
    match (rule, referer) {
        (Some(rule), Some(referer)) if *rule != *referer => Err(Disagreement {
            rule,
            referer: referer.to_owned(),
        }),
        (Some(rule), _) => Ok(Some(rule)),
        (None, Some(referer)) => Ok(Some(Arc::from(referer))),
        (None, None) => Ok(None),
    }
}

/// `host[:port]` → `host` (an IPv6 literal keeps its brackets).
fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if (name.ends_with(']') || !name.contains(':'))
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Result<Vec<LoginRule>, String> {
        #[derive(Deserialize)]
        struct File {
            login: Vec<LoginEntry>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        LoginRule::parse_all(file.login)
    }

    fn headers(host: Option<&str>, referer: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(http::header::HOST, host.parse().unwrap());
        }
        if let Some(referer) = referer {
            h.insert(http::header::REFERER, referer.parse().unwrap());
        }
        h
    }

    const REFERER_B: &str = "https://servicewechat.com/wxbbb/7/page-frame.html";

    #[test]
    fn a_rule_then_the_referer_then_the_default_decide() {
        let rules = rules(
            "[[login]]\nhost = \"Shop.Example.com\"\napp = \"wxaaa\"\n\
             [[login]]\npath = \"/club/login\"\napp = \"wxbbb\"\n",
        )
        .unwrap();
        let app = |host, referer, path| {
            login_app(&rules, &headers(host, referer), path).map(|a| a.map(|a| a.to_string()))
        };
        assert_eq!(
            app(Some("shop.example.com:443"), None, "/login"),
            Ok(Some("wxaaa".into()))
        );
        assert_eq!(
            app(Some("x.example.com"), None, "/club/login"),
            Ok(Some("wxbbb".into()))
        );
        assert_eq!(
            app(Some("x.example.com"), Some(REFERER_B), "/login"),
            Ok(Some("wxbbb".into()))
        );
        assert_eq!(app(None, None, "/login"), Ok(None));
        assert_eq!(
            app(
                None,
                Some("https://servicewechat.com/wxbbb/7/page-frame.html?x"),
                "/login"
            ),
            Ok(None),
            "only the exact form counts"
        );
        let refused = app(Some("shop.example.com"), Some(REFERER_B), "/login").unwrap_err();
        assert_eq!(
            (&*refused.rule, refused.referer.as_str()),
            ("wxaaa", "wxbbb")
        );
        assert_eq!(
            app(
                Some("shop.example.com"),
                Some("https://servicewechat.com/wxaaa/1/page-frame.html"),
                "/login"
            ),
            Ok(Some("wxaaa".into()))
        );
    }

    #[test]
    fn bad_rules_are_named() {
        for (text, expected) in [
            ("[[login]]\napp = \"wxaaa\"", "a host, a path"),
            (
                "[[login]]\nhost = \"https://x\"\napp = \"wxaaa\"",
                "bare host",
            ),
            ("[[login]]\npath = \"login\"\napp = \"wxaaa\"", "plain path"),
            (
                "[[login]]\npath = \"/a/../login\"\napp = \"wxaaa\"",
                "plain path",
            ),
            ("[[login]]\npath = \"/l\"\napp = \"wx aaa\"", "not an AppId"),
            (
                "[[login]]\npath = \"/l\"\napp = \"wxa\"\n[[login]]\npath = \"/l\"\napp = \"wxb\"",
                "twice",
            ),
            (
                "[[login]]\npath = \"/l\"\napp = \"wxa\"\nsecret = 1",
                "unknown field",
            ),
        ] {
            let err = rules(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn ports_are_not_part_of_the_host() {
        assert_eq!(without_port("a.example.com:8443"), "a.example.com");
        assert_eq!(without_port("a.example.com"), "a.example.com");
        assert_eq!(without_port("[::1]:80"), "[::1]");
    }
}
