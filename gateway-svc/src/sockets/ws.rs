//! `/ws`: the tutorial's WebSocket. The session is resolved before the upgrade; a client
//! without a valid one still gets the upgrade, then one text frame with the error body and a
//! close frame, which is what WebSocket clients can actually read.

use axum::{
    extract::{Request, State, ws::close_code},
    response::{IntoResponse, Response},
};
use futures::{SinkExt as _, StreamExt as _};
use std::sync::Arc;

use tokio::{
    sync::{OwnedSemaphorePermit, mpsc},
    time::Instant,
};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::{
    config::WsSettings,
    error::ApiError,
    metrics::GatewayMetrics,
    sessions::resolver::Need,
    sessions::user::User,
    sockets::closing::{
        BROKEN, CLIENT_CLOSED, TRY_AGAIN_LATER, close, close_slow, ended, refuse, send_queued,
    },
    sockets::keepalive::KeepAlive,
    sockets::open::Registration,
    sockets::outbox::{Outbox, SLOW_CLIENT},
    sockets::relay,
    sockets::resume::{self, Resuming},
    sockets::upgrade::{self, Socket, Upgrade},
    state::AppState,
};

pub async fn upgrade(State(state): State<AppState>, mut request: Request) -> Response {
    let handshake = match Upgrade::from_request(&mut request) {
        Ok(handshake) => handshake,
        Err(refused) => return refused.into_response(),
    };
    let (headers, uri) = (request.headers(), request.uri());
    // A client that says where it was resumes its user's stream (`resume.rs`); without it,
    // the tutorial's socket.
    let since = weapp_wire::since::since(headers, uri.query());
    let Ok(permit) = state.ws_slots.clone().try_acquire_owned() else {
        state.metrics.websockets_refused.increment(1);
        return ApiError::TooManyConnections.into_response();
    };
    // Only the user and a place among the open sockets are kept: a WebSocket has no use for
    // the skey once it is open.
    let resolution = match state
        .resolver
        .resolve(headers, uri.query(), Need::User)
        .await
    {
        Ok(Some(session)) => {
            let max = state.settings.ws.max_per_session;
            let Some(registration) = state.sockets.register(
                &session.id,
                &session.user,
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
            let resuming = since.map(|since| {
                Box::new(Resuming {
                    credentials: (session.id.clone(), session.skey.clone()),
                    since,
                })
            });
            Ok(Some((session.user, registration, relay, resuming)))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let config = upgrade::config(state.settings.ws.max_message_size);
    let (response, pending) = handshake.accept(None, config);
    let params = Params {
        resolution,
        // Shared, not copied: every open socket holds its Params.
        state: state.clone(),
        _permit: permit,
    };
    pending.serve_when_open(&state.ws_tasks, |socket| {
        connection(Box::new(Open { socket, params }))
    });
    response
}

/// An accepted socket's session: its user, its place among the open sockets, and where its
/// messages go when they are relayed.
type Accepted = (
    Arc<User>,
    Registration,
    Option<mpsc::Sender<Utf8Bytes>>,
    Option<Box<Resuming>>,
);

/// What a connection needs from its upgrade request.
struct Params {
    resolution: Result<Option<Accepted>, ApiError>,
    /// Settings and the shutdown signal, behind the state's one `Arc`.
    state: AppState,
    /// Held for the connection's life: its slot under the connection cap.
    _permit: OwnedSemaphorePermit,
}

/// An open socket and what it needs from its upgrade request: the one allocation that holds
/// it for its life. Boxed, and borrowed by everything that serves it, because an async fn
/// keeps its by-value arguments twice (rust-lang/rust#62958), in every socket's task.
struct Open {
    socket: Socket,
    params: Params,
}

/// One WebSocket, from the upgrade to the end: `serve` and `refuse` borrow what it keeps.
async fn connection(mut open: Box<Open>) {
    let Open { socket, params } = &mut *open;
    let Params {
        resolution, state, ..
    } = &*params;
    let (settings, metrics) = (&state.settings, &state.metrics);
    match resolution {
        Ok(Some((user, registration, relay, resuming))) => {
            metrics.ws_opened.increment(1);
            metrics.ws_open.increment(1.0);
            let code = match resuming {
                None => {
                    serve(
                        socket,
                        user,
                        (&settings.ws, metrics, &state.keepalive),
                        &registration.outbox,
                        relay.as_ref(),
                    )
                    .await
                }
                // Boxed: a plain socket's task does not carry a resuming one's state.
                Some(resuming) => {
                    let greeting = relay
                        .is_none()
                        .then(|| format!("Server: 恭喜，{}", user.display_name).into());
                    Box::pin(resume::serve(
                        socket,
                        state,
                        (&registration.outbox, relay.as_ref()),
                        (resuming, greeting),
                    ))
                    .await
                }
            };
            metrics.websocket_closed(code, true);
        }
        // Refusals are boxed: their futures would otherwise widen every open socket's task
        // (measured: 104 bytes each) for a path a served socket never takes.
        Ok(None) => {
            let refusal =
                ApiError::InvalidSession("a WebSocket needs a valid session; log in first".into());
            Box::pin(refuse(socket, &refusal, close_code::POLICY)).await;
            metrics.websocket_closed(close_code::POLICY, false);
        }
        Err(e @ ApiError::InvalidSession(_)) => {
            Box::pin(refuse(socket, e, close_code::POLICY)).await;
            metrics.websocket_closed(close_code::POLICY, false);
        }
        Err(e) => {
            Box::pin(refuse(socket, e, TRY_AGAIN_LATER)).await;
            metrics.websocket_closed(TRY_AGAIN_LATER, false);
        }
    }
}

/// What the socket does next, decided by whatever woke it. Every send happens after the
/// wait, in one place: a send inside each branch of the wait would give every one of them its
/// own slot in the socket's task, and that task is the memory of every open socket.
enum Step {
    /// Messages were queued for it, or its session ended.
    Outbox,
    /// A keep-alive ping.
    Ping,
    /// The echo of a client's message.
    Reply(Utf8Bytes),
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Serves an accepted socket until it ends; the close code it ended with.
async fn serve(
    socket: &mut Socket,
    user: &User,
    (settings, metrics, keepalive): (&WsSettings, &GatewayMetrics, &KeepAlive),
    outbox: &Arc<Outbox>,
    relay: Option<&mpsc::Sender<Utf8Bytes>>,
) -> u16 {
    // The tutorial's greeting belongs to its echo; a relayed socket speaks only for the
    // business upstream.
    if relay.is_none() {
        let greeting = format!("Server: 恭喜，{}", user.display_name);
        if socket.send(Message::Text(greeting.into())).await.is_err() {
            return BROKEN;
        }
        metrics.ws_messages_out.increment(1);
    }
    // Keep-alive: when the wheel says the socket is due, either a ping goes out (and the
    // socket is due again when its pong is overdue) or the pong is overdue.
    keepalive.schedule(outbox, Instant::now() + settings.ping_interval);
    // When the last ping went out, while its pong is awaited.
    let mut ping_sent: Option<Instant> = None;
    loop {
        let step = tokio::select! {
            // Also fires on a revocation (logout, RevokeUser), on shutdown and for keep-alive.
            _ = outbox.ready() => match (outbox.take_keepalive(), ping_sent) {
                (false, _) => Step::Outbox,
                (true, Some(_)) => Step::Close(close_code::AWAY, "keep-alive timeout"),
                (true, None) => {
                    let now = Instant::now();
                    ping_sent = Some(now);
                    keepalive.schedule(outbox, now + settings.pong_timeout);
                    Step::Ping
                }
            },
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    metrics.ws_messages_in.increment(1);
                    match relay {
                        None => Step::Reply(format!("Server: Received({})", text.as_str()).into()),
                        Some(relay) => match relay.try_send(text) {
                            Ok(()) => continue,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                Step::Close(close_code::POLICY, "too many messages waiting for an answer")
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return BROKEN,
                        },
                    }
                }
                Some(Ok(Message::Binary(_) | Message::Frame(_))) => {
                    Step::Close(close_code::UNSUPPORTED, "text messages only")
                }
                // Any sign of life counts; tungstenite answers pings by itself.
                Some(Ok(Message::Pong(_) | Message::Ping(_))) => {
                    // The next ping is due an interval after the last one.
                    if let Some(sent) = ping_sent.take() {
                        keepalive.schedule(outbox, sent + settings.ping_interval);
                    }
                    continue;
                }
                Some(Ok(Message::Close(_))) => return CLIENT_CLOSED,
                None => return BROKEN,
                Some(Err(e)) => match upgrade::close_for(&e) {
                    Some((code, why)) => Step::Close(code, why),
                    None => return BROKEN,
                },
            },
        };
        match step {
            Step::Outbox => {
                if outbox.has_news()
                    && let Some(code) = Box::pin(from_outbox(socket, outbox, metrics)).await
                {
                    return code;
                }
            }
            Step::Ping => {
                if socket
                    .send(Message::Ping(Default::default()))
                    .await
                    .is_err()
                {
                    return BROKEN;
                }
            }
            Step::Reply(reply) => {
                if socket.send(Message::Text(reply)).await.is_err() {
                    return BROKEN;
                }
                metrics.ws_messages_out.increment(1);
            }
            Step::Close(code, reason) => {
                let _ = socket.send(close(code, reason)).await;
                return code;
            }
        }
    }
}

/// Acts on what woke the socket's outbox: its end (a revocation, a shutdown), or the messages
/// queued on it. Some(code): the socket is done. Boxed by its caller: a socket spends most of
/// its life waiting, and this future need not sit in its task meanwhile.
async fn from_outbox(
    socket: &mut Socket,
    outbox: &Outbox,
    metrics: &GatewayMetrics,
) -> Option<u16> {
    if let Some(code) = ended(socket, outbox).await {
        return Some(code);
    }
    while let Some(queued) = outbox.next() {
        if send_queued(socket, queued.text, outbox).await.is_err() {
            return Some(BROKEN);
        }
        metrics.ws_messages_out.increment(1);
    }
    if outbox.overflowed() {
        close_slow(socket).await;
        return Some(SLOW_CLIENT);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, Fut>(_: impl FnOnce(A) -> Fut) -> usize {
        size_of::<Fut>()
    }

    /// Every open socket is one such task (and one `Open`): a field held across an await, a
    /// send in every branch, a timer per socket would each show here first (bench/README.md
    /// has what the bytes per socket are made of). The bound is a cliff, not a margin: tokio
    /// puts a task in a 128-byte aligned cell with ~110 bytes of its own, so 272 bytes of
    /// future is a 384-byte cell and 280 (measured: one more `Option` held for the greeting)
    /// is a 512-byte one, +0.13 KiB per socket at 18,000.
    #[test]
    fn an_open_sockets_task_stays_small() {
        let task = future_size(connection);
        assert!(task <= 272, "the socket's task future is {task} bytes");
        let open = size_of::<Open>();
        assert!(open <= 448, "an open socket is {open} bytes");
    }
}
