//! Serves a request whose destination is decided (`destination.rs`): its session resolved
//! first when the destination takes one (fail closed: parameters that do not resolve never go
//! on), then the own path's handler (`own.rs`), the business route's upstream (`forward.rs`,
//! or `sockets/forwarded.rs` for a WebSocket), or the tutorial's plain answer.
use std::net::SocketAddr;

use axum::{
    extract::Request,
    http::HeaderMap,
    response::{IntoResponse as _, Response},
    routing::MethodRouter,
};
use ipnet::IpNet;
use tower::ServiceExt as _;
use tracing::Instrument as _;
use weapp_common::trace::TraceContext;

use crate::{
    business::forward::{self, ClientAddress},
    business::route_table::Business,
    business::route_table::SessionRule,
    edge::destination::Destination,
    edge::own,
    error::ApiError,
    sessions::resolver::{AuthSession, Need},
    sockets::forwarded,
    state::AppState,
};

pub struct Dispatcher {
    state: AppState,
    /// By `Own::ALL` order.
    own: Vec<MethodRouter>,
}

impl Dispatcher {
    pub fn new(state: AppState) -> Self {
        Self {
            own: own::handlers(&state),
            state,
        }
    }

    /// The answer to `request`, which goes to `destination`, from `peer`. Logged under a span
    /// with the method, the path (never the query string: it can hold X-WX-Skey) and the
    /// trace id; its status and time at debug (`RUST_LOG=gateway_svc::edge::dispatch=debug`).
    pub async fn serve(
        &self,
        destination: Destination,
        peer: SocketAddr,
        request: Request,
    ) -> Response {
        let span = {
            let (method, path) = (request.method(), request.uri().path());
            match request.extensions().get::<TraceContext>() {
                Some(context) => {
                    let trace_id = context.trace_id();
                    tracing::info_span!("http", %method, %path, %trace_id)
                }
                None => tracing::info_span!("http", %method, %path),
            }
        };
        let started = std::time::Instant::now();
        async {
            let response = self
                .answer(destination, peer, request)
                .await
                .unwrap_or_else(ApiError::into_response);
            tracing::debug!(
                status = response.status().as_u16(),
                latency_ms = started.elapsed().as_millis() as u64,
                "finished processing request"
            );
            response
        }
        .instrument(span)
        .await
    }

    async fn answer(
        &self,
        destination: Destination,
        peer: SocketAddr,
        mut request: Request,
    ) -> Result<Response, ApiError> {
        let (headers, query) = (request.headers(), request.uri().query());
        let session = match &destination {
            Destination::Business(business) => {
                self.business_session(business, headers, query).await?
            }
            _ if destination.takes_session() => {
                self.state
                    .resolver
                    .resolve(headers, query, Need::User)
                    .await?
            }
            _ => None,
        };
        match destination {
            Destination::Own(own) => {
                if let Some(session) = session {
                    request.extensions_mut().insert(session);
                }
                let handler = self
                    .own
                    .get(own.index())
                    .cloned()
                    .ok_or(ApiError::BadRequestTarget)?;
                Ok(handler
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {}))
            }
            // Boxed: forwarding's future is most of this one's size, and every request to the
            // gateway's own paths (a login, `/me`) would otherwise carry and copy it.
            Destination::Business(business) => {
                Box::pin(self.business(&business, session, peer, request)).await
            }
            Destination::Other => Ok("Response from express".into_response()),
        }
    }

    /// The session a request to `business` goes on with (fail closed: parameters that do not
    /// resolve never go on), or the refusal of a request without one on a route that needs
    /// it. A business route passes the identity on: it needs the signed assertion.
    pub async fn business_session(
        &self,
        business: &Business,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<AuthSession>, ApiError> {
        let session = self
            .state
            .resolver
            .resolve(headers, query, Need::Assertion)
            .await?;
        if session.is_none() && business.route.session == SessionRule::Required {
            // wafer's invalid-session body: the SDK logs in and sends the request again.
            return Err(ApiError::InvalidSession(
                "this needs a session; log in first".into(),
            ));
        }
        // Another app's session is not this route's to serve: refused, not forwarded, and
        // still valid where it belongs.
        if let Some(session) = &session
            && !business.route.serves_app(&session.user.app_id)
        {
            return Err(ApiError::InvalidSession(
                "this route does not serve this mini-program's sessions".into(),
            ));
        }
        Ok(session)
    }

    /// The reverse proxies whose forwarding headers are believed.
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.state.settings.trusted_proxies
    }

    async fn business(
        &self,
        business: &Business,
        session: Option<AuthSession>,
        peer: SocketAddr,
        request: Request,
    ) -> Result<Response, ApiError> {
        let state = &self.state;
        if business.route.websocket && forwarded::is_upgrade(request.headers()) {
            return forwarded::forward(state, &business.route, session, peer, request).await;
        }
        let client = ClientAddress {
            peer,
            trusted_proxies: &state.settings.trusted_proxies,
        };
        let in_flight = business.admit_owned(&state.metrics).await?;
        forward::forward(business, session.as_ref(), client, request, in_flight).await
    }
}
