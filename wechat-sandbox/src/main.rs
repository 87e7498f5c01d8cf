use std::{path::Path, time::Duration};

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
    #[arg(
        long,
        env = "WEAPP_APP_ID",
        required_unless_present = "apps_file",
        conflicts_with = "apps_file"
    )]
    app_id: Option<String>,
    /// File holding the AppSecret the sandbox expects (never pass secrets on the command line).
    #[arg(
        long,
        env = "WEAPP_APP_SECRET_FILE",
        required_unless_present = "apps_file"
    )]
    app_secret_file: Option<std::path::PathBuf>,
    /// Several mini-programs: session-svc's apps file (each [[app]]'s appid and secret_file),
    /// the default app first to be minted for.
    #[arg(long, env = "WEAPP_APPS_FILE")]
    apps_file: Option<std::path::PathBuf>,
    /// Lifetime of a minted code, in seconds.
    #[arg(long, env = "SANDBOX_CODE_TTL_SECS", default_value_t = 300)]
    code_ttl_secs: u64,
    /// Lifetime of a new access_token, in seconds.
    #[arg(long, env = "SANDBOX_TOKEN_TTL_SECS", default_value_t = 7200)]
    token_ttl_secs: u64,
}

fn read_secret(path: &Path) -> Result<String, String> {
    Ok(std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .trim()
        .to_owned())
}

/// The apps of session-svc's apps file, the default app first.
fn apps_of(path: &Path) -> Result<Vec<App>, String> {
    #[derive(serde::Deserialize)]
    struct File {
        default: Option<String>,
        app: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        appid: String,
        secret_file: std::path::PathBuf,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut apps = file
        .app
        .into_iter()
        .map(|entry| {
            Ok(App {
                app_secret: read_secret(&dir.join(&entry.secret_file))?,
                app_id: entry.appid,
            })
        })
        .collect::<Result<Vec<App>, String>>()?;
    if let Some(default) = file.default {
        apps.sort_by_key(|app| app.app_id != default);
    }
    Ok(apps)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    weapp_common::init_tracing();
    let cli = Cli::parse();
    let apps = match (&cli.apps_file, cli.app_id, &cli.app_secret_file) {
        (Some(file), _, _) => apps_of(file)?,
        (None, Some(app_id), Some(secret_file)) => vec![App {
            app_id,
            app_secret: read_secret(secret_file)?,
        }],
        _ => return Err("set WEAPP_APP_ID and WEAPP_APP_SECRET_FILE, or WEAPP_APPS_FILE".into()),
    };
    let sandbox = Sandbox::new(SandboxConfig {
        apps,
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
