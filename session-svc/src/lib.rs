//! session-svc: the only weapp process that holds secrets. It exchanges mini-program login
//! codes with WeChat, checks the user data WeChat signed and encrypted, and keeps sessions.
//! Everything is reached over gRPC (`weapp.session.v1.SessionService`).

pub mod access;
pub mod access_layer;
pub mod access_token;
pub mod admin;
pub mod allow_list;
pub mod apps;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod error;
pub mod grpc;
pub mod health;
pub mod identity;
pub mod live;
pub mod login;
pub mod login_limit;
pub mod message_push;
pub mod metrics;
pub mod observe;
pub mod openapi;
pub mod phone;
pub mod probe;
pub mod push;
pub mod record;
pub mod reload;
pub mod revocations;
pub mod session;
pub mod session_keys;
pub mod startup;
pub mod store;
pub mod streams;
pub mod tls;
pub mod vault;
pub mod wechat;

pub use config::Settings;
pub use startup::Application;

/// WeChat's user data: parsed and checked in `weapp-wire`, where it is fuzzed.
pub use weapp_wire::user_data;
