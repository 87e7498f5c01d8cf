//! HTTP routes: wafer's login, session resolution in front of everything else, `/me`,
//! `/logout`, the probes, the `auth_request` endpoint, business routes (`forward.rs`) and the
//! plain fallback.
use std::{net::SocketAddr, sync::Arc};

use axum::{
    Extension, Json, Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use serde_json::json;
use weapp_proto::session::v1::LoginRequest;
use weapp_wire::UserInfo;

use crate::{
    config::{AUTH_PATH, PHONE_PATH, RESERVED_PATHS},
    error::ApiError,
    forward::ClientAddress,
    forwarded_socket,
    resolver::{AuthSession, Need},
    route_table::{Route, RouteTable, SessionRule},
    state::AppState,
    wafer::{self, is_me},
    ws,
};

/// Which business route, if any, a request path goes to: never one the gateway serves itself.
#[derive(Clone, Debug)]
pub struct Forwarded {
    table: RouteTable,
    login_path: Arc<str>,
}

impl Forwarded {
    pub fn new(table: Option<RouteTable>, login_path: &str) -> Self {
        Self {
            table: table.unwrap_or_default(),
            login_path: login_path.into(),
        }
    }

    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        if self.table.is_empty()
            || path == &*self.login_path
            || is_me(path)
            || RESERVED_PATHS.contains(&path)
        {
            return None;
        }
        self.table.find(path)
    }
}

pub fn router(state: AppState) -> Router {
    let with_session = Router::new()
        .route("/logout", any(logout))
        .route(PHONE_PATH, get(phone_number).post(phone_number))
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
        .route(AUTH_PATH, any(auth))
        .merge(with_session)
        .with_state(state)
}

/// Puts the request's session, if it has one, where handlers find it. A request for a
/// business route (the server loop marked it) needs the signed assertion too.
async fn resolve_session(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let need = match request.extensions().get::<Arc<Route>>() {
        Some(_) => Need::Assertion,
        None => Need::User,
    };
    let resolved = state
        .resolver
        .resolve(request.headers(), request.uri().query(), need)
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
    let answer = log_in(&state, peer, &headers, &uri).await;
    let status = match &answer {
        Ok(_) => 200,
        Err(e) => e.status().as_u16(),
    };
    state.metrics.login(status);
    answer
}

async fn log_in(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let address = state.login_limiter.client_address(peer, headers);
    if let Err(wait) = state.login_limiter.check(address) {
        state.metrics.login_rate_limited.increment(1);
        return Err(ApiError::LoginRateLimited(wait));
    }
    let params = wafer::login_params(headers, uri.query());
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

/// A business route's requests go to its upstream; `/me` answers the session's user object
/// as wafer kept it; everything else answers as the tutorial's express app did.
async fn fallback(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    session: Option<Extension<AuthSession>>,
    request: Request,
) -> Result<Response, ApiError> {
    let session = session.map(|Extension(session)| session);
    if let Some(route) = request.extensions().get::<Arc<Route>>().cloned() {
        if session.is_none() && route.session == SessionRule::Required {
            // wafer's invalid-session body: the SDK logs in and sends the request again.
            return Err(ApiError::InvalidSession(
                "this needs a session; log in first".into(),
            ));
        }
        if route.websocket && forwarded_socket::is_upgrade(request.headers()) {
            return forwarded_socket::forward(&state, &route, session, peer, request).await;
        }
        let client = ClientAddress {
            peer,
            trusted_proxies: &state.settings.trusted_proxies,
        };
        return state
            .forwarder
            .forward(&route, session.as_ref(), client, request)
            .await;
    }
    if !is_me(request.uri().path()) {
        return Ok("Response from express".into_response());
    }
    Ok(match session {
        Some(session) => (
            [(header::CONTENT_TYPE, "application/json")],
            session.user.me_body.clone(),
        )
            .into_response(),
        None => Json(json!({ "noBody": true })).into_response(),
    })
}

/// nginx `auth_request`: the session of the original request (its headers, or the query
/// string nginx passes along) becomes identity headers nginx can copy onto its own proxied
/// request with `auth_request_set`.
async fn auth(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let session = state
        .resolver
        .resolve(&headers, uri.query(), Need::Assertion)
        .await?
        .ok_or_else(|| ApiError::InvalidSession("this needs a session; log in first".into()))?;
    let mut response = StatusCode::OK.into_response();
    session.insert_identity(response.headers_mut(), crate::identity::Names::Weapp);
    Ok(response)
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

/// The phone number behind a code from the mini-program's getPhoneNumber button, verified by
/// WeChat through session-svc and kept on the session from then on (Validate answers and
/// forwarded identities carry it). The code comes in `X-WX-Phone-Code` or as `{"code": …}`.
async fn phone_number(
    State(state): State<AppState>,
    session: Option<Extension<AuthSession>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Some(Extension(session)) = session else {
        return Err(ApiError::InvalidSession(
            "this needs a session; log in first".into(),
        ));
    };
    let from_header = headers
        .get(wafer::PHONE_CODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let code = match from_header {
        Some(code) => code,
        None => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
            .filter(|c| !c.is_empty())
            .ok_or(ApiError::MissingPhoneCode)?,
    };
    let phone = state
        .sessions
        .phone_number(session.id.clone(), session.skey.clone(), code)
        .await
        .map_err(|s| ApiError::phone(&s))?;
    // The cached answer has no number yet: the next request of this session asks again.
    state.resolver.forget(&session.id);
    Ok(Json(json!({
        "phoneNumber": phone.phone_number,
        "purePhoneNumber": phone.pure_phone_number,
        "countryCode": phone.country_code,
    }))
    .into_response())
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
