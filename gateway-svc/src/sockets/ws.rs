//! `/ws`: the tutorial's WebSocket. The session is resolved before the upgrade; a client
//! without a valid one still gets the upgrade, then one text frame with the error body and a
//! close frame, which is what WebSocket clients can actually read.

use axum::{
    extract::{
        State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code},
    },
    http::{HeaderMap, Uri},
    response::{IntoResponse, Response},
};
use std::sync::Arc;

use tokio::{
    sync::{OwnedSemaphorePermit, mpsc},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::WsSettings,
    error::ApiError,
    metrics::GatewayMetrics,
    sessions::resolver::Need,
    sessions::user::User,
    sockets::open::Registration,
    sockets::outbox::{Outbox, SLOW_CLIENT},
    sockets::relay,
    state::AppState,
};

/// Initial read buffer of a WebSocket (it grows for bigger messages).
const READ_BUFFER: usize = 256;

/// RFC 6455 "try again later": the session could not be checked, not refused.
const TRY_AGAIN_LATER: u16 = 1013;

pub async fn upgrade(
    State(state): State<AppState>,
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let Ok(permit) = state.ws_slots.clone().try_acquire_owned() else {
        state.metrics.websockets_refused.increment(1);
        return ApiError::TooManyConnections.into_response();
    };
    // Only the user and a place among the open sockets are kept: a WebSocket has no use for
    // the skey once it is open.
    let resolution = match state
        .resolver
        .resolve(&headers, uri.query(), Need::User)
        .await
    {
        Ok(Some(session)) => {
            let max = state.settings.ws.max_per_session;
            let Some(registration) = state.sockets.register(
                &session.id,
                &session.user,
                &state.shutdown,
                (max, state.settings.ws.send_queue),
            ) else {
                return ApiError::TooManySessionSockets(max).into_response();
            };
            // With a relay, the socket's messages go on with the session's identity, which
            // needs the credentials to stay fresh: kept by relayed sockets' relay task only.
            // Started now; if the upgrade never completes, its sender is dropped and it ends.
            let relay = state.relay.as_ref().map(|_| {
                let (sender, messages) = mpsc::channel(relay::WAITING);
                let (relay_state, outbox) = (state.clone(), registration.outbox.clone());
                let credentials = (session.id.clone(), session.skey.clone());
                tokio::spawn(async move {
                    if let Some(relay) = &relay_state.relay {
                        relay
                            .run(&relay_state.resolver, credentials, outbox, messages)
                            .await;
                    }
                });
                sender
            });
            Ok(Some((session.user, registration, relay)))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let ws_settings = state.settings.ws;
    let tasks = state.ws_tasks.clone();
    // Boxed: axum's upgrade task holds this closure's captures next to the future made from
    // them, so small captures mean a small task for every connection.
    let params = Box::new(Params {
        resolution,
        // Shared, not copied: every open socket holds its Params.
        state: state.clone(),
        _permit: permit,
    });
    // tungstenite's buffers default to 128 KiB each, per connection: at 10,000 connections
    // that is gigabytes for idle sockets. Small messages are the norm here; the read buffer
    // still grows to max_message_size for a big one, and writes go out as they are made.
    ws.max_message_size(ws_settings.max_message_size)
        .max_frame_size(ws_settings.max_message_size)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| tasks.track_future(connection(socket, params)))
}

/// An accepted socket's session: its user, its place among the open sockets, and where its
/// messages go when they are relayed.
type Accepted = (Arc<User>, Registration, Option<mpsc::Sender<Utf8Bytes>>);

/// What a connection needs from its upgrade request.
struct Params {
    resolution: Result<Option<Accepted>, ApiError>,
    /// Settings and the shutdown signal, behind the state's one `Arc`.
    state: AppState,
    /// Held for the connection's life: its slot under the connection cap.
    _permit: OwnedSemaphorePermit,
}

/// One WebSocket, from the upgrade to the end. Everything the connection keeps lives here
/// once: `serve` and `refuse` borrow it (a future that took the socket by value would hold a
/// second copy of its place in this task's memory, for every connection).
async fn connection(mut socket: WebSocket, params: Box<Params>) {
    let Params {
        resolution, state, ..
    } = &*params;
    let (settings, shutdown, metrics) = (&state.settings, &state.shutdown, &state.metrics);
    match resolution {
        Ok(Some((user, registration, relay))) => {
            metrics.ws_opened.increment(1);
            metrics.ws_open.increment(1.0);
            let code = serve(
                &mut socket,
                user,
                (&settings.ws, metrics),
                registration,
                relay.as_ref(),
                shutdown,
            )
            .await;
            metrics.websocket_closed(code, true);
        }
        // Refusals are boxed: their futures would otherwise widen every open socket's task
        // (measured: 104 bytes each) for a path a served socket never takes.
        Ok(None) => {
            let refusal =
                ApiError::InvalidSession("a WebSocket needs a valid session; log in first".into());
            Box::pin(refuse(&mut socket, &refusal, close_code::POLICY)).await;
            metrics.websocket_closed(close_code::POLICY, false);
        }
        Err(e @ ApiError::InvalidSession(_)) => {
            Box::pin(refuse(&mut socket, e, close_code::POLICY)).await;
            metrics.websocket_closed(close_code::POLICY, false);
        }
        Err(e) => {
            Box::pin(refuse(&mut socket, e, TRY_AGAIN_LATER)).await;
            metrics.websocket_closed(TRY_AGAIN_LATER, false);
        }
    }
}

/// What a socket's end is counted as when the client closed it, or the connection broke.
const CLIENT_CLOSED: u16 = close_code::NORMAL;
const BROKEN: u16 = close_code::ABNORMAL;

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

async fn refuse(socket: &mut WebSocket, error: &ApiError, code: u16) {
    let _ = socket
        .send(Message::Text(error.body().to_string().into()))
        .await;
    let reason = if code == close_code::POLICY {
        "invalid session"
    } else {
        "session service unavailable"
    };
    let _ = socket.send(close(code, reason)).await;
}

/// Whether a receive error was a message over the size limit.
fn is_too_big(e: axum::Error) -> bool {
    matches!(
        e.into_inner().downcast::<tungstenite::Error>().map(|b| *b),
        Ok(tungstenite::Error::Capacity(_))
    )
}

/// Sends a queued message, unless the queue overflows first (the client is not reading: the
/// send would wait for it forever). Err: the socket is done.
async fn send_queued(socket: &mut WebSocket, text: Utf8Bytes, outbox: &Outbox) -> Result<(), ()> {
    tokio::select! {
        sent = socket.send(Message::Text(text)) => sent.map_err(drop),
        _ = outbox.overflow() => Err(()),
    }
}

/// Closes a socket whose client let its queue fill up. It is not reading, so the close frame
/// gets a moment and no more.
async fn close_slow(socket: &mut WebSocket) {
    let closing = socket.send(close(SLOW_CLIENT, "too many unread messages"));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), closing).await;
}

/// Serves an accepted socket until it ends; the close code it ended with.
async fn serve(
    socket: &mut WebSocket,
    user: &User,
    (settings, metrics): (&WsSettings, &GatewayMetrics),
    registration: &Registration,
    relay: Option<&mpsc::Sender<Utf8Bytes>>,
    shutdown: &CancellationToken,
) -> u16 {
    let (ended, outbox) = (&registration.ended, &*registration.outbox);
    // The tutorial's greeting belongs to its echo; a relayed socket speaks only for the
    // business upstream.
    if relay.is_none() {
        let greeting = format!("Server: 恭喜，{}", user.display_name);
        if socket.send(Message::Text(greeting.into())).await.is_err() {
            return BROKEN;
        }
        metrics.ws_messages_out.increment(1);
    }
    // One timer for keep-alive: when it fires, either a ping goes out (and the timer is set
    // for its pong) or the pong is overdue. Built once, like the shutdown wait: this loop runs
    // for every frame of every connection.
    let timer = tokio::time::sleep(settings.ping_interval);
    tokio::pin!(timer);
    // Fires on shutdown and when the session is revoked (logout, RevokeUser).
    let ended_wait = ended.cancelled();
    tokio::pin!(ended_wait);
    // When the last ping went out, while its pong is awaited.
    let mut ping_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut ended_wait => {
                if shutdown.is_cancelled() {
                    let _ = socket.send(close(close_code::AWAY, "server shutting down")).await;
                    return close_code::AWAY;
                }
                let revoked = ApiError::InvalidSession("the session was revoked".into());
                Box::pin(refuse(socket, &revoked, close_code::POLICY)).await;
                return close_code::POLICY;
            }
            _ = outbox.ready() => {
                let mut broken = false;
                while let Some(text) = outbox.next() {
                    if send_queued(socket, text, outbox).await.is_err() {
                        broken = true;
                        break;
                    }
                    metrics.ws_messages_out.increment(1);
                }
                if outbox.overflowed() {
                    close_slow(socket).await;
                    return SLOW_CLIENT;
                }
                if broken {
                    return BROKEN;
                }
            }
            _ = &mut timer => {
                if ping_sent.is_some() {
                    let _ = socket.send(close(close_code::AWAY, "keep-alive timeout")).await;
                    return close_code::AWAY;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return BROKEN;
                }
                let now = Instant::now();
                ping_sent = Some(now);
                timer.as_mut().reset(now + settings.pong_timeout);
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    metrics.ws_messages_in.increment(1);
                    let reply = match relay {
                        None => format!("Server: Received({})", text.as_str()).into(),
                        Some(relay) => match relay.try_send(text) {
                            Ok(()) => continue,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                let reason = "too many messages waiting for an answer";
                                let _ = socket.send(close(close_code::POLICY, reason)).await;
                                return close_code::POLICY;
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return BROKEN,
                        },
                    };
                    if socket.send(Message::Text(reply)).await.is_err() {
                        return BROKEN;
                    }
                    metrics.ws_messages_out.increment(1);
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = socket.send(close(close_code::UNSUPPORTED, "text messages only")).await;
                    return close_code::UNSUPPORTED;
                }
                // Any sign of life counts; tungstenite answers pings by itself.
                Some(Ok(Message::Pong(_) | Message::Ping(_))) => {
                    // The next ping is due an interval after the last one.
                    if let Some(sent) = ping_sent.take() {
                        timer.as_mut().reset(sent + settings.ping_interval);
                    }
                }
                Some(Ok(Message::Close(_))) => return CLIENT_CLOSED,
                None => return BROKEN,
                Some(Err(e)) => {
                    if is_too_big(e) {
                        let _ = socket.send(close(close_code::SIZE, "message too big")).await;
                        return close_code::SIZE;
                    }
                    return BROKEN;
                }
            },
        }
    }
}
