//! The gateway's line to session-svc: the RPCs it makes, each over the replicas
//! (`failover.rs`, `replicas.rs`) with one deadline per call, enforced there and sent along.
use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    config::SessionSvcLink,
    metrics::GatewayMetrics,
    sessions::failover::{Call, Retry},
    sessions::replicas::{ApiKey, Client, Connector, Replica, Replicas, Target},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming};
use weapp_proto::session::v1::{
    CheckSessionsRequest, GetIdentityKeysRequest, GetPhoneNumberRequest, LoginRequest,
    LoginResponse, LogoutRequest, PhoneNumber, ReportDeliveryRequest, Revocation,
    SessionCredentials, Subject, ValidateRequest, ValidateResponse, WatchRevocationsRequest,
    subject,
};

/// WeChat waits 5 s for an answer to its push, then tries again: answer within it.
const WECHAT_PUSH_DEADLINE: Duration = Duration::from_millis(4500);

#[derive(Clone)]
pub struct SessionClient {
    replicas: Arc<Replicas>,
    session_timeout: Duration,
    login_timeout: Duration,
    metrics: Arc<GatewayMetrics>,
}

/// The revocation stream of one replica: reports on its pushes go back to that replica (its
/// follower ids are its own).
pub struct Followed {
    pub stream: Streaming<Revocation>,
    pub replica: Arc<Replica>,
}

impl SessionClient {
    /// Connections made on first use: one on the multi-threaded runtime, and one per
    /// connection thread of `threads` (the runtimes of `edge/io_threads.rs`).
    pub fn connect_lazy(
        link: &SessionSvcLink,
        timeouts: (Duration, Duration),
        metrics: Arc<GatewayMetrics>,
        threads: Vec<tokio::runtime::Handle>,
    ) -> Result<Self, String> {
        let (session_timeout, login_timeout) = timeouts;
        let connector = Connector {
            key: ApiKey::new(link.key.as_ref())?,
            tls: link.tls_config(),
            connect_timeout: session_timeout.max(Duration::from_millis(100)),
            threads,
        };
        let replicas = Replicas::new(Target::parse_list(&link.url)?, connector)?;
        Ok(Self {
            replicas,
            session_timeout,
            login_timeout,
            metrics,
        })
    }

    /// Keeps the replicas' health and addresses current, until `shutdown`.
    pub async fn maintain(self, shutdown: CancellationToken) {
        let timeout = self.session_timeout.max(Duration::from_millis(250));
        self.replicas.maintain(timeout, shutdown).await
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
        let message = ValidateRequest {
            id,
            skey,
            want_identity_assertion,
        };
        self.call(
            "Validate",
            self.session_timeout,
            Retry::Idempotent,
            |mut client, time| {
                let request = with_deadline(message.clone(), time);
                async move { client.validate(request).await }
            },
        )
        .await
    }

    pub async fn login(&self, login: LoginRequest) -> Result<LoginResponse, Status> {
        self.call(
            "Login",
            self.login_timeout,
            Retry::Once,
            |mut client, time| {
                let request = with_deadline(login.clone(), time);
                async move { client.login(request).await }
            },
        )
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
        let message = GetPhoneNumberRequest {
            subject: Some(Subject {
                subject: Some(subject::Subject::Session(SessionCredentials { id, skey })),
                app_id: String::new(),
            }),
            code,
        };
        self.call(
            "GetPhoneNumber",
            self.login_timeout,
            Retry::Once,
            |mut client, time| {
                let request = with_deadline(message.clone(), time);
                async move { client.get_phone_number(request).await }
            },
        )
        .await?
        .phone
        .ok_or_else(|| Status::internal("session service sent no phone number"))
    }

    /// Relays one request to an app's message-push URL; session-svc decides and answers
    /// within WeChat's 5 s. Tried once more on another replica: a request kept twice is one
    /// event (session-svc deduplicates).
    pub async fn wechat_push(
        &self,
        message: weapp_proto::session::v1::WeChatPushRequest,
    ) -> Result<weapp_proto::session::v1::WeChatPushResponse, Status> {
        self.call(
            "HandleWeChatPush",
            WECHAT_PUSH_DEADLINE,
            Retry::Once,
            |mut client, time| {
                let request = with_deadline(message.clone(), time);
                async move { client.handle_we_chat_push(request).await }
            },
        )
        .await
    }

    /// Where the session's user's stream is, and with `since` what they missed (a
    /// reconnecting socket's resume). Read-only, so tried on another replica if need be.
    pub async fn read_stream(
        &self,
        (id, skey): (String, String),
        since: Option<(String, u64)>,
    ) -> Result<weapp_proto::session::v1::ReadStreamResponse, Status> {
        use weapp_proto::session::v1::{ReadStreamRequest, StreamPosition};
        let message = ReadStreamRequest {
            session: Some(SessionCredentials { id, skey }),
            since: since.map(|(epoch, offset)| StreamPosition { epoch, offset }),
        };
        // Reading a window of pushes may take longer than resolving a session.
        let deadline = self.session_timeout.max(Duration::from_secs(2));
        self.call(
            "ReadStream",
            deadline,
            Retry::Idempotent,
            |mut client, time| {
                let request = with_deadline(message.clone(), time);
                async move { client.read_stream(request).await }
            },
        )
        .await
    }

    pub async fn logout(&self, id: String, skey: String) -> Result<(), Status> {
        let message = LogoutRequest { id, skey };
        self.call(
            "Logout",
            self.session_timeout,
            Retry::Once,
            |mut client, time| {
                let request = with_deadline(message.clone(), time);
                async move { client.logout(request).await }
            },
        )
        .await
        .map(drop)
    }

    /// Opens a live replica's revocation stream. Only the opening has a deadline: the stream
    /// itself lives as long as both ends do.
    pub async fn watch_revocations(&self) -> Result<Followed, Status> {
        let deadline = self.session_timeout.max(Duration::from_secs(2));
        let mut chosen = None;
        let stream = self
            .call(
                "WatchRevocations",
                deadline,
                Retry::Idempotent,
                |mut client, _| async move {
                    client.watch_revocations(WatchRevocationsRequest {}).await
                },
            )
            .with_replica(&mut chosen)
            .await?;
        let replica = chosen.ok_or_else(|| Status::internal("no replica answered"))?;
        Ok(Followed { stream, replica })
    }

    /// Which of `session_ids` have ended, asked by id alone (see `CheckSessions`).
    pub async fn ended_sessions(&self, session_ids: Vec<String>) -> Result<Vec<String>, Status> {
        // Thousands of ids at once: more than a Validate's deadline, still bounded.
        let deadline = self.session_timeout.max(Duration::from_secs(5));
        let message = CheckSessionsRequest { session_ids };
        self.call(
            "CheckSessions",
            deadline,
            Retry::Idempotent,
            |mut client, time| {
                let request = with_deadline(message.clone(), time);
                async move { client.check_sessions(request).await }
            },
        )
        .await
        .map(|answer| answer.ended)
    }

    /// How many of this gateway's sockets took each message of a push, told to the replica
    /// whose stream carried it.
    pub async fn report_delivery(
        &self,
        replica: &Replica,
        push_id: u64,
        follower: u64,
        sockets: Vec<u64>,
    ) -> Result<(), Status> {
        let mut client = replica.client.clone();
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
        self.call(
            "GetIdentityKeys",
            self.session_timeout,
            Retry::Idempotent,
            |mut client, time| {
                let request = with_deadline(GetIdentityKeysRequest {}, time);
                async move { client.get_identity_keys(request).await }
            },
        )
        .await
        .map(|answer| answer.jwks)
    }

    /// Whether some replica serves sessions (its store answers) *and* takes this gateway's
    /// key: a gateway that could only answer 502 and 503 is not ready. The key's refusal is
    /// the answer as soon as a serving replica gives it.
    pub async fn ready(&self) -> Result<(), Status> {
        let deadline = self.session_timeout.max(Duration::from_millis(500));
        let started = Instant::now();
        let mut last = Status::unavailable("no session-svc replica is known yet");
        for replica in self.replicas.candidates().await {
            let Some(left) = deadline.checked_sub(started.elapsed()) else {
                break;
            };
            if let Err(status) = replica.serving(left).await {
                last = status;
                continue;
            }
            let mut client = replica.client.clone();
            let left = deadline.saturating_sub(started.elapsed());
            let request = with_deadline(
                CheckSessionsRequest {
                    session_ids: Vec::new(),
                },
                left,
            );
            match tokio::time::timeout(left, client.check_sessions(request)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(status)) if key_refused(&status) => {
                    return Err(Status::permission_denied(format!(
                        "session-svc ({}) refuses this gateway's API key: {} — check \
                         WEAPP_SESSION_SVC_KEY_FILE and the key's scopes (validate, login, \
                         follow) in session-svc's WEAPP_API_KEYS_FILE",
                        replica.name,
                        status.message()
                    )));
                }
                Ok(Err(status)) => last = status,
                Err(_) => last = Status::deadline_exceeded("session-svc did not answer in time"),
            }
        }
        Err(last)
    }
}

fn with_deadline<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

/// session-svc refused the key itself (not the caller's input).
fn key_refused(status: &Status) -> bool {
    status
        .metadata()
        .get(weapp_proto::metadata::API_KEY_REFUSED)
        .is_some()
}

impl SessionClient {
    fn call<'a, T, F, Fut>(
        &'a self,
        method: &'static str,
        deadline: Duration,
        retry: Retry,
        attempt: F,
    ) -> Call<'a, T, F>
    where
        F: FnMut(Client, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        Call::new(
            (&self.replicas, &self.metrics),
            method,
            deadline,
            retry,
            attempt,
        )
    }

    /// One call to one replica, counted by method and outcome. The channel's own timeouts do
    /// not cover every stall (a peer that accepted the connection and went silent), so the
    /// deadline is enforced here as well.
    async fn bounded<T>(
        &self,
        method: &'static str,
        deadline: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
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
