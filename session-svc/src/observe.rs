//! What every gRPC call goes through before its handler: a span carrying the call's trace
//! (W3C `traceparent` from the caller's metadata, or a new one), so that every log line written
//! while answering shows the same `trace_id` as the gateway's lines for the request, exported
//! over OTLP when that is on (`weapp_common::otlp`); and the call's count and latency by method
//! and code (`metrics.rs`).
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use tracing::Instrument as _;
use weapp_common::{
    otlp::{FinishedSpan, KeyValue, SpanKind, Spans},
    trace::{self, TRACEPARENT, TraceContext},
};

use crate::metrics::SessionMetrics;

/// The RPCs counted by name; anything else is `other`.
const RPCS: [&str; 19] = [
    "Login",
    "Validate",
    "Logout",
    "RevokeUser",
    "WatchRevocations",
    "CheckSessions",
    "GetIdentityKeys",
    "Publish",
    "PublishBatch",
    "ReportDelivery",
    "GetAccessToken",
    "ReportInvalidAccessToken",
    "ForceRefreshAccessToken",
    "GetPhoneNumber",
    "DecryptUserData",
    "CheckSessionKey",
    "ResetSessionKey",
    "grpc.health.v1.Health",
    "grpc.reflection",
];

/// The method label of a gRPC path.
fn rpc_label(path: &str) -> &'static str {
    let name = match path.strip_prefix("/weapp.session.v1.SessionService/") {
        Some(method) => method,
        None if path.starts_with("/grpc.health.v1.Health/") => "grpc.health.v1.Health",
        None if path.starts_with("/grpc.reflection.") => "grpc.reflection",
        None => "other",
    };
    RPCS.iter()
        .find(|rpc| **rpc == name)
        .copied()
        .unwrap_or("other")
}

/// Counts every gRPC call by method and status code, within a span that carries its trace.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<SessionMetrics>,
    spans: Spans,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<SessionMetrics>, spans: Spans) -> Self {
        Self { metrics, spans }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            spans: self.spans.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<SessionMetrics>,
    spans: Spans,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = rpc_label(request.uri().path());
        let started = Instant::now();
        let metrics = self.metrics.clone();
        // The caller's trace (the gateway sends its request's), or a new one: every log line
        // written while answering carries its id, and calls made meanwhile (to WeChat) are
        // its children.
        let context = self.spans.serve(
            request
                .headers()
                .get(TRACEPARENT)
                .and_then(|v| v.to_str().ok()),
        );
        let export = self
            .spans
            .exports(&context)
            .then(|| (request.uri().path().to_owned(), self.spans.clone()));
        let span = tracing::info_span!("grpc", method, trace_id = %context.trace_id());
        let answer = span.in_scope(|| self.inner.call(request));
        Box::pin(
            trace::within(Some(context), async move {
                let response = answer.await?;
                // An error answers with its status in the head (trailers-only); a success puts
                // "0" in the trailers after the body, so no status in the head means OK.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                metrics.grpc_call(method, code, started.elapsed());
                tracing::debug!(code, elapsed = ?started.elapsed(), "rpc answered");
                if let Some((path, spans)) = export {
                    spans.record(server_span(context, &path, code, started));
                }
                Ok(response)
            })
            .instrument(span),
        )
    }
}

/// session-svc's span of one call, named and described as OpenTelemetry's RPC conventions say
/// (`weapp.session.v1.SessionService/Validate`).
fn server_span(context: TraceContext, path: &str, code: i32, started: Instant) -> FinishedSpan {
    let name = path.trim_start_matches('/').to_owned();
    let (service, method) = name.split_once('/').unwrap_or((name.as_str(), ""));
    let attributes = vec![
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_owned()),
        KeyValue::new("rpc.method", method.to_owned()),
        KeyValue::new("rpc.grpc.status_code", i64::from(code)),
    ];
    // The codes that are the server's failure, not the caller's (the conventions' list).
    let failed = matches!(code, 2 | 4 | 12 | 13 | 14 | 15);
    FinishedSpan {
        context,
        name: name.into(),
        kind: SpanKind::Server,
        started,
        attributes,
        error: failed.then(|| format!("gRPC status {code}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_labels_are_bounded() {
        assert_eq!(
            rpc_label("/weapp.session.v1.SessionService/Validate"),
            "Validate"
        );
        assert_eq!(rpc_label("/weapp.session.v1.SessionService/Nope"), "other");
        assert_eq!(
            rpc_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health"
        );
        assert_eq!(rpc_label("/x/y"), "other");
    }
}
