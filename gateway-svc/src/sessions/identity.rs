//! The identity the gateway hands to the business: headers on forwarded requests, on
//! `auth_request` answers and on relayed WebSocket messages. weapp's own headers start with
//! `X-Weapp-`; a route may ask for WeChat Cloud Run's names instead or as well
//! (`X-WX-OPENID`, `X-WX-UNIONID`, `X-WX-APPID`, `X-WX-SOURCE`, and the client's address as
//! `X-Original-Forwarded-For`), so that a container written for Cloud Run runs unchanged.
//! Before any is set, a client's own identity headers of every naming and spelling are removed
//! (`strip_client_headers`): nothing a client sends can pass for an identity. The headers are
//! for convenience; the assertion (a JWT signed by session-svc, verifiable against
//! `/.well-known/jwks.json`) is the proof.
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;

use crate::sessions::user::User;

/// weapp's identity headers.
pub const PREFIX: &str = "x-weapp-";
/// wafer's session parameters and WeChat Cloud Run's identity headers (`X-WX-OPENID`,
/// `X-WX-UNIONID`, `X-WX-APPID`, …), which containers written for Cloud Run trust.
pub const WX_PREFIX: &str = "x-wx-";
/// Cloud Run's name for the client's address, trusted like its identity headers.
pub const ORIGINAL_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-original-forwarded-for");
/// nginx's name for the client's address: the gateway believes it from trusted proxies for its
/// own rate limit, and passes on none (the upstream gets `X-Forwarded-For`), so a client
/// cannot name its own address to a business either.
const REAL_IP: &str = "x-real-ip";
/// The user's openId.
pub const OPEN_ID: HeaderName = HeaderName::from_static("x-weapp-open-id");
/// The user's unionId, when WeChat gave one.
pub const UNION_ID: HeaderName = HeaderName::from_static("x-weapp-union-id");
/// A short hash of the session id (the id itself is half a credential).
pub const SESSION: HeaderName = HeaderName::from_static("x-weapp-session");
/// The user object (as `/me` answers it), as unpadded base64url JSON: header values cannot
/// carry the nicknames of every script.
pub const USER: HeaderName = HeaderName::from_static("x-weapp-user");
/// The signed identity assertion (JWT).
pub const ASSERTION: HeaderName = HeaderName::from_static("x-weapp-assertion");
/// The session's mini-program (AppId), on forwarded requests and on `/login` and `/me`.
pub const APP_ID: HeaderName = HeaderName::from_static("x-weapp-app-id");
/// Cloud Run's resource sharing: the caller's app, openid and unionid when a route serves
/// another app's resources (`resource_appid`).
pub const WX_FROM_APPID: HeaderName = HeaderName::from_static("x-wx-from-appid");
pub const WX_FROM_OPENID: HeaderName = HeaderName::from_static("x-wx-from-openid");
pub const WX_FROM_UNIONID: HeaderName = HeaderName::from_static("x-wx-from-unionid");
/// The user's phone number (E.164), once WeChat has verified it (`/phone-number`).
pub const PHONE: HeaderName = HeaderName::from_static("x-weapp-phone");
/// Cloud Run's names: the user's openid, unionid (when WeChat gave one), the mini-program's
/// AppID, and where the call came from (Cloud Run's advice: check that it is present).
pub const WX_OPENID: HeaderName = HeaderName::from_static("x-wx-openid");
pub const WX_UNIONID: HeaderName = HeaderName::from_static("x-wx-unionid");
pub const WX_APPID: HeaderName = HeaderName::from_static("x-wx-appid");
pub const WX_SOURCE: HeaderName = HeaderName::from_static("x-wx-source");
/// `X-WX-SOURCE` on what the gateway forwards: a mini-program user's call through weapp.
pub const SOURCE: HeaderValue = HeaderValue::from_static("weapp");

/// Which names a route's upstream gets the identity under (`identity_headers` in the routes
/// file).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Names {
    /// `X-Weapp-*` and the signed assertion.
    #[default]
    Weapp,
    /// Cloud Run's: `X-WX-OPENID`, `X-WX-UNIONID`, `X-WX-APPID`, `X-WX-SOURCE`,
    /// `X-Original-Forwarded-For`.
    Cloudrun,
    /// Both.
    Both,
}

impl Names {
    pub fn weapp(self) -> bool {
        self != Self::Cloudrun
    }

    pub fn cloudrun(self) -> bool {
        self != Self::Weapp
    }
}

/// Names of fields a client may not send on, as a prefix or whole, compared as PHP, WSGI and
/// CGI servers (and nginx's `$http_*` variables) read a name: lowercased, `_` as `-`. So
/// `X_WX_OPENID` is `X-WX-OPENID` to a Cloud Run container written in Flask, and goes too.
const NOT_FROM_CLIENTS: [(&str, Match); 8] = [
    // weapp's identity, wafer's credentials, Cloud Run's identity.
    (PREFIX, Match::Prefix),
    (WX_PREFIX, Match::Prefix),
    // The client's address: the gateway says it (`forward::request_headers`).
    ("x-original-forwarded-for", Match::Whole),
    (REAL_IP, Match::Whole),
    ("forwarded", Match::Whole),
    ("x-forwarded-", Match::Prefix),
    // Where the request goes: IIS, Symfony and Laminas route on these, past the gateway's
    // routing (`/pub/x` with `X-Original-URL: /api/orders`).
    ("x-original-url", Match::Whole),
    ("x-rewrite-url", Match::Whole),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    Prefix,
    Whole,
}

/// Whether a client's field of this name must not reach an upstream (`NOT_FROM_CLIENTS`).
pub fn not_from_clients(name: &str) -> bool {
    // Every listed name starts with `x` or `f`: most fields are let through on their first
    // letter (this runs for every field of every forwarded request).
    if !matches!(name.as_bytes().first(), Some(b'x' | b'X' | b'f' | b'F')) {
        return false;
    }
    NOT_FROM_CLIENTS.iter().any(|&(listed, how)| match how {
        Match::Prefix => name.len() > listed.len() && folded_eq(&name[..listed.len()], listed),
        Match::Whole => folded_eq(name, listed),
    })
}

/// `name` is `listed` (lowercase, with `-`) when read lowercased with `_` as `-`.
fn folded_eq(name: &str, listed: &str) -> bool {
    name.len() == listed.len()
        && name.bytes().zip(listed.bytes()).all(|(a, b)| {
            let a = match a {
                b'_' => b'-',
                a => a.to_ascii_lowercase(),
            };
            a == b
        })
}

/// Removes every field that names a user, a client address or where the request goes
/// (`not_from_clients`), however it is spelled. Only the gateway says who the user is.
pub fn strip_client_headers(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| not_from_clients(name.as_str()))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// A session's identity headers under both namings, rendered once per Validate answer and
/// cached with it: a forwarded request copies them (reference-counted values), it does not
/// hash or encode.
#[derive(Debug)]
pub struct Identity {
    headers: HeaderMap,
    cloudrun: HeaderMap,
}

impl Identity {
    /// `app_id` is the mini-program's, as session-svc said (empty from an older one: then no
    /// `X-WX-APPID`).
    pub fn new(
        session_id: &str,
        user: &User,
        app_id: &str,
        phone: Option<&str>,
        assertion: Option<HeaderValue>,
    ) -> Self {
        let mut cloudrun = HeaderMap::with_capacity(4);
        if let Ok(value) = HeaderValue::from_str(&user.open_id) {
            cloudrun.insert(WX_OPENID, value);
        }
        if let Some(value) = user
            .union_id
            .as_deref()
            .and_then(|u| HeaderValue::from_str(u).ok())
        {
            cloudrun.insert(WX_UNIONID, value);
        }
        if let Ok(value) = HeaderValue::from_str(app_id)
            && !app_id.is_empty()
        {
            cloudrun.insert(WX_APPID, value);
        }
        cloudrun.insert(WX_SOURCE, SOURCE);
        let mut headers = HeaderMap::with_capacity(6);
        if let Ok(value) = HeaderValue::from_str(&user.open_id) {
            headers.insert(OPEN_ID, value);
        }
        if let Some(value) = user
            .union_id
            .as_deref()
            .and_then(|u| HeaderValue::from_str(u).ok())
        {
            headers.insert(UNION_ID, value);
        }
        if let Ok(value) = HeaderValue::from_str(&weapp_wire::short_hash(session_id)) {
            headers.insert(SESSION, value);
        }
        if let Ok(value) = HeaderValue::from_str(app_id)
            && !app_id.is_empty()
        {
            headers.insert(APP_ID, value);
        }
        if let Ok(value) = HeaderValue::try_from(URL_SAFE_NO_PAD.encode(&user.me_body)) {
            headers.insert(USER, value);
        }
        if let Some(value) = phone.and_then(|p| HeaderValue::from_str(p).ok()) {
            headers.insert(PHONE, value);
        }
        if let Some(assertion) = assertion {
            headers.insert(ASSERTION, assertion);
        }
        Self { headers, cloudrun }
    }

    /// Adds the headers of `names` to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap, names: Names) {
        for (name, value) in self.fields(names) {
            headers.insert(name, value.clone());
        }
    }

    /// What a route's upstream gets when the route serves app `resource`'s resources (Cloud
    /// Run's resource sharing): a session of that app as usual; another app's user under
    /// Cloud Run's names as `X-WX-APPID` = the resource's app, no `X-WX-OPENID` (an openid
    /// of another app means nothing there), and `X-WX-FROM-APPID/-OPENID/-UNIONID` of the
    /// caller. weapp's own names are unchanged (they say the session's app). `None`: no
    /// sharing applies, send [`Identity::fields`].
    pub fn shared(
        &self,
        names: Names,
        resource: &HeaderValue,
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let app = self.cloudrun.get(WX_APPID);
        if app == Some(resource) {
            return None;
        }
        let mut fields: Vec<(HeaderName, HeaderValue)> = Vec::new();
        if names.weapp() {
            fields.extend(self.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
        }
        if names.cloudrun() {
            fields.push((WX_APPID, resource.clone()));
            let from = [
                (WX_FROM_APPID, app),
                (WX_FROM_OPENID, self.cloudrun.get(WX_OPENID)),
                (WX_FROM_UNIONID, self.cloudrun.get(WX_UNIONID)),
            ];
            fields.extend(
                from.into_iter()
                    .filter_map(|(name, value)| Some((name, value?.clone()))),
            );
            fields.push((WX_SOURCE, SOURCE));
        }
        Some(fields)
    }

    /// The headers of `names` (one value each).
    pub fn fields(&self, names: Names) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let sets = [
            (names.weapp(), &self.headers),
            (names.cloudrun(), &self.cloudrun),
        ];
        sets.into_iter()
            .filter(|(on, _)| *on)
            .flat_map(|(_, headers)| headers)
    }
}

#[cfg(test)]
mod tests {
    use weapp_wire::UserInfo;

    use super::*;

    #[test]
    fn names_are_compared_as_cgi_servers_read_them() {
        for name in [
            "x-wx-openid",
            "x_wx_openid",
            "X_Wx-OpenId",
            "x-weapp-user",
            "forwarded",
        ] {
            assert!(not_from_clients(name), "{name}");
        }
        for name in [
            "x-wx",
            "x-wxopenid",
            "x_weapp",
            "forwardedx",
            "x-forwarded",
            "content-type",
        ] {
            assert!(!not_from_clients(name), "{name}");
        }
    }

    #[test]
    fn client_identity_headers_are_replaced_by_the_sessions() {
        let mut headers = HeaderMap::new();
        headers.insert("x-weapp-open-id", HeaderValue::from_static("someone-else"));
        headers.insert("X-Weapp-Anything", HeaderValue::from_static("x"));
        headers.insert("X-WX-OpenId", HeaderValue::from_static("attacker"));
        headers.insert("X-WX-UNIONID", HeaderValue::from_static("attacker"));
        headers.insert("x-wx-skey", HeaderValue::from_static("secret"));
        headers.insert("X-Real-IP", HeaderValue::from_static("6.6.6.6"));
        headers.insert(
            "X-Original-Forwarded-For",
            HeaderValue::from_static("6.6.6.6"),
        );
        headers.insert(
            "x-wxother",
            HeaderValue::from_static("kept: not the namespace"),
        );
        headers.insert("x-other", HeaderValue::from_static("kept"));
        // Every spelling a CGI-style server reads as an identity or a route.
        for spelled in [
            "x_wx_openid",
            "X_WX_UNIONID",
            "x_Weapp_Open_Id",
            "x-wx_appid",
            "X_WX_SKEY",
            "x_real_ip",
            "x_original_forwarded_for",
            "x-original-url",
            "X_Original_URL",
            "x-rewrite-url",
            "forwarded",
            "x-forwarded-host",
            "x_forwarded_for",
            "x-forwarded-port",
            "x-forwarded-prefix",
        ] {
            headers.insert(
                HeaderName::from_bytes(spelled.as_bytes()).unwrap(),
                HeaderValue::from_static("victim"),
            );
        }
        strip_client_headers(&mut headers);
        assert_eq!(headers.len(), 2, "{headers:?}");
        headers.remove("x-wxother");
        assert_eq!(headers.len(), 1);
        let user = User::new(&UserInfo::code_only("o-1", Some("u-1")));
        let identity = Identity::new(
            "id",
            &user,
            "wx-app",
            Some("+8613800138000"),
            Some(HeaderValue::from_static("a.b.c")),
        );
        identity.apply(&mut headers, Names::Weapp);
        assert!(!headers.contains_key(WX_OPENID));
        assert_eq!(headers[PHONE], "+8613800138000");
        assert_eq!(headers[OPEN_ID], "o-1");
        assert_eq!(headers[UNION_ID], "u-1");
        assert_eq!(headers[SESSION], weapp_wire::short_hash("id").as_str());
        assert_eq!(headers[ASSERTION], "a.b.c");
        let decoded = URL_SAFE_NO_PAD.decode(headers[USER].as_bytes()).unwrap();
        assert_eq!(decoded, br#"{"openId":"o-1","unionId":"u-1"}"#);

        let mut cloudrun = HeaderMap::new();
        identity.apply(&mut cloudrun, Names::Cloudrun);
        assert_eq!(cloudrun[WX_OPENID], "o-1");
        assert_eq!(cloudrun[WX_UNIONID], "u-1");
        assert_eq!(cloudrun[WX_APPID], "wx-app");
        assert_eq!(cloudrun[WX_SOURCE], "weapp");
        assert_eq!(cloudrun.len(), 4, "no weapp names: {cloudrun:?}");
        let mut both = HeaderMap::new();
        identity.apply(&mut both, Names::Both);
        assert_eq!(both.len(), 4 + headers.len() - 1, "{both:?}");
    }
}
