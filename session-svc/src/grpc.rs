//! The gRPC face of session-svc: `weapp.session.v1.SessionService`, translating between the
//! wire messages and the login/session logic. Errors become statuses in `error.rs` only.
use std::sync::Arc;

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use weapp_proto::session::v1::{
    self as pb, AccessToken, CheckSessionKeyRequest, CheckSessionKeyResponse, CheckSessionsRequest,
    CheckSessionsResponse, DecryptUserDataRequest, DecryptUserDataResponse,
    ForceRefreshAccessTokenRequest, GetAccessTokenRequest, GetIdentityKeysRequest,
    GetIdentityKeysResponse, GetPhoneNumberRequest, GetPhoneNumberResponse, LoginRequest,
    LoginResponse, LogoutRequest, LogoutResponse, PublishBatchRequest, PublishBatchResponse,
    PublishRequest, PublishResponse, ReportDeliveryRequest, ReportDeliveryResponse,
    ReportInvalidAccessTokenRequest, ResetSessionKeyRequest, ResetSessionKeyResponse,
    RevokeUserRequest, RevokeUserResponse, SessionCredentials, ValidateRequest, ValidateResponse,
    WatchRevocationsRequest, session_service_server::SessionService,
};

mod message_push;
mod scoping;

use crate::{
    access::caller_apps,
    access_token::{AccessTokens, CurrentToken},
    error::SessionError,
    identity::IdentitySigner,
    live::LiveConfig,
    login::{LoginInput, LoginService},
    phone::PhoneNumbers,
    push,
    push::Pushes,
    record::{PhoneNumber, UnixMillis, now_millis},
    revocations::RevocationStream,
    session::SessionManager,
    session_keys::SessionKeys,
    streams::Streams,
};

/// Users' streams one publish writes side by side.
const STREAM_WRITERS: usize = 16;

/// How long a new follower waits for a feed that is not live yet before it is refused.
const FOLLOWER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// WeChat's message push as the RPCs reach it: the intake, and the store's outbox for the
/// operator's calls.
pub struct MessagePushRpcs {
    pub intake: Arc<crate::message_push::Intake>,
    pub store: Arc<dyn crate::store::EventStore>,
    /// Wakes this replica's outbox (a requeue is delivered at once).
    pub wake: Arc<tokio::sync::Notify>,
}

/// What session-svc does as the app's central control server for WeChat's server APIs.
pub struct WeChatServices {
    pub tokens: Arc<AccessTokens>,
    pub phones: Arc<PhoneNumbers>,
    pub session_keys: Arc<SessionKeys>,
}

pub struct SessionGrpc {
    /// The apps served and the keys in force (reloadable).
    live: Arc<LiveConfig>,
    /// Users' streams of pushes, for reconnecting sockets.
    streams: Arc<Streams>,
    login: Arc<LoginService>,
    sessions: Arc<SessionManager>,
    pushes: Arc<Pushes>,
    wechat: WeChatServices,
    /// Signs identity assertions, when a key is configured.
    identity: Option<Arc<IdentitySigner>>,
    message_push: MessagePushRpcs,
    /// Ends the open-ended revocation streams, which graceful shutdown would otherwise wait
    /// on forever.
    shutdown: CancellationToken,
}

impl SessionGrpc {
    pub fn new(
        (login, sessions, pushes): (Arc<LoginService>, Arc<SessionManager>, Arc<Pushes>),
        wechat: WeChatServices,
        (identity, live, streams): (Option<Arc<IdentitySigner>>, Arc<LiveConfig>, Arc<Streams>),
        message_push: MessagePushRpcs,
    ) -> Self {
        Self {
            message_push,
            live,
            streams,
            login,
            sessions,
            pushes,
            wechat,
            identity,
            shutdown: CancellationToken::new(),
        }
    }

    /// The revocation feed its followers read.
    pub fn feed(&self) -> Arc<crate::revocations::RevocationFeed> {
        self.sessions.feed()
    }

    pub fn with_shutdown(self, shutdown: CancellationToken) -> Self {
        Self { shutdown, ..self }
    }
}

fn access_token(current: CurrentToken) -> AccessToken {
    use secrecy::ExposeSecret as _;
    let left = current.expires_at.saturating_sub(now_millis()).max(0);
    AccessToken {
        access_token: current.token.expose_secret().to_owned(),
        expires_at: Some(timestamp(current.expires_at)),
        expires_in: Some(duration(left)),
    }
}

fn phone(p: &PhoneNumber) -> pb::PhoneNumber {
    pb::PhoneNumber {
        phone_number: p.phone_number.clone(),
        pure_phone_number: p.pure_phone_number.clone(),
        country_code: p.country_code.clone(),
        verified_at: Some(timestamp(p.verified_at)),
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
                app_id: r.app_id,
            })
            .await?;
        Ok(Response::new(LoginResponse {
            session: Some(SessionCredentials {
                id: credentials.id,
                skey: credentials.skey,
            }),
            user: Some(pb::UserInfo::from(&record.user)),
            expires_at: Some(timestamp(record.expires_at)),
            app_id: record.app_id.unwrap_or_default(),
        }))
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let r = request.into_inner();
        let (record, app_id) = self.session(&r.id, &r.skey).await?;
        let now = now_millis();
        let expires_in = record.expires_at.saturating_sub(now).max(0);
        let assertion = match (&self.identity, r.want_identity_assertion) {
            (Some(signer), true) => signer.sign(&record, &app_id, now),
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
            phone: record.phone.as_ref().map(phone),
            app_id: app_id.to_string(),
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
        let may_act_for = self.may_act_for_record(&request);
        let r = request.get_ref();
        let revoked = match (r.open_id.is_empty(), r.union_id.is_empty()) {
            (false, true) => {
                let app = self.acting_for(&request, &r.app_id)?;
                let apps = self.live.apps();
                let scope = caller_apps(&request);
                let default = apps.default_app().id.clone();
                let everything =
                    r.app_id.is_empty() && apps.ids().all(|id| scope.allows(id, &default));
                // Named app or not, only sessions of apps the key may act for (an openId is
                // one app's, but the caller may not know which).
                let only = move |stored: Option<&str>| match (r.app_id.is_empty(), stored) {
                    (false, None | Some("")) => app == default,
                    (false, Some(stored)) => *app == *stored,
                    (true, stored) => apps
                        .of_record(stored)
                        .is_some_and(|a| scope.allows(&a.id, &default)),
                };
                self.sessions
                    .revoke_user_within(&r.open_id, (everything, only))
                    .await?
            }
            (true, false) if r.app_id.is_empty() => {
                self.sessions
                    .revoke_person(&r.union_id, may_act_for)
                    .await?
            }
            (true, false) => {
                let app = self.acting_for(&request, &r.app_id)?;
                let default = self.live.apps().default_app().id.clone();
                let only = move |stored: Option<&str>| match stored {
                    None | Some("") => app == default,
                    Some(stored) => *app == *stored,
                };
                self.sessions.revoke_person(&r.union_id, only).await?
            }
            _ => {
                return Err(SessionError::InvalidArgument(
                    "name one user: open_id (with an optional app_id) or union_id".into(),
                )
                .into());
            }
        };
        Ok(Response::new(RevokeUserResponse { revoked }))
    }

    async fn check_sessions(
        &self,
        request: Request<CheckSessionsRequest>,
    ) -> Result<Response<CheckSessionsResponse>, Status> {
        let apps = self.live.apps();
        let served = move |stored: Option<&str>| apps.of_record(stored).is_some();
        let ended = self
            .sessions
            .ended(request.into_inner().session_ids, served)
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
            .get_ref()
            .message
            .clone()
            .ok_or_else(|| SessionError::InvalidArgument("no message to publish".into()))?;
        let mut messages = vec![message];
        push::check(&messages)?;
        self.scope_messages(&request, &mut messages)?;
        self.keep(&mut messages).await?;
        let position = messages.first().and_then(|m| m.position.clone());
        let outcome = self.pushes.publish(messages, wait).await;
        let sockets = outcome.sockets.first().copied().unwrap_or_default();
        Ok(Response::new(PublishResponse {
            sockets,
            gateways: outcome.gateways,
            gateways_answered: outcome.answered,
            position,
            online: sockets > 0,
        }))
    }

    async fn publish_batch(
        &self,
        mut request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let wait = push_wait(&request);
        let mut messages = std::mem::take(&mut request.get_mut().messages);
        push::check(&messages)?;
        self.scope_messages(&request, &mut messages)?;
        self.keep(&mut messages).await?;
        let positions = messages
            .iter()
            .map(|m| m.position.clone().unwrap_or_default())
            .collect();
        let outcome = self.pushes.publish(messages, wait).await;
        Ok(Response::new(PublishBatchResponse {
            sockets: outcome.sockets,
            gateways: outcome.gateways,
            gateways_answered: outcome.answered,
            positions,
        }))
    }

    async fn report_delivery(
        &self,
        request: Request<ReportDeliveryRequest>,
    ) -> Result<Response<ReportDeliveryResponse>, Status> {
        let r = request.into_inner();
        self.pushes.report(r.push_id, r.follower, &r.sockets);
        Ok(Response::new(ReportDeliveryResponse {}))
    }

    async fn get_access_token(
        &self,
        request: Request<GetAccessTokenRequest>,
    ) -> Result<Response<AccessToken>, Status> {
        let app = self.acting_for(&request, &request.get_ref().app_id)?;
        let tokens = self.wechat.tokens.of(&app)?;
        Ok(Response::new(access_token(tokens.get().await?)))
    }

    async fn report_invalid_access_token(
        &self,
        request: Request<ReportInvalidAccessTokenRequest>,
    ) -> Result<Response<AccessToken>, Status> {
        let app = self.acting_for(&request, &request.get_ref().app_id)?;
        let refused = request.into_inner().access_token;
        let current = self
            .wechat
            .tokens
            .of(&app)?
            .report_invalid(&refused)
            .await?;
        Ok(Response::new(access_token(current)))
    }

    async fn force_refresh_access_token(
        &self,
        request: Request<ForceRefreshAccessTokenRequest>,
    ) -> Result<Response<AccessToken>, Status> {
        let app = self.acting_for(&request, &request.get_ref().app_id)?;
        let reason = request.into_inner().reason;
        let current = self.wechat.tokens.of(&app)?.force_refresh(&reason).await?;
        Ok(Response::new(access_token(current)))
    }

    async fn get_phone_number(
        &self,
        request: Request<GetPhoneNumberRequest>,
    ) -> Result<Response<GetPhoneNumberResponse>, Status> {
        let subject = request.get_ref().subject.clone();
        let user = self.user_of(&request, subject).await?;
        let verified = self
            .wechat
            .phones
            .verify(&user, &request.get_ref().code)
            .await?;
        Ok(Response::new(GetPhoneNumberResponse {
            phone: Some(phone(&verified)),
        }))
    }

    async fn decrypt_user_data(
        &self,
        request: Request<DecryptUserDataRequest>,
    ) -> Result<Response<DecryptUserDataResponse>, Status> {
        let subject = request.get_ref().subject.clone();
        let user = self.user_of(&request, subject).await?;
        let r = request.into_inner();
        let json = self
            .wechat
            .session_keys
            .decrypt_user_data(&user, &r.encrypted_data, &r.iv)
            .await?;
        Ok(Response::new(DecryptUserDataResponse { json }))
    }

    async fn check_session_key(
        &self,
        request: Request<CheckSessionKeyRequest>,
    ) -> Result<Response<CheckSessionKeyResponse>, Status> {
        let subject = request.get_ref().subject.clone();
        let user = self.user_of(&request, subject).await?;
        let valid = self.wechat.session_keys.check(&user).await?;
        Ok(Response::new(CheckSessionKeyResponse { valid }))
    }

    async fn reset_session_key(
        &self,
        request: Request<ResetSessionKeyRequest>,
    ) -> Result<Response<ResetSessionKeyResponse>, Status> {
        let subject = request.get_ref().subject.clone();
        let user = self.user_of(&request, subject).await?;
        self.wechat.session_keys.reset(&user).await?;
        Ok(Response::new(ResetSessionKeyResponse {}))
    }

    async fn read_stream(
        &self,
        request: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadStreamResponse>, Status> {
        let r = request.into_inner();
        let credentials = r.session.unwrap_or_default();
        // A revoked or expired session reads nothing; a user reads their own stream only.
        let (record, app) = self.session(&credentials.id, &credentials.skey).await?;
        let since = r.since.as_ref().map(|p| (p.epoch.as_str(), p.offset));
        let resume = self
            .streams
            .read(record.user.open_id(), Some(&app), since)
            .await?;
        Ok(Response::new(pb::ReadStreamResponse {
            epoch: resume.epoch,
            top: resume.top,
            recovered: resume.failure.is_none(),
            reason: resume.failure.unwrap_or_default().to_owned(),
            entries: resume
                .entries
                .into_iter()
                .map(|e| pb::StreamEntry {
                    offset: e.offset,
                    text: e.text,
                })
                .collect(),
        }))
    }

    async fn handle_we_chat_push(
        &self,
        request: Request<pb::WeChatPushRequest>,
    ) -> Result<Response<pb::WeChatPushResponse>, Status> {
        Ok(Response::new(
            self.relay_wechat_push(request.get_ref()).await,
        ))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        Ok(Response::new(self.list_dead(&request).await?))
    }

    async fn requeue_dead_letters(
        &self,
        request: Request<pb::RequeueDeadLettersRequest>,
    ) -> Result<Response<pb::RequeueDeadLettersResponse>, Status> {
        Ok(Response::new(self.requeue_dead(&request).await?))
    }

    async fn presence(
        &self,
        request: Request<pb::PresenceRequest>,
    ) -> Result<Response<pb::PresenceResponse>, Status> {
        let wait = push_wait(&request);
        let r = request.get_ref();
        if r.open_ids.is_empty() || r.open_ids.len() > push::MAX_PRESENCE {
            return Err(SessionError::InvalidArgument(format!(
                "ask about 1 to {} users",
                push::MAX_PRESENCE
            ))
            .into());
        }
        let mut probes: Vec<pb::PushMessage> = r
            .open_ids
            .iter()
            .map(|open_id| pb::PushMessage {
                target: Some(pb::push_message::Target::OpenId(open_id.clone())),
                app_id: r.app_id.clone(),
                ..Default::default()
            })
            .collect();
        push::check(&probes)?;
        self.scope_messages(&request, &mut probes)?;
        for probe in &mut probes {
            probe.probe = true;
        }
        let outcome = self.pushes.publish(probes, wait).await;
        let mut users = Vec::with_capacity(r.open_ids.len());
        for (open_id, sockets) in r.open_ids.iter().zip(outcome.sockets) {
            let top = self.streams.top(open_id).await?;
            users.push(pb::UserPresence {
                open_id: open_id.clone(),
                online: sockets > 0,
                sockets,
                top: top.as_ref().map_or(0, |p| p.offset),
                epoch: top.map(|p| p.epoch).unwrap_or_default(),
            });
        }
        Ok(Response::new(pb::PresenceResponse {
            users,
            gateways: outcome.gateways,
            gateways_answered: outcome.answered,
        }))
    }

    async fn watch_revocations(
        &self,
        _request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        // A replica that is still opening its feed (it just started, or MongoDB is back)
        // gets a moment before the follower is sent elsewhere.
        let feed = self.sessions.revocations();
        let patience = tokio::time::Instant::now() + FOLLOWER_PATIENCE;
        while !feed.is_live() && tokio::time::Instant::now() < patience {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let revocations = feed.subscribe();
        if !feed.is_live() {
            return Ok(Response::new(revocations));
        }
        // Two lanes on one stream: revocations first whenever both have something, and the
        // stream ends when the revocations do (a cut feed must reach the follower).
        let revocations = revocations.map(Some).chain(tokio_stream::once(None));
        let pushes = self.pushes.subscribe().map(Some);
        let merged = futures::stream::select_with_strategy(revocations, pushes, |_: &mut ()| {
            futures::stream::PollNext::Left
        })
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready);
        Ok(Response::new(Box::pin(
            merged.take_until(self.shutdown.clone().cancelled_owned()),
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
