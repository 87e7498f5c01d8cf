//! WebSockets at scale: N authenticated connections held open, the server's memory per
//! connection, then echo bursts where every connection sends at the same instant.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _, http::HeaderValue};

use crate::{stats::percentiles, wafer};

#[derive(clap::Args)]
pub struct Plan {
    /// ws://host:port/ws
    #[arg(long)]
    pub url: String,
    /// Sessions file written by `sessions`; connections use them round-robin.
    #[arg(long)]
    pub sessions: PathBuf,
    #[arg(long)]
    pub connections: usize,
    /// Server processes whose RSS is measured (comma-separated pids).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Quiet time before RSS is read, so the server settles.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
}

/// Resident memory of the given processes, in KiB.
fn rss_kib(pids: &[u32]) -> Result<u64, String> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("cannot read the memory of process {pid}: {e}"))?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no VmRSS for process {pid}"))?;
    }
    Ok(total)
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An authenticated WebSocket, its greeting read.
pub async fn open(url: &str, session: &wafer::Session) -> Result<Socket, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad URL {url}: {e}"))?;
    for (name, value) in [("X-WX-Id", &session.id), ("X-WX-Skey", &session.skey)] {
        let value = HeaderValue::from_str(value).map_err(|e| format!("bad session: {e}"))?;
        request.headers_mut().insert(name, value);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .map_err(|e| format!("WebSocket connect: {e}"))?;
    match next_text(&mut socket, Duration::from_secs(30)).await? {
        greeting if greeting.starts_with("Server: ") => Ok(socket),
        other => Err(format!("unexpected greeting {other:?}")),
    }
}

/// The next text frame within `within`, skipping control frames.
pub async fn next_text(socket: &mut Socket, within: Duration) -> Result<String, String> {
    loop {
        match tokio::time::timeout(within, socket.next()).await {
            Err(_) => return Err(format!("no frame within {within:?}")),
            Ok(None) => return Err("connection closed".into()),
            Ok(Some(Err(e))) => return Err(format!("WebSocket error: {e}")),
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text.to_string()),
            Ok(Some(Ok(Message::Close(frame)))) => return Err(format!("closed: {frame:?}")),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// One connection: waits for each round, sends, times the echo.
async fn drive(
    mut socket: Socket,
    index: usize,
    mut rounds: watch::Receiver<usize>,
    results: mpsc::UnboundedSender<Result<Duration, String>>,
) {
    while rounds.changed().await.is_ok() {
        let round = *rounds.borrow_and_update();
        if round == usize::MAX {
            break;
        }
        let message = format!("r{round}-c{index}");
        let sent = Instant::now();
        let outcome = match socket.send(Message::text(message.clone())).await {
            Err(e) => Err(format!("send: {e}")),
            Ok(()) => match next_text(&mut socket, Duration::from_secs(30)).await {
                Ok(reply) if reply == format!("Server: Received({message})") => Ok(sent.elapsed()),
                Ok(reply) => Err(format!("unexpected echo {reply:?}")),
                Err(e) => Err(e),
            },
        };
        let failed = outcome.is_err();
        let _ = results.send(outcome);
        if failed {
            return;
        }
    }
    let _ = socket.close(None).await;
}

pub async fn run(plan: Plan) -> Result<serde_json::Value, String> {
    let sessions = Arc::new(wafer::read_sessions(&plan.sessions)?);
    let rss_before = rss_kib(&plan.pids)?;

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let mut opening = Vec::with_capacity(plan.connections);
    for i in 0..plan.connections {
        let (gate, sessions, url) = (gate.clone(), sessions.clone(), plan.url.clone());
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            open(&url, &sessions[i % sessions.len()]).await
        }));
    }
    let mut sockets = Vec::with_capacity(plan.connections);
    for task in opening {
        sockets.push(task.await.map_err(|e| e.to_string())??);
    }
    let connect_seconds = started.elapsed().as_secs_f64();

    // Every connection is answered and idle: give the server a moment, then weigh it.
    tokio::time::sleep(plan.settle).await;
    let rss_after = rss_kib(&plan.pids)?;

    let (round_tx, round_rx) = watch::channel(0usize);
    let (result_tx, mut result_rx) = mpsc::unbounded_channel();
    let drivers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| tokio::spawn(drive(socket, i, round_rx.clone(), result_tx.clone())))
        .collect();
    drop(result_tx);

    let mut latencies = Vec::with_capacity(plan.connections * plan.rounds);
    let mut burst_seconds = Vec::new();
    // Round 0 warms both ends up (first-message allocations) and is not counted.
    for round in 0..=plan.rounds {
        let t = Instant::now();
        round_tx
            .send(round)
            .map_err(|_| "every connection is gone".to_string())?;
        for _ in 0..plan.connections {
            match tokio::time::timeout(Duration::from_secs(60), result_rx.recv()).await {
                Ok(Some(Ok(latency))) if round > 0 => latencies.push(latency),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(format!("echo burst {round}: {e}")),
                Ok(None) | Err(_) => return Err(format!("echo burst {round} did not complete")),
            }
        }
        if round > 0 {
            burst_seconds.push(t.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = round_tx.send(usize::MAX);
    for driver in drivers {
        let _ = driver.await;
    }
    let (p50, p99) = percentiles(&mut latencies);
    let growth = rss_after.saturating_sub(rss_before);
    Ok(serde_json::json!({
        "connections": plan.connections,
        "connect_seconds": connect_seconds,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_connection_kib": growth as f64 / plan.connections.max(1) as f64,
        "echoes": latencies.len(),
        "burst_seconds": burst_seconds,
        "echo_p50_ms": p50,
        "echo_p99_ms": p99,
    }))
}
