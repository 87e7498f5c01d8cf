//! The edge: connections and their limits, paths normalized, each request's destination
//! decided once (`destination.rs`), and the answer dispatched (`dispatch.rs`) to the gateway's
//! own paths (`own.rs`), a business route (`business/`) or a socket (`sockets/`).
pub mod body_limit;
pub mod destination;
pub mod dispatch;
pub mod fast_forward;
pub mod fast_path;
pub mod handover;
pub mod io_threads;
pub mod legacy_upgrade;
pub mod own;
pub mod per_address;
pub mod rate_limit;
pub mod served;
pub mod server;
pub mod wechat_push;
