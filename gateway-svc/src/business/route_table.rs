//! The business routes: which path prefixes the gateway forwards, to which upstream, and
//! whether they need a session. Read from a TOML file (`WEAPP_ROUTES_FILE`):
//!
//! ```toml
//! [[route]]
//! prefix = "/api/"                     # a request path starting with this goes to…
//! upstream = "http://127.0.0.1:8080"   # …this base URL (http://host:port[/base/path])
//! session = "required"                 # or "optional"
//! strip_prefix = false                 # true: /api/x reaches the upstream as /x
//! connect_timeout = "2s"
//! timeout = "30s"                      # until the upstream's response headers
//! max_body_bytes = 10485760
//! identity_headers = "weapp"           # or "cloudrun" (WeChat Cloud Run's X-WX-OPENID…), "both"
//! websocket = false                    # true: WebSocket upgrades go on to ws://the upstream
//! max_connections = 256                # requests in flight to the upstream at once…
//! queue_timeout = "2s"                 # …the next waits this long for one to end, then 503
//! body_timeout = "10s"                 # most time between two reads of a client's body (408)
//! buffer_body_bytes = 16384            # a body up to this is read whole before the upstream is asked
//! apps = ["wx1111111111111111"]        # sessions of other apps get 401 (default: any app)
//! resource_appid = "wx1111111111111111" # Cloud Run's resource sharing: other apps' users
//!                                      # reach this app's backend as X-WX-FROM-*
//!
//! [[login]]                            # which app a login is for (else the Referer WeChat
//! host = "club.example.com"            # writes, else session-svc's default app): a Host…
//! path = "/club/login"                 # …and/or an extra login path
//! app = "wx2222222222222222"
//! ```
//!
//! Mistakes stop start-up with the entry named: unknown fields, a bad URL, prefixes that
//! overlap each other (which one would win is never a guess) or that the gateway's own paths
//! would hide.
use std::{path::Path, sync::Arc, time::Duration};

use http::Uri;
use serde::Deserialize;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use weapp_common::config::duration;

use crate::{
    business::upstream::Upstream, error::ApiError, metrics::GatewayMetrics,
    sessions::identity::Names,
};

/// Whether a forwarded route needs a session.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SessionRule {
    /// No valid session: 401 with wafer's invalid-session body (the SDK logs in and retries).
    Required,
    /// Forwarded with the identity when there is a session, without it when there is none.
    Optional,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    route: Vec<Entry>,
    #[serde(default)]
    login: Vec<crate::apps::LoginEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    prefix: String,
    upstream: String,
    session: SessionRule,
    #[serde(default)]
    strip_prefix: bool,
    connect_timeout: Option<String>,
    timeout: Option<String>,
    max_body_bytes: Option<u64>,
    #[serde(default)]
    identity_headers: Names,
    #[serde(default)]
    websocket: bool,
    max_connections: Option<usize>,
    queue_timeout: Option<String>,
    body_timeout: Option<String>,
    buffer_body_bytes: Option<u64>,
    apps: Option<Vec<String>>,
    resource_appid: Option<String>,
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// What one route may hold of its upstream: nginx's `upstream` blocks leave this to the
/// operator (`max_conns`); a slow client must not hold more than its share of an upstream.
const DEFAULT_MAX_CONNECTIONS: usize = 256;
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// nginx's `client_body_timeout` is 60 s; a mini-program's body is small and sent at once.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx buffers request bodies before it asks the upstream (16 KiB in memory by default):
/// a body that trickles in holds no upstream connection while it does.
const DEFAULT_BUFFER_BODY_BYTES: u64 = 16 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// One forwarded prefix.
#[derive(Debug)]
pub struct Route {
    pub prefix: String,
    /// `host:port`, where to connect.
    pub authority: String,
    /// The same, as the upstream's Host header.
    pub host: http::HeaderValue,
    /// The upstream URL's path without its trailing slash ("" for none).
    pub base_path: String,
    pub session: SessionRule,
    pub strip_prefix: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_body_bytes: u64,
    /// The names the upstream gets the identity under.
    pub identity_headers: Names,
    /// WebSocket upgrades on this route go on to the upstream (`sockets/`); without it they
    /// are forwarded as any request, and a WebSocket server answers them as it would a
    /// plain HTTP request.
    pub websocket: bool,
    /// Requests in flight to the upstream at once (each holds one of its connections).
    pub max_connections: usize,
    /// How long a request waits for one of those to end before it gets 503.
    pub queue_timeout: Duration,
    /// Most time between two reads of a client's body (408 past it).
    pub body_timeout: Duration,
    /// A body up to this is read whole before the upstream is asked.
    pub buffer_body_bytes: u64,
    /// The apps whose sessions this route serves (`None`: any); another app's session gets
    /// 401 and is not forwarded (it stays valid).
    pub apps: Option<Arc<[Arc<str>]>>,
    /// Cloud Run's resource sharing: this route is app `resource_appid`'s backend, and other
    /// apps' users reach it as `X-WX-FROM-APPID/-OPENID/-UNIONID`.
    pub resource_appid: Option<http::HeaderValue>,
}

impl Route {
    /// Whether this route serves sessions of `app_id`.
    pub fn serves_app(&self, app_id: &str) -> bool {
        self.apps
            .as_ref()
            .is_none_or(|apps| apps.iter().any(|a| &**a == app_id))
    }

    /// Whether `path` (normalized, `path.rs`) is under this route: the prefix itself, or
    /// below it at a segment boundary (`/api` takes `/api` and `/api/x`, not `/apix`), in
    /// any letter case.
    pub fn takes(&self, path: &str) -> bool {
        under(path, &self.prefix)
    }

    /// Appends the path the upstream is asked for to `target`.
    pub fn push_upstream_path(&self, target: &mut String, path: &str) {
        let rest = match self.strip_prefix {
            true => path.get(self.prefix.len()..).unwrap_or_default(),
            false => path,
        };
        target.push_str(&self.base_path);
        target.push('/');
        target.push_str(rest.trim_start_matches('/'));
    }
}

/// In any letter case: an upstream on express (case-insensitive by default) or on a
/// case-insensitive file system reads `/API/x` as `/api/x`, so it must meet `/api/`'s rules.
fn under(path: &str, prefix: &str) -> bool {
    path.as_bytes()
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// A business route with its connections: the one structure forwarding needs (built at
/// start-up, `edge/destination.rs`).
#[derive(Debug)]
pub struct Business {
    pub route: Arc<Route>,
    pub upstream: Arc<Upstream>,
    /// Its place among the routes (its metrics label is next to the own paths').
    pub index: usize,
    /// One permit per request in flight to the upstream (`Route::max_connections`).
    pub in_flight: Arc<Semaphore>,
}

impl Business {
    pub fn new(route: Arc<Route>, index: usize) -> Self {
        let upstream = Upstream::new(route.authority.clone(), route.connect_timeout);
        Self {
            in_flight: Arc::new(Semaphore::new(route.max_connections)),
            upstream: Arc::new(upstream),
            route,
            index,
        }
    }

    /// A place among the requests in flight to the upstream, held until the answer has been
    /// passed on: at once, or within the route's `queue_timeout`, else 503.
    pub async fn admit(&self, metrics: &GatewayMetrics) -> Result<SemaphorePermit<'_>, ApiError> {
        if let Ok(permit) = self.in_flight.try_acquire() {
            return Ok(permit);
        }
        self.queue(metrics, self.in_flight.acquire()).await
    }

    /// The same, for an answer whose body outlives the request's task (hyper's).
    pub async fn admit_owned(
        &self,
        metrics: &GatewayMetrics,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = self.in_flight.clone().try_acquire_owned() {
            return Ok(permit);
        }
        self.queue(metrics, self.in_flight.clone().acquire_owned())
            .await
    }

    async fn queue<P>(
        &self,
        metrics: &GatewayMetrics,
        waiting: impl Future<Output = Result<P, AcquireError>>,
    ) -> Result<P, ApiError> {
        metrics.upstream_queued(&self.route.prefix, false);
        match tokio::time::timeout(self.route.queue_timeout, waiting).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                metrics.upstream_queued(&self.route.prefix, true);
                Err(ApiError::UpstreamBusy(self.route.prefix.clone()))
            }
        }
    }
}

/// The routes, in file order. Few, and never overlapping: the first that takes a path is
/// the only one. With them, the operator's rules of which app a login is for.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Arc<[Arc<Route>]>,
    logins: Arc<[crate::apps::LoginRule]>,
    /// The file it was read from (`SIGHUP` reads it again).
    source: Option<Arc<Path>>,
}

impl RouteTable {
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|route| route.takes(path))
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.logins.is_empty()
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    pub fn logins(&self) -> &Arc<[crate::apps::LoginRule]> {
        &self.logins
    }

    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The file read again (a reload), checked as at start-up.
    pub fn reread(&self) -> Result<Self, String> {
        match &self.source {
            Some(path) => routes_file_at(path),
            None => Ok(self.clone()),
        }
    }

    /// Refuses routes that the gateway's own paths would hide (`own` are those paths; `/me`
    /// matches in any letter case, as express mounts it).
    pub fn check_against(&self, own: &[&str]) -> Result<(), String> {
        for route in self.routes() {
            let hidden = own.iter().find(|own| {
                let prefix = &route.prefix;
                if own.eq_ignore_ascii_case("/me") {
                    return prefix.len() >= 3 && under(&prefix.to_ascii_lowercase(), "/me");
                }
                under(prefix, own)
            });
            if let Some(own) = hidden {
                return Err(format!(
                    "route {:?}: the gateway serves {own} itself, so this route would never be \
                     reached",
                    route.prefix
                ));
            }
        }
        for rule in self.logins.iter() {
            let Some(path) = &rule.path else { continue };
            if own.iter().any(|own| own.eq_ignore_ascii_case(path)) {
                return Err(format!(
                    "[[login]] path {path:?} is one of the gateway's own paths"
                ));
            }
            if let Some(route) = self.find(path) {
                return Err(format!(
                    "[[login]] path {path:?} is under the route {:?}: it would be forwarded, \
                     not a login",
                    route.prefix
                ));
            }
        }
        Ok(())
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut routes: Vec<Arc<Route>> = Vec::new();
        for (index, entry) in file.route.into_iter().enumerate() {
            let name = format!("route #{} (prefix {:?})", index + 1, entry.prefix);
            let route = Arc::new(entry.into_route().map_err(|e| format!("{name}: {e}"))?);
            if let Some(other) = routes
                .iter()
                .find(|r| r.takes(&route.prefix) || route.takes(&r.prefix))
            {
                return Err(format!(
                    "{name} overlaps the route with prefix {:?}: give each path one route",
                    other.prefix
                ));
            }
            routes.push(route);
        }
        let logins = crate::apps::LoginRule::parse_all(file.login)?;
        Ok(Self {
            routes: routes.into(),
            logins: logins.into(),
            source: None,
        })
    }
}

impl Entry {
    fn into_route(self) -> Result<Route, String> {
        let prefix = self.prefix;
        if !prefix.starts_with('/') || prefix.contains(['?', '#', ' ']) || prefix.contains("//") {
            return Err("the prefix must be a path like /api/".into());
        }
        // Requests are matched after normalization: a prefix that is not normal would never
        // match, or match something else than it says.
        if !matches!(
            weapp_wire::path::normalize(&prefix),
            Ok(std::borrow::Cow::Borrowed(_))
        ) {
            return Err(
                "the prefix must be a plain path like /api/ (no %, ;, \\, . or .. segments)".into(),
            );
        }
        let uri: Uri = self
            .upstream
            .parse()
            .map_err(|e| format!("upstream {:?} is not a URL: {e}", self.upstream))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "upstream {:?} must be an http:// URL (business upstreams are reached over \
                 the private network; https:// upstreams are not supported yet)",
                self.upstream
            ));
        }
        let Some(authority) = uri.authority() else {
            return Err(format!("upstream {:?} names no host", self.upstream));
        };
        if uri.query().is_some() || self.upstream.contains('#') {
            return Err(format!(
                "upstream {:?} must not have a query or fragment",
                self.upstream
            ));
        }
        let time = |value: Option<String>, default: Duration, field: &str| match value {
            None => Ok(default),
            Some(v) => match duration(&v) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(format!("{field} must be more than zero")),
                Err(e) => Err(format!("{field}: {e}")),
            },
        };
        let host = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("upstream {:?} has an unusable host", self.upstream))?;
        // A URL without a port means port 80, as for any http:// URL.
        let authority = match authority.port() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Route {
            authority,
            host,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            session: self.session,
            strip_prefix: self.strip_prefix,
            connect_timeout: time(
                self.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
                "connect_timeout",
            )?,
            timeout: time(self.timeout, DEFAULT_TIMEOUT, "timeout")?,
            max_body_bytes: self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            identity_headers: self.identity_headers,
            websocket: self.websocket,
            max_connections: match self.max_connections {
                Some(0) => return Err("max_connections must be more than zero".into()),
                Some(n) => n.min(Semaphore::MAX_PERMITS),
                None => DEFAULT_MAX_CONNECTIONS,
            },
            queue_timeout: time(self.queue_timeout, DEFAULT_QUEUE_TIMEOUT, "queue_timeout")?,
            body_timeout: time(self.body_timeout, DEFAULT_BODY_TIMEOUT, "body_timeout")?,
            buffer_body_bytes: self.buffer_body_bytes.unwrap_or(DEFAULT_BUFFER_BODY_BYTES),
            apps: match self.apps {
                None => None,
                Some(apps) if apps.is_empty() => {
                    return Err("apps is empty: list AppIds, or leave it out for any app".into());
                }
                Some(apps) => Some(
                    apps.iter()
                        .map(|a| crate::apps::app_id(a).map(Arc::from))
                        .collect::<Result<_, _>>()?,
                ),
            },
            resource_appid: match self.resource_appid {
                None => None,
                Some(app) => Some(
                    http::HeaderValue::from_str(crate::apps::app_id(&app)?)
                        .map_err(|_| format!("resource_appid {app:?} is not an AppId"))?,
                ),
            },
            prefix,
        })
    }
}

/// clap's parser for `WEAPP_ROUTES_FILE`.
pub fn routes_file(path: &str) -> Result<RouteTable, String> {
    routes_file_at(Path::new(path))
}

fn routes_file_at(path: &Path) -> Result<RouteTable, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut table = RouteTable::parse(&text)?;
    table.source = Some(path.into());
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<RouteTable, String> {
        RouteTable::parse(text)
    }

    impl Route {
        fn upstream_path(&self, path: &str) -> String {
            let mut target = String::new();
            self.push_upstream_path(&mut target, path);
            target
        }
    }

    #[test]
    fn routes_take_paths_at_segment_boundaries() {
        let t = table(
            r#"
            [[route]]
            prefix = "/api"
            upstream = "http://127.0.0.1:9000/v1/"
            session = "required"
            [[route]]
            prefix = "/public/"
            upstream = "http://127.0.0.1:9001"
            session = "optional"
            strip_prefix = true
            timeout = "5s"
            "#,
        )
        .unwrap();
        let api = t.find("/api/orders").unwrap();
        assert_eq!(api.upstream_path("/api/orders"), "/v1/api/orders");
        assert!(t.find("/api").is_some());
        assert!(t.find("/apix").is_none());
        assert!(t.find("/API/orders").is_some(), "any letter case");
        assert!(t.find("/Api").is_some());
        let public = t.find("/public/a/b").unwrap();
        assert_eq!(public.upstream_path("/public/a/b"), "/a/b");
        assert_eq!(public.upstream_path("/public/"), "/");
        assert_eq!(public.timeout, Duration::from_secs(5));
        assert_eq!(public.session, SessionRule::Optional);
        assert!(t.find("/public").is_none());
        assert!(t.find("/").is_none());
    }

    #[test]
    fn mistakes_name_the_entry() {
        let route = |fields: &str| format!("[[route]]\n{fields}\n");
        let ok = "prefix = \"/api/\"\nupstream = \"http://h:1\"\nsession = \"required\"";
        for (text, expect) in [
            (route(&format!("{ok}\ncolour = \"red\"")), "colour"),
            (
                route("prefix = \"/api/\"\nupstream = \"ftp://h\"\nsession = \"required\""),
                "route #1 (prefix \"/api/\")",
            ),
            (
                route("prefix = \"/api/\"\nupstream = \"http://h:1\"\nsession = \"maybe\""),
                "maybe",
            ),
            (
                route("prefix = \"api\"\nupstream = \"http://h:1\"\nsession = \"required\""),
                "route #1",
            ),
            (
                route(&format!("{ok}\ntimeout = \"soon\"")),
                "route #1 (prefix \"/api/\"): timeout",
            ),
            (
                format!(
                    "{}{}",
                    route(ok),
                    route(
                        "prefix = \"/api/v2/\"\nupstream = \"http://h:2\"\nsession = \"optional\""
                    )
                ),
                "route #2 (prefix \"/api/v2/\") overlaps the route with prefix \"/api/\"",
            ),
        ] {
            let err = table(&text).unwrap_err();
            assert!(err.contains(expect), "{err} should mention {expect}");
        }
    }

    #[test]
    fn the_gateways_own_paths_cannot_be_hidden() {
        let own = ["/login", "/me", "/ws"];
        for prefix in ["/me/", "/ME", "/Me/x", "/login", "/ws/"] {
            let t = table(&format!(
                "[[route]]\nprefix = \"{prefix}\"\nupstream = \"http://h:1\"\nsession = \"optional\""
            ))
            .unwrap();
            assert!(t.check_against(&own).is_err(), "{prefix}");
        }
        for prefix in ["/", "/api/", "/mex", "/metrics/"] {
            let t = table(&format!(
                "[[route]]\nprefix = \"{prefix}\"\nupstream = \"http://h:1\"\nsession = \"optional\""
            ))
            .unwrap();
            assert!(t.check_against(&own).is_ok(), "{prefix}");
        }
    }
}
