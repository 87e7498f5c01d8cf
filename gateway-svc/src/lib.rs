//! gateway-svc: the edge of weapp. Speaks the wafer protocol to unmodified mini-program
//! clients (`/login`, session parameters on every request, `/me`, `/ws`) and asks session-svc
//! over gRPC about every session. It holds no secrets of the app (only its own API key
//! for session-svc) and no state worth keeping.

pub mod apps;
pub mod business;
pub mod config;
pub mod edge;
pub mod error;
pub mod metrics;
pub mod probe;
pub mod sessions;
pub mod sockets;
pub mod startup;
pub mod state;
pub mod stream;
pub mod wafer;

pub use config::Settings;
pub use startup::Application;
