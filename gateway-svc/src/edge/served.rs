//! What every answered request leaves behind, whichever path served it (hyper's, or the
//! forwarding fast path's): its span, when the trace is sampled and exported.
use std::time::Instant;

use weapp_common::{
    otlp::{FinishedSpan, KeyValue, SpanKind},
    trace,
};

use crate::metrics::{GatewayMetrics, RouteLabel};

/// The gateway's span of one request, named as OpenTelemetry names HTTP server spans
/// (`GET /me`: the method and the route template, never the raw path). It ends when the
/// response's head is ready.
pub fn server_span(
    context: trace::TraceContext,
    method: http::Method,
    metrics: &GatewayMetrics,
    label: RouteLabel,
    status: u16,
    started: Instant,
) -> FinishedSpan {
    let route = metrics.route_template(label);
    FinishedSpan {
        context,
        name: format!("{method} {route}").into(),
        kind: SpanKind::Server,
        started,
        attributes: vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ],
        // Per the HTTP conventions a server span fails on 5xx only: a 4xx is the client's.
        error: (status >= 500).then(|| status.to_string()),
    }
}
