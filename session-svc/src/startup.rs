//! Wiring: builds the store, the WeChat client and the gRPC server (with health and
//! reflection), binds the listener up front so port 0 works, and runs until told to stop.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};
use weapp_common::{
    metrics::{MetricsListen, Registry},
    one_write::OneWrite,
    otlp::Spans,
};
use weapp_proto::session::v1::session_service_server::SessionServiceServer;

use crate::{
    access_layer::AccessLayer,
    access_token::AccessTokens,
    cluster::ClusterFeed,
    config::Settings,
    credentials,
    grpc::{MessagePushRpcs, SessionGrpc, WeChatServices},
    health::StoreWatch,
    identity::IdentitySigner,
    live::LiveConfig,
    login::LoginService,
    login_limit::LoginLimit,
    message_push::{Intake, Outbox, PushMetrics},
    metrics::SessionMetrics,
    observe::ObserveLayer,
    openapi::{Callers, OpenApi},
    phone::PhoneNumbers,
    push::Pushes,
    record::now_millis,
    reload::Reloader,
    revocations::RevocationFeed,
    session::SessionManager,
    session_keys::SessionKeys,
    store::{
        EmbeddedStore, EventStore, Metered, MongoStore, SecretStore, SessionStore, StoreError,
        StreamStore,
    },
    streams::Streams,
    vault::Vault,
    wechat::{SetupError, WeChatClient},
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Bind(#[from] weapp_common::BindError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("WeChat client: {0}")]
    WeChat(#[from] SetupError),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("TLS on the gRPC port: {0}")]
    Tls(tonic::transport::Error),
    #[error(transparent)]
    Otlp(#[from] weapp_common::otlp::OtlpError),
}

/// The store's other faces: secrets (tokens, leases, session_keys), users' streams, and
/// WeChat's pushed events.
type Faces = (
    Arc<dyn SecretStore>,
    Arc<dyn StreamStore>,
    Arc<dyn EventStore>,
);

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Arc<SessionMetrics>,
    /// `/metrics`, on its own address, when it is on.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    /// The open-API proxy and its listener, when it is on.
    openapi: Option<(Arc<OpenApi>, TcpListener, SocketAddr)>,
    access: AccessLayer,
    /// Reloads the apps and keys files on SIGHUP (and the watch, when set).
    reloader: Reloader,
    config_watch: Option<Duration>,
    tls: Option<ServerTlsConfig>,
    grpc: SessionGrpc,
    store: Arc<dyn SessionStore>,
    secrets: Arc<dyn SecretStore>,
    /// WeChat's pushed events: delivered by the outbox, swept once delivered long enough.
    events: Arc<dyn EventStore>,
    outbox: Arc<Outbox>,
    keep_delivered: Duration,
    /// On MongoDB: the feed between replicas, and the local feed it fills.
    cluster: Option<(Arc<ClusterFeed>, Arc<RevocationFeed>, Arc<Pushes>)>,
    background: CancellationToken,
    purge_interval: Duration,
    shutdown_drain: Duration,
    spans: Spans,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // The parser checked these already; a library caller may have built them by hand.
        settings.check().map_err(StartupError::Config)?;
        let metrics = SessionMetrics::new(Registry::for_listen(settings.metrics_listen));
        let per_user = settings.login.max_per_user_per_minute;
        let (store, (secrets, streams, events), cluster, login_limit): (
            Arc<dyn SessionStore>,
            Faces,
            _,
            _,
        ) = match settings.store.mongo.uri() {
            None => {
                let store = Arc::new(EmbeddedStore::open(&settings.store.data_dir)?);
                (
                    store.clone(),
                    (store.clone(), store.clone(), store),
                    None,
                    LoginLimit::local(per_user),
                )
            }
            Some(_) => {
                let store = Arc::new(MongoStore::connect(&settings.store.mongo).await?);
                let replica = credentials::Credentials::generate()
                    .map_err(|e| StartupError::Config(format!("OS random source: {e}")))?
                    .id;
                let cluster =
                    ClusterFeed::new(store.database(), replica, settings.store.mongo.replica_feed);
                let login_limit = LoginLimit::shared(per_user, store.database(), cluster.clone());
                (
                    store.clone(),
                    (store.clone(), store.clone(), store),
                    Some(cluster),
                    login_limit,
                )
            }
        };
        let store: Arc<dyn SessionStore> = Arc::new(Metered::new(store, metrics.clone()));
        let secrets: Arc<dyn SecretStore> = Arc::new(Metered::new(secrets, metrics.clone()));
        let streams: Arc<dyn StreamStore> = Arc::new(Metered::new(streams, metrics.clone()));
        let events: Arc<dyn EventStore> = Arc::new(Metered::new(events, metrics.clone()));
        let streams = Arc::new(Streams::new(streams, settings.streams, metrics.clone()));
        // Background work started by requests (the access_token refresher) ends with this.
        let background = CancellationToken::new();
        tracing::info!(store = %store.describe(), "session store configured");
        let spans = Spans::start(&settings.tracing, "session-svc", &metrics.registry)?;
        let wechat = Arc::new(WeChatClient::new(
            &settings.wechat,
            metrics.clone(),
            spans.clone(),
        )?);
        let apps = settings.wechat.apps().map_err(StartupError::Config)?;
        metrics.apps_configured(apps.len());
        tracing::info!(
            apps = apps.len(),
            default = %apps.default_app().id,
            "serving {} mini-program(s)",
            apps.len()
        );
        // Without a key file, the data key is derived from the default app's secret at start
        // (a reload does not change it: what was sealed stays readable).
        let vault = Arc::new(Vault::new(&settings.vault, apps.default_app().secret()));
        let live = LiveConfig::new(apps, settings.access.api_keys.clone());
        tracing::info!(data_key = %vault.sealing_key_id(), "secrets at rest are sealed");
        let sessions = Arc::new(match &cluster {
            None => SessionManager::new(store.clone(), settings.sessions),
            Some(cluster) => {
                SessionManager::in_cluster(store.clone(), settings.sessions, cluster.clone())
            }
        });
        let tokens = Arc::new(
            AccessTokens::new(
                (wechat.clone(), live.clone()),
                secrets.clone(),
                vault.clone(),
                settings.access_token,
                (metrics.clone(), background.clone()),
            )
            .map_err(|e| StartupError::Config(e.to_string()))?,
        );
        let session_keys = Arc::new(SessionKeys::new(
            secrets.clone(),
            vault,
            wechat.clone(),
            tokens.clone(),
            settings.sessions.max_age,
        ));
        let phones = Arc::new(PhoneNumbers::new(
            wechat.clone(),
            tokens.clone(),
            sessions.clone(),
        ));
        let feed = sessions.feed();
        let pushes = Arc::new(Pushes::new(
            cluster
                .clone()
                .map(|c| c as Arc<dyn crate::push::OtherReplicas>),
        ));
        let openapi = match settings.openapi.listen {
            None => None,
            Some(addr) => {
                let callers =
                    Callers::new(&settings.openapi, live.clone()).map_err(StartupError::Config)?;
                let proxy = OpenApi::new(
                    (wechat.clone(), live.clone()),
                    tokens.clone(),
                    (callers, settings.openapi.max_body_bytes),
                    metrics.clone(),
                );
                let (listener, addr) = weapp_common::bind(addr).await?;
                Some((Arc::new(proxy), listener, addr))
            }
        };
        let login = Arc::new(LoginService::new(
            (wechat, live.clone()),
            sessions.clone(),
            session_keys.clone(),
            (settings.login, metrics.clone(), login_limit),
        ));
        let (listener, local_addr) = weapp_common::bind(settings.listen).await?;
        let metrics_listener = match settings.metrics_listen {
            MetricsListen::Off => None,
            MetricsListen::At(addr) => Some(weapp_common::bind(addr).await?),
        };
        let push_metrics = PushMetrics::new(&metrics.registry);
        let wake = Arc::new(tokio::sync::Notify::new());
        let identity = IdentitySigner::new(&settings.identity).map(Arc::new);
        let intake = Arc::new(Intake::new(
            (live.clone(), events.clone()),
            settings.message_push.clone(),
            push_metrics.clone(),
            wake.clone(),
        ));
        let owner = credentials::Credentials::generate()
            .map_err(|e| StartupError::Config(format!("OS random source: {e}")))?
            .id;
        let outbox = Arc::new(
            Outbox::new(
                events.clone(),
                settings.message_push.clone(),
                (identity.clone(), push_metrics),
                (wake.clone(), owner),
            )
            .map_err(StartupError::Config)?,
        );
        let serving = live.apps();
        let pushed_to = serving
            .ids()
            .filter(|id| serving.get(id).is_some_and(|a| a.push.is_some()))
            .count();
        if settings.message_push.upstream.is_none() && pushed_to > 0 {
            tracing::warn!(
                apps = pushed_to,
                "message push is configured but WEAPP_WECHAT_PUSH_UPSTREAM is not: events are \
                 kept and wait in the outbox"
            );
        }
        let reloader = Reloader {
            live: live.clone(),
            feed: sessions.feed(),
            tokens: tokens.clone(),
            metrics: metrics.clone(),
        };
        Ok(Self {
            listener,
            local_addr,
            metrics,
            metrics_listener,
            openapi,
            access: AccessLayer(live.clone()),
            reloader,
            config_watch: settings.config_watch,
            tls: settings.tls.server_config(),
            grpc: SessionGrpc::new(
                (login, sessions, pushes.clone()),
                WeChatServices {
                    tokens,
                    phones,
                    session_keys,
                },
                (identity, live, streams),
                MessagePushRpcs {
                    intake,
                    store: events.clone(),
                    wake,
                },
            ),
            store,
            secrets,
            events,
            outbox,
            keep_delivered: settings.message_push.keep_delivered,
            cluster: cluster.map(|c| (c, feed, pushes)),
            background,
            purge_interval: settings.purge_interval,
            shutdown_drain: settings.shutdown_drain,
            spans,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// Where the open-API proxy listens, when it does.
    pub fn openapi_addr(&self) -> Option<SocketAddr> {
        self.openapi.as_ref().map(|(_, _, addr)| *addr)
    }

    /// The store this instance serves from (for tests and tooling in the same process).
    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.store.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains: reports NOT_SERVING, ends and
    /// refuses revocation streams (their gateways follow another replica), keeps answering
    /// for the drain time, and lets in-flight RPCs finish. Returns only once every task
    /// holding the store has ended, so the store can be reopened at once.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let feed = self.grpc.feed();
        let stop_serving = CancellationToken::new();
        // Not serving until the store has answered once (milliseconds for the embedded store).
        StoreWatch::set(&health, tonic_health::ServingStatus::NotServing).await;
        let watch = StoreWatch {
            store: self.store.clone(),
            reporter: health.clone(),
            every: Duration::from_secs(5),
            check_timeout: Duration::from_secs(3),
        };
        let watcher = tokio::spawn(watch.run(shutdown.clone()));
        let draining = {
            let (health, shutdown, stop_serving) =
                (health.clone(), shutdown.clone(), stop_serving.clone());
            let drain = self.shutdown_drain;
            tokio::spawn(async move {
                shutdown.cancelled().await;
                feed.suspend();
                // Once the store watch has stopped, nothing sets it back to SERVING.
                if let Err(e) = watcher.await {
                    tracing::warn!(error = %e, "store watch ended abnormally");
                }
                StoreWatch::set(&health, tonic_health::ServingStatus::NotServing).await;
                if !drain.is_zero() {
                    tracing::info!(?drain, "session-svc draining: NOT_SERVING, still answering");
                    tokio::time::sleep(drain).await;
                }
                stop_serving.cancel();
            })
        };

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(weapp_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Both versions: grpcurl and most tools speak v1, older ones only v1alpha.
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;

        let (follower, presence) = match self.cluster {
            Some((cluster, feed, pushes)) => (
                Some(tokio::spawn(cluster.clone().follow(
                    feed,
                    pushes,
                    shutdown.clone(),
                ))),
                Some(tokio::spawn(cluster.be_present(shutdown.clone()))),
            ),
            None => (None, None),
        };
        let sweeper = tokio::spawn(sweep_expired(
            (self.store.clone(), self.secrets.clone()),
            (self.events.clone(), self.keep_delivered),
            self.purge_interval,
            shutdown.clone(),
        ));
        let outbox = tokio::spawn(self.outbox.clone().run(shutdown.clone()));
        let metrics_server = self.metrics_listener.map(|(listener, addr)| {
            tracing::info!(%addr, "session-svc metrics at /metrics");
            tokio::spawn(self.metrics.registry.clone().serve(
                listener,
                shutdown.clone(),
                Arc::new(|| {}),
            ))
        });
        // Stops with the gRPC server, after the drain: calls in flight get their answer.
        let openapi_server = self.openapi.map(|(proxy, listener, addr)| {
            tracing::info!(%addr, "session-svc open-API proxy listening");
            tokio::spawn(proxy.serve(listener, stop_serving.clone()))
        });
        tokio::spawn(self.reloader.run(self.config_watch, shutdown.clone()));
        let background = self.background.clone();
        let stop_background = shutdown.clone();
        tokio::spawn(async move {
            stop_background.cancelled().await;
            background.cancel();
        });

        tracing::info!(addr = %self.local_addr, "session-svc gRPC listening");
        let mut server = Server::builder();
        if let Some(tls) = self.tls {
            server = server.tls_config(tls).map_err(StartupError::Tls)?;
        }
        let served = server
            // Every call traced and counted, refused ones included; then health and
            // reflection pass through the access check open, the session service needs keys.
            .layer(ObserveLayer::new(self.metrics.clone(), self.spans.clone()))
            .layer(self.access)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(SessionServiceServer::new(
                self.grpc.with_shutdown(shutdown.clone()),
            ))
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY, a reply's HEADERS, DATA and trailers frames can wait on
                // a delayed ACK (40 ms) between them; `OneWrite` sends them in one write.
                TcpIncoming::from(self.listener)
                    .with_nodelay(Some(true))
                    .map(|accepted| accepted.map(OneWrite::new)),
                stop_serving.clone().cancelled_owned(),
            )
            .await;
        shutdown.cancel();
        if let Err(e) = draining.await {
            tracing::warn!(error = %e, "drain ended abnormally");
        }
        let tasks = [
            ("expiry sweeper", Some(sweeper)),
            ("outbox", Some(outbox)),
            ("metrics server", metrics_server),
            ("open-API proxy", openapi_server),
            ("feed between replicas", follower),
            ("replica presence", presence),
        ];
        for (name, task) in tasks.into_iter().filter_map(|(n, t)| t.map(|t| (n, t))) {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "{name} ended abnormally");
            }
        }
        self.spans.shutdown().await;
        tracing::info!("session-svc stopped");
        Ok(served?)
    }
}

/// Deletes expired sessions now and then; reads refuse expired sessions regardless, so this
/// only keeps the store from growing.
async fn sweep_expired(
    (store, secrets): (Arc<dyn SessionStore>, Arc<dyn SecretStore>),
    (events, keep_delivered): (Arc<dyn EventStore>, Duration),
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.purge_expired(now_millis()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired sessions swept"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
        match secrets.purge_session_keys(now_millis()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired session_keys swept"),
            Err(e) => tracing::warn!(error = %e, "session_key sweep failed"),
        }
        let now = now_millis();
        let keep = i64::try_from(keep_delivered.as_millis()).unwrap_or(i64::MAX);
        match events.purge_events(now.saturating_sub(keep), now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "delivered events and old nonces swept"),
            Err(e) => tracing::warn!(error = %e, "event sweep failed"),
        }
    }
}
