//! Push at scale: one WebSocket per user spread over several gateways, then one `Publish` per
//! user through session-svc's gRPC API, timed from the moment the publish is sent to the
//! moment its socket receives the message. Every message must arrive.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream};
use tokio::sync::{Semaphore, mpsc};
use tonic::{metadata::MetadataValue, transport::Endpoint};
use weapp_proto::session::v1::{
    PublishRequest, PushMessage, push_message::Target, session_service_client::SessionServiceClient,
};

use crate::{
    stats::percentiles,
    wafer,
    ws::{next_text, open},
};

#[derive(clap::Args)]
pub struct Plan {
    /// The gateways' ws://host:port/ws URLs, comma-separated; socket i goes to URL i mod n.
    #[arg(long, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// One gateway's base URL, to learn each session's openId from /me.
    #[arg(long)]
    pub base: String,
    /// Sessions file written by `sessions`: one user each, one socket each.
    #[arg(long)]
    pub sessions: PathBuf,
    /// session-svc's gRPC URL.
    #[arg(long)]
    pub session_svc: String,
    /// File holding an API key with the `push` scope.
    #[arg(long)]
    pub key_file: PathBuf,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

async fn open_id(
    http: &reqwest::Client,
    base: &str,
    session: &wafer::Session,
) -> Result<String, String> {
    let me: serde_json::Value = http
        .get(format!("{}/me", base.trim_end_matches('/')))
        .header("X-WX-Id", &session.id)
        .header("X-WX-Skey", &session.skey)
        .send()
        .await
        .map_err(|e| format!("/me: {e}"))?
        .json()
        .await
        .map_err(|e| format!("/me answer: {e}"))?;
    me["openId"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("/me has no openId: {me}"))
}

pub async fn run(plan: Plan) -> Result<serde_json::Value, String> {
    if plan.urls.is_empty() {
        return Err("no gateway URLs".into());
    }
    let sessions = Arc::new(wafer::read_sessions(&plan.sessions)?);
    let http = wafer::client()?;
    let open_ids: Vec<String> = stream::iter(sessions.iter())
        .map(|s| open_id(&http, &plan.base, s))
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;

    // One socket per user; each waits for its one message and says when it came.
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let (received_tx, mut received_rx) =
        mpsc::unbounded_channel::<Result<(usize, Instant), String>>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    for (i, session) in sessions.iter().enumerate() {
        let url = plan.urls[i % plan.urls.len()].clone();
        let session = wafer::Session {
            id: session.id.clone(),
            skey: session.skey.clone(),
        };
        let (gate, received, ready) = (gate.clone(), received_tx.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let socket = {
                let _permit = gate.acquire().await;
                open(&url, &session).await
            };
            let mut socket = match socket {
                Ok(socket) => socket,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            let outcome = match next_text(&mut socket, Duration::from_secs(120)).await {
                Ok(text) => match text.strip_prefix("push ").and_then(|n| n.parse().ok()) {
                    Some(index) => Ok((index, Instant::now())),
                    None => Err(format!("unexpected message {text:?}")),
                },
                Err(e) => Err(e),
            };
            let _ = received.send(outcome);
            let _ = socket.close(None).await;
        });
    }
    drop((received_tx, ready_tx));
    for _ in 0..sessions.len() {
        ready_rx.recv().await.ok_or("a socket task ended early")??;
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    // The gateways' registrations are in place once the greeting went out; give the follower
    // streams a beat anyway.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let key = std::fs::read_to_string(&plan.key_file)
        .map_err(|e| format!("cannot read {}: {e}", plan.key_file.display()))?;
    let bearer: MetadataValue<_> = format!("Bearer {}", key.trim())
        .parse()
        .map_err(|_| "the key is not ASCII".to_owned())?;
    let channel = Endpoint::from_shared(plan.session_svc.clone())
        .map_err(|e| format!("bad session-svc URL: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot reach session-svc: {e}"))?;
    let client =
        SessionServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        });
    let publishing = Instant::now();
    let sent: Vec<Result<(Instant, u64), String>> = stream::iter(open_ids.iter().enumerate())
        .map(|(i, open_id)| {
            let mut client = client.clone();
            async move {
                let at = Instant::now();
                let answer = client
                    .publish(PublishRequest {
                        message: Some(PushMessage {
                            target: Some(Target::OpenId(open_id.clone())),
                            text: format!("push {i}"),
                            ..Default::default()
                        }),
                    })
                    .await
                    .map_err(|s| format!("publish: {}", s.message()))?;
                Ok((at, answer.into_inner().sockets))
            }
        })
        .buffered(plan.concurrency.max(1))
        .collect()
        .await;
    let publish_seconds = publishing.elapsed().as_secs_f64();
    let sent: Vec<(Instant, u64)> = sent.into_iter().collect::<Result<_, _>>()?;
    let reported: u64 = sent.iter().map(|(_, n)| n).sum();

    let mut latencies = Vec::with_capacity(sent.len());
    let mut failures = Vec::new();
    for _ in 0..sent.len() {
        match received_rx.recv().await {
            Some(Ok((index, at))) => match sent.get(index) {
                Some((published, _)) => latencies.push(at.saturating_duration_since(*published)),
                None => failures.push(format!("message {index} was never published")),
            },
            Some(Err(e)) => failures.push(e),
            None => break,
        }
    }
    let (p50, p99) = percentiles(&mut latencies);
    Ok(serde_json::json!({
        "sockets": sessions.len(),
        "gateways": plan.urls.len(),
        "connect_seconds": connect_seconds,
        "published": sent.len(),
        "reported_sockets": reported,
        "delivered": latencies.len(),
        "failures": failures.len(),
        "first_failure": failures.first(),
        "publish_seconds": publish_seconds,
        "publish_to_receive_p50_ms": p50,
        "publish_to_receive_p99_ms": p99,
    }))
}
