//! The gRPC face of session-svc: `weapp.session.v1.SessionService`, translating between the
//! wire messages and the login/session logic. Errors become statuses in `error.rs` only.
use std::sync::Arc;

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use weapp_proto::session::v1::{
    self as pb, CheckSessionsRequest, CheckSessionsResponse, GetIdentityKeysRequest,
    GetIdentityKeysResponse, LoginRequest, LoginResponse, LogoutRequest, LogoutResponse,
    PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse,
    ReportDeliveryRequest, ReportDeliveryResponse, RevokeUserRequest, RevokeUserResponse,
    SessionCredentials, ValidateRequest, ValidateResponse, WatchRevocationsRequest,
    session_service_server::SessionService,
};

use crate::{
    error::SessionError,
    identity::IdentitySigner,
    login::{LoginInput, LoginService},
    push,
    record::{UnixMillis, now_millis},
    revocations::RevocationStream,
    session::SessionManager,
};

pub struct SessionGrpc {
    login: Arc<LoginService>,
    sessions: Arc<SessionManager>,
    /// Signs identity assertions, when a key is configured.
    identity: Option<Arc<IdentitySigner>>,
    /// Ends the open-ended revocation streams, which graceful shutdown would otherwise wait
    /// on forever.
    shutdown: CancellationToken,
}

impl SessionGrpc {
    pub fn new(
        login: Arc<LoginService>,
        sessions: Arc<SessionManager>,
        identity: Option<Arc<IdentitySigner>>,
    ) -> Self {
        Self {
            login,
            sessions,
            identity,
            shutdown: CancellationToken::new(),
        }
    }

    pub fn with_shutdown(self, shutdown: CancellationToken) -> Self {
        Self { shutdown, ..self }
    }
}

/// How long a publish waits for the gateways: within the caller's deadline (less a margin to
/// answer in), never more than [`push::MAX_WAIT`].
fn push_wait<T>(request: &Request<T>) -> std::time::Duration {
    let caller = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout)
        .map(|d| d.mul_f32(0.8));
    caller.map_or(push::MAX_WAIT, |d| d.min(push::MAX_WAIT))
}

/// A `grpc-timeout` header value ("100m", "2S", …).
fn grpc_timeout(value: &str) -> Option<std::time::Duration> {
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn timestamp(ms: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

#[tonic::async_trait]
impl SessionService for SessionGrpc {
    type WatchRevocationsStream = RevocationStream;

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let r = request.into_inner();
        let (credentials, record) = self
            .login
            .login(LoginInput {
                code: r.code,
                encrypted_data: r.encrypted_data,
                iv: r.iv,
                raw_data: r.raw_data,
                signature: r.signature,
            })
            .await?;
        Ok(Response::new(LoginResponse {
            session: Some(SessionCredentials {
                id: credentials.id,
                skey: credentials.skey,
            }),
            user: Some(pb::UserInfo::from(&record.user)),
            expires_at: Some(timestamp(record.expires_at)),
        }))
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let r = request.into_inner();
        let record = self.sessions.validate(&r.id, &r.skey).await?;
        let now = now_millis();
        let expires_in = record.expires_at.saturating_sub(now).max(0);
        let assertion = match (&self.identity, r.want_identity_assertion) {
            (Some(signer), true) => signer.sign(&record, now),
            _ => None,
        };
        Ok(Response::new(ValidateResponse {
            user: Some(pb::UserInfo::from(&record.user)),
            expires_at: Some(timestamp(record.expires_at)),
            created_at: Some(timestamp(record.created_at)),
            expires_in: Some(duration(expires_in)),
            identity_assertion_expires_in: assertion
                .as_ref()
                .and_then(|a| prost_types::Duration::try_from(a.expires_in).ok()),
            identity_assertion: assertion.map(|a| a.token).unwrap_or_default(),
        }))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let r = request.into_inner();
        self.sessions.logout(&r.id, &r.skey).await?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn revoke_user(
        &self,
        request: Request<RevokeUserRequest>,
    ) -> Result<Response<RevokeUserResponse>, Status> {
        let revoked = self
            .sessions
            .revoke_user(&request.into_inner().open_id)
            .await?;
        Ok(Response::new(RevokeUserResponse { revoked }))
    }

    async fn check_sessions(
        &self,
        request: Request<CheckSessionsRequest>,
    ) -> Result<Response<CheckSessionsResponse>, Status> {
        let ended = self
            .sessions
            .ended(request.into_inner().session_ids)
            .await?;
        Ok(Response::new(CheckSessionsResponse { ended }))
    }

    async fn get_identity_keys(
        &self,
        _request: Request<GetIdentityKeysRequest>,
    ) -> Result<Response<GetIdentityKeysResponse>, Status> {
        let jwks = match &self.identity {
            Some(signer) => signer.jwks().to_owned(),
            None => r#"{"keys":[]}"#.to_owned(),
        };
        Ok(Response::new(GetIdentityKeysResponse { jwks }))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let wait = push_wait(&request);
        let message = request
            .into_inner()
            .message
            .ok_or_else(|| SessionError::InvalidArgument("no message to publish".into()))?;
        let messages = vec![message];
        push::check(&messages)?;
        let outcome = self.sessions.revocations().push(messages, wait).await;
        Ok(Response::new(PublishResponse {
            sockets: outcome.sockets.first().copied().unwrap_or_default(),
            gateways: outcome.gateways,
            gateways_answered: outcome.answered,
        }))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let wait = push_wait(&request);
        let messages = request.into_inner().messages;
        push::check(&messages)?;
        let outcome = self.sessions.revocations().push(messages, wait).await;
        Ok(Response::new(PublishBatchResponse {
            sockets: outcome.sockets,
            gateways: outcome.gateways,
            gateways_answered: outcome.answered,
        }))
    }

    async fn report_delivery(
        &self,
        request: Request<ReportDeliveryRequest>,
    ) -> Result<Response<ReportDeliveryResponse>, Status> {
        let r = request.into_inner();
        self.sessions
            .revocations()
            .report(r.push_id, r.follower, &r.sockets);
        Ok(Response::new(ReportDeliveryResponse {}))
    }

    async fn watch_revocations(
        &self,
        _request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let stream = self.sessions.revocations().subscribe();
        Ok(Response::new(Box::pin(
            stream.take_until(self.shutdown.clone().cancelled_owned()),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps_convert_exactly() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
    }
}
