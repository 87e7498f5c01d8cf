//! WebSockets: the handshake (`upgrade.rs`); the tutorial's `/ws` (`ws.rs`, echoing or
//! relayed to the business: `relay.rs`); sockets forwarded to a business route's own
//! WebSocket server (`forwarded.rs`); the open sockets by session and user (`open.rs`), each
//! with its queue of pushes (`outbox.rs`) and its keep-alive on one timer wheel
//! (`keepalive.rs`); and session-svc's feed of revocations and pushes that acts on them and on
//! the session cache (`follower.rs`).
pub mod closing;
pub mod follower;
pub mod forwarded;
pub mod keepalive;
pub mod open;
pub mod outbox;
pub mod relay;
pub mod resume;
pub mod upgrade;
pub mod ws;
