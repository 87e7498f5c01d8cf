//! Prometheus metrics, one registry per service instance (not a process-wide recorder: tests run
//! several services in one process, and each must expose only its own), served at `/metrics` on
//! a listen address of its own, apart from the traffic (default loopback, never routed by the
//! shipped nginx). Recording goes through the `metrics` crate's handles. Counters and histograms
//! are sharded per thread (`sharded.rs`: what every request records must not be a cache line
//! the cores pass around); gauges, set rather than counted, are `metrics-exporter-prometheus`'s.
//! Both render in Prometheus' text format.
mod sharded;

use std::{net::SocketAddr, sync::Arc};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Latency buckets (seconds): from a cached session (~100 µs) to WeChat's slowest (5 s).
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Where a service serves `/metrics`; `off` serves nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    At(SocketAddr),
}

/// A clap value parser for [`MetricsListen`].
pub fn metrics_listen(value: &str) -> Result<MetricsListen, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(MetricsListen::Off);
    }
    value
        .parse()
        .map(MetricsListen::At)
        .map_err(|_| "an address like 127.0.0.1:9464, or off".to_owned())
}

/// One service instance's metrics; or, when `/metrics` is off, nothing: every handle it gives
/// is a no-op, so that a service with metrics off pays no recording either.
#[derive(Clone)]
pub struct Registry(Option<Arc<Exposition>>);

struct Exposition {
    /// Gauges.
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Counters and histograms.
    sharded: sharded::Families,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Registry"
        } else {
            "Registry(off)"
        })
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

static METADATA: Metadata<'static> = Metadata::new("weapp", metrics::Level::INFO, None);

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, (*v).to_owned()))
        .collect();
    Key::from_parts(name, labels)
}

impl Registry {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Self(Some(Arc::new(Exposition {
            recorder,
            handle,
            sharded: sharded::Families::default(),
        })))
    }

    /// Records nothing.
    pub fn off() -> Self {
        Self(None)
    }

    /// The registry a service with this `/metrics` setting records into.
    pub fn for_listen(listen: MetricsListen) -> Self {
        match listen {
            MetricsListen::Off => Self::off(),
            MetricsListen::At(_) => Self::new(),
        }
    }

    /// The `# HELP` line of a metric (promtool wants one for each).
    pub fn describe(&self, name: &'static str, help: &'static str) {
        let Some(exposition) = &self.0 else { return };
        exposition.sharded.describe(name, help);
        // The exporter keeps one description per name whatever its type.
        exposition.recorder.describe_counter(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        match &self.0 {
            Some(e) => Counter::from_arc(e.sharded.counter(name, labels)),
            None => Counter::noop(),
        }
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        match &self.0 {
            Some(e) => e.recorder.register_gauge(&key(name, labels), &METADATA),
            None => Gauge::noop(),
        }
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        match &self.0 {
            // Every histogram is a latency in seconds: true Prometheus histograms
            // (aggregatable across instances), not summaries.
            Some(e) => Histogram::from_arc(e.sharded.histogram(name, labels)),
            None => Histogram::noop(),
        }
    }

    /// The exposition, in Prometheus' text format (empty when off).
    pub fn render(&self) -> String {
        let Some(exposition) = &self.0 else {
            return String::new();
        };
        let mut text = exposition.handle.render();
        exposition.sharded.render(&mut text);
        text
    }

    /// Serves `/metrics` on `listener` until `shutdown`. `refresh` runs before each rendering: gauges read from state at scrape
    /// time (cache sizes, time since something) are set there.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        refresh: Arc<dyn Fn() + Send + Sync>,
    ) {
        if self.0.is_none() {
            return;
        }
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let registry = self.clone();
                refresh();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        registry.render(),
                    )
                }
            }),
        );
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "the metrics listener failed");
        }
    }
}

/// An HTTP status' class, the label requests are counted by (`2xx` … `5xx`).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_separate_and_render_prometheus_text() {
        let (a, b) = (Registry::new(), Registry::new());
        a.describe("weapp_test_events_total", "Events seen.");
        a.counter("weapp_test_events_total", &[("kind", "x")])
            .increment(2);
        a.histogram("weapp_test_duration_seconds", &[])
            .record(0.003);
        let text = a.render();
        assert!(
            text.contains("# HELP weapp_test_events_total Events seen."),
            "{text}"
        );
        assert!(
            text.contains("# TYPE weapp_test_events_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"weapp_test_events_total{kind="x"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weapp_test_duration_seconds_bucket{le="0.005"} 1"#),
            "{text}"
        );
        assert!(!b.render().contains("weapp_test_events_total"));
    }

    #[test]
    fn an_off_registry_records_nothing() {
        let off = Registry::for_listen(MetricsListen::Off);
        off.describe("weapp_test_events_total", "Events seen.");
        off.counter("weapp_test_events_total", &[]).increment(1);
        off.histogram("weapp_test_duration_seconds", &[])
            .record(0.1);
        assert_eq!(off.render(), "");
    }

    #[test]
    fn the_listen_setting_takes_an_address_or_off() {
        assert_eq!(metrics_listen("off"), Ok(MetricsListen::Off));
        assert!(matches!(
            metrics_listen("127.0.0.1:9464"),
            Ok(MetricsListen::At(_))
        ));
        assert!(metrics_listen("nine").is_err());
    }
}
