//! Configuration: command-line flags with matching `WEAPP_*` environment variables, resolved
//! into [`Settings`]. The gateway holds no secrets, so there is nothing here to hide.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use clap::Parser;
use ipnet::IpNet;

use crate::server::HttpLimits;

#[derive(Clone, Debug)]
pub struct Settings {
    /// HTTP listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// session-svc's gRPC endpoint, e.g. `http://10.0.0.5:50051`.
    pub session_svc_url: String,
    /// Deadline for resolving a session; past it the request fails closed with 503.
    pub session_timeout: Duration,
    /// Deadline for a login (it includes session-svc's call to WeChat).
    pub login_timeout: Duration,
    /// Path of the wafer login endpoint.
    pub login_path: String,
    pub ws: WsSettings,
    pub cache: CacheSettings,
    pub http: HttpLimits,
    /// Logins a minute per client address (0: no limit).
    pub login_rate_per_address: u32,
    /// Peers whose `X-Real-IP` header names the client (the reverse proxy).
    pub trusted_proxies: Vec<IpNet>,
}

/// The cache of validated sessions (see `session_cache.rs` for what keeps it honest).
#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// Longest time a Validate answer is reused; zero turns the cache off.
    pub ttl: Duration,
    /// Most sessions held; past it, answers are simply not cached.
    pub capacity: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            capacity: 100_000,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct WsSettings {
    pub ping_interval: Duration,
    /// A connection that has not answered a ping within this time is closed.
    pub pong_timeout: Duration,
    /// Largest message (and frame) accepted; larger ones close the connection with 1009.
    pub max_message_size: usize,
    /// WebSocket connections this gateway holds at once; more are refused with 503.
    pub max_connections: usize,
    /// WebSocket connections one session may hold at once on this gateway; more get 429.
    pub max_per_session: usize,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            max_message_size: 64 * 1024,
            max_connections: 10_000,
            max_per_session: 16,
        }
    }
}

impl Settings {
    /// Settings for a gateway in front of `session_svc_url`, everything else at its default.
    pub fn new(listen: SocketAddr, session_svc_url: impl Into<String>) -> Self {
        Self {
            listen,
            session_svc_url: session_svc_url.into(),
            session_timeout: Duration::from_millis(300),
            login_timeout: Duration::from_secs(10),
            login_path: "/login".into(),
            ws: WsSettings::default(),
            cache: CacheSettings::default(),
            http: HttpLimits::default(),
            login_rate_per_address: 60,
            trusted_proxies: default_trusted_proxies(),
        }
    }
}

/// nginx on the same host, as deployed with systemd.
fn default_trusted_proxies() -> Vec<IpNet> {
    vec![
        IpAddr::from(Ipv4Addr::LOCALHOST).into(),
        IpAddr::from(Ipv6Addr::LOCALHOST).into(),
    ]
}

/// An address ("10.0.0.5") or a network ("172.16.0.0/12").
fn parse_net(value: &str) -> Result<IpNet, String> {
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{value:?} is neither an IP address nor a network like 10.0.0.0/8"))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

/// Paths the gateway serves itself; the login path must not shadow them.
const RESERVED_PATHS: [&str; 5] = ["/me", "/ws", "/logout", "/healthz", "/readyz"];

/// weapp gateway-svc: the wafer HTTP/WebSocket edge.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// HTTP listen address.
    #[arg(long, env = "WEAPP_GATEWAY_LISTEN", default_value = "0.0.0.0:8765")]
    pub listen: SocketAddr,

    /// session-svc's gRPC URL.
    #[arg(
        long,
        env = "WEAPP_SESSION_SVC_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub session_svc_url: String,

    /// Deadline for resolving a session, e.g. "300ms".
    #[arg(long, env = "WEAPP_SESSION_TIMEOUT", default_value = "300ms", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,

    /// Deadline for a login, WeChat round trip included, e.g. "10s".
    #[arg(long, env = "WEAPP_LOGIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub login_timeout: Duration,

    /// Path of the login endpoint (wafer's `loginPath`).
    #[arg(long, env = "WEAPP_LOGIN_PATH", default_value = "/login")]
    pub login_path: String,

    /// WebSocket keep-alive ping interval.
    #[arg(long, env = "WEAPP_WS_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ws_ping_interval: Duration,

    /// Close a WebSocket that does not answer a ping within this time.
    #[arg(long, env = "WEAPP_WS_PONG_TIMEOUT", default_value = "8s", value_parser = humantime::parse_duration)]
    pub ws_pong_timeout: Duration,

    /// Largest WebSocket message in bytes.
    #[arg(long, env = "WEAPP_WS_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub ws_max_message_bytes: usize,

    /// Most WebSocket connections held at once by this gateway.
    #[arg(long, env = "WEAPP_WS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub ws_max_connections: usize,

    /// Most WebSocket connections one session holds at once on this gateway.
    #[arg(long, env = "WEAPP_WS_MAX_PER_SESSION", default_value_t = 16)]
    pub ws_max_per_session: usize,

    /// How long a validated session is reused before session-svc is asked again ("0s" turns
    /// the cache off). Revocations evict at once whatever this is.
    #[arg(long, env = "WEAPP_SESSION_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub session_cache_ttl: Duration,

    /// Most sessions the cache holds.
    #[arg(long, env = "WEAPP_SESSION_CACHE_CAPACITY", default_value_t = 100_000)]
    pub session_cache_capacity: usize,

    /// Time a client has to send a request's headers; slower ones are disconnected.
    #[arg(long, env = "WEAPP_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Duration,

    /// Most header lines in a request (431 past it).
    #[arg(long, env = "WEAPP_HTTP_MAX_HEADERS", default_value_t = 64)]
    pub http_max_headers: usize,

    /// Most bytes of request line and headers (431 past it; at least 8192).
    #[arg(long, env = "WEAPP_HTTP_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub http_max_header_bytes: usize,

    /// Largest request body in bytes (413 past it, before it is read).
    #[arg(long, env = "WEAPP_HTTP_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub http_max_body_bytes: usize,

    /// Connections this gateway holds at once, WebSockets included (503 past it).
    #[arg(long, env = "WEAPP_HTTP_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub http_max_connections: usize,

    /// Logins a minute from one client address; more get 429 before WeChat is asked (0: off).
    #[arg(long, env = "WEAPP_LOGIN_RATE_PER_ADDRESS", default_value_t = 60)]
    pub login_rate_per_address: u32,

    /// Addresses or networks of the reverse proxies whose X-Real-IP header names the client.
    #[arg(
        long,
        env = "WEAPP_TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = "127.0.0.1,::1",
        value_parser = parse_net
    )]
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(clap::Subcommand, Debug, Clone, Copy)]
pub enum Command {
    /// Exits 0 when the gateway listening on --listen is ready (its /readyz answers 200), for
    /// container health checks without curl in the image.
    Healthcheck,
}

impl Cli {
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        check_login_path(&self.login_path)?;
        if !self.session_svc_url.starts_with("http://")
            && !self.session_svc_url.starts_with("https://")
        {
            return Err(ConfigError::Invalid(format!(
                "WEAPP_SESSION_SVC_URL must be an http:// or https:// URL, got {:?}",
                self.session_svc_url
            )));
        }
        if self.ws_max_message_bytes == 0
            || self.http_max_connections == 0
            || self.ws_max_connections == 0
            || self.ws_max_per_session == 0
        {
            return Err(ConfigError::Invalid(
                "WebSocket message size and connection limits must be positive".into(),
            ));
        }
        Ok(Settings {
            listen: self.listen,
            session_svc_url: self.session_svc_url,
            session_timeout: self.session_timeout,
            login_timeout: self.login_timeout,
            login_path: self.login_path,
            ws: WsSettings {
                ping_interval: self.ws_ping_interval,
                pong_timeout: self.ws_pong_timeout,
                max_message_size: self.ws_max_message_bytes,
                max_connections: self.ws_max_connections,
                max_per_session: self.ws_max_per_session,
            },
            cache: CacheSettings {
                ttl: self.session_cache_ttl,
                capacity: self.session_cache_capacity,
            },
            http: HttpLimits {
                header_timeout: self.http_header_timeout,
                max_headers: self.http_max_headers,
                max_header_bytes: self.http_max_header_bytes,
                max_body_bytes: self.http_max_body_bytes,
                max_connections: self.http_max_connections,
            },
            login_rate_per_address: self.login_rate_per_address,
            trusted_proxies: self.trusted_proxies,
        })
    }
}

pub fn check_login_path(path: &str) -> Result<(), ConfigError> {
    let valid_chars = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if !path.starts_with('/') || path.len() < 2 || !valid_chars || path.contains("//") {
        return Err(ConfigError::Invalid(format!(
            "the login path must look like /login (letters, digits, / - _ .), got {path:?}"
        )));
    }
    if RESERVED_PATHS.contains(&path) {
        return Err(ConfigError::Invalid(format!(
            "the login path cannot be {path}: the gateway serves it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_tutorial() {
        let settings = Cli::try_parse_from(["gateway-svc"])
            .unwrap()
            .into_settings()
            .unwrap();
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8765");
        assert_eq!(settings.login_path, "/login");
        assert_eq!(settings.ws.max_message_size, 65536);
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let settings = Cli::try_parse_from([
            "gateway-svc",
            "--trusted-proxies",
            "10.0.0.5,172.16.0.0/12,::1",
        ])
        .unwrap()
        .into_settings()
        .unwrap();
        assert_eq!(settings.trusted_proxies.len(), 3);
        assert!(Cli::try_parse_from(["gateway-svc", "--trusted-proxies", "nginx"]).is_err());
    }

    #[test]
    fn bad_login_paths_are_refused() {
        for path in ["login", "/", "/me", "/ws", "/a b", "/{x}", "//x"] {
            assert!(check_login_path(path).is_err(), "{path}");
        }
        assert!(check_login_path("/weapp/login").is_ok());
    }
}
