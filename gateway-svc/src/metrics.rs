//! What the gateway counts for Prometheus, served at `/metrics` on `WEAPP_METRICS_LISTEN`.
//! Every label set is bounded: routes are templates (the gateway's own paths, business route
//! prefixes, or `other`), never raw paths, and no openId or session id is ever a label.
//!
//! Handles are registered once and kept: recording on the hot paths (every request, every
//! WebSocket message) is an atomic add, not a registry lookup.
use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use metrics::{Counter, Gauge, Histogram};
use weapp_common::metrics::{Registry, status_class};

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One route's request counters and latency, by status class.
struct RouteHandles {
    template: String,
    requests: [Counter; 5],
    duration: [Histogram; 5],
}

impl RouteHandles {
    fn new(registry: &Registry, route: &str) -> Self {
        let requests = STATUS_CLASSES.map(|class| {
            registry.counter(
                "weapp_http_requests_total",
                &[("route", route), ("status", class)],
            )
        });
        let duration = STATUS_CLASSES.map(|class| {
            registry.histogram(
                "weapp_http_request_duration_seconds",
                &[("route", route), ("status", class)],
            )
        });
        Self {
            template: route.to_owned(),
            requests,
            duration,
        }
    }
}

/// Sessions dropped from the gateway's cache, by cause.
#[derive(Clone)]
pub struct CacheEvictions {
    pub capacity: Counter,
    pub expired: Counter,
    pub invalidated: Counter,
}

impl Default for CacheEvictions {
    /// Counted nowhere (a cache built without metrics).
    fn default() -> Self {
        Self {
            capacity: Counter::noop(),
            expired: Counter::noop(),
            invalidated: Counter::noop(),
        }
    }
}

/// Which route template a request was counted under (an index into the handles).
#[derive(Clone, Copy, Debug)]
pub struct RouteLabel(usize);

pub struct GatewayMetrics {
    pub registry: Registry,
    /// By route template, in label order (`Destination::label`); replaced when a reload
    /// changes the routes (a template kept keeps its series).
    handles: arc_swap::ArcSwap<Vec<RouteHandles>>,
    /// By (method, gRPC code).
    grpc: DashMap<(&'static str, i32), (Counter, Histogram)>,
    pub ws_open: Gauge,
    /// The cap (`WEAPP_WS_MAX_CONNECTIONS`), for "near the cap" alerts.
    pub ws_limit: Gauge,
    pub ws_opened: Counter,
    /// By close code.
    ws_closed: DashMap<u16, Counter>,
    pub ws_messages_in: Counter,
    pub ws_messages_out: Counter,
    pub pushes_delivered: Counter,
    /// Resuming sockets: pushes that came before their turn and waited; gaps filled from the
    /// stream.
    pub stream_reorders: Counter,
    pub stream_gaps_filled: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_entries: Gauge,
    pub cache_evictions: CacheEvictions,
    pub revocation_connected: Gauge,
    pub revocation_lag: Gauge,
    /// By outcome: `ok`, `refused` (the client's or WeChat's no), `failed` (ours or WeChat's
    /// trouble).
    logins: [Counter; 3],
    pub login_rate_limited: Counter,
    pub connections_refused: Counter,
    /// Connections refused because their address held its share (`per_address.rs`).
    pub address_refused: Counter,
    pub websockets_refused: Counter,
    /// By (route prefix, refused): requests that waited for a place among a route's requests
    /// in flight, and those that waited in vain (503).
    upstream_queue: DashMap<(String, bool), Counter>,
    /// Reloads of the routes file, by outcome (applied, unchanged, error).
    reloads: DashMap<&'static str, Counter>,
}

impl GatewayMetrics {
    /// Handles for every route template, in label order (`edge/destination.rs` decides which
    /// label a request gets).
    pub fn new(registry: Registry, templates: &[String]) -> Arc<Self> {
        describe(&registry);
        let handles = arc_swap::ArcSwap::from_pointee(
            templates
                .iter()
                .map(|template| RouteHandles::new(&registry, template))
                .collect(),
        );
        let gauge = |name| registry.gauge(name, &[]);
        let counter = |name| registry.counter(name, &[]);
        let login = |outcome| registry.counter("weapp_logins_total", &[("outcome", outcome)]);
        let eviction =
            |cause| registry.counter("weapp_session_cache_evictions_total", &[("cause", cause)]);
        Arc::new(Self {
            handles,
            grpc: DashMap::new(),
            ws_open: gauge("weapp_websockets_open"),
            ws_limit: gauge("weapp_websockets_limit"),
            ws_opened: counter("weapp_websockets_opened_total"),
            stream_reorders: counter("weapp_stream_reorders_total"),
            stream_gaps_filled: counter("weapp_stream_gaps_filled_total"),
            ws_closed: DashMap::new(),
            ws_messages_in: registry
                .counter("weapp_websocket_messages_total", &[("direction", "in")]),
            ws_messages_out: registry
                .counter("weapp_websocket_messages_total", &[("direction", "out")]),
            pushes_delivered: counter("weapp_push_messages_delivered_total"),
            cache_hits: registry
                .counter("weapp_session_cache_requests_total", &[("result", "hit")]),
            cache_misses: registry
                .counter("weapp_session_cache_requests_total", &[("result", "miss")]),
            cache_entries: gauge("weapp_session_cache_entries"),
            cache_evictions: CacheEvictions {
                capacity: eviction("capacity"),
                expired: eviction("expired"),
                invalidated: eviction("invalidated"),
            },
            revocation_connected: gauge("weapp_revocation_stream_connected"),
            revocation_lag: gauge("weapp_revocation_stream_lag_seconds"),
            logins: ["ok", "refused", "failed"].map(login),
            login_rate_limited: registry.counter(
                "weapp_rate_limited_total",
                &[("limit", "login_per_address")],
            ),
            connections_refused: registry.counter(
                "weapp_connections_refused_total",
                &[("cap", "http_connections")],
            ),
            websockets_refused: registry
                .counter("weapp_connections_refused_total", &[("cap", "websockets")]),
            upstream_queue: DashMap::new(),
            reloads: DashMap::new(),
            address_refused: registry.counter(
                "weapp_connections_refused_total",
                &[("cap", "http_connections_per_address")],
            ),
            registry,
        })
    }

    /// A request to `route` waited for a place among its requests in flight (`refused`: and
    /// got none in time). Rare by design: a lookup, not a handle kept per request.
    pub fn upstream_queued(&self, route: &str, refused: bool) {
        let key = (route.to_owned(), refused);
        let counter = self.upstream_queue.entry(key).or_insert_with(|| {
            let name = match refused {
                true => "weapp_upstream_refused_total",
                false => "weapp_upstream_queued_total",
            };
            self.registry.counter(name, &[("route", route)])
        });
        counter.increment(1);
    }

    /// The routes changed (a reload): handles for the new templates, in their label order.
    pub fn set_routes(&self, templates: &[String]) {
        self.handles.store(Arc::new(
            templates
                .iter()
                .map(|template| RouteHandles::new(&self.registry, template))
                .collect(),
        ));
    }

    /// The route template a request is counted under, by its index (`Destination::label`).
    pub fn route_label(&self, index: usize) -> RouteLabel {
        RouteLabel(index.min(self.handles.load().len().saturating_sub(1)))
    }

    /// The template a label stands for (what spans are named by, too).
    pub fn route_template(&self, route: RouteLabel) -> String {
        self.handles
            .load()
            .get(route.0)
            .map_or_else(|| "other".to_owned(), |handles| handles.template.clone())
    }

    /// A reload of the routes file (`SIGHUP`) and how it went.
    pub fn config_reload(&self, outcome: &'static str) {
        self.reloads
            .entry(outcome)
            .or_insert_with(|| {
                self.registry
                    .counter("weapp_config_reloads_total", &[("outcome", outcome)])
            })
            .increment(1);
    }

    /// One HTTP request: its route template, status and time to its response head.
    pub fn request(&self, route: RouteLabel, status: u16, elapsed: Duration) {
        let handles = self.handles.load();
        let Some(handles) = handles.get(route.0) else {
            return;
        };
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        debug_assert_eq!(STATUS_CLASSES[class], status_class(status));
        handles.requests[class].increment(1);
        handles.duration[class].record(elapsed.as_secs_f64());
    }

    /// One gRPC call to session-svc.
    pub fn grpc_call(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        let entry = self.grpc.entry((method, code as i32)).or_insert_with(|| {
            let code_name = format!("{code:?}");
            let labels = [("method", method), ("code", code_name.as_str())];
            (
                self.registry
                    .counter("weapp_grpc_client_calls_total", &labels),
                self.registry
                    .histogram("weapp_grpc_client_call_duration_seconds", &labels),
            )
        });
        entry.0.increment(1);
        entry.1.record(elapsed.as_secs_f64());
    }

    /// A WebSocket ended with this close code (`served`: it was open, not refused at once).
    pub fn websocket_closed(&self, code: u16, served: bool) {
        if served {
            self.ws_open.decrement(1.0);
        }
        self.ws_closed
            .entry(code)
            .or_insert_with(|| {
                self.registry.counter(
                    "weapp_websockets_closed_total",
                    &[("code", code.to_string().as_str())],
                )
            })
            .increment(1);
    }

    /// A login answered with `status`.
    pub fn login(&self, status: u16) {
        let outcome = match status {
            200..=299 => 0,
            400..=499 => 1,
            _ => 2,
        };
        self.logins[outcome].increment(1);
    }
}

fn describe(registry: &Registry) {
    for (name, help) in [
        (
            "weapp_http_requests_total",
            "HTTP requests answered, by route template and status class.",
        ),
        (
            "weapp_http_request_duration_seconds",
            "Time to the response head, by route template and status class.",
        ),
        (
            "weapp_grpc_client_calls_total",
            "Calls to session-svc, by method and gRPC code.",
        ),
        (
            "weapp_grpc_client_call_duration_seconds",
            "Calls to session-svc, by method and gRPC code.",
        ),
        ("weapp_websockets_open", "WebSockets open now."),
        (
            "weapp_websockets_limit",
            "The most WebSockets this gateway accepts (WEAPP_WS_MAX_CONNECTIONS).",
        ),
        ("weapp_websockets_opened_total", "WebSockets accepted."),
        (
            "weapp_websockets_closed_total",
            "WebSockets ended, by the close code the gateway sent (1000 when the client closed, 1006 when the connection broke).",
        ),
        (
            "weapp_websocket_messages_total",
            "WebSocket text messages, in from clients and out to them.",
        ),
        (
            "weapp_push_messages_delivered_total",
            "Pushed messages handed to open WebSockets.",
        ),
        (
            "weapp_session_cache_requests_total",
            "Session resolutions answered from the cache (hit) or by session-svc (miss).",
        ),
        ("weapp_session_cache_entries", "Sessions in the cache."),
        (
            "weapp_session_cache_evictions_total",
            "Sessions dropped from the cache, by cause: capacity (least recently used), expired \
             (their time in the cache ran out), invalidated (revoked, logged out or changed).",
        ),
        (
            "weapp_revocation_stream_connected",
            "1 while session-svc's revocation stream is open and heard from, else 0 (the cache is off).",
        ),
        (
            "weapp_revocation_stream_lag_seconds",
            "Time since the revocation stream was last heard from.",
        ),
        (
            "weapp_logins_total",
            "Logins, by outcome: ok, refused (the client's or WeChat's no), failed (ours or WeChat's trouble).",
        ),
        (
            "weapp_rate_limited_total",
            "Requests refused by a rate limit, by limit.",
        ),
        (
            "weapp_connections_refused_total",
            "Connections refused at a cap, by cap.",
        ),
        (
            "weapp_upstream_queued_total",
            "Forwarded requests that waited for a place among their route's requests in flight (max_connections), by route.",
        ),
        (
            "weapp_upstream_refused_total",
            "Forwarded requests refused with 503 after waiting queue_timeout for such a place, by route.",
        ),
        (
            "weapp_stream_reorders_total",
            "Pushes to resuming sockets that came before the one due (replicas publishing at once) and waited for it.",
        ),
        (
            "weapp_stream_gaps_filled_total",
            "Gaps in a resuming socket's pushes filled from the user's stream.",
        ),
        (
            "weapp_config_reloads_total",
            "Reloads of the routes file (SIGHUP), by outcome (applied, unchanged, error: the routes in force stay).",
        ),
    ] {
        registry.describe(name, help);
    }
}
