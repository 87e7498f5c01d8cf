//! The WeChat sandbox served in-process on a fresh port, for one random app: the one outside
//! party the tests simulate.
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wechat_sandbox::{MintRequest, MintedLogin, Sandbox, SandboxConfig};

pub struct WeChat {
    pub sandbox: Sandbox,
    pub addr: SocketAddr,
    /// The first app's (the default app's) AppId and AppSecret.
    pub app_id: String,
    pub app_secret: String,
    /// Every app the sandbox knows, as (AppId, AppSecret), the first one first.
    pub apps: Vec<(String, String)>,
    shutdown: CancellationToken,
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("OS randomness");
    hex::encode(buf)
}

impl WeChat {
    pub async fn start() -> Self {
        Self::start_with_token_ttl(None).await
    }

    /// A sandbox whose access_tokens live `token_ttl` (default: WeChat's two hours).
    pub async fn start_with_token_ttl(token_ttl: Option<std::time::Duration>) -> Self {
        Self::start_apps(1, token_ttl).await
    }

    /// A sandbox that knows `count` apps (one company's mini-programs), each with its own
    /// AppId and AppSecret.
    pub async fn start_apps(count: usize, token_ttl: Option<std::time::Duration>) -> Self {
        let apps: Vec<(String, String)> = (0..count.max(1))
            .map(|_| (format!("wx{}", random_hex(8)), random_hex(16)))
            .collect();
        let (app_id, app_secret) = apps[0].clone();
        let mut config = SandboxConfig::single(app_id.clone(), app_secret.clone());
        config.apps = apps
            .iter()
            .map(|(app_id, app_secret)| wechat_sandbox::App {
                app_id: app_id.clone(),
                app_secret: app_secret.clone(),
            })
            .collect();
        if let Some(ttl) = token_ttl {
            config.token_ttl = ttl;
        }
        let sandbox = Sandbox::new(config);
        // Port 0: the sandbox is never restarted, so the kernel's pick cannot race.
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
            apps,
            shutdown,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// What session-svc needs to reach this sandbox as its WeChat, as environment variables.
    pub fn session_svc_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WEAPP_APP_ID", self.app_id.clone()),
            ("WEAPP_APP_SECRET", self.app_secret.clone()),
            ("WEAPP_WECHAT_BASE_URL", self.base_url()),
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
