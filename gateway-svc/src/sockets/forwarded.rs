//! WebSockets forwarded to a business upstream (a route with `websocket = true`): how a
//! team's own WebSocket server (ws, socket.io, a Go hub) lives behind weapp, as Cloud Run's
//! `wx.cloud.connectContainer` gives a container the user's socket. The session is resolved
//! before anything else (a route that requires one answers 401 without it); the upstream's
//! handshake goes first, carrying the identity headers of the route's naming and never the
//! session's credentials; only once the upstream has said 101 is the client's upgrade
//! accepted (with the subprotocol the upstream chose). Then frames flow both ways as they
//! are, close codes pass through, the socket counts against the gateway's caps and is kept
//! alive like `/ws`, and a logout or `RevokeUser` closes it (1008) as it closes `/ws`.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{Request, ws::close_code},
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use futures::{SinkExt as _, StreamExt as _};
use tokio::{net::TcpStream, sync::OwnedSemaphorePermit, time::Instant};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, Utf8Bytes, client::IntoClientRequest as _, protocol::CloseFrame},
};

use crate::{
    business::forward::{ClientAddress, push_query_without_session, request_headers},
    business::route_table::Route,
    error::ApiError,
    sessions::resolver::AuthSession,
    sockets::open::Registration,
    sockets::outbox::End,
    sockets::upgrade::{self, Socket, Upgrade},
    state::AppState,
};

type Upstream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The handshake's headers that are the client's own: the upstream handshake makes its own.
const HANDSHAKE: [&str; 4] = [
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
];

/// Whether `headers` ask for a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Opens the upstream's socket for `request`, then accepts the client's.
pub async fn forward(
    state: &AppState,
    route: &Arc<Route>,
    session: Option<AuthSession>,
    peer: SocketAddr,
    request: Request,
) -> Result<Response, ApiError> {
    let mut request = request;
    let offer = Upgrade::from_request(&mut request)?;
    let (parts, _body) = request.into_parts();
    let Ok(permit) = state.ws_slots.clone().try_acquire_owned() else {
        state.metrics.websockets_refused.increment(1);
        return Err(ApiError::TooManyConnections);
    };
    // A socket with a session is watched for its revocation; it takes no pushes (capacity
    // 0): its protocol is the business's.
    let registration = match &session {
        None => None,
        Some(session) => {
            let max = state.settings.ws.max_per_session;
            let registration = state
                .sockets
                .register(&session.id, &session.user, (max, 0))
                .ok_or(ApiError::TooManySessionSockets(max))?;
            Some(registration)
        }
    };
    let mut target = format!("ws://{}", route.authority);
    route.push_upstream_path(&mut target, parts.uri.path());
    push_query_without_session(&mut target, parts.uri.query());
    let mut handshake = target
        .into_client_request()
        .map_err(|_| ApiError::BadRequestTarget)?;
    let mut headers = parts.headers;
    for name in HANDSHAKE {
        headers.remove(name);
    }
    let client = ClientAddress {
        peer,
        trusted_proxies: &state.settings.trusted_proxies,
    };
    request_headers(
        &mut headers,
        (
            session.as_ref(),
            route.identity_headers,
            route.resource_appid.as_ref(),
        ),
        client,
    );
    // The handshake's own fields (Host, Upgrade, the key) stay as tungstenite made them.
    for (name, value) in &headers {
        if !handshake.headers().contains_key(name) {
            handshake.headers_mut().append(name, value.clone());
        }
    }
    // Both ends with the gateway's small buffers, not tungstenite's 128 KiB ones.
    let config = upgrade::config(state.settings.ws.max_message_size);
    let connecting = async {
        let tcp = tokio::time::timeout(route.connect_timeout, TcpStream::connect(&route.authority))
            .await
            .map_err(|_| ApiError::UpstreamUnreachable(route.prefix.clone()))?
            .map_err(|_| ApiError::UpstreamUnreachable(route.prefix.clone()))?;
        let _ = tcp.set_nodelay(true);
        tokio_tungstenite::client_async_with_config(
            handshake,
            MaybeTlsStream::Plain(tcp),
            Some(config),
        )
        .await
        .map_err(|e| refused(route, e))
    };
    let (upstream, answer) = tokio::time::timeout(route.timeout, connecting)
        .await
        .map_err(|_| ApiError::UpstreamTimeout(route.prefix.clone()))??;
    // The subprotocol the upstream chose among those the client offered (it was sent them).
    let chosen = answer
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .cloned();
    let (response, pending) = offer.accept(chosen, config);
    let (ping, pong_timeout) = (
        state.settings.ws.ping_interval,
        state.settings.ws.pong_timeout,
    );
    let held = (state.clone(), registration, permit);
    pending.serve_when_open(&state.ws_tasks, move |client| {
        connection(client, upstream, held, (ping, pong_timeout))
    });
    Ok(response)
}

/// What the upstream's handshake failure tells the client.
fn refused(route: &Route, e: tungstenite::Error) -> ApiError {
    match e {
        tungstenite::Error::Http(answer) => ApiError::UpstreamRefusedSocket {
            prefix: route.prefix.clone(),
            status: StatusCode::from_u16(answer.status().as_u16())
                .unwrap_or(StatusCode::BAD_GATEWAY),
        },
        _ => ApiError::UpstreamFailed(route.prefix.clone()),
    }
}

/// One forwarded socket, from the upgrade to the end.
async fn connection(
    mut client: Socket,
    mut upstream: Upstream,
    (state, registration, _permit): (AppState, Option<Registration>, OwnedSemaphorePermit),
    (ping_interval, pong_timeout): (Duration, Duration),
) {
    let metrics = &state.metrics;
    metrics.ws_opened.increment(1);
    metrics.ws_open.increment(1.0);
    let code = relay_frames(
        &mut client,
        &mut upstream,
        registration.as_ref(),
        &state,
        (ping_interval, pong_timeout),
    )
    .await;
    metrics.websocket_closed(code, true);
    drop(registration);
}

/// A close frame, for either end.
fn close_frame(code: u16, reason: Utf8Bytes) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason,
    }))
}

/// Closes both ends with `code` (a moment for each close frame, no more); the code.
async fn close_both(
    client: &mut Socket,
    upstream: &mut Upstream,
    code: u16,
    why: &'static str,
) -> u16 {
    let wait = Duration::from_secs(1);
    let why = Utf8Bytes::from_static(why);
    let _ = tokio::time::timeout(wait, client.send(close_frame(code, why.clone()))).await;
    let _ = tokio::time::timeout(wait, upstream.send(close_frame(code, why))).await;
    code
}

/// Passes frames both ways until one end closes, the session is revoked or the gateway
/// stops; the close code the socket ended with.
async fn relay_frames(
    client: &mut Socket,
    upstream: &mut Upstream,
    registration: Option<&Registration>,
    state: &AppState,
    (ping_interval, pong_timeout): (Duration, Duration),
) -> u16 {
    let timer = tokio::time::sleep(ping_interval);
    tokio::pin!(timer);
    let mut ping_sent: Option<Instant> = None;
    // A socket without a session hears of the shutdown only; one with a session, through its
    // outbox, of its revocation too.
    let ended = async {
        match registration {
            Some(registration) => registration.outbox.until_ended().await,
            None => {
                state.shutdown.cancelled().await;
                End::Shutdown
            }
        }
    };
    tokio::pin!(ended);
    loop {
        tokio::select! {
            why = &mut ended => {
                return match why {
                    End::Shutdown => close_both(client, upstream, close_code::AWAY, "server shutting down").await,
                    End::Revoked => close_both(client, upstream, close_code::POLICY, "the session was revoked").await,
                };
            }
            _ = &mut timer => {
                if ping_sent.is_some() {
                    return close_both(client, upstream, close_code::AWAY, "keep-alive timeout").await;
                }
                if client.send(Message::Ping(Default::default())).await.is_err() {
                    return close_both(client, upstream, close_code::ABNORMAL, "client gone").await;
                }
                let now = Instant::now();
                ping_sent = Some(now);
                timer.as_mut().reset(now + pong_timeout);
            }
            incoming = client.next() => {
                let message = match incoming {
                    // Frames pass as they are: the same tungstenite types on both ends.
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        if let Some(sent) = ping_sent.take() {
                            timer.as_mut().reset(sent + ping_interval);
                        }
                        continue;
                    }
                    Some(Ok(Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map_or((close_code::NORMAL, Utf8Bytes::default()), |f| (f.code.into(), f.reason));
                        // The upstream hears the client's code; its close answer ends it.
                        let _ = upstream.send(close_frame(code, reason)).await;
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            while let Some(Ok(m)) = upstream.next().await {
                                if m.is_close() { break; }
                            }
                        }).await;
                        return code;
                    }
                    Some(Err(e)) if let Some((code, why)) = upgrade::close_for(&e) => {
                        return close_both(client, upstream, code, why).await;
                    }
                    None | Some(Err(_)) => {
                        let _ = upstream.send(close_frame(close_code::AWAY, "client gone".into())).await;
                        return close_code::ABNORMAL;
                    }
                };
                state.metrics.ws_messages_in.increment(1);
                if upstream.send(message).await.is_err() {
                    return close_both(client, upstream, close_code::ERROR, "upstream gone").await;
                }
            }
            incoming = upstream.next() => {
                let message = match incoming {
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
                    // tungstenite answers the upstream's pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map_or((close_code::NORMAL, Utf8Bytes::default()), |f| (f.code.into(), f.reason));
                        let _ = client.send(close_frame(code, reason)).await;
                        return code;
                    }
                    None | Some(Err(_)) => {
                        return close_both(client, upstream, close_code::ERROR, "upstream gone").await;
                    }
                };
                state.metrics.ws_messages_out.increment(1);
                if client.send(message).await.is_err() {
                    let _ = upstream.send(close_frame(close_code::AWAY, "client gone".into())).await;
                    return close_code::ABNORMAL;
                }
            }
        }
    }
}
