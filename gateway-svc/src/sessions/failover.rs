//! Calls over session-svc's replicas (`replicas.rs`): one deadline per call, the replicas tried
//! in turn within it, and what may be sent again after which failure. A replica that cannot
//! be reached is skipped for the next, so a request that a live replica could answer does not
//! fail because another is down.
use std::{
    future::{Future, IntoFuture},
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::Status;

use crate::{
    metrics::GatewayMetrics,
    sessions::replicas::{Client, Replica, Replicas},
};

/// Which failed calls may be sent again to another replica.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Asking again changes nothing (Validate, CheckSessions, the JWKS): any failure to
    /// reach a replica, or its own UNAVAILABLE, is tried on the next.
    Idempotent,
    /// Spends something (a login code, a phone code, a session): tried again only when the
    /// replica was never reached or its connection broke (a replica that stops gracefully
    /// finishes what it took; one that crashed mid-exchange costs that login a retry by the
    /// SDK at worst), never after a deadline (it may still be at work).
    Once,
}

/// Whether the call never left this gateway: the connection to the replica could not be made.
fn unsent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause.is::<tonic::ConnectError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether the failure was the connection's (refused, reset, closed by a replica that went
/// away), not an answer the replica sent: those carry no source.
fn broken_connection(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable && std::error::Error::source(status).is_some()
}

/// A call over the replicas, which may say which replica answered.
pub struct Call<'a, T, F> {
    replicas: &'a Replicas,
    metrics: &'a GatewayMetrics,
    method: &'static str,
    deadline: Duration,
    retry: Retry,
    attempt: F,
    chosen: Option<&'a mut Option<Arc<Replica>>>,
    _answer: std::marker::PhantomData<T>,
}

impl<'a, T, F, Fut> Call<'a, T, F>
where
    F: FnMut(Client, Duration) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    pub fn new(
        (replicas, metrics): (&'a Replicas, &'a GatewayMetrics),
        method: &'static str,
        deadline: Duration,
        retry: Retry,
        attempt: F,
    ) -> Self {
        Self {
            replicas,
            metrics,
            method,
            deadline,
            retry,
            attempt,
            chosen: None,
            _answer: std::marker::PhantomData,
        }
    }

    /// Says which replica answered, once the call has succeeded.
    pub fn with_replica(mut self, chosen: &'a mut Option<Arc<Replica>>) -> Self {
        self.chosen = Some(chosen);
        self
    }

    /// Tries the replicas in turn within the one deadline. While another replica is left to
    /// try, an attempt gets half the time that remains, so a replica that accepted the
    /// connection and went silent cannot use it all.
    async fn run(mut self) -> Result<T, Status> {
        let started = Instant::now();
        let candidates = self.replicas.candidates().await;
        let mut outcome = Err(Status::unavailable(
            "no session-svc replica is known (WEAPP_SESSION_SVC_URL resolves to nothing)",
        ));
        let count = candidates.len();
        // Whether the last failure was one another replica could have answered: only that
        // one becomes "no answer in time" when the deadline ran out. A replica's definite
        // answer (an invalid session, a refused code) is passed on as it is.
        let mut unanswered = true;
        for (index, replica) in candidates.into_iter().enumerate() {
            let Some(left) = self.deadline.checked_sub(started.elapsed()) else {
                break;
            };
            let more = index + 1 < count;
            let budget = if more { left / 2 } else { left };
            let attempt = (self.attempt)(replica.client_here(), budget);
            let answer = match tokio::time::timeout(budget, attempt).await {
                Ok(answer) => answer.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "session-svc did not answer within {budget:?}"
                ))),
            };
            let again = match &answer {
                Ok(_) => false,
                Err(status) if unsent(status) || broken_connection(status) => {
                    replica.failed();
                    true
                }
                Err(status) => {
                    self.retry == Retry::Idempotent
                        && matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                        )
                }
            };
            if answer.is_ok()
                && let Some(chosen) = self.chosen.as_deref_mut()
            {
                *chosen = Some(replica.clone());
            }
            outcome = answer;
            unanswered = again;
            if !again || !more {
                break;
            }
            tracing::debug!(replica = %replica.name, method = self.method, "trying the next session-svc replica");
        }
        if outcome.is_err() && unanswered && started.elapsed() >= self.deadline {
            outcome = Err(Status::deadline_exceeded(format!(
                "session-svc did not answer within {:?}",
                self.deadline
            )));
        }
        let code = outcome
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.grpc_call(self.method, code, started.elapsed());
        outcome
    }
}

impl<'a, T, F, Fut> IntoFuture for Call<'a, T, F>
where
    F: FnMut(Client, Duration) -> Fut + Send + 'a,
    Fut: Future<Output = Result<tonic::Response<T>, Status>> + Send + 'a,
    T: Send + 'a,
{
    type Output = Result<T, Status>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
