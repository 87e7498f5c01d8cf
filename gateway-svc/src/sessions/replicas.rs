//! The session-svc replicas this gateway may ask: every address of every URL in
//! `WEAPP_SESSION_SVC_URL` (a comma-separated list; a DNS name that resolves to several
//! addresses counts each, re-resolved every few seconds, as a Kubernetes headless Service
//! needs). Each replica has its own connection and a health that is learned two ways: a
//! probe of its gRPC health service every [`PROBE_INTERVAL`], and any call that fails to
//! reach it (it is then skipped until a probe finds it serving again). Calls go round-robin
//! over the replicas believed up; when none is, over all of them (the belief may be stale).
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, ClientTlsConfig, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::ServiceExt as _;
use weapp_common::{one_write::OneWrite, trace};
use weapp_proto::session::v1::{
    session_service_client::SessionServiceClient, session_service_server::SERVICE_NAME,
};

/// The gateway's API key, on every call to session-svc (health checks are open and go
/// without it).
#[derive(Clone)]
pub struct ApiKey(Option<AsciiMetadataValue>);

impl ApiKey {
    pub fn new(key: Option<&SecretString>) -> Result<Self, String> {
        let Some(key) = key else {
            return Ok(Self(None));
        };
        let mut value = MetadataValue::try_from(format!("Bearer {}", key.expose_secret()))
            .map_err(|_| "the session-svc key must be visible ASCII characters".to_owned())?;
        // Kept out of Debug output.
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

/// Every call presents the key, and carries the request's trace on to session-svc.
impl Interceptor for ApiKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        // The gateway's request span is the parent of session-svc's.
        if let Some(context) = trace::current()
            && let Ok(value) = context.header().parse()
        {
            request.metadata_mut().insert(trace::TRACEPARENT, value);
        }
        Ok(request)
    }
}

/// How often each replica's health is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How often DNS names are resolved again.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// One `scheme://host:port` of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parses `WEAPP_SESSION_SVC_URL`: one URL or several, comma-separated, all http:// or
    /// all https://, each with a host and a port (50051 when none is given).
    pub fn parse_list(list: &str) -> Result<Vec<Self>, String> {
        let mut targets = Vec::new();
        for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            // Not quoted back: it could hold a password.
            if url.contains('@') {
                return Err(
                    "a session-svc URL must not carry credentials (the API key is \
                            WEAPP_SESSION_SVC_KEY_FILE)"
                        .into(),
                );
            }
            let (tls, rest) = match url.split_once("://") {
                Some(("http", rest)) => (false, rest),
                Some(("https", rest)) => (true, rest),
                _ => return Err(format!("{url:?} must start with http:// or https://")),
            };
            let authority = rest.trim_end_matches('/');
            if authority.contains(['/', '?', '#']) || authority.is_empty() {
                return Err(format!(
                    "{url:?} must be just scheme://host:port (no path, query or credentials)"
                ));
            }
            let uri: http::Uri = format!("http://{authority}")
                .parse()
                .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
            let host = uri
                .host()
                .ok_or_else(|| format!("{url:?} names no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            targets.push(Self {
                tls,
                host,
                port: uri.port_u16().unwrap_or(50051),
            });
        }
        if targets.is_empty() {
            return Err("no session-svc URL given".into());
        }
        if targets.iter().any(|t| t.tls != targets[0].tls) {
            return Err("session-svc URLs must be all http:// or all https://".into());
        }
        Ok(targets)
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let found = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        let mut addrs: Vec<SocketAddr> = found.collect();
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }
}

/// A replica's session service, with this gateway's key on every call.
pub type Client = SessionServiceClient<InterceptedService<Channel, ApiKey>>;

/// One session-svc process, at one address.
pub struct Replica {
    /// `host (address)`, for logs.
    pub name: String,
    pub addr: SocketAddr,
    /// On the multi-threaded runtime (streams, probes, background calls).
    pub client: Client,
    /// One per connection thread, its connection running on that thread: a request's call
    /// (a login, a Validate) is written, answered and resumed without waking another thread.
    per_thread: Vec<Client>,
    pub health: HealthClient<Channel>,
    up: AtomicBool,
}

impl Replica {
    /// The client for a call made from here: this connection thread's, else the shared one.
    pub fn client_here(&self) -> Client {
        crate::edge::io_threads::current()
            .and_then(|i| self.per_thread.get(i))
            .unwrap_or(&self.client)
            .clone()
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A call could not reach it: skipped until a probe finds it serving.
    pub fn failed(&self) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(replica = %self.name, "session-svc replica unreachable; calls go to the others");
        }
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            match up {
                true => tracing::info!(replica = %self.name, "session-svc replica serving"),
                false => {
                    tracing::warn!(replica = %self.name, "session-svc replica not serving; calls go to the others")
                }
            }
        }
    }

    /// Asks its health service, within `timeout`.
    pub async fn serving(&self, timeout: Duration) -> Result<(), Status> {
        let mut health = self.health.clone();
        let mut request = Request::new(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        });
        request.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, health.check(request))
            .await
            .map_err(|_| Status::deadline_exceeded("health check timed out"))??;
        match answer.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(Status::unavailable(format!(
                "session-svc reports {}",
                other.as_str_name()
            ))),
        }
    }
}

/// How connections to replicas are made.
#[derive(Clone)]
pub struct Connector {
    pub key: ApiKey,
    pub tls: Option<ClientTlsConfig>,
    pub connect_timeout: Duration,
    /// The connection threads' runtimes: each gets its own connection to every replica.
    pub threads: Vec<tokio::runtime::Handle>,
}

impl Connector {
    fn replica(&self, target: &Target, addr: SocketAddr) -> Result<Replica, String> {
        let scheme = if target.tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad session-svc address {addr}: {e}"))?;
        if let Some(tls) = &self.tls {
            // Connected by address, verified by name.
            endpoint = endpoint
                .tls_config(tls.clone().domain_name(target.host.clone()))
                .map_err(|e| format!("TLS to session-svc: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_with_connector_lazy(one_write_tcp());
        // Made inside each thread's runtime: the channel's tasks (its buffer, then its
        // connection) are spawned there.
        let per_thread = self
            .threads
            .iter()
            .map(|runtime| {
                let _inside = runtime.enter();
                let channel = endpoint.connect_with_connector_lazy(one_write_tcp());
                SessionServiceClient::with_interceptor(channel, self.key.clone())
            })
            .collect();
        let name = match target.host.parse::<IpAddr>() {
            Ok(_) => addr.to_string(),
            Err(_) => format!("{} ({addr})", target.host),
        };
        Ok(Replica {
            name,
            addr,
            client: SessionServiceClient::with_interceptor(channel.clone(), self.key.clone()),
            per_thread,
            health: HealthClient::new(channel),
            // Unknown until probed: believed up, so the first calls need no probe first.
            up: AtomicBool::new(true),
        })
    }
}

/// A connection to a replica: TCP without Nagle's delay, whose calls leave in one write each
/// ([`OneWrite`]). tonic puts TLS on top when the endpoint has it, and times the connect out.
fn one_write_tcp() -> impl tower::Service<
    http::Uri,
    Response = TokioIo<OneWrite<TcpStream>>,
    Error = impl std::error::Error + Send + Sync + 'static,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let mut tcp = HttpConnector::new();
    // https:// is for tonic's TLS, which wraps this connection.
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.map_response(|io: TokioIo<TcpStream>| TokioIo::new(OneWrite::new(io.into_inner())))
}

/// The replicas, as last resolved.
pub struct Replicas {
    targets: Vec<Target>,
    connector: Connector,
    current: RwLock<Arc<[Arc<Replica>]>>,
    next: AtomicUsize,
}

impl Replicas {
    /// The replicas of `targets`, with IP literals known at once and DNS names resolved by
    /// [`Replicas::maintain`] (and on the first call that finds none).
    pub fn new(targets: Vec<Target>, connector: Connector) -> Result<Arc<Self>, String> {
        let mut now = Vec::new();
        for target in &targets {
            if let Ok(ip) = target.host.parse::<IpAddr>() {
                now.push(Arc::new(
                    connector.replica(target, SocketAddr::new(ip, target.port))?,
                ));
            }
        }
        Ok(Arc::new(Self {
            targets,
            connector,
            current: RwLock::new(now.into()),
            next: AtomicUsize::new(0),
        }))
    }

    fn snapshot(&self) -> Arc<[Arc<Replica>]> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The replicas in the order to try them for one call: those believed up first, starting
    /// at the next in turn, then the others.
    pub async fn candidates(&self) -> Vec<Arc<Replica>> {
        let mut all = self.snapshot();
        if all.is_empty() {
            self.resolve().await;
            all = self.snapshot();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = all.len();
        let rotated = (0..n).map(|i| all[(start + i) % n.max(1)].clone());
        let (mut up, down): (Vec<_>, Vec<_>) = rotated.partition(|r| r.is_up());
        up.extend(down);
        up
    }

    /// Resolves every target again; replicas whose address stays keep their connection.
    async fn resolve(&self) {
        let mut found: Vec<(usize, SocketAddr)> = Vec::new();
        let mut failed = false;
        for (index, target) in self.targets.iter().enumerate() {
            match target.resolve().await {
                Ok(addrs) => found.extend(addrs.into_iter().map(|a| (index, a))),
                Err(e) => {
                    failed = true;
                    tracing::warn!(error = %e, "session-svc address not resolved; keeping the last known ones");
                }
            }
        }
        let old = self.snapshot();
        let mut next: Vec<Arc<Replica>> = Vec::new();
        for (index, addr) in found {
            if next.iter().any(|r| r.addr == addr) {
                continue;
            }
            match old.iter().find(|r| r.addr == addr) {
                Some(kept) => next.push(kept.clone()),
                None => match self.connector.replica(&self.targets[index], addr) {
                    Ok(replica) => {
                        tracing::info!(replica = %replica.name, "session-svc replica found");
                        next.push(Arc::new(replica));
                    }
                    Err(e) => tracing::warn!(error = %e, "session-svc replica not usable"),
                },
            }
        }
        // A failed lookup keeps the replicas of that name: a DNS hiccup is not an outage.
        if failed {
            for replica in old.iter() {
                if !next.iter().any(|r| r.addr == replica.addr) {
                    next.push(replica.clone());
                }
            }
        }
        for gone in old
            .iter()
            .filter(|r| !next.iter().any(|n| n.addr == r.addr))
        {
            tracing::info!(replica = %gone.name, "session-svc replica no longer listed");
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next.into();
    }

    /// Probes every replica's health and re-resolves names, until `shutdown`.
    pub async fn maintain(self: Arc<Self>, probe_timeout: Duration, shutdown: CancellationToken) {
        let has_names = self
            .targets
            .iter()
            .any(|t| t.host.parse::<IpAddr>().is_err());
        let mut resolved_at = None::<tokio::time::Instant>;
        loop {
            if has_names && resolved_at.is_none_or(|at| at.elapsed() >= RESOLVE_INTERVAL) {
                self.resolve().await;
                resolved_at = Some(tokio::time::Instant::now());
            }
            let replicas = self.snapshot();
            let probes = replicas.iter().map(|replica| async move {
                let serving = replica.serving(probe_timeout).await.is_ok();
                replica.set_up(serving);
            });
            futures::future::join_all(probes).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_lists_parse_or_say_why_not() {
        let targets = Target::parse_list("http://a:1, http://10.0.0.2:2,http://[::1]:3").unwrap();
        assert_eq!(
            targets,
            [
                Target {
                    tls: false,
                    host: "a".into(),
                    port: 1
                },
                Target {
                    tls: false,
                    host: "10.0.0.2".into(),
                    port: 2
                },
                Target {
                    tls: false,
                    host: "::1".into(),
                    port: 3
                },
            ]
        );
        assert_eq!(
            Target::parse_list("https://session-svc").unwrap()[0].port,
            50051
        );
        for (bad, why) in [
            ("", "no session-svc URL"),
            ("grpc://a:1", "http://"),
            ("http://a:1,https://b:2", "all http:// or all https://"),
            ("http://a:1/path", "scheme://host:port"),
            ("http://user:pw@a:1", "credentials"),
        ] {
            let err = Target::parse_list(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("pw"), "a password is never echoed: {err}");
        }
    }
}
