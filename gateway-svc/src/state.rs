//! What every handler shares. Cloned per request by axum, hence one Arc.
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Settings, edge::rate_limit::LoginLimiter, metrics::GatewayMetrics,
    sessions::client::SessionClient, sessions::resolver::SessionResolver,
    sockets::keepalive::KeepAlive, sockets::open::OpenSockets, sockets::relay::Relay,
};

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    /// The routing in force (the login handler reads its rules of which app a login is for).
    pub routing: crate::edge::destination::LiveRouting,
    /// Every request's session goes through it.
    pub resolver: SessionResolver,
    /// session-svc, for what is not session resolution (login, readiness).
    pub sessions: SessionClient,
    /// What Prometheus scrapes.
    pub metrics: Arc<GatewayMetrics>,
    /// Where WebSocket messages go, when not echoed.
    pub relay: Option<Relay>,
    /// Logins per client address.
    pub login_limiter: LoginLimiter,
    /// Open WebSockets by session, to close them when their session is revoked.
    pub sockets: Arc<OpenSockets>,
    /// The `/ws` sockets' keep-alive.
    pub keepalive: Arc<KeepAlive>,
    pub settings: Arc<Settings>,
    /// One permit per open WebSocket.
    pub ws_slots: Arc<Semaphore>,
    /// WebSocket sessions, so shutdown can wait for their close frames to go out.
    pub ws_tasks: TaskTracker,
    pub shutdown: CancellationToken,
}
