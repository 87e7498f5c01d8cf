//! The WebSocket opening handshake (RFC 6455 §4.2), for `/ws` and forwarded sockets.
//!
//! Done here rather than by axum's extractor so that an accepted socket is tungstenite right
//! on the connection's own stream: hyper hands the upgraded stream back as its own type
//! (`Upgraded::downcast`), with no boxed stream and no wrapper task between them. Every byte
//! kept per socket is 100 KB at 100,000 sockets (docs/SCALING.md).
use axum::{
    body::Body,
    extract::{Request, ws::close_code},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::Response,
};
use futures::FutureExt as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::task::TaskTracker;

use crate::{error::ApiError, stream::ClientStream};

/// An accepted WebSocket, on the client's connection.
pub type Socket = WebSocketStream<ClientStream>;

/// Initial read buffer of a socket (it grows for a bigger message). tungstenite reads at most
/// this much per `read` call, so a larger message takes more reads: the price of small idle
/// sockets (bench/README.md).
const READ_BUFFER: usize = 128;

/// tungstenite's settings for every socket the gateway holds: its clients' and, for a
/// forwarded socket, the one to the upstream. Its defaults are 128 KiB buffers per socket:
/// gigabytes at 10,000 idle sockets. Small messages are the norm here; the read buffer still
/// grows to `max_message_size` for a big one, and writes go out as they are made.
pub fn config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
}

/// The close a client's broken frames get, instead of a dropped connection (RFC 6455 §7.4.1):
/// a message over the limit 1009, text that is not UTF-8 1007, any other protocol error (a
/// reserved bit set with no extension negotiated, an unmasked frame, a bad opcode) 1002.
/// `None`: the connection itself failed, and there is nobody to tell.
pub fn close_for(error: &tungstenite::Error) -> Option<(u16, &'static str)> {
    match error {
        tungstenite::Error::Capacity(_) => Some((close_code::SIZE, "message too big")),
        tungstenite::Error::Utf8(_) => Some((close_code::INVALID, "text that is not UTF-8")),
        tungstenite::Error::Protocol(_) => Some((close_code::PROTOCOL, "protocol error")),
        _ => None,
    }
}

/// A client's valid WebSocket handshake, not yet answered.
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// An answered handshake: the socket, once hyper has sent the 101 and let go of the stream.
pub struct Pending {
    on_upgrade: OnUpgrade,
    config: WebSocketConfig,
}

impl Upgrade {
    /// The handshake `request` makes; a client's mistake is a 400 that says which.
    pub fn from_request(request: &mut Request) -> Result<Self, ApiError> {
        let headers = request.headers();
        let refused = ApiError::NotWebSocket;
        if request.method() != Method::GET {
            return Err(refused("the GET method"));
        }
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(refused("`Connection: upgrade`"));
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(refused("`Upgrade: websocket`"));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(refused("`Sec-WebSocket-Version: 13`"));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refused("a `Sec-WebSocket-Key`"));
        };
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| refused("a valid `Sec-WebSocket-Key`"))?;
        // Absent on a connection that cannot be upgraded (HTTP/2).
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(refused("an HTTP/1.1 connection"))?;
        Ok(Self { accept, on_upgrade })
    }

    /// The 101 answer (naming `protocol`, the subprotocol chosen, if any), and the socket to
    /// come once it has been sent.
    pub fn accept(
        self,
        protocol: Option<HeaderValue>,
        config: WebSocketConfig,
    ) -> (Response, Pending) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        if let Some(protocol) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        let pending = Pending {
            on_upgrade: self.on_upgrade,
            config,
        };
        (response, pending)
    }
}

impl Pending {
    /// Runs `serve` on the socket once the upgrade is done, in a task of its own started
    /// then: that task lives as long as the socket, so its size is the memory of every open
    /// socket, and waiting for the upgrade is no part of it. Nothing runs when the client
    /// left before the upgrade completed.
    pub fn serve_when_open<F, Fut>(self, tasks: &TaskTracker, serve: F)
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tracker = tasks.clone();
        tasks.spawn(async move {
            if let Some(socket) = self.socket().await {
                tracker.spawn(serve(socket));
            }
        });
    }

    /// The socket; None when the client left before the upgrade completed.
    async fn socket(self) -> Option<Socket> {
        let upgraded = self.on_upgrade.await.ok()?;
        let parts = match upgraded.downcast::<TokioIo<ClientStream>>() {
            Ok(parts) => parts,
            Err(_) => {
                // Only the server loop (`edge/server.rs`) makes connections; a stream of
                // another type is a bug there, not the client's doing.
                tracing::error!("an upgraded connection is not the gateway's own stream");
                return None;
            }
        };
        let (stream, config) = (parts.io.into_inner(), Some(self.config));
        // Bytes the client sent right behind its handshake were read by hyper: they are the
        // socket's first. Either way the socket is ready at once (no handshake is left to
        // do), so it is made here rather than kept as a future in the socket's task.
        let socket = match parts.read_buf.is_empty() {
            true => WebSocketStream::from_raw_socket(stream, Role::Server, config).now_or_never(),
            false => {
                let early = parts.read_buf.to_vec();
                WebSocketStream::from_partially_read(stream, early, Role::Server, config)
                    .now_or_never()
            }
        };
        if socket.is_none() {
            tracing::error!("tungstenite did not take the upgraded connection at once");
        }
        socket
    }
}

/// Whether a comma-separated header `name` has `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(edit: impl FnOnce(&mut Request)) -> Result<Upgrade, ApiError> {
        let mut request = Request::get("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Body::empty())
            .unwrap();
        // What hyper puts on a request it can upgrade (here one that never will be).
        let on_upgrade = hyper::upgrade::on(Request::new(()));
        request.extensions_mut().insert(on_upgrade);
        edit(&mut request);
        Upgrade::from_request(&mut request)
    }

    #[test]
    fn a_valid_handshake_is_answered_with_rfc_6455s_accept_key() {
        let upgrade = handshake(|_| {}).unwrap();
        let (response, _) = upgrade.accept(
            Some(HeaderValue::from_static("chat.v1")),
            WebSocketConfig::default(),
        );
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        // The RFC's own example (§1.3).
        assert_eq!(
            response.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
    }

    #[test]
    fn each_missing_part_is_named() {
        type Edit = fn(&mut Request);
        let cases: [(&str, Edit); 6] = [
            ("GET", |r| *r.method_mut() = Method::POST),
            ("Connection", |r| {
                r.headers_mut()
                    .insert("connection", HeaderValue::from_static("close"));
            }),
            ("Upgrade", |r| {
                r.headers_mut()
                    .insert("upgrade", HeaderValue::from_static("h2c"));
            }),
            ("Version: 13", |r| {
                r.headers_mut()
                    .insert("sec-websocket-version", HeaderValue::from_static("8"));
            }),
            ("Key", |r| {
                r.headers_mut().remove("sec-websocket-key");
            }),
            ("HTTP/1.1", |r| {
                r.extensions_mut().remove::<OnUpgrade>();
            }),
        ];
        for (named, edit) in cases {
            let refused = handshake(edit).err().unwrap();
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
            assert!(
                refused.to_string().contains(named),
                "{refused} names {named}"
            );
        }
    }
}
