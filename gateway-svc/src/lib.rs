//! gateway-svc: the edge of weapp. Speaks the wafer protocol to unmodified mini-program
//! clients (`/login`, session parameters on every request, `/me`, `/ws`) and asks session-svc
//! over gRPC about every session. It holds no secrets of the app (only its own API key
//! for session-svc) and no state worth keeping.

pub mod body_limit;
pub mod config;
pub mod destination;
pub mod dispatch;
pub mod error;
pub mod failover;
pub mod forward;
pub mod forwarded_socket;
pub mod identity;
pub mod legacy_upgrade;
pub mod metrics;
pub mod open_sockets;
pub mod outbox;
pub mod own;
pub mod probe;
pub mod rate_limit;
pub mod relay;
pub mod replicas;
pub mod resolver;
pub mod revocation_follower;
pub mod route_table;
pub mod server;
pub mod session_cache;
pub mod session_client;
pub mod startup;
pub mod state;
pub mod upstream;
pub mod user;
pub mod wafer;
pub mod ws;

pub use config::Settings;
pub use startup::Application;
