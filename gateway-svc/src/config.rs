//! Configuration, defined once: each setting is a clap argument (flag, `WEAPP_*` environment
//! variable, default) on the structs below, and those structs are the settings the gateway
//! runs with. Tests parse them exactly as the binary does. The gateway holds no secret of the app;
//! its own API key for session-svc is read from a file, like every secret.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use clap::{Args, Parser};

use ipnet::IpNet;
use secrecy::{ExposeSecret as _, SecretString};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use weapp_common::config::{ServiceCli, duration, ip_net, pem_file, positive, secret_file};

use crate::{
    business::route_table::{RouteTable, routes_file},
    edge::destination::fixed_paths,
};

/// weapp gateway-svc: the wafer HTTP/WebSocket edge.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<weapp_common::Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// HTTP listen address (port 0 picks a free port).
    #[arg(long, env = "WEAPP_GATEWAY_LISTEN", default_value = "0.0.0.0:8765")]
    pub listen: SocketAddr,

    /// Where Prometheus scrapes `/metrics` (keep it off the public network; `off`: nowhere).
    #[arg(long, env = "WEAPP_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = weapp_common::metrics::metrics_listen)]
    pub metrics_listen: weapp_common::metrics::MetricsListen,

    #[command(flatten)]
    pub tracing: weapp_common::otlp::TracingSettings,

    #[command(flatten)]
    pub session_svc: SessionSvcLink,

    /// Deadline for resolving a session; past it the request fails closed with 503.
    #[arg(long, env = "WEAPP_SESSION_TIMEOUT", default_value = "300ms", value_parser = duration)]
    pub session_timeout: Duration,

    /// Deadline for a login, WeChat round trip included.
    #[arg(long, env = "WEAPP_LOGIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub login_timeout: Duration,

    /// Path of the login endpoint (wafer's `loginPath`).
    #[arg(long, env = "WEAPP_LOGIN_PATH", default_value = "/login", value_parser = login_path)]
    pub login_path: String,

    /// TOML file of business routes: path prefixes forwarded to upstreams with the user's
    /// identity (see "Put your API behind weapp" in the README). None: every other path
    /// answers as the tutorial's express app did.
    #[arg(long = "routes-file", env = "WEAPP_ROUTES_FILE", value_parser = routes_file)]
    pub routes: Option<RouteTable>,

    #[command(flatten)]
    pub ws: WsSettings,

    #[command(flatten)]
    pub relay: RelaySettings,

    #[command(flatten)]
    pub cache: CacheSettings,

    #[command(flatten)]
    pub http: HttpLimits,

    /// Logins a minute from one client address; more get 429 before WeChat is asked (0: off).
    #[arg(long, env = "WEAPP_LOGIN_RATE_PER_ADDRESS", default_value_t = 60)]
    pub login_rate_per_address: u32,

    /// Addresses or networks of the reverse proxies whose X-Real-IP header names the client.
    #[arg(
        long,
        env = "WEAPP_TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = "127.0.0.1,::1",
        value_parser = ip_net
    )]
    pub trusted_proxies: Vec<IpNet>,
}

/// How the gateway reaches session-svc: where, with which API key, over which TLS.
#[derive(Args, Clone, Debug)]
pub struct SessionSvcLink {
    /// session-svc's gRPC URL, or several comma-separated (replicas); a DNS name counts each of
    /// its addresses, re-resolved every 5 s. https:// for TLS (then WEAPP_SESSION_SVC_CA_FILE).
    #[arg(id = "session_svc_url", value_name = "SESSION_SVC_URL", long = "session-svc-url", env = "WEAPP_SESSION_SVC_URL", default_value = "http://127.0.0.1:50051", value_parser = grpc_url)]
    pub url: String,

    /// File holding this gateway's API key for session-svc (sent as `authorization: Bearer`);
    /// its scopes must include validate, login and follow.
    #[arg(id = "session_svc_key_file", value_name = "SESSION_SVC_KEY_FILE", long = "session-svc-key-file", env = "WEAPP_SESSION_SVC_KEY_FILE", value_parser = secret_file)]
    pub key: Option<SecretString>,

    /// PEM CA certificate(s) that signed session-svc's certificate (for an https:// URL).
    #[arg(id = "session_svc_ca_file", value_name = "SESSION_SVC_CA_FILE", long = "session-svc-ca-file", env = "WEAPP_SESSION_SVC_CA_FILE", value_parser = pem_file)]
    pub ca: Option<String>,

    /// PEM client certificate, for a session-svc that requires one (mutual TLS); with
    /// WEAPP_SESSION_SVC_CLIENT_KEY_FILE.
    #[arg(id = "session_svc_client_cert_file", value_name = "SESSION_SVC_CLIENT_CERT_FILE", long = "session-svc-client-cert-file", env = "WEAPP_SESSION_SVC_CLIENT_CERT_FILE", value_parser = pem_file, requires = "session_svc_client_key_file")]
    pub client_cert: Option<String>,

    /// Its private key (PEM).
    #[arg(id = "session_svc_client_key_file", value_name = "SESSION_SVC_CLIENT_KEY_FILE", long = "session-svc-client-key-file", env = "WEAPP_SESSION_SVC_CLIENT_KEY_FILE", value_parser = secret_file, requires = "session_svc_client_cert_file")]
    pub client_key: Option<SecretString>,
}

impl SessionSvcLink {
    /// The TLS configuration of an https:// link.
    pub fn tls_config(&self) -> Option<ClientTlsConfig> {
        if !self.url.trim_start().starts_with("https://") {
            return None;
        }
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca.as_bytes()));
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity(Identity::from_pem(
                cert.as_bytes(),
                key.expose_secret().as_bytes(),
            ));
        }
        Some(tls)
    }

    fn check(&self) -> Result<(), String> {
        let tls = self.url.trim_start().starts_with("https://");
        if tls && self.ca.is_none() {
            return Err(
                "an https:// session-svc URL needs WEAPP_SESSION_SVC_CA_FILE, the CA \
                        that signed session-svc's certificate"
                    .into(),
            );
        }
        if !tls && (self.ca.is_some() || self.client_cert.is_some()) {
            return Err(
                "TLS files are set for session-svc, but its URL is http://: use https://".into(),
            );
        }
        Ok(())
    }
}

#[derive(Args, Clone, Copy, Debug)]
pub struct WsSettings {
    /// WebSocket keep-alive ping interval.
    #[arg(id = "ws_ping_interval", value_name = "WS_PING_INTERVAL", long = "ws-ping-interval", env = "WEAPP_WS_PING_INTERVAL", default_value = "25s", value_parser = duration)]
    pub ping_interval: Duration,

    /// Close a WebSocket that does not answer a ping within this time.
    #[arg(id = "ws_pong_timeout", value_name = "WS_PONG_TIMEOUT", long = "ws-pong-timeout", env = "WEAPP_WS_PONG_TIMEOUT", default_value = "8s", value_parser = duration)]
    pub pong_timeout: Duration,

    /// Largest WebSocket message (and frame) in bytes; larger ones close the socket with 1009.
    #[arg(id = "ws_max_message_bytes", value_name = "WS_MAX_MESSAGE_BYTES", long = "ws-max-message-bytes", env = "WEAPP_WS_MAX_MESSAGE_BYTES", default_value = "65536", value_parser = positive)]
    pub max_message_size: usize,

    /// Most WebSocket connections held at once by this gateway; more get 503.
    #[arg(id = "ws_max_connections", value_name = "WS_MAX_CONNECTIONS", long = "ws-max-connections", env = "WEAPP_WS_MAX_CONNECTIONS", default_value = "10000", value_parser = positive)]
    pub max_connections: usize,

    /// Messages waiting to go out on one WebSocket (pushes, relayed answers); a client that
    /// lets more pile up is closed with code 4008.
    #[arg(id = "ws_send_queue", value_name = "WS_SEND_QUEUE", long = "ws-send-queue", env = "WEAPP_WS_SEND_QUEUE", default_value = "256", value_parser = positive)]
    pub send_queue: usize,

    /// Most WebSocket connections one session holds at once on this gateway; more get 429.
    #[arg(id = "ws_max_per_session", value_name = "WS_MAX_PER_SESSION", long = "ws-max-per-session", env = "WEAPP_WS_MAX_PER_SESSION", default_value = "16", value_parser = positive)]
    pub max_per_session: usize,
}

#[derive(Args, Clone, Debug)]
pub struct RelaySettings {
    /// Upstream URL (http://, on the private network, as business routes' upstreams) that
    /// receives each WebSocket text message as a POST with the user's identity; its answer
    /// body goes back on the socket. None: `/ws` echoes (the tutorial).
    #[arg(id = "ws_relay_url", value_name = "WS_RELAY_URL", long = "ws-relay-url", env = "WEAPP_WS_RELAY_URL", value_parser = relay_url)]
    pub url: Option<http::Uri>,

    /// Longest wait for the relay upstream's answer to one message.
    #[arg(id = "ws_relay_timeout", value_name = "WS_RELAY_TIMEOUT", long = "ws-relay-timeout", env = "WEAPP_WS_RELAY_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
}

fn relay_url(value: &str) -> Result<http::Uri, String> {
    let url: http::Uri = value.parse().map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme_str() != Some("http") || url.host().is_none_or(str::is_empty) {
        return Err(
            "must be an http:// URL with a host (the relay's upstream is reached over the \
             private network, like business routes' upstreams)"
                .into(),
        );
    }
    Ok(url)
}

/// The cache of validated sessions (see `sessions/cache.rs` for what keeps it honest).
#[derive(Args, Clone, Copy, Debug)]
pub struct CacheSettings {
    /// How long a validated session is reused before session-svc is asked again ("0s" turns
    /// the cache off). Revocations evict at once whatever this is.
    #[arg(id = "session_cache_ttl", value_name = "SESSION_CACHE_TTL", long = "session-cache-ttl", env = "WEAPP_SESSION_CACHE_TTL", default_value = "30s", value_parser = duration)]
    pub ttl: Duration,

    /// Most sessions the cache holds; past it, the least recently used are evicted.
    #[arg(
        id = "session_cache_capacity",
        long = "session-cache-capacity",
        env = "WEAPP_SESSION_CACHE_CAPACITY",
        default_value_t = 100_000
    )]
    pub capacity: u64,
}

/// Limits on what a client may send before the request is routed (see `server.rs`).
#[derive(Args, Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Time a client has to send a request's headers, from accept (then from the end of the
    /// last answer); slower ones are disconnected. Also the idle timeout of a kept-alive
    /// connection.
    #[arg(id = "http_header_timeout", value_name = "HTTP_HEADER_TIMEOUT", long = "http-header-timeout", env = "WEAPP_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,

    /// Most header lines in a request (431 past it).
    #[arg(id = "http_max_headers", value_name = "HTTP_MAX_HEADERS", long = "http-max-headers", env = "WEAPP_HTTP_MAX_HEADERS", default_value = "64", value_parser = positive)]
    pub max_headers: usize,

    /// Most bytes of request line and headers together (431 past it; hyper's floor is 8 KiB).
    #[arg(id = "http_max_header_bytes", value_name = "HTTP_MAX_HEADER_BYTES", long = "http-max-header-bytes", env = "WEAPP_HTTP_MAX_HEADER_BYTES", default_value = "16384", value_parser = positive)]
    pub max_header_bytes: usize,

    /// Largest request body in bytes (413 past it, before it is read).
    #[arg(id = "http_max_body_bytes", value_name = "HTTP_MAX_BODY_BYTES", long = "http-max-body-bytes", env = "WEAPP_HTTP_MAX_BODY_BYTES", default_value = "1048576", value_parser = positive)]
    pub max_body_bytes: usize,

    /// Connections this gateway holds at once, WebSockets included (503 past it).
    #[arg(id = "http_max_connections", value_name = "HTTP_MAX_CONNECTIONS", long = "http-max-connections", env = "WEAPP_HTTP_MAX_CONNECTIONS", default_value = "20000", value_parser = positive)]
    pub max_connections: usize,

    /// Connections one client address may hold at once (503 past it); 0: no limit. The
    /// address is the peer's; a trusted proxy's (`WEAPP_TRUSTED_PROXIES`) are not counted.
    #[arg(
        id = "http_max_connections_per_address",
        value_name = "HTTP_MAX_CONNECTIONS_PER_ADDRESS",
        long = "http-max-connections-per-address",
        env = "WEAPP_HTTP_MAX_CONNECTIONS_PER_ADDRESS",
        default_value = "0"
    )]
    pub max_connections_per_address: usize,

    /// Serve HTTP/1.1 connections on the fast path (`fast_path.rs`: heads read once,
    /// business requests forwarded as bytes); `false` sends every request through hyper's
    /// server and, when forwarded, its client.
    #[arg(id = "http_fast_path", value_name = "HTTP_FAST_PATH", long = "http-fast-path", env = "WEAPP_HTTP_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub fast_path: bool,

    /// Threads that serve client connections, each with its own single-threaded runtime
    /// (`io_threads.rs`); 0: one per CPU.
    #[arg(
        id = "http_io_threads",
        value_name = "HTTP_IO_THREADS",
        long = "http-io-threads",
        env = "WEAPP_HTTP_IO_THREADS",
        default_value = "0"
    )]
    pub io_threads: usize,
}

impl ServiceCli for Cli {
    const NAME: &'static str = "gateway-svc";
    type Settings = Settings;

    fn into_settings(self) -> Settings {
        self.settings
    }

    fn has_subcommand(&self) -> bool {
        self.command.is_some()
    }

    fn check(&self) -> Result<(), String> {
        self.settings.check()
    }
}

impl Settings {
    /// Parses settings from flags exactly as the binary does; `args` leaves out the
    /// program name.
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::settings_from(args)
    }

    /// What clap cannot check alone: settings that depend on each other.
    pub fn check(&self) -> Result<(), String> {
        self.session_svc.check()?;
        if let Some(routes) = &self.routes {
            self.check_routes(routes)?;
        }
        Ok(())
    }

    /// A routes file (at start-up, or read again by a reload) against the own paths.
    pub fn check_routes(&self, routes: &RouteTable) -> Result<(), String> {
        let mut own: Vec<&str> = fixed_paths().collect();
        own.push(&self.login_path);
        routes
            .check_against(&own)
            .map_err(|e| format!("WEAPP_ROUTES_FILE: {e}"))
    }
}

fn login_path(path: &str) -> Result<String, String> {
    let valid_chars = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if !path.starts_with('/') || path.len() < 2 || !valid_chars || path.contains("//") {
        return Err("the login path must look like /login (letters, digits, / - _ .)".into());
    }
    if fixed_paths().any(|own| own == path) {
        return Err(format!(
            "the login path cannot be {path}: the gateway serves it"
        ));
    }
    Ok(path.to_owned())
}

/// One session-svc URL or several, comma-separated (`replicas.rs`).
fn grpc_url(url: &str) -> Result<String, String> {
    crate::sessions::replicas::Target::parse_list(url)?;
    Ok(url.trim().to_owned())
}

/// Whether `peer` is one of the trusted reverse proxies (`WEAPP_TRUSTED_PROXIES`), whose
/// client-address headers are believed.
pub fn is_trusted_proxy(proxies: &[IpNet], peer: IpAddr) -> bool {
    weapp_common::config::within(proxies, peer)
}

/// The client's address: the peer, or the `X-Real-IP` a trusted proxy set. Anyone else's
/// `X-Real-IP` is ignored, or clients could pick their own address.
pub fn client_ip(proxies: &[IpNet], peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted_proxy(proxies, peer) {
        return peer;
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map_or(peer, |ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_tutorial() {
        let settings = Settings::parse_from::<_, &str>([]).unwrap();
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8765");
        assert_eq!(settings.login_path, "/login");
        assert_eq!(settings.ws.max_message_size, 65536);
        assert_eq!(settings.http.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let settings =
            Settings::parse_from(["--trusted-proxies", "10.0.0.5,172.16.0.0/12,::1"]).unwrap();
        assert_eq!(settings.trusted_proxies.len(), 3);
        assert!(Settings::parse_from(["--trusted-proxies", "nginx"]).is_err());
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        for path in ["login", "/", "/me", "/ws", "/a b", "/{x}", "//x"] {
            let err = Settings::parse_from(["--login-path", path]).unwrap_err();
            assert!(err.to_string().contains("--login-path"), "{err}");
        }
        assert!(Settings::parse_from(["--login-path", "/weapp/login"]).is_ok());
        for (flag, value) in [
            ("--ws-max-connections", "0"),
            ("--http-max-body-bytes", "-1"),
            ("--session-svc-url", "localhost:50051"),
            ("--session-timeout", "soon"),
        ] {
            let err = Settings::parse_from([format!("{flag}={value}")]).unwrap_err();
            assert!(err.to_string().contains(flag), "{err}");
        }
    }
}
