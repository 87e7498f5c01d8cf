//! The gateway's own paths (`destination.rs` lists them): wafer's login, `/me`, `/logout`, the
//! phone number, the probes, the JWKS and nginx's `auth_request` endpoint. Each is an axum
//! method router, built once; the dispatcher (`dispatch.rs`) calls the one the request's
//! destination names, with its session already resolved when the path takes one.
use std::net::SocketAddr;

use axum::{
    Extension, Json,
    extract::{ConnectInfo, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, any, get},
};
use serde_json::json;
use weapp_proto::session::v1::LoginRequest;

use crate::{
    apps::login_app,
    edge::destination::Own,
    edge::wechat_push,
    error::ApiError,
    sessions::identity::APP_ID,
    sessions::resolver::{AuthSession, Need},
    sockets::ws,
    state::AppState,
    wafer,
};

/// The handler of each own path, in `Own::ALL` order.
pub fn handlers(state: &AppState) -> Vec<MethodRouter> {
    Own::ALL
        .into_iter()
        .map(|own| {
            let handler: MethodRouter<AppState> = match own {
                Own::Login => any(login),
                Own::Me => any(me),
                Own::Logout => any(logout),
                Own::Ws => get(ws::upgrade),
                Own::Phone => get(phone_number).post(phone_number),
                Own::Auth => any(auth),
                Own::Jwks => get(jwks),
                Own::Healthz => get(|| async { "ok" }),
                Own::Readyz => get(readyz),
                Own::WeChatPush => any(wechat_push::relay),
            };
            handler.with_state(state.clone())
        })
        .collect()
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
    // Which app: the operator's rule, else WeChat's Referer, else session-svc's default.
    let app_id = login_app(state.routing.load().login_rules(), headers, uri.path()).map_err(
        |disagreement| ApiError::LoginFailed {
            status: StatusCode::BAD_REQUEST,
            message: format!("login failed: {disagreement}"),
        },
    )?;
    let answer = state
        .sessions
        .login(LoginRequest {
            code,
            encrypted_data: params.encrypted_data,
            iv: params.iv,
            raw_data: params.raw_data,
            signature: params.signature,
            app_id: app_id.as_deref().unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|s| ApiError::login(&s))?;
    let session = answer
        .session
        .ok_or(ApiError::BadAnswer("session service sent no session"))?;
    let user = answer
        .user
        .as_ref()
        .map(weapp_proto::user_json)
        .transpose()
        .map_err(|_| ApiError::BadAnswer("session service sent a user without an openId"))?;
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        wafer::login_body(&session.id, &session.skey, user.as_deref()),
    )
        .into_response();
    if let Ok(app) = HeaderValue::from_str(&answer.app_id)
        && !answer.app_id.is_empty()
    {
        response.headers_mut().insert(APP_ID, app);
    }
    Ok(response)
}

/// `/me`: the session's user object as wafer kept it, or `{"noBody": true}` without a session
/// (the tutorial's express route).
async fn me(session: Option<Extension<AuthSession>>) -> Response {
    match session {
        Some(Extension(session)) => {
            let mut response = (
                [(header::CONTENT_TYPE, "application/json")],
                session.user.me_body.clone(),
            )
                .into_response();
            // The body stays wafer's exact payload; the app goes beside it.
            if let Ok(app) = HeaderValue::from_str(&session.user.app_id)
                && !session.user.app_id.is_empty()
            {
                response.headers_mut().insert(APP_ID, app);
            }
            response
        }
        None => Json(json!({ "noBody": true })).into_response(),
    }
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
    session.insert_identity(
        response.headers_mut(),
        crate::sessions::identity::Names::Weapp,
    );
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
