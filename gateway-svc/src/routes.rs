//! HTTP routes: wafer's login, session resolution in front of everything else, `/me`,
//! `/logout`, the probes, and the plain fallback.
use std::net::SocketAddr;

use axum::{
    Extension, Json, Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use serde_json::json;
use weapp_proto::session::v1::LoginRequest;
use weapp_wire::UserInfo;

use crate::{error::ApiError, resolver::AuthSession, state::AppState, wafer, ws};

pub fn router(state: AppState) -> Router {
    let with_session = Router::new()
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
        .route("/.well-known/jwks.json", get(jwks))
        .merge(with_session)
        .with_state(state)
}

/// Puts the request's session, if it has one, where handlers find it.
async fn resolve_session(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let resolved = state
        .resolver
        .resolve(request.headers(), request.uri().query())
        .await?;
    if let Some(session) = resolved {
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
    let code = params.code.ok_or(ApiError::MissingCode)?;
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
    let session = answer
        .session
        .ok_or(ApiError::BadAnswer("session service sent no session"))?;
    let user = answer
        .user
        .as_ref()
        .map(UserInfo::try_from)
        .transpose()
        .map_err(|_| ApiError::BadAnswer("session service sent a user without an openId"))?;
    Ok(Json(wafer::login_body(&session.id, &session.skey, user.as_ref())).into_response())
}

/// express's `app.use('/me', …)`: any method, `/me` and any path under `/me/`, matched without
/// regard to case as express does.
fn is_me(path: &str) -> bool {
    let Some(head) = path.get(..3) else {
        return false;
    };
    head.eq_ignore_ascii_case("/me") && matches!(path.as_bytes().get(3), None | Some(b'/'))
}

/// `/me` answers the session's user object as wafer kept it; everything else answers as the
/// tutorial's express app did.
async fn fallback(uri: Uri, session: Option<Extension<AuthSession>>) -> Response {
    if !is_me(uri.path()) {
        return "Response from express".into_response();
    }
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
    let id = session.id.clone();
    state.resolver.logout(session).await?;
    state.sockets.revoke_session(&id);
    Ok(Json(wafer::logout_body()).into_response())
}

/// The public keys that verify the identity assertions session-svc signs (relayed: the
/// gateway holds no key). Cacheable for a minute: rotation keeps old keys published longer.
async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let jwks = state
        .sessions
        .identity_keys()
        .await
        .map_err(|s| ApiError::SessionUnavailable(format!("identity keys: {}", s.message())))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        jwks,
    )
        .into_response())
}

/// Ready when session-svc answers its health check as SERVING: a load balancer should not
/// send traffic to a gateway that can only answer 503.
async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    state
        .sessions
        .ready()
        .await
        .map_err(|status| ApiError::NotReady(status.message().to_owned()))?;
    Ok(Json(json!({ "status": "ready" })).into_response())
}

#[cfg(test)]
mod tests {
    use super::is_me;

    #[test]
    fn me_matches_as_express_mounts_it() {
        for path in ["/me", "/me/", "/me/x/y", "/ME", "/Me/profile"] {
            assert!(is_me(path), "{path}");
        }
        for path in ["/", "/m", "/mex", "/me.json", "/api/me", "/ме"] {
            assert!(!is_me(path), "{path}");
        }
    }
}
