//! How a `/ws` socket ends and what it sends on the way: the close codes the gateway counts,
//! the refusal body, a queued message sent unless the client stopped reading, the end a
//! revocation or a shutdown puts in its outbox. Shared by the tutorial's socket (`ws.rs`) and
//! a resuming one (`resume.rs`).
use axum::extract::ws::close_code;
use futures::SinkExt as _;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes, protocol::CloseFrame};

use crate::{
    error::ApiError,
    sockets::outbox::{End, Outbox, SLOW_CLIENT},
    sockets::upgrade::Socket,
};

/// RFC 6455 "try again later": the session could not be checked, not refused.
pub(crate) const TRY_AGAIN_LATER: u16 = 1013;

/// What a socket's end is counted as when the client closed it, or the connection broke.
pub(crate) const CLIENT_CLOSED: u16 = close_code::NORMAL;
pub(crate) const BROKEN: u16 = close_code::ABNORMAL;

pub(crate) fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(reason),
    }))
}

pub(crate) async fn refuse(socket: &mut Socket, error: &ApiError, code: u16) {
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

/// Sends a queued message, unless the queue overflows first (the client is not reading: the
/// send would wait for it forever). Err: the socket is done.
pub(crate) async fn send_queued(
    socket: &mut Socket,
    text: Utf8Bytes,
    outbox: &Outbox,
) -> Result<(), ()> {
    tokio::select! {
        sent = socket.send(Message::Text(text)) => sent.map_err(drop),
        _ = outbox.overflow() => Err(()),
    }
}

/// Closes a socket whose client let its queue fill up. It is not reading, so the close frame
/// gets a moment and no more.
pub(crate) async fn close_slow(socket: &mut Socket) {
    let closing = socket.send(close(SLOW_CLIENT, "too many unread messages"));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), closing).await;
}

/// A socket whose session was revoked or whose gateway stops is told so and closed; the code.
pub(crate) async fn ended(socket: &mut Socket, outbox: &Outbox) -> Option<u16> {
    match outbox.ended()? {
        End::Shutdown => {
            let _ = socket
                .send(close(close_code::AWAY, "server shutting down"))
                .await;
            Some(close_code::AWAY)
        }
        End::Revoked => {
            let revoked = ApiError::InvalidSession("the session was revoked".into());
            refuse(socket, &revoked, close_code::POLICY).await;
            Some(close_code::POLICY)
        }
    }
}
