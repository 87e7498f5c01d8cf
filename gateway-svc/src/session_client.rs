//! The gateway's line to session-svc: one shared, lazily connected tonic channel (cheap to
//! clone, reconnects by itself) and a deadline on every call, enforced here and sent along.
use std::{future::Future, sync::Arc, time::Duration};

use secrecy::{ExposeSecret as _, SecretString};

use weapp_common::trace;

use crate::{config::SessionSvcLink, metrics::GatewayMetrics};
use tonic::{
    Request, Status, Streaming,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use weapp_proto::session::v1::{
    CheckSessionsRequest, GetIdentityKeysRequest, GetPhoneNumberRequest, LoginRequest,
    LoginResponse, LogoutRequest, PhoneNumber, ReportDeliveryRequest, Revocation,
    SessionCredentials, Subject, ValidateRequest, ValidateResponse, WatchRevocationsRequest,
    session_service_client::SessionServiceClient, session_service_server::SERVICE_NAME, subject,
};

/// The gateway's API key, on every call to session-svc (health checks are open and go
/// without it).
#[derive(Clone)]
pub struct ApiKey(Option<AsciiMetadataValue>);

impl ApiKey {
    fn new(key: Option<&SecretString>) -> Result<Self, String> {
        let Some(key) = key else {
            return Ok(Self(None));
        };
        let mut value = MetadataValue::try_from(format!("Bearer {}", key.expose_secret()))
            .map_err(|_| "the session-svc key must be visible ASCII characters".to_owned())?;
        // Kept out of Debug output.
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

/// Every call presents the key, and carries the request's trace on to session-svc.
impl Interceptor for ApiKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        // The gateway's request span is the parent of session-svc's.
        if let Some(context) = trace::current()
            && let Ok(value) = context.header().parse()
        {
            request.metadata_mut().insert(trace::TRACEPARENT, value);
        }
        Ok(request)
    }
}

#[derive(Clone)]
pub struct SessionClient {
    client: SessionServiceClient<InterceptedService<Channel, ApiKey>>,
    health: HealthClient<Channel>,
    session_timeout: Duration,
    login_timeout: Duration,
    metrics: Arc<GatewayMetrics>,
}

impl SessionClient {
    pub fn connect_lazy(
        link: &SessionSvcLink,
        timeouts: (Duration, Duration),
        metrics: Arc<GatewayMetrics>,
    ) -> Result<Self, String> {
        let (session_timeout, login_timeout) = timeouts;
        let key = ApiKey::new(link.key.as_ref())?;
        let url = &link.url;
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("bad session-svc URL {url:?}: {e}"))?;
        if let Some(tls) = link.tls_config() {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS to session-svc: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(session_timeout.max(Duration::from_millis(100)))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        Ok(Self {
            client: SessionServiceClient::with_interceptor(channel.clone(), key),
            health: HealthClient::new(channel),
            session_timeout,
            login_timeout,
            metrics,
        })
    }

    /// What the gateway counts (this client counts its calls there).
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    pub async fn validate(
        &self,
        id: String,
        skey: String,
        want_identity_assertion: bool,
    ) -> Result<ValidateResponse, Status> {
        let mut client = self.client.clone();
        let request = with_deadline(
            ValidateRequest {
                id,
                skey,
                want_identity_assertion,
            },
            self.session_timeout,
        );
        self.bounded("Validate", self.session_timeout, async move {
            client.validate(request).await
        })
        .await
    }

    pub async fn login(&self, login: LoginRequest) -> Result<LoginResponse, Status> {
        let mut client = self.client.clone();
        let request = with_deadline(login, self.login_timeout);
        self.bounded("Login", self.login_timeout, async move {
            client.login(request).await
        })
        .await
    }

    /// Exchanges a phone code for the session's user's number (session-svc asks WeChat, so
    /// this gets the login's deadline).
    pub async fn phone_number(
        &self,
        id: String,
        skey: String,
        code: String,
    ) -> Result<PhoneNumber, Status> {
        let mut client = self.client.clone();
        let request = with_deadline(
            GetPhoneNumberRequest {
                subject: Some(Subject {
                    subject: Some(subject::Subject::Session(SessionCredentials { id, skey })),
                }),
                code,
            },
            self.login_timeout,
        );
        self.bounded("GetPhoneNumber", self.login_timeout, async move {
            client.get_phone_number(request).await
        })
        .await?
        .phone
        .ok_or_else(|| Status::internal("session service sent no phone number"))
    }

    pub async fn logout(&self, id: String, skey: String) -> Result<(), Status> {
        let mut client = self.client.clone();
        let request = with_deadline(LogoutRequest { id, skey }, self.session_timeout);
        self.bounded("Logout", self.session_timeout, async move {
            client.logout(request).await
        })
        .await
        .map(drop)
    }
}

impl SessionClient {
    /// Opens session-svc's revocation stream. Only the opening has a deadline: the stream
    /// itself lives as long as both ends do.
    pub async fn watch_revocations(&self) -> Result<Streaming<Revocation>, Status> {
        let mut client = self.client.clone();
        let deadline = self.session_timeout.max(Duration::from_secs(2));
        self.bounded("WatchRevocations", deadline, async move {
            client.watch_revocations(WatchRevocationsRequest {}).await
        })
        .await
    }

    /// Which of `session_ids` have ended, asked by id alone (see `CheckSessions`).
    pub async fn ended_sessions(&self, session_ids: Vec<String>) -> Result<Vec<String>, Status> {
        let mut client = self.client.clone();
        // Thousands of ids at once: more than a Validate's deadline, still bounded.
        let deadline = self.session_timeout.max(Duration::from_secs(5));
        let request = with_deadline(CheckSessionsRequest { session_ids }, deadline);
        self.bounded("CheckSessions", deadline, async move {
            client.check_sessions(request).await
        })
        .await
        .map(|answer| answer.ended)
    }

    /// How many of this gateway's sockets took each message of a push.
    pub async fn report_delivery(
        &self,
        push_id: u64,
        follower: u64,
        sockets: Vec<u64>,
    ) -> Result<(), Status> {
        let mut client = self.client.clone();
        let request = with_deadline(
            ReportDeliveryRequest {
                push_id,
                follower,
                sockets,
            },
            self.session_timeout,
        );
        self.bounded("ReportDelivery", self.session_timeout, async move {
            client.report_delivery(request).await
        })
        .await
        .map(drop)
    }

    /// The public keys of identity assertions (a JWKS document), for `/.well-known/jwks.json`.
    pub async fn identity_keys(&self) -> Result<String, Status> {
        let mut client = self.client.clone();
        let request = with_deadline(GetIdentityKeysRequest {}, self.session_timeout);
        self.bounded("GetIdentityKeys", self.session_timeout, async move {
            client.get_identity_keys(request).await
        })
        .await
        .map(|answer| answer.jwks)
    }

    /// Whether session-svc reports its session service SERVING (its store answers).
    pub async fn ready(&self) -> Result<(), Status> {
        let mut health = self.health.clone();
        let request = with_deadline(
            HealthCheckRequest {
                service: SERVICE_NAME.into(),
            },
            self.session_timeout,
        );
        let answer = self
            .bounded(
                "grpc.health.v1.Health/Check",
                self.session_timeout,
                async move { health.check(request).await },
            )
            .await?;
        match answer.status() {
            ServingStatus::Serving => Ok(()),
            other => Err(Status::unavailable(format!(
                "session-svc reports {}",
                other.as_str_name()
            ))),
        }
    }
}

fn with_deadline<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

impl SessionClient {
    /// One call, counted by method and outcome. The channel's own timeouts do not cover every
    /// stall (a peer that accepted the connection and went silent), so the deadline is
    /// enforced here as well.
    async fn bounded<T>(
        &self,
        method: &'static str,
        deadline: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        let started = std::time::Instant::now();
        let outcome = match tokio::time::timeout(deadline, call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "session-svc did not answer within {deadline:?}"
            ))),
        };
        let code = outcome
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.grpc_call(method, code, started.elapsed());
        outcome
    }
}
