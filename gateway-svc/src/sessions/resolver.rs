//! Session resolution: the one place that turns a request's wafer session parameters into a
//! user, or into the reason there is none. It owns the cache of validated sessions, the
//! coalescing of identical Validate calls, and the gRPC client they fall back to. Handlers
//! only ask it.
use std::{sync::Arc, time::Duration};

use axum::http::{HeaderMap, HeaderValue};
use tonic::Status;
use weapp_common::singleflight::SingleFlight;

use crate::{
    error::ApiError,
    sessions::cache::{Resolved, SessionCache},
    sessions::client::SessionClient,
    sessions::identity::{Identity, Names},
    sessions::user::User,
    wafer::{self, SessionParams},
};

/// A request's resolved session.
#[derive(Clone, Debug)]
pub struct AuthSession {
    pub id: String,
    pub skey: String,
    pub user: Arc<User>,
    /// The identity headers and signed assertion, when they were asked for.
    pub identity: Option<Arc<Identity>>,
}

impl AuthSession {
    /// Adds the session's identity headers (`identity.rs`) under `names` to `headers`.
    pub fn insert_identity(&self, headers: &mut HeaderMap, names: Names) {
        self.insert_identity_for(headers, names, None);
    }

    /// The same for a route that may serve app `resource`'s resources to other apps' users
    /// (Cloud Run's resource sharing, `Identity::shared`).
    pub fn insert_identity_for(
        &self,
        headers: &mut HeaderMap,
        names: Names,
        resource: Option<&HeaderValue>,
    ) {
        let rendered;
        let identity = match &self.identity {
            Some(identity) => identity,
            None => {
                rendered = Identity::new(&self.id, &self.user, &self.user.app_id, None, None);
                &rendered
            }
        };
        match resource.and_then(|r| identity.shared(names, r)) {
            Some(fields) => {
                for (name, value) in fields {
                    headers.insert(name, value);
                }
            }
            None => identity.apply(headers, names),
        }
    }

    fn new(id: String, skey: String, resolved: Resolved) -> Self {
        Self {
            id,
            skey,
            user: resolved.user,
            identity: resolved.identity,
        }
    }
}

/// Whether a resolution must come with a signed identity assertion (to pass the identity on
/// to a business upstream) or the user is enough (`/me`, the WebSocket greeting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    User,
    Assertion,
}

pub struct SessionResolver {
    cache: Arc<SessionCache>,
    client: SessionClient,
    /// Validate calls in flight, by (id, skey, need).
    in_flight: SingleFlight<(String, String, Need), Result<Resolved, Status>>,
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
        need: Need,
    ) -> Result<Option<AuthSession>, ApiError> {
        let SessionParams::Present { id, skey } = wafer::session_params(headers, query) else {
            return Ok(None);
        };
        self.resolve_credentials(id, skey, need).await.map(Some)
    }

    /// The session of an id and skey already read (a relayed WebSocket message's session).
    pub async fn resolve_credentials(
        &self,
        id: String,
        skey: String,
        need: Need,
    ) -> Result<AuthSession, ApiError> {
        // An entry cached for `/me` has no identity: a forwarded request asks again, and its
        // answer (with one) replaces the entry.
        if let Some(resolved) = self.cache.get(&id, &skey)
            && (need == Need::User || resolved.identity.is_some())
        {
            self.client.metrics().cache_hits.increment(1);
            return Ok(AuthSession::new(id, skey, resolved));
        }
        self.client.metrics().cache_misses.increment(1);
        // Concurrent requests of one session (a page firing several calls, a cache entry
        // running out under load) share one Validate.
        let (cache, client) = (self.cache.clone(), self.client.clone());
        let (call_id, call_skey) = (id.clone(), skey.clone());
        let answer = self
            .in_flight
            .run((id.clone(), skey.clone(), need), async move {
                validate(&cache, &client, call_id, call_skey, need).await
            })
            .await
            .ok_or_else(|| ApiError::SessionUnavailable("session check failed".into()))?;
        let resolved = answer.map_err(|s| ApiError::validate(&s))?;
        Ok(AuthSession::new(id, skey, resolved))
    }

    /// Forgets what is cached of a session that changed at session-svc (a verified phone
    /// number): the next request asks again.
    pub fn forget(&self, id: &str) {
        self.cache.revoke_session(id);
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
    need: Need,
) -> Result<Resolved, Status> {
    let ticket = cache.ticket();
    let answer = client
        .validate(id.clone(), skey.clone(), need == Need::Assertion)
        .await?;
    let user = answer
        .user
        .as_ref()
        .and_then(|u| User::try_from(u).ok())
        .ok_or_else(|| Status::unavailable("session service sent no user"))?
        .of_app(&answer.app_id);
    let left = |d: Option<prost_types::Duration>| {
        d.and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default()
    };
    // An older session-svc does not say how long is left: then nothing is cached.
    let mut expires_in = left(answer.expires_in);
    // A session-svc without a signing key sends none: the upstream gets no assertion (and
    // verifies nothing); the operator is told at start-up, not on every request.
    let assertion = match answer.identity_assertion.is_empty() {
        true => None,
        false => {
            expires_in = expires_in.min(left(answer.identity_assertion_expires_in));
            Some(
                HeaderValue::try_from(answer.identity_assertion)
                    .map_err(|_| Status::internal("session service sent a malformed assertion"))?,
            )
        }
    };
    let user = Arc::new(user);
    let phone = answer.phone.as_ref().map(|p| {
        format!(
            "+{}{}",
            p.country_code.trim_start_matches('+'),
            p.pure_phone_number
        )
    });
    let identity = (need == Need::Assertion).then(|| {
        let app_id = &answer.app_id;
        Arc::new(Identity::new(
            &id,
            &user,
            app_id,
            phone.as_deref(),
            assertion,
        ))
    });
    let resolved = Resolved { user, identity };
    cache.insert(ticket, &id, &skey, resolved.clone(), expires_in);
    Ok(resolved)
}
