//! Reading a WebSocket as a client does: data and close frames, keep-alive traffic skipped,
//! never waiting forever.
use std::time::Duration;

use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::frame::coding::CloseCode},
};

/// The next data or close frame within 5 s, skipping pings and pongs.
pub async fn next_frame<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .expect("a valid frame");
        if !matches!(frame, Message::Ping(_) | Message::Pong(_)) {
            return frame;
        }
    }
}

/// The text of a frame that must be text.
pub fn text(frame: Message) -> String {
    match frame {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The next frame, which must be text.
pub async fn next_text<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    text(next_frame(ws).await)
}

/// The code of a frame that must be a close frame.
pub fn close_code(frame: Message) -> CloseCode {
    match frame {
        Message::Close(Some(frame)) => frame.code,
        other => panic!("expected a close frame, got {other:?}"),
    }
}
