//! Faults injected into the real binaries while a steady load runs through the gateway:
//! session-svc SIGKILLed, the MongoDB server killed, WeChat slow and failing, the gateway
//! restarted under connected WebSockets. Each test asserts what every client saw, that no
//! session was lost, and prints the figures that docs/RELIABILITY.md reports (`FIGURE` lines;
//! run with `--nocapture` to see them, or set `WEAPP_FAULT_FIGURES` to a file).
//!
//! The tests run one at a time: each holds the machine busy with its load, and the recovery
//! times they measure would otherwise measure each other.
use std::time::{Duration, Instant};

use futures::{SinkExt as _, future::join_all};
use tokio::sync::Mutex;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, protocol::frame::coding::CloseCode},
};
use tokio_util::sync::CancellationToken;
use weapp_proto::session::v1::{RevokeUserRequest, session_service_client::SessionServiceClient};
use weapp_tests::{
    ClientSession, WeChat,
    load::{Load, Outcome, Samples, figure, http, log_in},
    mongo::MongoServer,
    services::ServiceProcess,
    wechat_sandbox::{Fault, MintRequest},
    ws::{next_frame, next_text},
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The gateway's deadline for asking session-svc, in these tests.
const SESSION_DEADLINE: Duration = Duration::from_millis(500);
/// session-svc's MongoDB server-selection timeout, in the store test.
const STORE_TIMEOUT: Duration = Duration::from_millis(400);
/// How long the gateway may keep answering from its cache after the revocation stream is
/// lost (gateway-svc's `REVOCATION_BOUND`).
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

fn gateway_env(
    session_svc: &ServiceProcess,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("WEAPP_SESSION_SVC_URL", session_svc.url()),
        (
            "WEAPP_SESSION_TIMEOUT",
            format!("{}ms", SESSION_DEADLINE.as_millis()),
        ),
        // The tests log in hundreds of users from one address.
        ("WEAPP_LOGIN_RATE_PER_ADDRESS", "0".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

/// How many of `sessions` the gateway no longer accepts (`/me` is not 200). Must be 0.
async fn lost(gateway: &ServiceProcess, sessions: &[ClientSession]) -> usize {
    let http = http();
    let url = format!("{}/me", gateway.url());
    let mut lost = 0;
    for chunk in sessions.chunks(32) {
        let answers = join_all(
            chunk
                .iter()
                .map(|s| http.get(&url).headers(s.headers()).send()),
        )
        .await;
        lost += answers
            .into_iter()
            .filter(|a| !matches!(a, Ok(r) if r.status() == 200))
            .count();
    }
    lost
}

async fn open_websockets(gateway: &ServiceProcess, sessions: &[ClientSession]) -> Vec<Ws> {
    let mut sockets = Vec::with_capacity(sessions.len());
    for session in sessions {
        sockets.push(open_websocket(gateway, session).await);
    }
    sockets
}

async fn open_websocket(gateway: &ServiceProcess, session: &ClientSession) -> Ws {
    let url = format!("ws://{}/ws?{}", gateway.addr(), session.query());
    let (mut ws, _) = connect_async(url).await.expect("upgrade accepted");
    let greeting = next_text(&mut ws).await;
    assert!(greeting.starts_with("Server: 恭喜"), "{greeting}");
    ws
}

/// Every socket echoes one message: it is open and its connection task is alive.
async fn echo_on_all(sockets: &mut [Ws], round: &str) {
    join_all(sockets.iter_mut().enumerate().map(|(i, ws)| async move {
        let message = format!("{round} {i}");
        ws.send(Message::Text(message.clone().into()))
            .await
            .expect("the socket is open");
        assert_eq!(next_text(ws).await, format!("Server: Received({message})"));
    }))
    .await;
}

/// How long `blocking` (a process start, say) takes; the load's tasks go on meanwhile.
fn timed(blocking: impl FnOnce()) -> Duration {
    let started = Instant::now();
    tokio::task::block_in_place(blocking);
    started.elapsed()
}

/// Sleeps without blocking the load's tasks.
async fn hold(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// Asserts the fail-closed contract on every answer of a load: `200`, or `503`
/// `ERR_SESSION_UNAVAILABLE` that does not log the client out, within the deadline; never a
/// hang, a refused connection, a 500 or a logout.
fn assert_fail_closed(samples: &Samples) {
    let late = SESSION_DEADLINE + Duration::from_millis(750);
    for sample in &samples.0 {
        match &sample.outcome {
            Outcome::Answer { status: 200, .. } => {}
            Outcome::Answer {
                status: 503,
                error: Some(error),
                logged_out: false,
            } if error == "ERR_SESSION_UNAVAILABLE" => {}
            other => panic!("at {:?} a client got {other}", sample.at),
        }
        assert!(
            sample.latency < late,
            "at {:?} an answer took {:?} ({})",
            sample.at,
            sample.latency,
            sample.outcome
        );
    }
}

/// Every request sent in `[from, to)` got 503, and there were some.
fn assert_all_unavailable(samples: &Samples, from: Duration, to: Duration) {
    let during: Vec<_> = samples.between(from, to).collect();
    assert!(
        during.len() >= 10,
        "the load kept going during the outage: {} requests",
        during.len()
    );
    if let Some(served) = during.iter().find(|s| s.is_ok()) {
        panic!(
            "at {:?}, during the outage, a request was served",
            served.at
        );
    }
}

/// Nothing failed in the last second of the load: the fault is over for every client.
fn assert_recovered_before(samples: &Samples, end: Duration) {
    let last_second = end.saturating_sub(Duration::from_secs(1));
    assert!(
        samples.between(last_second, end).all(|s| s.is_ok()),
        "not recovered a second before the end: {}",
        samples.summary(last_second, end)
    );
}

/// Prints what the load saw before, during and after a fault (`FIGURE` lines).
fn print_windows(fault: &str, samples: &Samples, [began, ended, end]: [Duration; 3]) {
    for (window, from, to) in [
        ("before", Duration::ZERO, began),
        ("outage", began, ended),
        ("after", ended, end),
    ] {
        figure(format!("{fault}, {window}: {}", samples.summary(from, to)));
    }
}

/// Time from `from` until the last failed request: how long the clients saw the fault.
fn recovery(samples: &Samples, from: Duration) -> Duration {
    samples
        .last_failure_after(from)
        .map_or(Duration::ZERO, |t| t.saturating_sub(from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_svc_killed_under_load_fails_closed_and_loses_no_session() {
    let _one = ONE_AT_A_TIME.lock().await;
    let wechat = WeChat::start().await;
    let data = tempfile::tempdir().expect("data dir");
    let mut env = wechat.session_svc_env();
    env.push(("WEAPP_DATA_DIR", data.path().display().to_string()));
    let mut session_svc = ServiceProcess::session_svc(&env);
    let gateway = ServiceProcess::gateway(&gateway_env(&session_svc, &[]));
    let sessions = log_in(&wechat, &gateway.url(), 200).await;
    let mut sockets = open_websockets(&gateway, &sessions[..20]).await;

    let load = Load::start(format!("{}/me", gateway.url()), sessions.clone(), 16);
    hold(Duration::from_millis(1500)).await;
    let killed = load.now();
    session_svc.kill();
    hold(Duration::from_millis(1000)).await;
    echo_on_all(&mut sockets, "during the outage").await;
    hold(Duration::from_millis(1000)).await;
    let restarted = load.now();
    let start_up = timed(|| session_svc.start());
    hold(Duration::from_millis(3000)).await;
    let end = load.now();
    let samples = load.finish().await;

    assert_fail_closed(&samples);
    assert_all_unavailable(&samples, killed + REVOCATION_BOUND, restarted);
    let recovered = recovery(&samples, restarted);
    assert_recovered_before(&samples, end);
    echo_on_all(&mut sockets, "after the restart").await;
    assert_eq!(lost(&gateway, &sessions).await, 0, "sessions lost");

    print_windows("session-svc SIGKILL", &samples, [killed, restarted, end]);
    figure(format!(
        "session-svc SIGKILL: restarted process listening after {start_up:?}; clients \
         served again {recovered:?} after the restart began; 20/20 WebSockets stayed open; \
         sessions lost: 0 of {}",
        sessions.len()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_killed_under_load_fails_closed_and_heals_without_a_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let wechat = WeChat::start().await;
    let mut mongo = tokio::task::block_in_place(MongoServer::start);
    let mut env = wechat.session_svc_env();
    env.push(("WEAPP_MONGODB_URI", mongo.uri()));
    env.push(("WEAPP_MONGODB_DATABASE", "weapp_faults".into()));
    env.push((
        "WEAPP_MONGODB_TIMEOUT",
        format!("{}ms", STORE_TIMEOUT.as_millis()),
    ));
    let mut session_svc = ServiceProcess::session_svc(&env);
    let pid = session_svc.pid();
    // Under load every request reaches the store (no cache); a second gateway with the
    // default cache shows what sessions that are warm in a cache get during the outage.
    let gateway = ServiceProcess::gateway(&gateway_env(
        &session_svc,
        &[("WEAPP_SESSION_CACHE_TTL", "0s")],
    ));
    let cached = ServiceProcess::gateway(&gateway_env(&session_svc, &[]));
    let sessions = log_in(&wechat, &gateway.url(), 100).await;
    let mut sockets = open_websockets(&gateway, &sessions[..10]).await;
    let http = http();
    let me_on_cached = |session: &ClientSession| {
        http.get(format!("{}/me", cached.url()))
            .headers(session.headers())
            .send()
    };
    let (warm, cold) = (&sessions[0], &sessions[1]);
    assert_eq!(me_on_cached(warm).await.expect("answer").status(), 200);

    let load = Load::start(format!("{}/me", gateway.url()), sessions.clone(), 16);
    hold(Duration::from_millis(1500)).await;
    let stopped = load.now();
    tokio::task::block_in_place(|| mongo.stop());
    hold(Duration::from_millis(500)).await;
    // A login cannot be stored: refused as unavailable, no session made.
    let minted = wechat.mint(MintRequest::default());
    let login = http
        .get(format!("{}/login", gateway.url()))
        .header("X-WX-Code", &minted.code)
        .send()
        .await
        .expect("gateway answers");
    let (status, body) = weapp_tests::json(login).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("ERR_LOGIN_FAILED")),
        "{body}"
    );
    assert_eq!(
        me_on_cached(warm).await.expect("answer").status(),
        200,
        "a warm cache keeps serving"
    );
    assert_eq!(
        me_on_cached(cold).await.expect("answer").status(),
        503,
        "nothing cold passes"
    );
    echo_on_all(&mut sockets, "during the outage").await;
    hold(Duration::from_millis(1000)).await;
    let resumed = load.now();
    let start_up = timed(|| mongo.resume());
    hold(Duration::from_millis(4000)).await;
    let end = load.now();
    let samples = load.finish().await;

    assert_fail_closed(&samples);
    // The driver notices a killed server at the next operation: allow it one deadline. And a
    // request waits up to the store timeout for the server to come back, so one sent that
    // long before the restart may rightly be served.
    assert_all_unavailable(
        &samples,
        stopped + SESSION_DEADLINE,
        resumed.saturating_sub(STORE_TIMEOUT),
    );
    let recovered = recovery(&samples, resumed);
    assert_recovered_before(&samples, end);
    assert!(
        session_svc.is_running() && session_svc.pid() == pid,
        "session-svc was not restarted"
    );
    echo_on_all(&mut sockets, "after the outage").await;
    assert_eq!(lost(&gateway, &sessions).await, 0, "sessions lost");
    let mut grpc = SessionServiceClient::connect(session_svc.url())
        .await
        .expect("gRPC");
    let made = grpc
        .revoke_user(RevokeUserRequest {
            open_id: minted.openid.clone(),
            ..Default::default()
        })
        .await
        .expect("RevokeUser")
        .into_inner()
        .revoked;
    assert_eq!(made, 0, "the refused login made a session");

    print_windows("MongoDB killed", &samples, [stopped, resumed, end]);
    figure(format!(
        "MongoDB killed: nx-27017 listening again after {start_up:?}; clients served again \
         {recovered:?} after it began to restart; session-svc never restarted; 10/10 WebSockets \
         stayed open; sessions lost: 0 of {}",
        sessions.len()
    ));
}

/// The most connections to `port` on loopback seen open at once (client side, ESTABLISHED in
/// /proc/net/tcp), sampled every 2 ms until `stop`.
async fn peak_connections_to(port: u16, stop: CancellationToken) -> usize {
    let remote = format!("0100007F:{port:04X}");
    let mut peak = 0;
    while !stop.is_cancelled() {
        let table = tokio::fs::read_to_string("/proc/net/tcp")
            .await
            .expect("/proc/net/tcp");
        let open = table
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01")
            })
            .count();
        peak = peak.max(open);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    peak
}

/// Logs in with a code minted by `mint` and returns the status, wafer error and time taken.
async fn login_with(
    http: &reqwest::Client,
    gateway: &ServiceProcess,
    code: String,
) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let response = http
        .get(format!("{}/login", gateway.url()))
        .header("X-WX-Code", code)
        .send()
        .await
        .expect("gateway answers");
    let (status, body) = weapp_tests::json(response).await;
    (status, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_failing_or_slow_under_load_maps_to_statuses_and_spends_no_code_twice() {
    let _one = ONE_AT_A_TIME.lock().await;
    let wechat = WeChat::start().await;
    let data = tempfile::tempdir().expect("data dir");
    let mut env = wechat.session_svc_env();
    env.push(("WEAPP_DATA_DIR", data.path().display().to_string()));
    env.push(("WEAPP_WECHAT_TIMEOUT", "1s".into()));
    env.push(("WEAPP_WECHAT_MAX_CONCURRENT", "4".into()));
    // Every failing login below is a different user; the per-user limit is not in play.
    let session_svc = ServiceProcess::session_svc(&env);
    let gateway = ServiceProcess::gateway(&gateway_env(&session_svc, &[]));
    let sessions = log_in(&wechat, &gateway.url(), 50).await;
    let http = http();
    let load = Load::start(format!("{}/me", gateway.url()), sessions.clone(), 8);

    // WeChat failing in every documented way, 10 logins of each at once.
    let failing = [
        (
            MintRequest {
                errcode: Some(45011),
                ..Default::default()
            },
            429,
        ),
        (
            MintRequest {
                errcode: Some(-1),
                ..Default::default()
            },
            503,
        ),
        (
            MintRequest {
                fault: Some(Fault::Http500),
                ..Default::default()
            },
            503,
        ),
        (
            MintRequest {
                fault: Some(Fault::Malformed),
                ..Default::default()
            },
            502,
        ),
        (
            MintRequest {
                fault: Some(Fault::Truncated),
                ..Default::default()
            },
            502,
        ),
    ];
    let failing_from = load.now();
    let mut attempts = Vec::new();
    for (mint, status) in &failing {
        for _ in 0..10 {
            attempts.push((wechat.mint(mint.clone()), *status));
        }
    }
    let answers = join_all(
        attempts
            .iter()
            .map(|(minted, _)| login_with(&http, &gateway, minted.code.clone())),
    )
    .await;
    let failing_to = load.now();
    for ((minted, expected), (status, body, _)) in attempts.iter().zip(&answers) {
        assert_eq!(status, expected, "{body}");
        assert_eq!(body["error"], "ERR_LOGIN_FAILED", "{body}");
        if *status == 429 {
            assert!(body.get("session").is_none());
        }
        let stats = wechat
            .sandbox
            .code_stats(&minted.code)
            .expect("minted code");
        assert_eq!(stats.exchanges, 1, "a failed exchange was retried: {body}");
    }

    // WeChat slow: every answer comes after session-svc's 1 s budget. 40 logins at once may
    // have at most 4 requests at WeChat; the rest give up waiting for a slot. Connections are
    // counted from the kernel's table, sampled throughout (the sandbox cannot count them: it
    // only notices an abandoned request when its delay is over). A timed-out request frees its
    // slot at once while its connection is closed a moment later, so up to twice the bound can
    // be open for that moment; what matters is that 40 logins do not make 40 connections.
    let slow: Vec<_> = (0..40)
        .map(|_| {
            wechat.mint(MintRequest {
                delay_ms: Some(3000),
                ..Default::default()
            })
        })
        .collect();
    let slow_from = load.now();
    let counting = CancellationToken::new();
    let peak = tokio::spawn(peak_connections_to(wechat.addr.port(), counting.clone()));
    let answers = join_all(
        slow.iter()
            .map(|m| login_with(&http, &gateway, m.code.clone())),
    )
    .await;
    let slow_to = load.now();
    counting.cancel();
    let peak = peak.await.expect("connection counter");
    for (minted, (status, body, took)) in slow.iter().zip(&answers) {
        assert_eq!(
            (*status, body["error"].as_str()),
            (504, Some("ERR_LOGIN_FAILED")),
            "{body}"
        );
        assert!(
            *took < Duration::from_millis(2500),
            "a slow WeChat held a login for {took:?}"
        );
        let exchanges = wechat
            .sandbox
            .code_stats(&minted.code)
            .expect("code")
            .exchanges;
        assert!(
            exchanges <= 1,
            "a code was sent to WeChat {exchanges} times"
        );
    }
    assert!(
        (1..=8).contains(&peak),
        "{peak} connections to WeChat at once; the bound is 4 requests (8 connections while \
         timed-out ones close)"
    );
    let sent_to_wechat = slow
        .iter()
        .filter(|m| {
            wechat
                .sandbox
                .code_stats(&m.code)
                .is_some_and(|s| s.exchanges > 0)
        })
        .count();

    // WeChat healthy again: logins work at once.
    let (status, body, _) =
        login_with(&http, &gateway, wechat.mint(MintRequest::default()).code).await;
    assert_eq!(status, 200, "{body}");
    let end = load.now();
    let samples = load.finish().await;
    // Sessions did not care: WeChat is only asked at login.
    assert!(
        samples.0.iter().all(|s| s.is_ok()),
        "/me failed while WeChat was in trouble: {}",
        samples.summary(Duration::ZERO, end)
    );
    let mut grpc = SessionServiceClient::connect(session_svc.url())
        .await
        .expect("gRPC");
    for minted in attempts.iter().map(|(m, _)| m).chain(&slow) {
        let made = grpc
            .revoke_user(RevokeUserRequest {
                open_id: minted.openid.clone(),
                ..Default::default()
            })
            .await
            .expect("RevokeUser")
            .into_inner()
            .revoked;
        assert_eq!(made, 0, "a failed login made a session");
    }
    assert_eq!(lost(&gateway, &sessions).await, 0, "sessions lost");

    figure(format!(
        "WeChat failing (45011, -1, HTTP 500, malformed, truncated; 10 each at once): \
         every login got its documented status, each code sent once; /me meanwhile: {}",
        samples.summary(failing_from, failing_to)
    ));
    figure(format!(
        "WeChat slow (40 logins at once, answers after 3 s, budget 1 s, bound 4): all 504 \
         within {:?}; at most {peak} connections to WeChat at once; {sent_to_wechat} of 40 codes \
         reached WeChat, the rest were never sent; /me meanwhile: {}",
        answers.iter().map(|a| a.2).max().unwrap_or_default(),
        samples.summary(slow_from, slow_to)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_closes_websockets_with_1001_and_clients_resume_their_sessions() {
    let _one = ONE_AT_A_TIME.lock().await;
    let wechat = WeChat::start().await;
    let data = tempfile::tempdir().expect("data dir");
    let mut env = wechat.session_svc_env();
    env.push(("WEAPP_DATA_DIR", data.path().display().to_string()));
    let session_svc = ServiceProcess::session_svc(&env);
    let mut gateway = ServiceProcess::gateway(&gateway_env(&session_svc, &[]));
    let sessions = log_in(&wechat, &gateway.url(), 50).await;
    let mut sockets = open_websockets(&gateway, &sessions).await;
    let load = Load::start(format!("{}/me", gateway.url()), sessions.clone(), 8);
    hold(Duration::from_millis(1000)).await;

    let stopping = load.now();
    let began = Instant::now();
    let closes = tokio::spawn(async move {
        join_all(sockets.iter_mut().map(|ws| async move {
            match next_frame(ws).await {
                Message::Close(Some(frame)) => frame.code,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }))
        .await
    });
    let exit = tokio::task::block_in_place(|| gateway.terminate(Duration::from_secs(15)));
    let drained = began.elapsed();
    assert!(exit.success(), "the gateway exited with {exit} on SIGTERM");
    let codes = closes.await.expect("close frames");
    assert!(codes.iter().all(|c| *c == CloseCode::Away), "{codes:?}");

    let restarting = load.now();
    tokio::task::block_in_place(|| gateway.start());
    let began = Instant::now();
    let mut sockets = open_websockets(&gateway, &sessions).await;
    let reconnected = began.elapsed();
    echo_on_all(&mut sockets, "after the restart").await;
    hold(Duration::from_millis(1000)).await;
    let end = load.now();
    let samples = load.finish().await;

    // Up to the stop and after the restart, everything is served; in between, the only
    // failure a client may see is a connection that is closed or refused (behind nginx, the
    // next upstream answers those).
    for sample in &samples.0 {
        match &sample.outcome {
            Outcome::Answer { status: 200, .. } => {}
            Outcome::Transport(_)
                if sample.at + Duration::from_millis(50) >= stopping
                    && sample.at < restarting + Duration::from_millis(200) => {}
            other => panic!("at {:?} a client got {other}", sample.at),
        }
    }
    assert_eq!(lost(&gateway, &sessions).await, 0, "sessions lost");

    figure(format!(
        "gateway restart, load: {}",
        samples.summary(Duration::ZERO, end)
    ));
    figure(format!(
        "gateway restart: SIGTERM to exit {drained:?}, 50/50 WebSockets closed with 1001; \
         all 50 reconnected with their sessions in {reconnected:?}; sessions lost: 0 of 50"
    ));
}
