//! The HTTP server loop: the limits the edge needs, which `axum::serve` does not expose — a
//! deadline for a request's headers counted from accept (a slow-loris client that trickles
//! them is dropped; the same clock runs on an idle keep-alive connection, so it is the idle
//! timeout too), a cap on their number and total size (431 past it), a cap on connections
//! (503 past it), bodies over the limit refused before routing (413, `body_limit.rs`) — plus
//! TCP_NODELAY and the client address for every connection, paths normalized before anything
//! routes on them (`path.rs`), WebSocket upgrades from proxies that speak HTTP/1.0 upstream
//! (`legacy_upgrade.rs`), and a graceful stop. Each accepted connection runs on one of the
//! connection threads (`io_threads.rs`); an HTTP/1 one is served by the fast path
//! (`fast_path.rs`), which reads every head first and hands hyper what it does not serve
//! itself (`handover.rs`); HTTP/2 goes to hyper.
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::response::IntoResponse as _;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use weapp_common::otlp::Spans;

use crate::{
    config::HttpLimits,
    edge::destination::LiveRouting,
    edge::dispatch::Dispatcher,
    edge::fast_path::{FastPath, Served},
    edge::handover::Hyper,
    edge::io_threads::IoThreads,
    edge::legacy_upgrade::{self, FirstRequest},
    edge::per_address::PerAddress,
    error::ApiError,
    metrics::GatewayMetrics,
    stream::ClientStream,
};

/// Serves on `listener` until `shutdown`, then stops accepting and waits for the requests in
/// flight (upgraded WebSockets are the dispatcher's to close). Each request's destination is
/// decided here, once (`destination.rs`), and `dispatcher` serves it.
pub async fn serve(
    (listener, threads): (TcpListener, &IoThreads),
    (routing, dispatcher): (LiveRouting, Arc<Dispatcher>),
    limits: HttpLimits,
    (metrics, spans): (Arc<GatewayMetrics>, Spans),
    shutdown: CancellationToken,
) {
    let hyper = Hyper::new(
        (routing.clone(), dispatcher.clone()),
        limits,
        (metrics.clone(), spans.clone()),
    );
    let fast_path = Arc::new(FastPath {
        routing,
        dispatcher,
        limits,
        metrics: metrics.clone(),
        spans,
        hyper,
        stopping: AtomicBool::new(false),
    });
    // As hyper's graceful stop does, requests answered from here on say the connection ends.
    tokio::spawn({
        let (fast_path, shutdown) = (fast_path.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            fast_path.stopping.store(true, Ordering::Relaxed);
        }
    });
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = PerAddress::new(
        limits.max_connections_per_address,
        fast_path.dispatcher.trusted_proxies().to_vec(),
    );
    // Whether the HTTP/1.0 upgrade advice was logged: once per gateway is enough.
    let told = Arc::new(AtomicBool::new(false));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let accepted = Instant::now();
        // Without TCP_NODELAY a response written in two pieces can wait for a delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(counted) = per_address.admit(peer.ip()) else {
            metrics.address_refused.increment(1);
            tokio::spawn(turn_away(tcp));
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.increment(1);
            tokio::spawn(turn_away(tcp));
            continue;
        };
        let (fast_path, told) = (fast_path.clone(), told.clone());
        let shutdown = shutdown.clone();
        // Moved to its thread's runtime (`io_threads.rs`), which registers it anew.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand the connection to its thread");
                continue;
            }
        };
        let connection = async move {
            // Counted while the connection lives (a WebSocket: until it is upgraded).
            let _counted = counted;
            let Ok(tcp) = TcpStream::from_std(tcp) else {
                return;
            };
            // The head's deadline, from accept (the fast path goes on counting from there):
            // a client that sends nothing is dropped here, and at once when the gateway stops.
            // Until its first bytes arrive a connection holds no buffer and a small task.
            let deadline = tokio::time::Instant::from_std(accepted + limits.header_timeout);
            let readable = tokio::select! {
                _ = shutdown.cancelled() => return,
                readable = tokio::time::timeout_at(deadline, tcp.readable()) => readable,
            };
            if !matches!(readable, Ok(Ok(()))) {
                return;
            }
            // The slot travels with the connection: an upgraded WebSocket keeps it too.
            let first = legacy_upgrade::first_request(tcp, slot, limits.max_header_bytes.max(8192));
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                first = tokio::time::timeout_at(deadline, Box::pin(first)) => first,
            };
            let Ok(Ok((io, outcome))) = first else {
                return;
            };
            if outcome == FirstRequest::UpgradedToHttp11 && !told.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "a WebSocket upgrade arrived as HTTP/1.0 (upgraded anyway): the proxy in \
                     front of this gateway should say `proxy_http_version 1.1;` where it sets \
                     the Upgrade and Connection headers"
                );
            }
            // Boxed, as what follows is: the task's own future stays the size of its wait for
            // the first bytes, which is what thousands of idle connections cost.
            Box::pin(serve_connection(
                &fast_path,
                io,
                outcome,
                (peer, accepted),
                &shutdown,
            ))
            .await;
        };
        connections.spawn_on(connection, threads.next());
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves a connection whose first bytes have come, to its end.
async fn serve_connection(
    fast_path: &FastPath,
    io: ClientStream,
    outcome: FirstRequest,
    (peer, accepted): (SocketAddr, Instant),
    shutdown: &CancellationToken,
) {
    let hyper = &fast_path.hyper;
    let ended = match outcome {
        FirstRequest::Http2 => {
            let connection = hyper
                .http2()
                .serve_connection(TokioIo::new(io), hyper.service(peer, false));
            Box::pin(until_done(connection, shutdown, |c| c.graceful_shutdown())).await
        }
        // Every HTTP/1 head is read on the fast path first; an upgrade comes back.
        _ => match fast_path.serve(io, (peer, accepted), shutdown).await {
            Served::Closed => return,
            Served::ToHyper(io) => {
                let connection = hyper
                    .http1_rest()
                    .serve_connection(TokioIo::new(io), hyper.service(peer, true))
                    .with_upgrades();
                Box::pin(until_done(connection, shutdown, |c| c.graceful_shutdown())).await
            }
        },
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves `connection` to its end; on shutdown, it finishes the request in flight and closes.
async fn until_done<C: Future>(
    connection: C,
    shutdown: &CancellationToken,
    graceful: impl FnOnce(Pin<&mut C>),
) -> C::Output {
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => ended,
        _ = shutdown.cancelled() => {
            graceful(connection.as_mut());
            connection.await
        }
    }
}

/// Answers a connection over the cap with 503 (the gateway's one error mapping, as for any
/// request) and closes it.
async fn turn_away(tcp: TcpStream) {
    tracing::debug!("connection refused: the gateway is at its connection limit");
    let answer = hyper::service::service_fn(|_| async {
        Ok::<_, Infallible>(ApiError::GatewayFull.into_response())
    });
    let connection = http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), answer);
    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
}
