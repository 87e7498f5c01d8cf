//! HTTP routes: wafer's login, session resolution in front of everything else, `/me`,
//! `/logout`, and the plain fallback.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Extension, Json, Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::Status;
use weapp_common::singleflight::SingleFlight;
use weapp_proto::session::v1::LoginRequest;

use crate::{
    config::Settings,
    error::ApiError,
    open_sockets::OpenSockets,
    rate_limit::LoginLimiter,
    session_cache::SessionCache,
    session_client::SessionClient,
    wafer::{self, SessionParams, User},
    ws,
};

/// What every handler shares. Cloned per request by axum, hence one Arc.
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
    pub sessions: SessionClient,
    /// Validated sessions, kept in step with session-svc's revocations.
    pub cache: Arc<SessionCache>,
    /// Logins per client address.
    pub login_limiter: LoginLimiter,
    /// Open WebSockets by session, to close them when their session is revoked.
    pub sockets: Arc<OpenSockets>,
    /// Validate calls in flight, by (id, skey).
    pub validations: SingleFlight<(String, String), Result<Arc<User>, Status>>,
    pub settings: Arc<Settings>,
    /// One permit per open WebSocket.
    pub ws_slots: Arc<Semaphore>,
    /// WebSocket sessions, so shutdown can wait for their close frames to go out.
    pub ws_tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

/// A request's resolved session, for handlers behind [`resolve_session`].
#[derive(Clone, Debug)]
pub struct AuthSession {
    pub id: String,
    pub skey: String,
    pub user: Arc<User>,
}

pub fn router(state: AppState) -> Router {
    let with_session = Router::new()
        .route("/me", get(me))
        .route("/logout", any(logout))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            resolve_session,
        ));
    Router::new()
        .route(&state.settings.login_path, any(login))
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(with_session)
        .with_state(state)
}

/// Resolves the session of a request that carries session parameters. Fails closed: a
/// request with parameters never goes on without a resolved session.
pub async fn resolve(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Option<AuthSession>, ApiError> {
    match wafer::session_params(headers, uri.query()) {
        SessionParams::Absent => Ok(None),
        SessionParams::Present { id, skey } => {
            if let Some(user) = state.cache.get(&id, &skey) {
                return Ok(Some(AuthSession { id, skey, user }));
            }
            // Concurrent requests of one session (a page firing several calls, a cache entry
            // running out under load) share one Validate.
            let (cache, sessions) = (state.cache.clone(), state.sessions.clone());
            let (call_id, call_skey) = (id.clone(), skey.clone());
            let answer = state
                .validations
                .run((id.clone(), skey.clone()), async move {
                    validate(&cache, &sessions, call_id, call_skey).await
                })
                .await
                .ok_or_else(|| ApiError::SessionUnavailable("session check failed".into()))?;
            let user = answer.map_err(|s| ApiError::validate(&s))?;
            Ok(Some(AuthSession { id, skey, user }))
        }
    }
}

/// Asks session-svc and caches a positive answer.
async fn validate(
    cache: &SessionCache,
    sessions: &SessionClient,
    id: String,
    skey: String,
) -> Result<Arc<User>, Status> {
    let ticket = cache.ticket();
    let answer = sessions.validate(id.clone(), skey.clone()).await?;
    let user =
        Arc::new(User::new(answer.user.ok_or_else(|| {
            Status::unavailable("session service sent no user")
        })?));
    // An older session-svc does not say how long is left: then nothing is cached.
    let expires_in = answer
        .expires_in
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    cache.insert(ticket, &id, &skey, user.clone(), expires_in);
    Ok(user)
}

async fn resolve_session(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(session) = resolve(&state, request.headers(), request.uri()).await? {
        request.extensions_mut().insert(session);
    }
    Ok(next.run(request).await)
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let address = state.login_limiter.client_address(peer, &headers);
    state
        .login_limiter
        .check(address)
        .map_err(ApiError::LoginRateLimited)?;
    let params = wafer::login_params(&headers, uri.query());
    let Some(code) = params.code else {
        return Err(ApiError::LoginFailed {
            status: axum::http::StatusCode::BAD_REQUEST,
            message: "login failed: the X-WX-Code header is missing".into(),
        });
    };
    let answer = state
        .sessions
        .login(LoginRequest {
            code,
            encrypted_data: params.encrypted_data,
            iv: params.iv,
            raw_data: params.raw_data,
            signature: params.signature,
        })
        .await
        .map_err(|s| ApiError::login(&s))?;
    let session = answer.session.ok_or_else(|| ApiError::LoginFailed {
        status: axum::http::StatusCode::BAD_GATEWAY,
        message: "login failed: session service sent no session".into(),
    })?;
    Ok(Json(wafer::login_body(
        &session.id,
        &session.skey,
        answer.user.as_ref(),
    ))
    .into_response())
}

async fn me(session: Option<Extension<AuthSession>>) -> Response {
    match session {
        Some(Extension(session)) => (
            [(header::CONTENT_TYPE, "application/json")],
            session.user.me_body.clone(),
        )
            .into_response(),
        None => Json(json!({ "noBody": true })).into_response(),
    }
}

/// Revokes the request's session. Not part of wafer; the magic key in the answer makes the
/// SDK drop its copy too.
async fn logout(
    State(state): State<AppState>,
    session: Option<Extension<AuthSession>>,
) -> Result<Response, ApiError> {
    let Some(Extension(session)) = session else {
        return Err(ApiError::InvalidSession(
            "there is no session to log out of".into(),
        ));
    };
    state
        .sessions
        .logout(session.id.clone(), session.skey)
        .await
        .map_err(|s| ApiError::validate(&s))?;
    // The revocation stream will say so too, but this client may ask again before it does.
    state.cache.revoke_session(&session.id);
    state.sockets.revoke_session(&session.id);
    Ok(Json(json!({ wafer::MAGIC_KEY: 1, "logout": true })).into_response())
}

/// Ready when session-svc answers its health check as SERVING: a load balancer should not
/// send traffic to a gateway that can only answer 503.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.sessions.ready().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(status) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": status.message() })),
        )
            .into_response(),
    }
}

async fn fallback() -> &'static str {
    "Response from express"
}
