//! The client side of the wafer protocol, as `wafer-client-sdk` speaks it: codes and user
//! data minted by the WeChat sandbox, the legacy login headers (the only login the Node
//! reference understands), and the session it answers.
use std::{path::Path, time::Duration};

use futures::{StreamExt as _, stream};
use wechat_sandbox::{MintRequest, MintedLogin};

pub struct Session {
    pub id: String,
    pub skey: String,
}

pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

pub async fn mint(http: &reqwest::Client, sandbox: &str) -> Result<MintedLogin, String> {
    let response = http
        .post(format!("{}/sandbox/mint", sandbox.trim_end_matches('/')))
        .json(&MintRequest::default())
        .send()
        .await
        .map_err(|e| format!("sandbox mint: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("sandbox mint answered {}", response.status()));
    }
    response
        .json()
        .await
        .map_err(|e| format!("sandbox mint answer: {e}"))
}

/// Mints `count` logins, `concurrency` at a time.
pub async fn mint_many(
    http: &reqwest::Client,
    sandbox: &str,
    count: usize,
    concurrency: usize,
) -> Result<Vec<MintedLogin>, String> {
    stream::iter(0..count)
        .map(|_| mint(http, sandbox))
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

pub async fn login(
    http: &reqwest::Client,
    base: &str,
    minted: &MintedLogin,
) -> Result<Session, String> {
    let response = http
        .get(format!("{}/login", base.trim_end_matches('/')))
        .header("X-WX-Code", &minted.code)
        .header("X-WX-Encrypted-Data", &minted.encrypted_data)
        .header("X-WX-IV", &minted.iv)
        .send()
        .await
        .map_err(|e| format!("login: {e}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("login answer ({status}): {e}"))?;
    let field = |name: &str| body["session"][name].as_str().map(str::to_owned);
    match (status.is_success(), field("id"), field("skey")) {
        (true, Some(id), Some(skey)) => Ok(Session { id, skey }),
        _ => Err(format!("login failed ({status}): {body}")),
    }
}

pub async fn create_sessions(
    base: &str,
    sandbox: &str,
    count: usize,
    concurrency: usize,
    out: &Path,
) -> Result<serde_json::Value, String> {
    let http = client()?;
    let started = std::time::Instant::now();
    let sessions: Vec<Session> = stream::iter(0..count)
        .map(|_| {
            let http = http.clone();
            async move {
                let minted = mint(&http, sandbox).await?;
                login(&http, base, &minted).await
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let lines: String = sessions
        .iter()
        .map(|s| format!("{} {}\n", s.id, s.skey))
        .collect();
    std::fs::write(out, lines).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(serde_json::json!({
        "sessions": sessions.len(),
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

pub fn read_sessions(path: &Path) -> Result<Vec<Session>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let sessions: Vec<Session> = text
        .lines()
        .filter_map(|line| {
            let (id, skey) = line.split_once(' ')?;
            Some(Session {
                id: id.to_owned(),
                skey: skey.to_owned(),
            })
        })
        .collect();
    if sessions.is_empty() {
        return Err(format!("no sessions in {}", path.display()));
    }
    Ok(sessions)
}
