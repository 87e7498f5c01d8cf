//! The whole system in one test process: the WeChat sandbox, session-svc and gateway-svc, each
//! started through its library on port 0 and reached over real sockets (HTTP, gRPC over TCP,
//! WebSocket). Only WeChat is simulated, by the sandbox.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use reqwest::header::HeaderMap;
use secrecy::SecretString;
use session_svc::{
    config::StoreSettings,
    login::LoginPolicy,
    session::SessionPolicy,
    store::{MongoSettings, SessionStore},
    wechat::WeChatSettings,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use wechat_sandbox::{MintRequest, MintedLogin, Sandbox, SandboxConfig};

pub use wechat_sandbox;

pub mod load;
pub mod mongo;
pub mod nginx;
pub mod process;
pub mod services;
pub mod ws;

use mongo::MongoServer;

/// Which session store a stack's session-svc uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestStore {
    Embedded,
    /// MongoDB, served by a private nx-27017 process.
    Mongo,
}

impl TestStore {
    /// `WEAPP_TEST_STORE=mongodb` runs the whole end-to-end suite against MongoDB.
    pub fn from_env() -> Self {
        match std::env::var("WEAPP_TEST_STORE").as_deref() {
            Ok("mongodb") => Self::Mongo,
            Ok("embedded") | Err(_) => Self::Embedded,
            Ok(other) => panic!("WEAPP_TEST_STORE must be embedded or mongodb, not {other:?}"),
        }
    }
}

pub const MAGIC_KEY: &str = "F2C224D4-2BCE-4C64-AF9F-A6D872000D1A";

#[derive(Clone, Copy, Debug)]
pub enum Service {
    Gateway,
    SessionSvc,
}

/// A session as the client SDK keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSession {
    pub id: String,
    pub skey: String,
}

impl ClientSession {
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("X-WX-Id", self.id.parse().expect("id is a valid header"));
        headers.insert(
            "X-WX-Skey",
            self.skey.parse().expect("skey is a valid header"),
        );
        headers
    }

    pub fn query(&self) -> String {
        format!("X-WX-Id={}&X-WX-Skey={}", self.id, self.skey)
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("OS randomness");
    hex::encode(buf)
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("service task panicked");
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

/// The WeChat sandbox served on a fresh port, for one random app.
pub struct WeChat {
    pub sandbox: Sandbox,
    pub addr: SocketAddr,
    pub app_id: String,
    pub app_secret: String,
    shutdown: CancellationToken,
}

impl WeChat {
    pub async fn start() -> Self {
        let app_id = format!("wx{}", random_hex(8));
        let app_secret = random_hex(16);
        let sandbox = Sandbox::new(SandboxConfig::single(app_id.clone(), app_secret.clone()));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sandbox");
        let addr = listener.local_addr().expect("sandbox addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(wechat_sandbox::serve(
            listener,
            sandbox.clone(),
            shutdown.clone(),
        ));
        Self {
            sandbox,
            addr,
            app_id,
            app_secret,
            shutdown,
        }
    }

    /// What session-svc needs to reach this sandbox as its WeChat, as environment variables.
    pub fn session_svc_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WEAPP_APP_ID", self.app_id.clone()),
            ("WEAPP_APP_SECRET", self.app_secret.clone()),
            ("WEAPP_WECHAT_BASE_URL", format!("http://{}/", self.addr)),
        ]
    }

    pub fn mint(&self, request: MintRequest) -> MintedLogin {
        self.sandbox.mint(request).expect("sandbox mints")
    }
}

impl Drop for WeChat {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Adjusts settings before a [`Stack`] starts.
pub struct StackBuilder {
    store: TestStore,
    session_policy: SessionPolicy,
    login_policy: LoginPolicy,
    wechat_timeout: Duration,
    gateway: Box<dyn Fn(&mut gateway_svc::Settings) + Send + Sync>,
}

impl Default for StackBuilder {
    fn default() -> Self {
        Self {
            store: TestStore::from_env(),
            session_policy: SessionPolicy::default(),
            login_policy: LoginPolicy::default(),
            wechat_timeout: Duration::from_secs(2),
            gateway: Box::new(|_| {}),
        }
    }
}

impl StackBuilder {
    pub fn store(mut self, store: TestStore) -> Self {
        self.store = store;
        self
    }

    pub fn sessions(mut self, policy: SessionPolicy) -> Self {
        self.session_policy = policy;
        self
    }

    pub fn login_policy(mut self, policy: LoginPolicy) -> Self {
        self.login_policy = policy;
        self
    }

    pub fn wechat_timeout(mut self, timeout: Duration) -> Self {
        self.wechat_timeout = timeout;
        self
    }

    pub fn gateway(
        mut self,
        tweak: impl Fn(&mut gateway_svc::Settings) + Send + Sync + 'static,
    ) -> Self {
        self.gateway = Box::new(tweak);
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
        let wechat = WeChat::start().await;
        let (sandbox, sandbox_addr) = (wechat.sandbox.clone(), wechat.addr);
        let (app_id, app_secret) = (wechat.app_id.clone(), wechat.app_secret.clone());
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let mongo = (self.store == TestStore::Mongo).then(MongoServer::start);
        let store = match &mongo {
            None => StoreSettings::Embedded {
                data_dir: data_dir.path().to_owned(),
            },
            Some(server) => StoreSettings::Mongo(MongoSettings {
                uri: SecretString::from(server.uri()),
                password: None,
                database: Some(format!("weapp_test_{}", random_hex(4))),
                timeout: Duration::from_millis(500),
            }),
        };
        let session_settings = session_svc::Settings {
            // Fixed ports (not 0): both services may be restarted on the same address.
            listen: SocketAddr::from(([127, 0, 0, 1], process::free_port())),
            wechat: WeChatSettings {
                base_url: format!("http://{sandbox_addr}/")
                    .parse()
                    .expect("sandbox url"),
                app_id: app_id.clone(),
                app_secret: SecretString::from(app_secret.clone()),
                timeout: self.wechat_timeout,
                max_concurrent: 16,
            },
            store,
            sessions: self.session_policy,
            login: self.login_policy,
            purge_interval: Duration::from_secs(60),
        };
        let mut stack = Stack {
            app_id,
            app_secret,
            sandbox,
            sandbox_url: format!("http://{sandbox_addr}"),
            _wechat: wechat,
            session_settings,
            session: None,
            store: None,
            gateway_tweak: self.gateway,
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], process::free_port())),
            gateway: None,
            mongo,
            data_dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        };
        stack.start_session_svc().await;
        stack.start_gateway().await;
        stack
    }
}

pub struct Stack {
    pub app_id: String,
    pub app_secret: String,
    pub sandbox: Sandbox,
    pub sandbox_url: String,
    _wechat: WeChat,
    session_settings: session_svc::Settings,
    session: Option<Running>,
    store: Option<Arc<dyn SessionStore>>,
    gateway_tweak: Box<dyn Fn(&mut gateway_svc::Settings) + Send + Sync>,
    gateway_listen: SocketAddr,
    gateway: Option<Running>,
    mongo: Option<MongoServer>,
    pub data_dir: tempfile::TempDir,
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

    /// Starts session-svc, on the port it had before if it ran already, on the same data.
    pub async fn start_session_svc(&mut self) {
        assert!(self.session.is_none(), "session-svc already running");
        let app = session_svc::Application::build(self.session_settings.clone())
            .await
            .expect("session-svc builds");
        let addr = app.local_addr();
        self.session_settings.listen = addr;
        self.store = Some(app.store());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { app.run(token).await.expect("session-svc runs") });
        self.session = Some(Running {
            addr,
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

    /// The MongoDB server behind a Mongo-backed stack.
    pub fn mongo(&mut self) -> &mut MongoServer {
        self.mongo
            .as_mut()
            .expect("this stack uses the embedded store")
    }

    /// The MongoDB URI and database of a Mongo-backed stack.
    pub fn mongo_database(&self) -> (String, String) {
        match &self.session_settings.store {
            StoreSettings::Mongo(m) => (
                secrecy::ExposeSecret::expose_secret(&m.uri).to_owned(),
                m.database.clone().unwrap_or_default(),
            ),
            StoreSettings::Embedded { .. } => panic!("this stack uses the embedded store"),
        }
    }

    pub fn session_svc_addr(&self) -> SocketAddr {
        self.session_settings.listen
    }

    pub fn session_svc_url(&self) -> String {
        format!("http://{}", self.session_svc_addr())
    }

    /// A fresh gRPC connection to session-svc, as another backend would open one.
    pub async fn session_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.session_svc_url())
            .expect("session-svc URL")
            .connect()
            .await
            .expect("session-svc accepts gRPC connections")
    }

    pub async fn start_gateway(&mut self) {
        assert!(self.gateway.is_none(), "gateway already running");
        let running = self.spawn_gateway(self.gateway_listen).await;
        self.gateway_listen = running.addr;
        self.gateway = Some(running);
    }

    /// One more gateway, configured like the stack's own.
    pub async fn extra_gateway(&self) -> ExtraGateway {
        let running = self
            .spawn_gateway("127.0.0.1:0".parse().expect("addr"))
            .await;
        ExtraGateway {
            addr: running.addr,
            running: Some(running),
        }
    }

    async fn spawn_gateway(&self, listen: SocketAddr) -> Running {
        let mut settings = gateway_svc::Settings::new(listen, self.session_svc_url());
        (self.gateway_tweak)(&mut settings);
        let app = gateway_svc::Application::build(settings)
            .await
            .expect("gateway builds");
        let addr = app.local_addr();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { app.run(token).await.expect("gateway runs") });
        Running {
            addr,
            shutdown,
            task,
        }
    }

    /// The settings the stack's session-svc runs with, to start a variant of it.
    pub fn session_settings(&self) -> session_svc::Settings {
        self.session_settings.clone()
    }

    /// session-svc's store, to change it behind session-svc's back.
    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.store.clone().expect("session-svc is running")
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

    pub async fn stop_gateway(&mut self) {
        if let Some(running) = self.gateway.take() {
            running.stop().await;
        }
    }

    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway
            .as_ref()
            .map(|g| g.addr)
            .unwrap_or(self.gateway_listen)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway_addr())
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.gateway_addr())
    }

    /// Sessions in session-svc's store right now.
    pub async fn session_count(&self) -> u64 {
        self.store
            .as_ref()
            .expect("session-svc is running")
            .count()
            .await
            .expect("store answers")
    }

    pub fn mint(&self, request: MintRequest) -> MintedLogin {
        self.sandbox.mint(request).expect("sandbox mints")
    }

    /// `GET /login` with the code only (today's WeChat flow).
    pub async fn login_code_only(&self, code: &str) -> reqwest::Response {
        self.http
            .get(self.url("/login"))
            .header("X-WX-Code", code)
            .send()
            .await
            .expect("gateway answers")
    }

    /// `GET /login` as `wafer-client-sdk` sends it: code, encryptedData and iv headers.
    pub async fn login_encrypted(&self, minted: &MintedLogin) -> reqwest::Response {
        self.http
            .get(self.url("/login"))
            .header("X-WX-Code", &minted.code)
            .header("X-WX-Encrypted-Data", &minted.encrypted_data)
            .header("X-WX-IV", &minted.iv)
            .send()
            .await
            .expect("gateway answers")
    }

    /// Logs a new sandbox user in, with encrypted user data, and returns the session.
    pub async fn new_session(&self) -> (MintedLogin, ClientSession) {
        let minted = self.mint(MintRequest::default());
        let response = self.login_encrypted(&minted).await;
        let session = session_from(response).await;
        (minted, session)
    }

    pub async fn get(&self, path: &str, session: Option<&ClientSession>) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(session) = session {
            request = request.headers(session.headers());
        }
        request.send().await.expect("gateway answers")
    }
}

/// Reads a successful login answer and returns its session, failing the test otherwise.
pub async fn session_from(response: reqwest::Response) -> ClientSession {
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("login answers JSON");
    assert_eq!(status, 200, "login failed: {body}");
    assert_eq!(body[MAGIC_KEY], 1, "{body}");
    ClientSession {
        id: body["session"]["id"]
            .as_str()
            .expect("session.id")
            .to_owned(),
        skey: body["session"]["skey"]
            .as_str()
            .expect("session.skey")
            .to_owned(),
    }
}

/// Status and JSON body of a response.
pub async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body)
}
