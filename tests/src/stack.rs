//! The whole system in one test process: the WeChat sandbox, session-svc and gateway-svc, each
//! started through its library and reached over real sockets (HTTP, gRPC over TCP,
//! WebSocket). Both services are configured through the very parser their binaries use, from
//! flags, so a wrong default in a shipped binary fails the tests too. Each listens on a
//! reserved port ([`Port`]), so a service stopped and started again gets its port back.
use std::{net::SocketAddr, sync::Arc};

use session_svc::store::SessionStore;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{
    Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, ClientTlsConfig, Identity},
};
use wechat_sandbox::{MintRequest, MintedLogin, Sandbox};

use crate::{
    ClientSession, TestStore, client::WaferClient, mongo::MongoServer, ports::Port, session_from,
    store_door::StoreDoor, wechat::WeChat, wechat::random_hex,
};

/// A fresh P-256 private key (PKCS#8 PEM) for signing identity assertions.
pub fn new_identity_key() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("a P-256 key")
        .serialize_pem()
}

/// The keys every stack's session-svc accepts.
const API_KEYS: &str = r#"
[[key]]
name = "gateway"
file = "gateway.key"
scopes = ["validate", "login", "follow", "wechat.phone"]

[[key]]
name = "test-backend"
file = "backend.key"
scopes = ["validate", "login", "follow", "admin", "push", "wechat.token", "wechat.phone", "wechat.user_data"]

[[key]]
name = "openapi-backend"
file = "openapi.key"
scopes = ["wechat.openapi"]
openapi = ["/wxa/msg_sec_check", "/wxa/getwxacodeunlimit", "/cgi-bin/message/subscribe/send"]
"#;

/// What the stack's open-API proxy lets key-less callers from 127.0.0.1 call (only when a
/// test turns the proxy on with [`StackBuilder::openapi`]).
pub const OPENAPI_TRUSTED_PATHS: &str = "/wxa/msg_sec_check,/wxa/generate_urllink";

/// A gRPC channel to session-svc that presents an API key.
pub type AuthorizedChannel = InterceptedService<tonic::transport::Channel, Bearer>;

/// Adds `authorization: Bearer <key>` to every call (nothing without a key).
#[derive(Clone)]
pub struct Bearer(Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(key) = &self.0 {
            let value = format!("Bearer {key}").parse().expect("a key is ASCII");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Service {
    Gateway,
    SessionSvc,
}

struct Running {
    addr: SocketAddr,
    /// Where its `/metrics` is served.
    metrics: Option<SocketAddr>,
    /// session-svc's open-API proxy, when on.
    openapi: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("service task panicked");
    }
}

async fn run_gateway(args: Vec<String>) -> Running {
    let settings = gateway_svc::Settings::parse_from(args).expect("gateway settings parse");
    let app = gateway_svc::Application::build(settings)
        .await
        .expect("gateway builds");
    let (addr, metrics) = (app.local_addr(), app.metrics_addr());
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { app.run(token).await.expect("gateway runs") });
    Running {
        addr,
        metrics,
        openapi: None,
        shutdown,
        task,
    }
}

/// Another gateway in front of the same session-svc (as behind nginx's upstream); it stops
/// when dropped.
pub struct ExtraGateway {
    running: Option<Running>,
    pub addr: SocketAddr,
}

impl ExtraGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

impl Drop for ExtraGateway {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown.cancel();
        }
    }
}

/// Another session-svc replica on the stack's store; it stops when dropped.
pub struct ExtraSessionSvc {
    running: Option<Running>,
    pub addr: SocketAddr,
}

impl ExtraSessionSvc {
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

impl Drop for ExtraSessionSvc {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown.cancel();
        }
    }
}

/// Certificates for a mutual-TLS gRPC link: a CA, session-svc's certificate (for
/// `localhost`) and a client certificate, all made at run time.
pub struct LinkCertificates {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

impl LinkCertificates {
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &ca)
                .expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert_pem, server_key_pem) = leaf(vec!["localhost".into()]);
        let (client_cert_pem, client_key_pem) = leaf(vec!["gateway.weapp.test".into()]);
        Self {
            ca_pem: ca.pem(),
            client_cert_pem,
            client_key_pem,
            server_cert_pem,
            server_key_pem,
        }
    }

    /// A client TLS configuration that trusts the CA, with or without the client certificate.
    pub fn client_tls(&self, with_certificate: bool) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if with_certificate {
            tls.identity(Identity::from_pem(
                &self.client_cert_pem,
                &self.client_key_pem,
            ))
        } else {
            tls
        }
    }
}

/// Settings for a [`Stack`], as flags on top of what the stack itself sets.
pub struct StackBuilder {
    tls: bool,
    token_ttl: Option<std::time::Duration>,
    routes: Option<String>,
    store: TestStore,
    session_args: Vec<String>,
    gateway_args: Vec<String>,
}

impl Default for StackBuilder {
    fn default() -> Self {
        Self {
            tls: false,
            token_ttl: None,
            routes: None,
            store: TestStore::from_env(),
            session_args: Vec::new(),
            gateway_args: Vec::new(),
        }
    }
}

fn strings<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Vec<String> {
    args.into_iter().map(Into::into).collect()
}

impl StackBuilder {
    pub fn store(mut self, store: TestStore) -> Self {
        self.store = store;
        self
    }

    /// The gRPC link over mutual TLS (session-svc requires client certificates).
    pub fn grpc_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// More session-svc flags, e.g. `["--session-idle-ttl", "2s"]`.
    pub fn session_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.session_args.extend(strings(args));
        self
    }

    /// How long the sandbox's access_tokens live (WeChat: two hours).
    pub fn sandbox_token_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.token_ttl = Some(ttl);
        self
    }

    /// The gateway's business routes (a `WEAPP_ROUTES_FILE` in TOML).
    /// Turns session-svc's open-API proxy on, with 127.0.0.1 a trusted network allowed
    /// [`OPENAPI_TRUSTED_PATHS`].
    pub fn openapi(self) -> Self {
        self.session_args([
            "--openapi-listen",
            "127.0.0.1:0",
            "--openapi-trusted-networks",
            "127.0.0.1",
            "--openapi-trusted-paths",
            OPENAPI_TRUSTED_PATHS,
        ])
    }

    pub fn routes(mut self, toml: impl Into<String>) -> Self {
        self.routes = Some(toml.into());
        self
    }

    /// More gateway-svc flags, e.g. `["--ws-max-connections", "1"]`.
    pub fn gateway_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.gateway_args.extend(strings(args));
        self
    }

    pub async fn start(self) -> Stack {
        // Service logs go to the test's captured output (shown when it fails); RUST_LOG filters.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        let wechat = WeChat::start_with_token_ttl(self.token_ttl).await;
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let secret_file = data_dir.path().join("app_secret");
        std::fs::write(&secret_file, &wechat.app_secret).expect("write the AppSecret file");
        let (session_port, gateway_port) = (Port::reserve(), Port::reserve());
        // Every stack's gRPC link is authenticated, as in production: the gateway with its
        // own narrow key, tests that play another backend with a key that may do anything.
        let (gateway_key, backend_key) = (random_hex(32), random_hex(32));
        let keys = data_dir.path().join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        std::fs::write(keys.join("gateway.key"), &gateway_key).expect("write a key");
        std::fs::write(keys.join("backend.key"), &backend_key).expect("write a key");
        let openapi_key = random_hex(32);
        std::fs::write(keys.join("openapi.key"), &openapi_key).expect("write a key");
        std::fs::write(keys.join("api-keys.toml"), API_KEYS).expect("write the keys file");
        let identity_key = keys.join("identity.pem");
        std::fs::write(&identity_key, new_identity_key()).expect("write the identity key");
        let mut session_args = strings([
            "--listen".to_owned(),
            session_port.addr().to_string(),
            "--app-id".into(),
            wechat.app_id.clone(),
            "--app-secret-file".into(),
            secret_file.display().to_string(),
            "--wechat-base-url".into(),
            wechat.base_url(),
            "--wechat-timeout".into(),
            "2s".into(),
            "--wechat-max-concurrent".into(),
            "16".into(),
            "--data-dir".into(),
            data_dir.path().join("store").display().to_string(),
            "--api-keys-file".into(),
            keys.join("api-keys.toml").display().to_string(),
            "--identity-key-files".into(),
            identity_key.display().to_string(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ]);
        let mongo = (self.store == TestStore::Mongo).then(MongoServer::start);
        if let Some(server) = &mongo {
            let uri_file = data_dir.path().join("mongodb_uri");
            std::fs::write(&uri_file, server.uri()).expect("write the MongoDB URI file");
            session_args.extend(strings([
                "--mongodb-uri-file".to_owned(),
                uri_file.display().to_string(),
                "--mongodb-database".into(),
                format!("weapp_test_{}", random_hex(4)),
                "--mongodb-timeout".into(),
                "500ms".into(),
            ]));
        }
        let certificates = self.tls.then(LinkCertificates::generate);
        let session_svc_url = match &certificates {
            Some(_) => format!("https://localhost:{}", session_port.number()),
            None => format!("http://{}", session_port.addr()),
        };
        let mut gateway_args = strings([
            "--listen".to_owned(),
            gateway_port.addr().to_string(),
            "--session-svc-url".into(),
            session_svc_url.clone(),
            "--session-svc-key-file".into(),
            keys.join("gateway.key").display().to_string(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ]);
        if let Some(certs) = &certificates {
            let dir = data_dir.path().join("tls");
            std::fs::create_dir_all(&dir).expect("tls dir");
            let write = |name: &str, pem: &str| {
                let path = dir.join(name);
                std::fs::write(&path, pem).expect("write a PEM file");
                path.display().to_string()
            };
            session_args.extend([
                "--grpc-tls-cert-file".into(),
                write("server.pem", &certs.server_cert_pem),
                "--grpc-tls-key-file".into(),
                write("server.key", &certs.server_key_pem),
                "--grpc-tls-client-ca-file".into(),
                write("ca.pem", &certs.ca_pem),
            ]);
            gateway_args.extend([
                "--session-svc-ca-file".into(),
                write("ca.pem", &certs.ca_pem),
                "--session-svc-client-cert-file".into(),
                write("client.pem", &certs.client_cert_pem),
                "--session-svc-client-key-file".into(),
                write("client.key", &certs.client_key_pem),
            ]);
        }
        if let Some(routes) = &self.routes {
            let file = data_dir.path().join("routes.toml");
            std::fs::write(&file, routes).expect("write the routes file");
            gateway_args.extend(["--routes-file".into(), file.display().to_string()]);
        }
        session_args.extend(self.session_args);
        gateway_args.extend(self.gateway_args);
        let client = WaferClient::new(format!("http://{}", gateway_port.addr()));
        let mut stack = Stack {
            certificates,
            session_svc_url,
            gateway_key,
            backend_key,
            openapi_key,
            app_id: wechat.app_id.clone(),
            app_secret: wechat.app_secret.clone(),
            sandbox: wechat.sandbox.clone(),
            sandbox_url: format!("http://{}", wechat.addr),
            _wechat: wechat,
            session_args,
            gateway_args,
            session_port,
            gateway_port,
            session: None,
            store: None,
            gateway: None,
            mongo,
            data_dir,
            http: client.http.clone(),
            client,
        };
        stack.start_session_svc().await;
        stack.start_gateway().await;
        stack
    }
}

pub struct Stack {
    /// The link's certificates, when it runs over mutual TLS.
    pub certificates: Option<LinkCertificates>,
    session_svc_url: String,
    gateway_key: String,
    backend_key: String,
    openapi_key: String,
    pub app_id: String,
    pub app_secret: String,
    pub sandbox: Sandbox,
    pub sandbox_url: String,
    _wechat: WeChat,
    session_args: Vec<String>,
    gateway_args: Vec<String>,
    session_port: Port,
    gateway_port: Port,
    session: Option<Running>,
    store: Option<StoreDoor>,
    gateway: Option<Running>,
    mongo: Option<MongoServer>,
    pub data_dir: tempfile::TempDir,
    /// The wafer client, pointed at the stack's gateway.
    pub client: WaferClient,
    pub http: reqwest::Client,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for running in [&self.session, &self.gateway].into_iter().flatten() {
            running.shutdown.cancel();
        }
    }
}

impl Stack {
    pub async fn start() -> Self {
        StackBuilder::default().start().await
    }

    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// The flags the stack's session-svc runs with: parse them (with more after them, which
    /// win) to start a variant of it.
    pub fn session_args(&self) -> Vec<String> {
        self.session_args.clone()
    }

    /// Starts session-svc, on its port and its data, the first time or after a stop.
    pub async fn start_session_svc(&mut self) {
        assert!(self.session.is_none(), "session-svc already running");
        let settings = session_svc::Settings::parse_from(&self.session_args)
            .expect("session-svc settings parse");
        let app = session_svc::Application::build(settings)
            .await
            .expect("session-svc builds");
        let (addr, metrics, openapi) = (app.local_addr(), app.metrics_addr(), app.openapi_addr());
        self.store = Some(StoreDoor::new(app.store()));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { app.run(token).await.expect("session-svc runs") });
        self.session = Some(Running {
            addr,
            metrics,
            openapi,
            shutdown,
            task,
        });
    }

    /// Stops session-svc and waits until it has let go of its store.
    pub async fn stop_session_svc(&mut self) {
        self.store = None;
        if let Some(running) = self.session.take() {
            running.stop().await;
        }
    }

    pub async fn start_gateway(&mut self) {
        assert!(self.gateway.is_none(), "gateway already running");
        self.gateway = Some(run_gateway(self.gateway_args.clone()).await);
    }

    pub async fn stop_gateway(&mut self) {
        if let Some(running) = self.gateway.take() {
            running.stop().await;
        }
    }

    /// One more gateway, configured like the stack's own, on a port of its own.
    pub async fn extra_gateway(&self) -> ExtraGateway {
        let mut args = self.gateway_args.clone();
        args.extend(strings(["--listen", "127.0.0.1:0"]));
        let running = run_gateway(args).await;
        ExtraGateway {
            addr: running.addr,
            running: Some(running),
        }
    }

    /// A second session-svc configured like the stack's own (same store, same WeChat), on a
    /// port of its own: another replica. Only a MongoDB-backed stack can share its store.
    pub async fn extra_session_svc(&self) -> ExtraSessionSvc {
        let mut args = self.session_args.clone();
        args.extend(strings(["--listen", "127.0.0.1:0"]));
        let settings =
            session_svc::Settings::parse_from(&args).expect("session-svc settings parse");
        let app = session_svc::Application::build(settings)
            .await
            .expect("session-svc builds");
        let (addr, metrics) = (app.local_addr(), app.metrics_addr());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { app.run(token).await.expect("session-svc runs") });
        ExtraSessionSvc {
            addr,
            running: Some(Running {
                addr,
                metrics,
                openapi: None,
                shutdown,
                task,
            }),
        }
    }

    /// A gRPC connection to a session-svc at `addr` (plain TCP), with the all-scopes key.
    pub async fn session_channel_at(&self, addr: SocketAddr) -> AuthorizedChannel {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("session-svc URL")
            .connect()
            .await
            .expect("session-svc accepts gRPC connections");
        InterceptedService::new(channel, Bearer(Some(self.backend_key.clone())))
    }

    /// Where a running service serves `/metrics`.
    pub fn metrics_addr(&self, service: Service) -> SocketAddr {
        let running = match service {
            Service::Gateway => &self.gateway,
            Service::SessionSvc => &self.session,
        };
        running
            .as_ref()
            .and_then(|r| r.metrics)
            .expect("the service runs with metrics on")
    }

    /// The flags session-svc starts with next time (after `stop_session_svc`).
    pub fn session_args_mut(&mut self) -> &mut Vec<String> {
        &mut self.session_args
    }

    /// Signals shutdown (as SIGTERM does) without waiting for it; `stop_*` then waits.
    pub fn begin_shutdown(&self, service: Service) {
        let running = match service {
            Service::Gateway => &self.gateway,
            Service::SessionSvc => &self.session,
        };
        running
            .as_ref()
            .expect("service is running")
            .shutdown
            .cancel();
    }

    /// The MongoDB server behind a Mongo-backed stack.
    pub fn mongo(&mut self) -> &mut MongoServer {
        self.mongo
            .as_mut()
            .expect("this stack uses the embedded store")
    }

    /// The MongoDB URI and database of a Mongo-backed stack.
    pub fn mongo_database(&self) -> (String, String) {
        let uri = self
            .mongo
            .as_ref()
            .expect("this stack uses the embedded store")
            .uri();
        let database = self
            .session_args
            .windows(2)
            .find(|pair| pair[0] == "--mongodb-database")
            .map(|pair| pair[1].clone())
            .unwrap_or_default();
        (uri, database)
    }

    pub fn session_svc_addr(&self) -> SocketAddr {
        self.session
            .as_ref()
            .map(|s| s.addr)
            .unwrap_or(self.session_port.addr())
    }

    /// session-svc's gRPC URL as its clients use it (`https://localhost:…` over TLS).
    pub fn session_svc_url(&self) -> String {
        self.session_svc_url.clone()
    }

    /// A fresh gRPC connection to session-svc, as another backend would open one, with a key
    /// that has every scope.
    pub async fn session_channel(&self) -> AuthorizedChannel {
        self.session_channel_with(Some(&self.backend_key)).await
    }

    /// A gRPC connection to session-svc presenting `key` (none: no `authorization` at all).
    pub async fn session_channel_with(&self, key: Option<&str>) -> AuthorizedChannel {
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.session_svc_url())
            .expect("session-svc URL");
        if let Some(certs) = &self.certificates {
            endpoint = endpoint
                .tls_config(certs.client_tls(true))
                .expect("client TLS");
        }
        let channel = endpoint
            .connect()
            .await
            .expect("session-svc accepts gRPC connections");
        InterceptedService::new(channel, Bearer(key.map(str::to_owned)))
    }

    /// Waits (at most 10 s) until `gateways` gateways follow session-svc's stream, so that a
    /// publish counts on them: asked with publishes to a user nobody is.
    pub async fn wait_for_followers(&self, gateways: u32) {
        use weapp_proto::session::v1::{
            PublishRequest, PushMessage, push_message::Target,
            session_service_client::SessionServiceClient,
        };
        let mut client = SessionServiceClient::new(self.session_channel().await);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let answer = client
                .publish(PublishRequest {
                    message: Some(PushMessage {
                        target: Some(Target::OpenId("o-nobody-is-this-user".into())),
                        text: "probe".into(),
                        ..Default::default()
                    }),
                })
                .await
                .expect("publish");
            if answer.into_inner().gateways_answered >= gateways {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{gateways} gateways never followed session-svc"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The key of "another backend" of the operator: every scope.
    pub fn backend_key(&self) -> &str {
        &self.backend_key
    }

    /// The API key the stack's gateways present (scopes validate, login, follow).
    /// The key with the `wechat.openapi` scope (allowed msg_sec_check, getwxacodeunlimit and
    /// subscribe/send).
    pub fn openapi_key(&self) -> &str {
        &self.openapi_key
    }

    /// The open-API proxy's address (the stack must have been built with it on).
    pub fn openapi_addr(&self) -> SocketAddr {
        self.session
            .as_ref()
            .and_then(|s| s.openapi)
            .expect("session-svc runs with its open-API proxy on")
    }

    pub fn gateway_key(&self) -> &str {
        &self.gateway_key
    }

    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway
            .as_ref()
            .map(|g| g.addr)
            .unwrap_or(self.gateway_port.addr())
    }

    pub fn url(&self, path: &str) -> String {
        self.client.url(path)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.gateway_addr())
    }

    /// session-svc's store, to look at or change behind session-svc's back.
    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.store_door().store()
    }

    fn store_door(&self) -> &StoreDoor {
        self.store.as_ref().expect("session-svc is running")
    }

    /// Sessions in session-svc's store right now.
    pub async fn session_count(&self) -> u64 {
        self.store_door().count().await
    }

    pub fn mint(&self, request: MintRequest) -> MintedLogin {
        self.sandbox.mint(request).expect("sandbox mints")
    }

    pub async fn login_code_only(&self, code: &str) -> reqwest::Response {
        self.client.login_code_only(code).await
    }

    pub async fn login_encrypted(&self, minted: &MintedLogin) -> reqwest::Response {
        self.client.login_encrypted(minted).await
    }

    /// Logs a new sandbox user in, with encrypted user data, and returns the session.
    pub async fn new_session(&self) -> (MintedLogin, ClientSession) {
        let minted = self.mint(MintRequest::default());
        let session = session_from(self.login_encrypted(&minted).await).await;
        (minted, session)
    }

    pub async fn get(&self, path: &str, session: Option<&ClientSession>) -> reqwest::Response {
        self.client.get(path, session).await
    }
}
