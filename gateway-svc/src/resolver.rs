//! Session resolution: the one place that turns a request's wafer session parameters into a
//! user, or into the reason there is none. It owns the cache of validated sessions, the
//! coalescing of identical Validate calls, and the gRPC client they fall back to. Handlers
//! only ask it.
use std::{sync::Arc, time::Duration};

use axum::http::HeaderMap;
use tonic::Status;
use weapp_common::singleflight::SingleFlight;

use crate::{
    error::ApiError,
    session_cache::SessionCache,
    session_client::SessionClient,
    user::User,
    wafer::{self, SessionParams},
};

/// A request's resolved session.
#[derive(Clone, Debug)]
pub struct AuthSession {
    pub id: String,
    pub skey: String,
    pub user: Arc<User>,
}

pub struct SessionResolver {
    cache: Arc<SessionCache>,
    client: SessionClient,
    /// Validate calls in flight, by (id, skey).
    in_flight: SingleFlight<(String, String), Result<Arc<User>, Status>>,
}

impl SessionResolver {
    pub fn new(cache: Arc<SessionCache>, client: SessionClient) -> Self {
        Self {
            cache,
            client,
            in_flight: SingleFlight::default(),
        }
    }

    /// The session of a request that carries session parameters, `None` for one without.
    /// Fails closed: a request with parameters never goes on without a resolved session.
    pub async fn resolve(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<AuthSession>, ApiError> {
        let SessionParams::Present { id, skey } = wafer::session_params(headers, query) else {
            return Ok(None);
        };
        if let Some(user) = self.cache.get(&id, &skey) {
            return Ok(Some(AuthSession { id, skey, user }));
        }
        // Concurrent requests of one session (a page firing several calls, a cache entry
        // running out under load) share one Validate.
        let (cache, client) = (self.cache.clone(), self.client.clone());
        let (call_id, call_skey) = (id.clone(), skey.clone());
        let answer = self
            .in_flight
            .run((id.clone(), skey.clone()), async move {
                validate(&cache, &client, call_id, call_skey).await
            })
            .await
            .ok_or_else(|| ApiError::SessionUnavailable("session check failed".into()))?;
        let user = answer.map_err(|s| ApiError::validate(&s))?;
        Ok(Some(AuthSession { id, skey, user }))
    }

    /// Revokes the session at session-svc and forgets it here at once: the revocation stream
    /// will say so too, but this client may ask again before it does.
    pub async fn logout(&self, session: AuthSession) -> Result<(), ApiError> {
        self.client
            .logout(session.id.clone(), session.skey)
            .await
            .map_err(|s| ApiError::validate(&s))?;
        self.cache.revoke_session(&session.id);
        Ok(())
    }
}

/// Asks session-svc and caches a positive answer.
async fn validate(
    cache: &SessionCache,
    client: &SessionClient,
    id: String,
    skey: String,
) -> Result<Arc<User>, Status> {
    let ticket = cache.ticket();
    let answer = client.validate(id.clone(), skey.clone()).await?;
    let user = answer
        .user
        .as_ref()
        .and_then(|u| User::try_from(u).ok())
        .ok_or_else(|| Status::unavailable("session service sent no user"))?;
    let user = Arc::new(user);
    // An older session-svc does not say how long is left: then nothing is cached.
    let expires_in = answer
        .expires_in
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    cache.insert(ticket, &id, &skey, user.clone(), expires_in);
    Ok(user)
}
