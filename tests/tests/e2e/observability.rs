//! Observability as an on-call engineer meets it: real Prometheus scrapes both services while
//! a client logs in, uses `/me`, fails a login and holds a WebSocket; the series move as the
//! traffic says; `promtool` accepts both expositions and the shipped alert rules.
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use weapp_tests::{
    Service, Stack,
    prometheus::{self, Prometheus},
    wechat_sandbox::MintRequest,
};

async fn exposition(stack: &Stack, service: Service) -> String {
    let addr = stack.metrics_addr(service);
    let answer = stack
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "Prometheus' text format"
    );
    answer.text().await.unwrap()
}

#[tokio::test]
async fn prometheus_sees_the_traffic_and_promtool_accepts_what_is_shipped() {
    let stack = Stack::start().await;
    let prometheus = Prometheus::scraping(&[
        ("weapp-gateway", stack.metrics_addr(Service::Gateway)),
        ("weapp-session", stack.metrics_addr(Service::SessionSvc)),
    ]);
    prometheus.wait_for("sum(up)", 2.0).await;

    // A login, five /me, a login WeChat refuses (40029), a WebSocket held open.
    let (minted, session) = stack.new_session().await;
    for _ in 0..5 {
        assert_eq!(stack.get("/me", Some(&session)).await.status(), 200);
    }
    let refused = stack.mint(MintRequest {
        errcode: Some(40029),
        ..Default::default()
    });
    assert_eq!(stack.login_encrypted(&refused).await.status(), 401);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(stack.ws_url(&format!("/ws?{}", session.query())))
            .await
            .unwrap();
    ws.next().await.unwrap().unwrap();
    ws.send(Message::Text("hi".into())).await.unwrap();
    ws.next().await.unwrap().unwrap();

    let gateway = |q: &str| q.replace("JOB", r#"job="weapp-gateway""#);
    let session_svc = |q: &str| q.replace("JOB", r#"job="weapp-session""#);
    prometheus
        .wait_for(&gateway("weapp_websockets_open{JOB}"), 1.0)
        .await;
    prometheus
        .wait_for(
            &gateway(r#"sum(weapp_http_requests_total{JOB,route="/me",status="2xx"})"#),
            5.0,
        )
        .await;
    prometheus
        .wait_for(&gateway(r#"weapp_logins_total{JOB,outcome="ok"}"#), 1.0)
        .await;
    prometheus
        .wait_for(
            &gateway(r#"weapp_logins_total{JOB,outcome="refused"}"#),
            1.0,
        )
        .await;
    // The refused login's errcode, as session-svc saw it at WeChat.
    prometheus
        .wait_for(
            &session_svc(
                r#"weapp_wechat_calls_total{JOB,endpoint="jscode2session",errcode="40029"}"#,
            ),
            1.0,
        )
        .await;
    prometheus
        .wait_for(
            &session_svc(r#"weapp_logins_total{JOB,outcome="PermissionDenied"}"#),
            1.0,
        )
        .await;
    prometheus
        .wait_for(
            &session_svc(r#"weapp_grpc_server_calls_total{JOB,method="Login",code="Ok"}"#),
            1.0,
        )
        .await;
    prometheus
        .wait_for(
            &gateway(
                r#"weapp_grpc_client_calls_total{JOB,method="Login",code="PermissionDenied"}"#,
            ),
            1.0,
        )
        .await;
    prometheus
        .wait_for(
            &gateway(r#"sum(weapp_websocket_messages_total{JOB,direction="in"})"#),
            1.0,
        )
        .await;
    prometheus
        .wait_for(&gateway("weapp_revocation_stream_connected{JOB}"), 1.0)
        .await;
    prometheus
        .wait_for(
            &session_svc(
                r#"sum(weapp_store_operations_total{JOB,operation="insert",outcome="ok"})"#,
            ),
            1.0,
        )
        .await;

    // The socket closes: the gauge comes down, the close is counted by its code.
    ws.close(None).await.unwrap();
    prometheus
        .wait_for(&gateway("weapp_websockets_open{JOB}"), 0.0)
        .await;
    prometheus
        .wait_for(
            &gateway(r#"weapp_websockets_closed_total{JOB,code="1000"}"#),
            1.0,
        )
        .await;

    // A logout evicts the session from the gateway's cache: counted by its cause.
    assert_eq!(stack.get("/logout", Some(&session)).await.status(), 200);
    prometheus
        .wait_for(
            &gateway(r#"weapp_session_cache_evictions_total{JOB,cause="invalidated"}"#),
            1.0,
        )
        .await;

    // Nothing personal in a label: no openId, session id or raw path anywhere.
    for service in [Service::Gateway, Service::SessionSvc] {
        let text = exposition(&stack, service).await;
        for private in [&minted.openid, &session.id, &session.skey] {
            assert!(
                !text.contains(private.as_str()),
                "{service:?} exposes {private}"
            );
        }
        assert_eq!(prometheus::check_metrics(&text), "", "{service:?}:\n{text}");
    }
    // A 404-ish path is counted as `other`, not as itself.
    assert_eq!(stack.get("/no/such/page", None).await.status(), 200);
    let text = exposition(&stack, Service::Gateway).await;
    assert!(!text.contains("/no/such/page"));
    assert!(text.contains(r#"route="other""#));

    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/rules.yml");
    let report = prometheus::check_rules(&rules).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("SUCCESS"), "{report}");
}

/// A login at `gateway` that brings `traceparent`, as nginx or a client may send it.
async fn login_with(
    http: &reqwest::Client,
    wechat: &weapp_tests::WeChat,
    gateway: &str,
    traceparent: &str,
) -> weapp_tests::ClientSession {
    let minted = wechat.mint(MintRequest::default());
    let login = http
        .get(format!("{gateway}/login"))
        .header("X-WX-Code", &minted.code)
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    weapp_tests::session_from(login).await
}

/// `/me` at `gateway` in `session`, with a `traceparent` or none: the answer's status.
async fn me(
    http: &reqwest::Client,
    gateway: &str,
    session: &weapp_tests::ClientSession,
    traceparent: Option<&str>,
) -> reqwest::StatusCode {
    let mut request = http.get(format!("{gateway}/me")).headers(session.headers());
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    request.send().await.unwrap().status()
}

/// One trace id across the gRPC hop, in both services' log lines: the shipped binaries with
/// their logs at debug, a login that brings a W3C `traceparent` (as nginx or a client may
/// send), and a `/me` that brings none (the gateway starts a trace).
#[tokio::test]
async fn one_trace_id_appears_in_both_services_log_lines() {
    use weapp_tests::{WeChat, services::ServiceProcess};
    let wechat = WeChat::start().await;
    let data = tempfile::tempdir().unwrap();
    let debug = "info,gateway_svc=debug,session_svc=debug".to_owned();
    let mut env = wechat.session_svc_env();
    env.extend([
        ("WEAPP_DATA_DIR", data.path().display().to_string()),
        ("RUST_LOG", debug.clone()),
    ]);
    let session_svc = ServiceProcess::session_svc(&env);
    let gateway = ServiceProcess::gateway(&[
        ("WEAPP_SESSION_SVC_URL", session_svc.url()),
        ("RUST_LOG", debug),
    ]);
    let http = reqwest::Client::new();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let session = login_with(&http, &wechat, &gateway.url(), &traceparent).await;
    let lines_with = |log: &str, id: &str| -> Vec<String> {
        log.lines()
            .filter(|line| line.contains(&format!("trace_id={id}")))
            .map(str::to_owned)
            .collect()
    };
    let eventually = |process: &ServiceProcess, id: &str, what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let lines = lines_with(&process.log(), id);
            if lines.iter().any(|line| line.contains(what)) {
                return lines;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no line with trace_id={id} and {what:?}: {}",
                process.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    eventually(&gateway, trace_id, "finished processing request");
    eventually(&session_svc, trace_id, "login succeeded");

    // No traceparent: the gateway starts a trace, and session-svc's lines for the Validate
    // behind this /me carry its id.
    assert_eq!(me(&http, &gateway.url(), &session, None).await, 200);
    let log = gateway.log();
    let started = log
        .lines()
        .filter(|line| line.contains("path=/me") && line.contains("finished processing request"))
        .find_map(|line| {
            let at = line.find("trace_id=")? + "trace_id=".len();
            line.get(at..at + 32).map(str::to_owned)
        })
        .expect("the gateway logged /me with a trace id");
    assert_ne!(started, trace_id);
    let lines = eventually(&session_svc, &started, "rpc answered");
    assert!(
        lines
            .iter()
            .any(|line| line.contains("method=\"Validate\"") || line.contains("method=Validate")),
        "{lines:#?}"
    );
}

/// Spans over OTLP into a real receiver process (the collector's TraceService on the official
/// protocol definitions): a login that brings a `traceparent` is one trace holding the gateway's
/// span (its parent the caller's), session-svc's span (its parent the gateway's) and the WeChat
/// call (its parent session-svc's); a `/me` with no traceparent is a trace the gateway started,
/// whose id is the one in its log line; a caller's "not sampled" is obeyed; the gateway's spans,
/// held back by a long batch delay, are sent when it stops.
#[tokio::test]
async fn one_trace_holds_the_gateways_span_and_session_svcs() {
    use weapp_tests::{WeChat, otlp::OtlpReceiver, services::ServiceProcess};
    let receiver = OtlpReceiver::start();
    let wechat = WeChat::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut env = wechat.session_svc_env();
    env.extend([
        ("WEAPP_DATA_DIR", data.path().display().to_string()),
        ("WEAPP_OTLP_ENDPOINT", receiver.endpoint()),
        ("WEAPP_TRACE_SAMPLE_RATIO", "1".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]);
    let session_svc = ServiceProcess::session_svc(&env);
    let mut gateway = ServiceProcess::gateway(&[
        ("WEAPP_SESSION_SVC_URL", session_svc.url()),
        ("WEAPP_OTLP_ENDPOINT", receiver.endpoint()),
        ("WEAPP_TRACE_SAMPLE_RATIO", "1".to_owned()),
        // Held until the batch fills or the gateway stops.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000".to_owned()),
        (
            "RUST_LOG",
            "info,gateway_svc::edge::dispatch=debug".to_owned(),
        ),
    ]);
    let http = reqwest::Client::new();

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let session = login_with(&http, &wechat, &gateway.url(), &traceparent).await;
    assert_eq!(me(&http, &gateway.url(), &session, None).await, 200);
    // The caller says "not sampled": nothing of this trace is exported, by either service.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{unsampled}-b7ad6b7169203331-00");
    assert_eq!(
        me(&http, &gateway.url(), &session, Some(&traceparent)).await,
        200
    );

    // session-svc's spans arrive; the gateway's are still held.
    let login_rpc = receiver
        .wait_for("for session-svc's Login", |s| {
            s.service == "session-svc" && s.name == "weapp.session.v1.SessionService/Login"
        })
        .await;
    assert_eq!(login_rpc.trace_id, caller_trace);
    assert_eq!(login_rpc.kind, "SPAN_KIND_SERVER");
    assert_eq!(login_rpc.attributes["rpc.system"], "grpc");
    assert_eq!(login_rpc.attributes["rpc.method"], "Login");
    assert_eq!(login_rpc.attributes["rpc.grpc.status_code"], 0);
    let exchange = receiver
        .wait_for("for the jscode2session call", |s| {
            s.name == "WeChat jscode2session"
        })
        .await;
    assert_eq!(
        (exchange.service.as_str(), exchange.kind.as_str()),
        ("session-svc", "SPAN_KIND_CLIENT")
    );
    assert_eq!(exchange.trace_id, caller_trace);
    assert_eq!(exchange.parent_span_id, login_rpc.span_id);
    assert!(login_rpc.start_ns <= exchange.start_ns && exchange.end_ns <= login_rpc.end_ns);
    let validate = receiver
        .wait_for("for session-svc's Validate", |s| {
            s.name == "weapp.session.v1.SessionService/Validate" && s.trace_id != unsampled
        })
        .await;
    assert!(
        receiver.spans().iter().all(|s| s.service == "session-svc"),
        "the gateway's spans wait for its batch: {:#?}",
        receiver.spans()
    );

    // Stopped, the gateway sends what it held.
    assert!(
        gateway
            .terminate(std::time::Duration::from_secs(10))
            .success()
    );
    let login_request = receiver
        .wait_for("for the gateway's /login", |s| {
            s.service == "gateway-svc" && s.name == "GET /login"
        })
        .await;
    assert_eq!(login_request.trace_id, caller_trace);
    assert_eq!(login_request.kind, "SPAN_KIND_SERVER");
    assert_eq!(login_request.parent_span_id, caller_span);
    assert_eq!(login_request.attributes["http.route"], "/login");
    assert_eq!(login_request.attributes["http.response.status_code"], 200);
    // The trace: caller → gateway → session-svc → WeChat.
    assert_eq!(login_rpc.parent_span_id, login_request.span_id);

    let me_request = receiver
        .wait_for("for the gateway's /me", |s| {
            s.service == "gateway-svc" && s.name == "GET /me" && s.trace_id != unsampled
        })
        .await;
    assert!(
        me_request.parent_span_id.is_empty(),
        "the gateway started this trace"
    );
    assert_eq!(validate.trace_id, me_request.trace_id);
    assert_eq!(validate.parent_span_id, me_request.span_id);
    let logged = gateway.log().lines().any(|line| {
        line.contains("path=/me") && line.contains(&format!("trace_id={}", me_request.trace_id))
    });
    assert!(
        logged,
        "the exported trace id is the logged one: {}",
        gateway.log()
    );

    assert!(
        receiver.spans().iter().all(|s| s.trace_id != unsampled),
        "{:#?}",
        receiver.spans()
    );
}

/// A collector that is down costs spans, never requests: the gateway starts, answers at once,
/// counts the spans it could not send and says so once; when the collector comes up, spans
/// flow again and that is said too.
#[tokio::test]
async fn a_collector_that_is_down_costs_spans_not_requests() {
    use weapp_tests::{otlp::OtlpReceiver, ports::Port, services::ServiceProcess};
    let collector = Port::reserve();
    let metrics = Port::reserve();
    let gateway = ServiceProcess::gateway(&[
        (
            "WEAPP_OTLP_ENDPOINT",
            format!("http://{}", collector.addr()),
        ),
        ("WEAPP_TRACE_SAMPLE_RATIO", "1".to_owned()),
        ("WEAPP_METRICS_LISTEN", metrics.addr().to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]);
    let http = reqwest::Client::new();
    let exported = |outcome: &'static str| {
        let (http, url) = (http.clone(), format!("http://{}/metrics", metrics.addr()));
        async move {
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            text.lines()
                .find(|line| {
                    line.starts_with(&format!(
                        "weapp_spans_exported_total{{outcome=\"{outcome}\"}}"
                    ))
                })
                .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    let ask = || async {
        for _ in 0..20 {
            let started = std::time::Instant::now();
            let answer = http
                .get(format!("{}/healthz", gateway.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
    };
    ask().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while exported("failed").await < 20.0 {
        assert!(std::time::Instant::now() < deadline, "{}", gateway.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ask().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let said = |what: &str| gateway.log().matches(what).count();
    assert_eq!(said("cannot export spans"), 1, "{}", gateway.log());

    let receiver = OtlpReceiver::start_on(collector.addr().port());
    ask().await;
    receiver
        .wait_for("after the collector came up", |s| s.name == "GET /healthz")
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while said("spans reach the OTLP endpoint again") != 1 || exported("ok").await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "{}", gateway.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
