//! The WeChat sandbox served in-process on a fresh port, for one random app: the one outside
//! party the tests simulate.
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wechat_sandbox::{MintRequest, MintedLogin, Sandbox, SandboxConfig};

pub struct WeChat {
    pub sandbox: Sandbox,
    pub addr: SocketAddr,
    pub app_id: String,
    pub app_secret: String,
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
        let app_id = format!("wx{}", random_hex(8));
        let app_secret = random_hex(16);
        let mut config = SandboxConfig::single(app_id.clone(), app_secret.clone());
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
