//! The load that profile-guided optimisation trains the shipped binaries on
//! (`scripts/build-release.sh`): logins, `/me`, a forwarded business route and WebSocket
//! echoes, in about the proportions a deployment sees them, so that no path is left out of the
//! profile (a path the profile never saw is optimised as cold, and comes out slower).
use futures::{SinkExt as _, StreamExt as _, stream};
use tokio_tungstenite::tungstenite::Message;

use crate::{wafer, ws};

#[derive(clap::Args)]
pub struct Plan {
    /// Base URL of the gateway, e.g. http://127.0.0.1:8765
    #[arg(long)]
    pub base: String,
    /// Base URL of the WeChat sandbox.
    #[arg(long)]
    pub sandbox: String,
    /// New users logged in.
    #[arg(long, default_value_t = 6000)]
    pub users: usize,
    /// `GET /me` per user.
    #[arg(long, default_value_t = 4)]
    pub me_per_user: usize,
    /// A forwarded path (a business route the gateway was started with), asked as often as /me.
    #[arg(long)]
    pub forward_path: Option<String>,
    /// Users that open a WebSocket and send `ws_messages` messages on it.
    #[arg(long, default_value_t = 500)]
    pub ws_users: usize,
    #[arg(long, default_value_t = 8)]
    pub ws_messages: usize,
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

pub async fn run(plan: Plan) -> Result<serde_json::Value, String> {
    let http = wafer::client()?;
    let base = plan.base.trim_end_matches('/');
    let c = plan.concurrency.max(1);
    let minted = wafer::mint_many(&http, &plan.sandbox, plan.users, 32).await?;
    let sessions: Vec<wafer::Session> = stream::iter(&minted)
        .map(|m| wafer::login(&http, base, m))
        .buffer_unordered(c)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;

    let mut paths = vec!["/me".to_owned()];
    paths.extend(plan.forward_path.iter().cloned());
    let requests = sessions
        .iter()
        .flat_map(|s| std::iter::repeat_n(s, plan.me_per_user))
        .flat_map(|s| paths.iter().map(move |p| (s, p)));
    let answered: usize = stream::iter(requests)
        .map(|(session, path)| get(&http, base, path, session))
        .buffer_unordered(c)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .len();

    let url = format!("{}/ws", base.replacen("http", "ws", 1));
    let echoed: usize = stream::iter(sessions.iter().take(plan.ws_users))
        .map(|session| echo(&url, session, plan.ws_messages))
        .buffer_unordered(c)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum::<Result<usize, String>>()?;

    Ok(serde_json::json!({
        "logins": sessions.len(),
        "requests": answered,
        "ws_messages": echoed,
    }))
}

async fn get(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    session: &wafer::Session,
) -> Result<(), String> {
    let response = http
        .get(format!("{base}{path}"))
        .header("X-WX-Id", &session.id)
        .header("X-WX-Skey", &session.skey)
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = response.status();
    // The body is read, as a client would: that is part of what is trained.
    response
        .bytes()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}"))
    }
}

async fn echo(url: &str, session: &wafer::Session, messages: usize) -> Result<usize, String> {
    let mut socket = ws::open(url, session).await?;
    for i in 0..messages {
        let message = format!("training {i}");
        socket
            .send(Message::text(message.clone()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let reply = ws::next_text(&mut socket, std::time::Duration::from_secs(30)).await?;
        if reply != format!("Server: Received({message})") {
            return Err(format!("unexpected echo {reply:?}"));
        }
    }
    let _ = socket.close(None).await;
    Ok(messages)
}
