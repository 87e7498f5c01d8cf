//! No single point of failure, on the shipped binaries: two session-svc replicas on one
//! MongoDB (nx-27017), gateway A bound to replica 1, gateway B to replica 2, gateway C given
//! both. A logout or a revocation taken by either replica reaches every gateway within a
//! second, and so does a push, counted; one replica SIGKILLed under load is invisible through C after the first second; a
//! rolling restart of both costs C nothing, logins included. Figures go to
//! docs/RELIABILITY.md (`FIGURE` lines, or `WEAPP_FAULT_FIGURES`).
//!
//! One test at a time: each holds the machine busy with its load.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Mutex;
use tokio_tungstenite::{connect_async, tungstenite::protocol::frame::coding::CloseCode};
use weapp_proto::session::v1::{
    PublishRequest, PushMessage, RevokeUserRequest, push_message::Target,
    session_service_client::SessionServiceClient,
};
use weapp_tests::{
    ClientSession, WeChat,
    load::{Load, Outcome, Samples, figure, http, log_in, me_status, open_id_at},
    mongo::MongoServer,
    services::ServiceProcess,
    wechat_sandbox::MintRequest,
    ws::{next_frame, next_text},
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The gateways' deadline for asking session-svc.
const SESSION_DEADLINE: Duration = Duration::from_millis(500);
/// The promise: a revocation reaches every gateway within this.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);
/// `WEAPP_LOGIN_RATE_PER_USER` on both replicas.
const LOGINS_PER_USER: usize = 5;

/// nx-27017, two replicas on it, and gateways A (replica 1), B (replica 2), C (both).
struct Topology {
    wechat: WeChat,
    _mongo: MongoServer,
    replicas: [ServiceProcess; 2],
    a: ServiceProcess,
    b: ServiceProcess,
    c: ServiceProcess,
}

impl Topology {
    /// With `WEAPP_REPLICA_FEED` set to `feed` on both replicas.
    fn with_feed(wechat: WeChat, feed: &str) -> Self {
        let mongo = MongoServer::start();
        let mut env = wechat.session_svc_env();
        env.push(("WEAPP_REPLICA_FEED", feed.to_owned()));
        env.push(("WEAPP_LOGIN_RATE_PER_USER", LOGINS_PER_USER.to_string()));
        env.push(("WEAPP_MONGODB_URI", mongo.uri()));
        env.push(("WEAPP_MONGODB_DATABASE", "weapp_replicas".into()));
        env.push(("WEAPP_MONGODB_TIMEOUT", "500ms".into()));
        let replicas = [
            ServiceProcess::session_svc(&env),
            ServiceProcess::session_svc(&env),
        ];
        let gateway = |url: String| {
            ServiceProcess::gateway(&[
                ("WEAPP_SESSION_SVC_URL", url),
                (
                    "WEAPP_SESSION_TIMEOUT",
                    format!("{}ms", SESSION_DEADLINE.as_millis()),
                ),
                ("WEAPP_LOGIN_RATE_PER_ADDRESS", "0".into()),
            ])
        };
        let a = gateway(replicas[0].url());
        let b = gateway(replicas[1].url());
        let c = gateway(format!("{},{}", replicas[0].url(), replicas[1].url()));
        Self {
            wechat,
            _mongo: mongo,
            replicas,
            a,
            b,
            c,
        }
    }

    /// The whole topology with its own WeChat sandbox, settled (every gateway ready and
    /// following).
    async fn up(feed: &str) -> Self {
        let wechat = WeChat::start().await;
        let topology = tokio::task::block_in_place(|| Self::with_feed(wechat, feed));
        topology.settle().await;
        topology
    }

    /// Waits until `gateway` is ready (some replica takes its key) and its session cache is
    /// live (it hears a revocation stream): `/readyz` and a warm `/me` agree.
    async fn settle(&self) {
        for gateway in [&self.a, &self.b, &self.c] {
            gateway.wait_ready(Duration::from_secs(20)).await;
        }
        // The replicas open their feeds and the gateways their streams.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

async fn me(gateway: &ServiceProcess, session: &ClientSession) -> u16 {
    me_status(&gateway.url(), session).await
}

/// Polls `/me` on `gateway` until it stops answering 200; how long that took.
async fn until_refused(gateway: &ServiceProcess, session: &ClientSession) -> Duration {
    let started = Instant::now();
    loop {
        let status = me(gateway, session).await;
        if status == 401 {
            return started.elapsed();
        }
        assert_eq!(
            status,
            200,
            "only 200 until the revocation, then 401; the gateway logged:\n{}",
            gateway.log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the revocation never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logins through `gateway`, one after another until `stop`: every status seen.
fn login_loop(
    wechat: &WeChat,
    gateway: &ServiceProcess,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Duration, u16)>> {
    let codes: Vec<String> = (0..400)
        .map(|_| wechat.mint(MintRequest::default()).code)
        .collect();
    let url = format!("{}/login", gateway.url());
    tokio::spawn(async move {
        let (http, started) = (http(), Instant::now());
        let mut seen = Vec::new();
        for code in codes {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let status = http
                .get(&url)
                .header("X-WX-Code", code)
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            seen.push((started.elapsed(), status));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    })
}

fn failures(samples: &Samples) -> Vec<String> {
    samples
        .0
        .iter()
        .filter(|s| !s.is_ok())
        .map(|s| format!("at {:?}: {}", s.at, s.outcome))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_taken_by_either_replica_reaches_every_gateway_within_a_second() {
    revocations_cross_replicas("auto").await;
}

/// The fallback for a standalone MongoDB, which has no change streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_poll_the_feed_keep_the_same_promise() {
    revocations_cross_replicas("poll").await;
}

async fn revocations_cross_replicas(feed: &str) {
    let _one = ONE_AT_A_TIME.lock().await;
    let topology = Topology::up(feed).await;
    let Topology { a, b, c, .. } = &topology;

    // A logout through A (replica 1) reaches B's cache (replica 2) and C's.
    let sessions = log_in(&topology.wechat, &a.url(), 3).await;
    let session = &sessions[0];
    for gateway in [a, b, c] {
        assert_eq!(me(gateway, session).await, 200, "warm in every cache");
    }
    let logout = http()
        .get(format!("{}/logout", a.url()))
        .headers(session.headers())
        .send()
        .await
        .expect("logout answers");
    assert_eq!(logout.status(), 200);
    let on_b = tokio::time::timeout(Duration::from_secs(6), until_refused(b, session)).await;
    let Ok(on_b) = on_b else {
        panic!(
            "B never learned of the logout; replica 1 logged:\n{}\nreplica 2 logged:\n{}\nB logged:\n{}",
            topology.replicas[0].log(),
            topology.replicas[1].log(),
            b.log()
        );
    };
    let on_c = until_refused(c, session).await;
    assert!(on_b < REVOCATION_BOUND, "B learned of it after {on_b:?}");
    assert!(on_c < REVOCATION_BOUND, "C learned of it after {on_c:?}");

    // RevokeUser taken by replica 2 closes a socket on A (replica 1) with 1008.
    let user = &sessions[1];
    let url = format!("ws://{}/ws?{}", a.addr(), user.query());
    let (mut ws, _) = connect_async(url).await.expect("upgrade accepted");
    assert!(next_text(&mut ws).await.starts_with("Server: 恭喜"));
    let open_id = open_id_at(&b.url(), user).await;
    let mut replica_2 = SessionServiceClient::connect(topology.replicas[1].url())
        .await
        .expect("replica 2 accepts gRPC");
    // A publish taken by replica 2 reaches the socket on A (replica 1), and is counted.
    let published = replica_2
        .publish(PublishRequest {
            message: Some(PushMessage {
                target: Some(Target::OpenId(open_id.clone())),
                text: "from replica 2".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("Publish")
        .into_inner();
    assert_eq!(next_text(&mut ws).await, "from replica 2");
    assert_eq!(
        published.sockets, 1,
        "the socket on A is counted: {published:?}"
    );
    assert!(published.gateways >= 3, "every gateway: {published:?}");

    let revoked_at = Instant::now();
    replica_2
        .revoke_user(RevokeUserRequest {
            open_id,
            ..Default::default()
        })
        .await
        .expect("RevokeUser");
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), next_frame(&mut ws)).await {
            Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) => break frame,
            Ok(_) => continue,
            Err(_) => panic!(
                "the socket on A was not closed; replica 1 logged:\n{}\nreplica 2 logged:\n{}",
                topology.replicas[0].log(),
                topology.replicas[1].log()
            ),
        }
    };
    let socket_closed = revoked_at.elapsed();
    assert_eq!(closed.map(|f| f.code), Some(CloseCode::Policy));
    assert!(
        socket_closed < REVOCATION_BOUND,
        "closed after {socket_closed:?}"
    );
    assert_eq!(me(a, user).await, 401);
    // The third session was never touched.
    for gateway in [a, b, c] {
        assert_eq!(me(gateway, &sessions[2]).await, 200);
    }
    // The per-user login limit counts across replicas: logins of one user alternate between
    // A (replica 1) and B (replica 2), and the one past the limit is refused wherever it lands.
    let mut statuses = Vec::new();
    for attempt in 0..=LOGINS_PER_USER {
        let gateway = if attempt % 2 == 0 { a } else { b };
        let code = topology
            .wechat
            .mint(MintRequest {
                openid: Some("o-one-user-many-logins".into()),
                ..MintRequest::default()
            })
            .code;
        let answer = http()
            .get(format!("{}/login", gateway.url()))
            .header("X-WX-Code", code)
            .send()
            .await
            .expect("login answers");
        statuses.push(answer.status().as_u16());
    }
    let mut expected = vec![200; LOGINS_PER_USER];
    expected.push(429);
    assert_eq!(
        statuses, expected,
        "the limit counts logins on both replicas"
    );

    figure(format!(
        "replicas (feed: {feed}): a logout through replica 1 reached gateway B (replica 2) in \
         {on_b:?} and C (both) in {on_c:?}; RevokeUser through replica 2 closed a socket on A \
         (replica 1) in {socket_closed:?}"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_killed_under_load_is_invisible_through_a_gateway_that_knows_both() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut topology = Topology::up("auto").await;
    let sessions = log_in(&topology.wechat, &topology.c.url(), 100).await;

    let load = Load::start(format!("{}/me", topology.c.url()), sessions.clone(), 16);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = load.now();
    tokio::task::block_in_place(|| topology.replicas[0].kill());
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let end = load.now();
    let samples = load.finish().await;

    let first_second = samples.summary(killed, killed + Duration::from_secs(1));
    let failed_first: u64 = first_second
        .by_outcome
        .iter()
        .filter(|(outcome, _)| outcome.as_str() != "200")
        .map(|(_, n)| n)
        .sum();
    for sample in &samples.0 {
        match &sample.outcome {
            Outcome::Answer { status: 200, .. } => {}
            Outcome::Answer {
                status: 503,
                logged_out: false,
                ..
            } if sample.at < killed + Duration::from_secs(1) => {}
            other => panic!(
                "at {:?} (killed at {killed:?}) a client got {other}",
                sample.at
            ),
        }
    }
    assert!(
        failed_first * 100 <= first_second.requests,
        "more than 1% failed in the first second: {first_second}"
    );
    let after = samples.summary(killed + Duration::from_secs(1), end);
    assert_eq!(
        after.requests,
        after.by_outcome.get("200").copied().unwrap_or(0)
    );
    assert!(after.requests > 100, "the load went on: {after}");
    // No session lost: every one still answers through the survivor.
    for session in sessions.iter() {
        assert_eq!(me(&topology.c, session).await, 200);
    }
    figure(format!(
        "replicas: replica 1 SIGKILLed under /me load through gateway C (both replicas): first \
         second {first_second}; after it {after}; sessions lost 0 of {}",
        sessions.len()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_both_replicas_costs_no_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut topology = Topology::up("auto").await;
    let sessions = log_in(&topology.wechat, &topology.c.url(), 100).await;

    let stop_logins = Arc::new(AtomicBool::new(false));
    let logins = login_loop(&topology.wechat, &topology.c, stop_logins.clone());
    let load = Load::start(format!("{}/me", topology.c.url()), sessions.clone(), 16);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let began = load.now();
    let mut restarts = Vec::new();
    for index in 0..2 {
        let replica = &mut topology.replicas[index];
        let stopped = tokio::task::block_in_place(|| {
            let started = Instant::now();
            let status = replica.terminate(Duration::from_secs(15));
            assert!(
                status.success(),
                "replica {} exited with {status}",
                index + 1
            );
            replica.start();
            started.elapsed()
        });
        restarts.push(stopped);
        // Serving again, and heard by the gateways, before the next one goes.
        tokio::time::sleep(Duration::from_millis(2000)).await;
    }
    let ended = load.now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.finish().await;
    stop_logins.store(true, Ordering::Relaxed);
    let logins = logins.await.expect("login loop");

    let failed = failures(&samples);
    assert!(failed.is_empty(), "{} /me failed: {failed:?}", failed.len());
    let failed_logins: Vec<_> = logins.iter().filter(|(_, s)| *s != 200).collect();
    assert!(failed_logins.is_empty(), "logins failed: {failed_logins:?}");
    assert!(logins.len() > 20, "logins went on: {}", logins.len());
    figure(format!(
        "replicas: rolling restart (SIGTERM, start, next) of both replicas through gateway C: \
         {}; {} logins, all 200; each replica stopped and listening again in {:?}",
        samples.summary(began, ended),
        logins.len(),
        restarts
    ));
}
