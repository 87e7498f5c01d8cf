//! Spans exported over OTLP (gRPC) when an endpoint is configured: each service sends one span
//! per request it serves, named and timed, under the trace and span ids of its
//! [`TraceContext`], so that a collector (Jaeger, Tempo, the OpenTelemetry Collector) shows the
//! gateway's span and session-svc's span as one trace, parent and child.
//!
//! The ids are ours ([`crate::trace`]), not the SDK's: they are in the `traceparent` the gateway
//! sends and in every log line, and the SDK's tracer would make new ones. So finished spans are
//! handed to the SDK's batch processor and OTLP exporter as [`SpanData`] directly. With no
//! endpoint nothing is built and recording is one branch.
use std::{
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use metrics::Counter;

use opentelemetry::{
    InstrumentationScope,
    trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{
        BatchSpanProcessor, SpanData, SpanEvents, SpanExporter, SpanLinks, SpanProcessor as _,
    },
};

use crate::{metrics::Registry, trace::TraceContext};

/// What describing a span takes, re-exported so that the services need no OpenTelemetry
/// dependency of their own.
pub use opentelemetry::{KeyValue, trace::SpanKind};

/// How long one export may take before the batch is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go: `off`, or an OTLP/gRPC endpoint (`http://collector:4317`; plain text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OtlpEndpoint {
    Off,
    At(String),
}

/// A clap value parser for [`OtlpEndpoint`].
pub fn otlp_endpoint(value: &str) -> Result<OtlpEndpoint, String> {
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("off") {
        return Ok(OtlpEndpoint::Off);
    }
    if value.starts_with("https://") {
        // No TLS roots are built in: export in plain text to a collector on this host or the
        // private network (the usual agent), which forwards over TLS.
        return Err(
            "https is not supported: export to a collector on this host or your \
                    private network (http://collector:4317), and let it forward over TLS"
                .into(),
        );
    }
    let rest = value
        .strip_prefix("http://")
        .ok_or("an OTLP/gRPC URL like http://127.0.0.1:4317, or off")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL names no host (write it like http://127.0.0.1:4317)".into());
    }
    // The endpoint is logged at start-up: no place for a password.
    if rest
        .split('/')
        .next()
        .is_some_and(|authority| authority.contains('@'))
    {
        return Err("the URL must not carry credentials".into());
    }
    Ok(OtlpEndpoint::At(value.to_owned()))
}

/// A fraction in [0, 1].
pub fn ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("a fraction from 0 to 1, like 0.01".into()),
    }
}

/// The tracing settings both services take.
#[derive(clap::Args, Clone, Debug)]
pub struct TracingSettings {
    /// OTLP/gRPC endpoint spans are exported to (`http://collector:4317`); `off`: none.
    #[arg(long, env = "WEAPP_OTLP_ENDPOINT", default_value = "off", value_parser = otlp_endpoint)]
    pub otlp_endpoint: OtlpEndpoint,

    /// Fraction of the traces this service starts that are sampled (exported). A caller's
    /// `traceparent` decides for the traces it carries.
    #[arg(long, env = "WEAPP_TRACE_SAMPLE_RATIO", default_value = "0.01", value_parser = ratio)]
    pub trace_sample_ratio: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter for {endpoint}: {source}")]
pub struct OtlpError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

const EXPORTED: &str = "weapp_spans_exported_total";

/// The OTLP exporter, with what it achieves counted and its failures logged when they start
/// and when they end (the SDK's own reports are off).
#[derive(Debug)]
struct Reported<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
    exported: Counter,
    failed: Counter,
}

impl<E: SpanExporter> SpanExporter for Reported<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.exported.increment(spans);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "spans reach the OTLP endpoint again");
                }
            }
            Err(e) => {
                self.failed.increment(spans);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        error = %e,
                        "cannot export spans: they are dropped until the OTLP endpoint answers"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A span that has ended, as the services describe it.
pub struct FinishedSpan {
    /// The span's own context (its span id is the one it sent onwards).
    pub context: TraceContext,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    /// When it started, as a monotonic instant (the wall-clock start is derived at the end).
    pub started: Instant,
    pub attributes: Vec<KeyValue>,
    /// An error status, with its description.
    pub error: Option<String>,
}

struct Exporter {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

/// A service's spans: the trace context of each request it serves, and where finished spans go
/// (nowhere, or an OTLP endpoint). Cheap to clone.
#[derive(Clone)]
pub struct Spans {
    exporter: Option<Arc<Exporter>>,
    sample_ratio: f64,
}

impl Default for Spans {
    fn default() -> Self {
        Self::off()
    }
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spans")
            .field("otlp", &self.exporter.is_some())
            .field("sample_ratio", &self.sample_ratio)
            .finish()
    }
}

impl Spans {
    /// No export (trace ids are still taken, made and passed on, for the logs).
    pub fn off() -> Self {
        Self {
            exporter: None,
            sample_ratio: 1.0,
        }
    }

    /// Spans as `settings` say, exported as `service`. Must run within the Tokio runtime that
    /// will carry the exports (the gRPC channel lives there); connecting is lazy, so a
    /// collector that is down costs dropped spans, never a failed start.
    ///
    /// What reaches the collector and what does not is counted in `registry`
    /// (`weapp_spans_exported_total{outcome}`), and a collector that stops answering is logged
    /// once, not per batch.
    pub fn start(
        settings: &TracingSettings,
        service: &'static str,
        registry: &Registry,
    ) -> Result<Self, OtlpError> {
        let OtlpEndpoint::At(url) = &settings.otlp_endpoint else {
            return Ok(Self {
                sample_ratio: settings.trace_sample_ratio,
                ..Self::off()
            });
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|source| OtlpError {
                endpoint: url.clone(),
                source,
            })?;
        let exporter = Reported {
            inner: exporter,
            endpoint: url.clone(),
            failing: AtomicBool::new(false),
            exported: registry.counter(EXPORTED, &[("outcome", "ok")]),
            failed: registry.counter(EXPORTED, &[("outcome", "failed")]),
        };
        registry.describe(
            EXPORTED,
            "Spans sent to the OTLP endpoint, by outcome (failed: the collector did not take them).",
        );
        let mut processor = BatchSpanProcessor::builder(exporter).build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(service)
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let scope = InstrumentationScope::builder("weapp")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        tracing::info!(
            endpoint = %url,
            sample_ratio = settings.trace_sample_ratio,
            "exporting spans over OTLP"
        );
        Ok(Self {
            exporter: Some(Arc::new(Exporter { processor, scope })),
            sample_ratio: settings.trace_sample_ratio,
        })
    }

    /// The context of a request this service serves, given the caller's `traceparent`.
    pub fn serve(&self, traceparent: Option<&str>) -> TraceContext {
        TraceContext::serve(traceparent, self.sample_ratio)
    }

    /// Whether spans are exported at all: callers skip describing spans when not.
    pub fn enabled(&self) -> bool {
        self.exporter.is_some()
    }

    /// Whether a span in `context` would be exported.
    pub fn exports(&self, context: &TraceContext) -> bool {
        self.exporter.is_some() && context.sampled()
    }

    /// Queues `span` for export if it is sampled (a full queue drops it: the request never
    /// waits for the collector).
    pub fn record(&self, span: FinishedSpan) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        if !span.context.sampled() {
            return;
        }
        let elapsed = span.started.elapsed();
        let end_time = SystemTime::now();
        let context = span.context;
        exporter.processor.on_end(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(context.trace_id_bytes()),
                SpanId::from_bytes(context.span_id_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: context
                .parent_span_id_bytes()
                .map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: context.parent_span_id_bytes().is_some(),
            span_kind: span.kind,
            name: span.name,
            start_time: end_time.checked_sub(elapsed).unwrap_or(end_time),
            end_time,
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match span.error {
                Some(description) => Status::error(description),
                None => Status::Unset,
            },
            instrumentation_scope: exporter.scope.clone(),
        });
    }

    /// Sends what is queued and stops (at shutdown). The SDK blocks while it flushes, so this
    /// runs off the async workers.
    pub async fn shutdown(&self) {
        let Some(exporter) = self.exporter.clone() else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || exporter.processor.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "could not export the last spans");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_a_url_or_off() {
        assert_eq!(otlp_endpoint("off"), Ok(OtlpEndpoint::Off));
        assert_eq!(otlp_endpoint(""), Ok(OtlpEndpoint::Off));
        assert_eq!(
            otlp_endpoint("http://127.0.0.1:4317"),
            Ok(OtlpEndpoint::At("http://127.0.0.1:4317".into()))
        );
        assert!(otlp_endpoint("127.0.0.1:4317").is_err());
        assert!(otlp_endpoint("https://collector:4317").is_err());
        let refused = otlp_endpoint("http://user:hunter2@collector:4317").unwrap_err();
        assert!(!refused.contains("hunter2"), "{refused}");
        assert!(otlp_endpoint("http://").is_err());
        assert_eq!(ratio("0.25"), Ok(0.25));
        assert!(ratio("1.5").is_err());
        assert!(ratio("-0.1").is_err());
        assert!(ratio("NaN").is_err());
    }
}
