//! A business upstream for forwarding tests: a real HTTP server on a real socket that records
//! what reached it and can be slow, stream, or count the connections it was given.
//!
//! * `/…/echo` answers what it received as JSON: method, path and query, headers, body
//!   length and SHA-256;
//! * `/…/upload` reads its body as it streams, says when the first bytes arrived
//!   ([`Upstream::first_bytes`]) and answers the length and SHA-256;
//! * `/…/stream` sends one chunk, waits for [`Upstream::release`], then sends the rest;
//! * `/…/slow` answers after 5 s; `/…/fail` answers 500;
//! * anything answers 503 and is not recorded while [`Upstream::set_down`] says so.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::Notify};

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Value>>,
    connections: AtomicUsize,
    first_bytes: Notify,
    release: Notify,
    down: AtomicBool,
}

pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Listening on `addr` (a reserved port: nothing answered there until now).
    pub async fn start_at(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let counter = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                counter.connections.fetch_add(1, Ordering::SeqCst);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request that reached it, as `/echo` describes them.
    pub fn seen(&self) -> Vec<Value> {
        self.shared.seen.lock().expect("lock").clone()
    }

    /// TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Resolves when an `/upload` has received its first bytes.
    pub async fn first_bytes(&self) {
        self.shared.first_bytes.notified().await
    }

    /// While down, every request gets 503 and is not recorded (a broken upstream).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Lets a `/stream` answer finish.
    pub fn release(&self) {
        self.shared.release.notify_one()
    }
}

fn describe(request: &Request, body: &[u8], length: usize, digest: &[u8]) -> Value {
    let headers: Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                json!(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    json!({
        "method": request.method().as_str(),
        "uri": request.uri().to_string(),
        "headers": headers,
        "length": length,
        "sha256": hex::encode(digest),
        "text": String::from_utf8_lossy(body),
    })
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if shared.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return "late".into_response();
    }
    if path.ends_with("/fail") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response();
    }
    if path.ends_with("/stream") {
        let release = shared.clone();
        let chunks =
            futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("first;")) }).chain(
                futures::stream::once(async move {
                    release.release.notified().await;
                    Ok(Bytes::from("second"))
                }),
            );
        return Body::from_stream(chunks).into_response();
    }
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let (mut length, mut hasher, mut told) = (0usize, Sha256::new(), false);
    // The first KiB, for small bodies' tests.
    let mut start = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return (StatusCode::BAD_REQUEST, "body broke").into_response();
        };
        length += chunk.len();
        hasher.update(&chunk);
        start.extend(chunk.iter().take(1024usize.saturating_sub(start.len())));
        if !told && length > 0 {
            told = true;
            shared.first_bytes.notify_one();
        }
    }
    let seen = describe(
        &Request::from_parts(parts, Body::empty()),
        &start,
        length,
        &hasher.finalize(),
    );
    shared.seen.lock().expect("lock").push(seen.clone());
    (
        StatusCode::CREATED,
        [("x-upstream", "yes"), ("content-type", "application/json")],
        seen.to_string(),
    )
        .into_response()
}
