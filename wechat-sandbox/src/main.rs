use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use wechat_sandbox::{App, Sandbox, SandboxConfig};

/// Local stand-in for WeChat's API (login, access tokens, phone numbers, session_key
/// checks). For tests and demos only.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "SANDBOX_LISTEN", default_value = "127.0.0.1:9870")]
    listen: String,
    /// AppId of the mini-program registered with the sandbox.
    #[arg(long, env = "WEAPP_APP_ID")]
    app_id: String,
    /// File holding the AppSecret the sandbox expects (never pass secrets on the command line).
    #[arg(long, env = "WEAPP_APP_SECRET_FILE")]
    app_secret_file: std::path::PathBuf,
    /// Lifetime of a minted code, in seconds.
    #[arg(long, env = "SANDBOX_CODE_TTL_SECS", default_value_t = 300)]
    code_ttl_secs: u64,
    /// Lifetime of a new access_token, in seconds.
    #[arg(long, env = "SANDBOX_TOKEN_TTL_SECS", default_value_t = 7200)]
    token_ttl_secs: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    weapp_common::init_tracing();
    let cli = Cli::parse();
    let app_secret = std::fs::read_to_string(&cli.app_secret_file)
        .map_err(|e| format!("cannot read {}: {e}", cli.app_secret_file.display()))?
        .trim()
        .to_owned();
    let sandbox = Sandbox::new(SandboxConfig {
        apps: vec![App {
            app_id: cli.app_id,
            app_secret,
        }],
        code_ttl: Duration::from_secs(cli.code_ttl_secs),
        token_ttl: Duration::from_secs(cli.token_ttl_secs),
    });
    let listener = TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "WeChat sandbox listening");
    let shutdown = weapp_common::shutdown_on_signal();
    wechat_sandbox::serve(listener, sandbox, shutdown).await?;
    Ok(())
}
