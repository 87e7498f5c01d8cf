//! The HTTP server loop: hyper with the limits the edge needs, which `axum::serve` does not
//! expose — a deadline for a request's headers (a slow-loris client that trickles them is
//! dropped; hyper runs the same clock on an idle keep-alive connection, so it is the idle
//! timeout too), a cap on their number and total size (431 past it), a cap on connections
//! (503 past it), bodies over the limit refused before routing (413, `body_limit.rs`) — plus
//! TCP_NODELAY and the client address for every connection, paths normalized before anything
//! routes on them (`path.rs`), WebSocket upgrades from proxies
//! that speak HTTP/1.0 upstream (`legacy_upgrade.rs`), and a graceful stop. Each accepted
//! connection runs on one of the connection threads (`io_threads.rs`) and starts on the fast
//! path (`fast_path.rs`, the same limits and routing), which hands it to hyper at the first
//! request it does not take.
use std::{
    borrow::Cow,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{extract::ConnectInfo, response::IntoResponse as _};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use weapp_common::{otlp::Spans, trace};
use weapp_wire::path;

use crate::{
    config::HttpLimits,
    edge::body_limit,
    edge::destination::{Destination, Routing},
    edge::dispatch::Dispatcher,
    edge::fast_path::{FastPath, Served},
    edge::io_threads::IoThreads,
    edge::legacy_upgrade::{self, FirstRequest},
    edge::served,
    error::ApiError,
    metrics::GatewayMetrics,
};

/// Serves on `listener` until `shutdown`, then stops accepting and waits for the requests in
/// flight (upgraded WebSockets are the dispatcher's to close). Each request's destination is
/// decided here, once (`destination.rs`), and `dispatcher` serves it.
pub async fn serve(
    (listener, threads): (TcpListener, &IoThreads),
    (routing, dispatcher): (Arc<Routing>, Arc<Dispatcher>),
    limits: HttpLimits,
    (metrics, spans): (Arc<GatewayMetrics>, Spans),
    shutdown: CancellationToken,
) {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let fast_path = Arc::new(FastPath {
        routing: routing.clone(),
        dispatcher: dispatcher.clone(),
        limits,
        metrics: metrics.clone(),
        spans: spans.clone(),
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
        // Without TCP_NODELAY a response written in two pieces can wait for a delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.increment(1);
            tokio::spawn(turn_away(tcp));
            continue;
        };
        let (routing, dispatcher) = (routing.clone(), dispatcher.clone());
        let (metrics, spans) = (metrics.clone(), spans.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let started = Instant::now();
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            // Every later step — routing, the gateway's own paths, forwarding — sees the
            // normalized path, or the request is refused here (`path.rs`).
            let refused = match path::normalize(request.uri().path()) {
                Ok(Cow::Borrowed(_)) => None,
                Ok(Cow::Owned(normal)) => match with_path(request.uri(), &normal) {
                    Some(uri) => {
                        *request.uri_mut() = uri;
                        None
                    }
                    None => Some(ApiError::BadRequestTarget),
                },
                Err(refused) => Some(ApiError::BadPath(refused)),
            };
            let destination = match refused {
                Some(_) => Destination::Other,
                None => routing.decide(request.uri().path()),
            };
            let label = metrics.route_label(destination.label(routing.business_routes()));
            let (dispatcher, metrics) = (dispatcher.clone(), metrics.clone());
            // The request's trace: the caller's (a traceparent from nginx or a client), or a
            // new one; the gateway's span is a child of it.
            let context = spans.serve(
                request
                    .headers()
                    .get(trace::TRACEPARENT)
                    .and_then(|v| v.to_str().ok()),
            );
            request.extensions_mut().insert(context);
            // Only a sampled request with export on pays for describing its span.
            let export = spans
                .exports(&context)
                .then(|| (request.method().clone(), spans.clone()));
            trace::within(Some(context), async move {
                let response = match (refused, destination) {
                    (Some(refused), _) => refused.into_response(),
                    // A business route's body is the upstream's business: it streams through
                    // under the route's own limit (`forward.rs`) instead of the gateway's.
                    (None, business @ Destination::Business(_)) => {
                        let request = request.map(axum::body::Body::new);
                        dispatcher.serve(business, peer, request).await
                    }
                    (None, destination) => match body_limit::check(request, &limits).await {
                        Ok(request) => dispatcher.serve(destination, peer, request).await,
                        Err(refused) => refused.into_response(),
                    },
                };
                let status = response.status().as_u16();
                metrics.request(label, status, started.elapsed());
                if let Some((method, spans)) = export {
                    spans.record(served::server_span(
                        context, method, &metrics, label, status, started,
                    ));
                }
                Ok::<_, Infallible>(response)
            })
        });
        let (http1, http2, told) = (http1.clone(), http2.clone(), told.clone());
        let fast_path = fast_path.clone();
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
            let Ok(tcp) = TcpStream::from_std(tcp) else {
                return;
            };
            // The slot travels with the connection: an upgraded WebSocket keeps it too.
            let first = legacy_upgrade::first_request(tcp, slot, limits.max_header_bytes.max(8192));
            // The same deadline hyper applies to the headers: a client that sends nothing
            // is dropped here as it would be there, and at once when the gateway stops.
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                first = tokio::time::timeout(limits.header_timeout, first) => first,
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
            // Bodiless business requests on HTTP/1.1 go as bytes until one is not.
            let io = match outcome {
                FirstRequest::AsSent if limits.fast_path => {
                    match fast_path.serve(io, peer, &shutdown).await {
                        Served::Closed => return,
                        Served::ToHyper(io) => io,
                    }
                }
                _ => io,
            };
            let io = TokioIo::new(io);
            let ended = match outcome {
                FirstRequest::Http2 => {
                    let connection = http2.serve_connection(io, service);
                    until_done(connection, &shutdown, |c| c.graceful_shutdown()).await
                }
                _ => {
                    let connection = http1.serve_connection(io, service).with_upgrades();
                    until_done(connection, &shutdown, |c| c.graceful_shutdown()).await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        };
        connections.spawn_on(connection, threads.next());
    }
    drop(listener);
    connections.close();
    connections.wait().await;
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

/// `uri` with `path` in place of its own, the query kept.
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let mut parts = uri.clone().into_parts();
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    http::Uri::from_parts(parts).ok()
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
