//! What session-svc counts for Prometheus, served at `/metrics` on `WEAPP_METRICS_LISTEN`:
//! gRPC calls (counted by `observe.rs`, a tower layer, refused ones included),
//! WeChat calls by endpoint and errcode, store operations, the access_token, logins and the
//! per-user login limit, the open-API proxy's refusals. Label sets are bounded: RPC and endpoint names from fixed lists,
//! errcodes as WeChat sends them, never an openId or a session id.
use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use metrics::{Counter, Gauge, Histogram};
use weapp_common::metrics::Registry;

pub struct SessionMetrics {
    pub registry: Registry,
    /// By (method, gRPC code).
    grpc: DashMap<(&'static str, i32), (Counter, Histogram)>,
    /// By (endpoint, errcode or failure).
    wechat: DashMap<(&'static str, String), (Counter, Histogram)>,
    /// By (operation, outcome).
    store: DashMap<(&'static str, bool), (Counter, Histogram)>,
    /// By (why, outcome).
    token_refreshes: DashMap<(&'static str, bool), Counter>,
    /// By app: (expiry, fetched at).
    tokens: DashMap<Arc<str>, (Gauge, Gauge)>,
    /// By (app, outcome): `ok`, or the status code's name. The app is one of the apps file's
    /// (a login for an app not served is counted under `unknown`).
    logins: DashMap<(Arc<str>, &'static str), Counter>,
    apps_configured: Gauge,
    /// Pushes kept in users' streams; appends that lost a race and were tried again.
    stream_appends: Counter,
    stream_append_retries: Counter,
    /// Resumes, by outcome (recovered, or the reason not: window, burst, epoch, future).
    resumes: DashMap<&'static str, Counter>,
    pub messages_recovered: Counter,
    /// By outcome (applied, unchanged, error).
    reloads: DashMap<&'static str, Counter>,
    pub login_rate_limited: Counter,
    /// Open-API calls not handed to WeChat (or not answered by it), by reason.
    openapi_refused: DashMap<&'static str, Counter>,
}

impl SessionMetrics {
    pub fn new(registry: Registry) -> Arc<Self> {
        for (name, help) in [
            (
                "weapp_grpc_server_calls_total",
                "gRPC calls answered, by method and code.",
            ),
            (
                "weapp_grpc_server_call_duration_seconds",
                "Time to the answer's head, by method and code (a stream's: to its opening).",
            ),
            (
                "weapp_wechat_calls_total",
                "Calls to WeChat's API, by endpoint and errcode (0: success; timeout, unreachable, http_5xx, malformed when there was no errcode).",
            ),
            (
                "weapp_wechat_call_duration_seconds",
                "Calls to WeChat's API, by endpoint and errcode.",
            ),
            (
                "weapp_store_operations_total",
                "Store operations, by operation and outcome.",
            ),
            (
                "weapp_store_operation_duration_seconds",
                "Store operations, by operation and outcome.",
            ),
            (
                "weapp_access_token_refreshes_total",
                "access_token refreshes that called WeChat, by reason and outcome.",
            ),
            (
                "weapp_access_token_expiry_timestamp_seconds",
                "When the access_token this process hands out expires (Unix time).",
            ),
            (
                "weapp_access_token_fetched_timestamp_seconds",
                "When the access_token this process hands out was fetched (Unix time).",
            ),
            (
                "weapp_logins_total",
                "Logins, by app and outcome (ok, or the gRPC code of the refusal).",
            ),
            (
                "weapp_stream_appends_total",
                "Pushes kept in users' streams (written before they are fanned out).",
            ),
            (
                "weapp_stream_append_retries_total",
                "Appends another publisher won the race for, read again and retried.",
            ),
            (
                "weapp_stream_resumes_total",
                "Reconnecting sockets' resumes, by outcome (recovered, or why not: window, burst, epoch, future).",
            ),
            (
                "weapp_stream_messages_recovered_total",
                "Pushes sent to reconnecting sockets from the stream.",
            ),
            (
                "weapp_apps_configured",
                "Mini-programs (AppIds) this replica serves.",
            ),
            (
                "weapp_config_reloads_total",
                "Reloads of the apps and API keys files (SIGHUP or a watch), by outcome (applied, unchanged, error: the previous configuration stays).",
            ),
            (
                "weapp_rate_limited_total",
                "Requests refused by a rate limit, by limit.",
            ),
            (
                "weapp_openapi_refused_total",
                "Open-API proxy calls answered without WeChat's answer, by reason (no_credential, not_allowed, token_endpoint, …; wechat: WeChat could not be reached). Calls WeChat answered are weapp_wechat_calls_total by allow-listed path.",
            ),
        ] {
            registry.describe(name, help);
        }
        Arc::new(Self {
            grpc: DashMap::new(),
            wechat: DashMap::new(),
            store: DashMap::new(),
            token_refreshes: DashMap::new(),
            tokens: DashMap::new(),
            logins: DashMap::new(),
            apps_configured: registry.gauge("weapp_apps_configured", &[]),
            stream_appends: registry.counter("weapp_stream_appends_total", &[]),
            stream_append_retries: registry.counter("weapp_stream_append_retries_total", &[]),
            resumes: DashMap::new(),
            messages_recovered: registry.counter("weapp_stream_messages_recovered_total", &[]),
            reloads: DashMap::new(),
            login_rate_limited: registry
                .counter("weapp_rate_limited_total", &[("limit", "login_per_user")]),
            openapi_refused: DashMap::new(),
            registry,
        })
    }

    pub fn grpc_call(&self, method: &'static str, code: i32, elapsed: Duration) {
        let entry = self.grpc.entry((method, code)).or_insert_with(|| {
            let code_name = format!("{:?}", tonic::Code::from_i32(code));
            let labels = [("method", method), ("code", code_name.as_str())];
            (
                self.registry
                    .counter("weapp_grpc_server_calls_total", &labels),
                self.registry
                    .histogram("weapp_grpc_server_call_duration_seconds", &labels),
            )
        });
        entry.0.increment(1);
        entry.1.record(elapsed.as_secs_f64());
    }

    /// One call to WeChat: `outcome` is its errcode (`0` for success) or what went wrong.
    pub fn wechat_call(&self, endpoint: &'static str, outcome: &str, elapsed: Duration) {
        let key = (endpoint, outcome.to_owned());
        let entry = self.wechat.entry(key).or_insert_with(|| {
            let labels = [("endpoint", endpoint), ("errcode", outcome)];
            (
                self.registry.counter("weapp_wechat_calls_total", &labels),
                self.registry
                    .histogram("weapp_wechat_call_duration_seconds", &labels),
            )
        });
        entry.0.increment(1);
        entry.1.record(elapsed.as_secs_f64());
    }

    pub fn store_operation(&self, operation: &'static str, ok: bool, elapsed: Duration) {
        let entry = self.store.entry((operation, ok)).or_insert_with(|| {
            let labels = [
                ("operation", operation),
                ("outcome", if ok { "ok" } else { "error" }),
            ];
            (
                self.registry
                    .counter("weapp_store_operations_total", &labels),
                self.registry
                    .histogram("weapp_store_operation_duration_seconds", &labels),
            )
        });
        entry.0.increment(1);
        entry.1.record(elapsed.as_secs_f64());
    }

    pub fn token_refresh(&self, reason: &'static str, ok: bool) {
        self.token_refreshes
            .entry((reason, ok))
            .or_insert_with(|| {
                self.registry.counter(
                    "weapp_access_token_refreshes_total",
                    &[
                        ("reason", reason),
                        ("outcome", if ok { "ok" } else { "error" }),
                    ],
                )
            })
            .increment(1);
    }

    pub fn login(&self, app: &Arc<str>, outcome: &'static str) {
        if let Some(counter) = self.logins.get(&(app.clone(), outcome)) {
            counter.increment(1);
            return;
        }
        self.logins
            .entry((app.clone(), outcome))
            .or_insert_with(|| {
                self.registry
                    .counter("weapp_logins_total", &[("app", app), ("outcome", outcome)])
            })
            .increment(1);
    }

    /// The access_token of `app` this process hands out: when it expires, when it was fetched.
    pub fn token(&self, app: &Arc<str>, expires_at: f64, fetched_at: f64) {
        let entry = self.tokens.entry(app.clone()).or_insert_with(|| {
            let labels = [("app", &**app)];
            (
                self.registry
                    .gauge("weapp_access_token_expiry_timestamp_seconds", &labels),
                self.registry
                    .gauge("weapp_access_token_fetched_timestamp_seconds", &labels),
            )
        });
        entry.0.set(expires_at);
        entry.1.set(fetched_at);
    }

    /// An append to a stream: written, or lost to another publisher (tried again).
    pub fn stream_append(&self, written: bool) {
        match written {
            true => self.stream_appends.increment(1),
            false => self.stream_append_retries.increment(1),
        }
    }

    /// A resume read: its outcome, and how many pushes it sent.
    pub fn resume(&self, outcome: &'static str, recovered: usize) {
        self.resumes
            .entry(outcome)
            .or_insert_with(|| {
                self.registry
                    .counter("weapp_stream_resumes_total", &[("outcome", outcome)])
            })
            .increment(1);
        self.messages_recovered.increment(recovered as u64);
    }

    pub fn apps_configured(&self, apps: usize) {
        self.apps_configured.set(apps as f64);
    }

    pub fn config_reload(&self, outcome: &'static str) {
        self.reloads
            .entry(outcome)
            .or_insert_with(|| {
                self.registry
                    .counter("weapp_config_reloads_total", &[("outcome", outcome)])
            })
            .increment(1);
    }

    pub fn openapi_refused(&self, reason: &'static str) {
        self.openapi_refused
            .entry(reason)
            .or_insert_with(|| {
                self.registry
                    .counter("weapp_openapi_refused_total", &[("reason", reason)])
            })
            .increment(1);
    }
}
