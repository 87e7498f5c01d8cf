//! `/ws`: the tutorial's WebSocket. The session is resolved before the upgrade; a client
//! without a valid one still gets the upgrade, then one text frame with the error body and a
//! close frame, which is what WebSocket clients can actually read.
use std::time::Duration;

use axum::{
    extract::{
        State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code},
    },
    http::{HeaderMap, Uri},
    response::{IntoResponse, Response},
};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    config::WsSettings,
    error::ApiError,
    routes::{AppState, AuthSession, resolve},
    wafer,
};

/// RFC 6455 "try again later": the session could not be checked, not refused.
const TRY_AGAIN_LATER: u16 = 1013;

pub async fn upgrade(
    State(state): State<AppState>,
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let Ok(permit) = state.ws_slots.clone().try_acquire_owned() else {
        return ApiError::TooManyConnections.into_response();
    };
    let resolution = resolve(&state, &headers, &uri).await;
    let settings = state.settings.ws;
    let shutdown = state.shutdown.clone();
    let tasks = state.ws_tasks.clone();
    ws.max_message_size(settings.max_message_size)
        .max_frame_size(settings.max_message_size)
        .on_upgrade(move |socket| {
            tasks.track_future(async move {
                match resolution {
                    Ok(Some(session)) => serve(socket, session, settings, shutdown, permit).await,
                    Ok(None) => {
                        let refusal = ApiError::InvalidSession(
                            "a WebSocket needs a valid session; log in first".into(),
                        );
                        refuse(socket, refusal, close_code::POLICY).await;
                    }
                    Err(e @ ApiError::InvalidSession(_)) => {
                        refuse(socket, e, close_code::POLICY).await
                    }
                    Err(e) => refuse(socket, e, TRY_AGAIN_LATER).await,
                }
            })
        })
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

async fn refuse(mut socket: WebSocket, error: ApiError, code: u16) {
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

async fn serve(
    mut socket: WebSocket,
    session: AuthSession,
    settings: WsSettings,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let greeting = format!("Server: 恭喜，{}", wafer::display_name(&session.user));
    if socket.send(Message::Text(greeting.into())).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    // Deadline for the pong to the last ping, if one is outstanding.
    let mut pong_due: Option<Instant> = None;
    loop {
        let pong_deadline =
            pong_due.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = socket.send(close(close_code::AWAY, "server shutting down")).await;
                break;
            }
            _ = tokio::time::sleep_until(pong_deadline), if pong_due.is_some() => {
                let _ = socket.send(close(close_code::AWAY, "keep-alive timeout")).await;
                break;
            }
            _ = ping.tick() => {
                if pong_due.is_none() {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                    pong_due = Some(Instant::now() + settings.pong_timeout);
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = format!("Server: Received({})", text.as_str());
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = socket.send(close(close_code::UNSUPPORTED, "text messages only")).await;
                    break;
                }
                // Any sign of life counts; tungstenite answers pings by itself.
                Some(Ok(Message::Pong(_) | Message::Ping(_))) => pong_due = None,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    if is_too_big(e) {
                        let _ = socket.send(close(close_code::SIZE, "message too big")).await;
                    }
                    break;
                }
            },
        }
    }
}
