//! Wiring: binds the listener up front (so port 0 works), builds the shared state and serves
//! until told to stop; then stops accepting, lets requests finish, and closes WebSockets with
//! "going away".
use arc_swap::ArcSwap;
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use weapp_common::{
    metrics::{MetricsListen, Registry},
    otlp::Spans,
};

use crate::{
    config::Settings,
    edge::destination::{LiveRouting, Routing},
    edge::dispatch::Dispatcher,
    edge::io_threads::IoThreads,
    edge::rate_limit::LoginLimiter,
    edge::server,
    metrics::GatewayMetrics,
    sessions::cache::SessionCache,
    sessions::client::SessionClient,
    sessions::resolver::SessionResolver,
    sockets::follower,
    sockets::keepalive::KeepAlive,
    sockets::open::OpenSockets,
    sockets::relay::Relay,
    state::{AppState, Shared},
};

/// How long shutdown waits for WebSocket close frames to go out.
const WS_DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Bind(#[from] weapp_common::BindError),
    #[error("{0}")]
    SessionSvc(String),
    #[error("{0}")]
    Relay(String),
    #[error(transparent)]
    Otlp(#[from] weapp_common::otlp::OtlpError),
    #[error("cannot start the connection threads: {0}")]
    Threads(std::io::Error),
}

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Arc<GatewayMetrics>,
    /// `/metrics`, on its own address, when it is on.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    /// Where each request goes (the own paths, the business routes and their connections);
    /// `SIGHUP` reads the routes file again.
    routing: LiveRouting,
    settings: Arc<Settings>,
    sessions: SessionClient,
    relay: Option<Relay>,
    spans: Spans,
    /// The connection threads (`edge/io_threads.rs`), started first: each holds its own
    /// connections to session-svc.
    threads: IoThreads,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        settings.check().map_err(StartupError::SessionSvc)?;
        // Built here so a bad relay client fails the start, not the first message.
        let relay = Relay::new(&settings.relay, settings.ws.max_message_size)
            .map_err(StartupError::Relay)?;
        let routing = Routing::new(&settings.login_path, settings.routes.as_ref());
        let metrics = GatewayMetrics::new(
            Registry::for_listen(settings.metrics_listen),
            &routing.templates(),
        );
        let routing = Arc::new(ArcSwap::from_pointee(routing));
        // Kept to the end of `run`: the sockets on them close after the HTTP server stops.
        let threads = IoThreads::start(settings.http.io_threads).map_err(StartupError::Threads)?;
        let sessions = SessionClient::connect_lazy(
            &settings.session_svc,
            (settings.session_timeout, settings.login_timeout),
            metrics.clone(),
            threads.handles(),
        )
        .map_err(StartupError::SessionSvc)?;
        metrics.ws_limit.set(settings.ws.max_connections as f64);
        let spans = Spans::start(&settings.tracing, "gateway-svc", &metrics.registry)?;
        let (listener, local_addr) = weapp_common::bind(settings.listen).await?;
        let metrics_listener = match settings.metrics_listen {
            MetricsListen::Off => None,
            MetricsListen::At(addr) => Some(weapp_common::bind(addr).await?),
        };
        Ok(Self {
            listener,
            local_addr,
            metrics,
            metrics_listener,
            routing,
            settings: Arc::new(settings),
            sessions,
            relay,
            spans,
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let ws_tasks = TaskTracker::new();
        let cache = Arc::new(SessionCache::new(
            self.settings.cache.ttl,
            self.settings.cache.capacity,
            self.metrics.cache_evictions.clone(),
        ));
        let sockets = Arc::new(OpenSockets::default());
        let keepalive = Arc::new(KeepAlive::new(&self.settings.ws));
        tokio::spawn(keepalive.clone().run(shutdown.clone()));
        // Open sockets hear of the stop when it starts, not once the HTTP requests in flight
        // are done.
        tokio::spawn({
            let (sockets, shutdown) = (sockets.clone(), shutdown.clone());
            async move {
                shutdown.cancelled().await;
                sockets.close_all();
            }
        });
        let replicas = tokio::spawn(self.sessions.clone().maintain(shutdown.clone()));
        let revocations = tokio::spawn(follower::follow(
            cache.clone(),
            sockets.clone(),
            self.sessions.clone(),
            shutdown.clone(),
        ));
        if self.settings.routes.is_some() {
            self.warn_if_unsigned().await;
        }
        let gateway_metrics = self.metrics.clone();
        let metrics_server = self.metrics_listener.map(|(listener, addr)| {
            tracing::info!(%addr, "gateway-svc metrics at /metrics");
            let (metrics, cache) = (gateway_metrics.clone(), cache.clone());
            let refresh = move || {
                metrics.cache_entries.set(cache.entry_count() as f64);
                metrics
                    .revocation_connected
                    .set(if cache.live() { 1.0 } else { 0.0 });
                // Never heard from: +Inf, not a huge number that looks like a measurement.
                let lag = match cache.silence() {
                    Duration::MAX => f64::INFINITY,
                    silence => silence.as_secs_f64(),
                };
                metrics.revocation_lag.set(lag);
            };
            tokio::spawn(gateway_metrics.registry.clone().serve(
                listener,
                shutdown.clone(),
                Arc::new(refresh),
            ))
        });
        tokio::spawn(reload_routes_on_hangup(
            self.routing.clone(),
            self.settings.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        let state = AppState::from(Shared {
            routing: self.routing.clone(),
            resolver: SessionResolver::new(cache, self.sessions.clone()),
            relay: self.relay,
            sockets: sockets.clone(),
            keepalive,
            login_limiter: LoginLimiter::new(
                self.settings.login_rate_per_address,
                self.settings.trusted_proxies.clone(),
            ),
            sessions: self.sessions,
            metrics: self.metrics.clone(),
            ws_slots: Arc::new(Semaphore::new(self.settings.ws.max_connections)),
            settings: self.settings,
            ws_tasks: ws_tasks.clone(),
            shutdown: shutdown.clone(),
        });
        let http_limits = state.settings.http;
        let dispatcher = Arc::new(Dispatcher::new(state));
        let threads = self.threads;
        tracing::info!(addr = %self.local_addr, "gateway-svc listening");
        server::serve(
            (self.listener, &threads),
            (self.routing, dispatcher),
            http_limits,
            (self.metrics, self.spans.clone()),
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        ws_tasks.close();
        if tokio::time::timeout(WS_DRAIN, ws_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some WebSockets did not close in time");
        }
        if let Err(e) = revocations.await {
            tracing::warn!(error = %e, "revocation follower ended abnormally");
        }
        if let Err(e) = replicas.await {
            tracing::warn!(error = %e, "session-svc replica prober ended abnormally");
        }
        if let Some(Err(e)) = match metrics_server {
            Some(task) => Some(task.await),
            None => None,
        } {
            tracing::warn!(error = %e, "metrics server ended abnormally");
        }
        self.spans.shutdown().await;
        drop(threads);
        tracing::info!("gateway-svc stopped");
        Ok(())
    }
}

/// `SIGHUP`: the routes file read again and put in force for the next requests, all or
/// nothing (a bad file keeps the routes in force, and the log says why). Requests in flight
/// finish on the routes they started with.
async fn reload_routes_on_hangup(
    routing: LiveRouting,
    settings: Arc<Settings>,
    metrics: Arc<GatewayMetrics>,
    shutdown: CancellationToken,
) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP cannot be handled: reload the routes by restart");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hangups.recv() => {}
        }
        let Some(table) = &settings.routes else {
            tracing::info!("SIGHUP: no routes file (WEAPP_ROUTES_FILE) to reload");
            metrics.config_reload("unchanged");
            continue;
        };
        match table
            .reread()
            .and_then(|t| settings.check_routes(&t).map(|()| t))
        {
            Ok(table) => {
                let next = Routing::new(&settings.login_path, Some(&table));
                metrics.set_routes(&next.templates());
                routing.store(Arc::new(next));
                metrics.config_reload("applied");
                tracing::info!(
                    routes = table.routes().count(),
                    login_rules = table.logins().len(),
                    "routes file reloaded"
                );
            }
            Err(e) => {
                metrics.config_reload("error");
                tracing::error!(error = %e, "routes file not reloaded: the routes in force stay");
            }
        }
    }
}

impl Application {
    /// Business routes get no assertion from a session-svc without a signing key: say so once,
    /// at start-up (session-svc may not be up yet: then nothing is said).
    async fn warn_if_unsigned(&self) {
        if let Ok(Ok(jwks)) =
            tokio::time::timeout(Duration::from_secs(1), self.sessions.identity_keys()).await
            && serde_json::from_str::<serde_json::Value>(&jwks)
                .is_ok_and(|set| set["keys"].as_array().is_some_and(Vec::is_empty))
        {
            tracing::warn!(
                "business routes are configured, but session-svc has no identity key \
                 (WEAPP_IDENTITY_KEY_FILES): upstreams get identity headers without an \
                 assertion to verify them"
            );
        }
    }
}
