//! What a session-svc replica sends its store, counted at the wire by a proxy between replica
//! 1 and nx-27017 (`weapp_tests::command_counter`), on the shipped binaries: idle, at most
//! 3 commands a second (driver monitoring included); a login, at most 2; and quiet costs no
//! promise — a revocation taken by replica 2 after both have idled reaches a gateway that
//! follows replica 1 within a second. Figures go to the `FIGURE` lines (bench/REPORT.md).
use std::time::{Duration, Instant};

use weapp_proto::session::v1::{RevokeUserRequest, session_service_client::SessionServiceClient};
use weapp_tests::{
    WeChat,
    command_counter::CommandCounter,
    load::{figure, log_in, me_status, open_id_at},
    mongo::MongoServer,
    services::ServiceProcess,
};

/// The promise: a revocation reaches every gateway within this.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);
/// The most an idle replica may send its store, a second.
const IDLE_BUDGET: f64 = 3.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_is_quiet_and_keeps_its_promises() {
    let wechat = WeChat::start().await;
    let mongo = MongoServer::start();
    let counter = CommandCounter::start(&format!("127.0.0.1:{}", mongo.port()));
    let replica = |uri: String| {
        let mut env = wechat.session_svc_env();
        env.push(("WEAPP_MONGODB_URI", uri));
        env.push(("WEAPP_MONGODB_DATABASE", "weapp_quiet".into()));
        ServiceProcess::session_svc(&env)
    };
    let replicas = [replica(counter.uri()), replica(mongo.uri())];
    let gateway = |replica: &ServiceProcess| {
        ServiceProcess::gateway(&[
            ("WEAPP_SESSION_SVC_URL", replica.url()),
            ("WEAPP_LOGIN_RATE_PER_ADDRESS", "0".into()),
        ])
    };
    let (a, b) = (gateway(&replicas[0]), gateway(&replicas[1]));
    a.wait_ready(Duration::from_secs(20)).await;
    b.wait_ready(Duration::from_secs(20)).await;

    // Idle: nothing asked of it for 10 s, after its start-up work.
    tokio::time::sleep(Duration::from_secs(3)).await;
    counter.reset().await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = counter.counts().await;
    let seconds = started.elapsed().as_secs_f64();
    let idle_rate = (idle.total + idle.monitoring) as f64 / seconds;
    figure(format!(
        "idle replica: {idle_rate:.2} store commands a second ({} commands and {} of the driver's monitoring in {seconds:.1} s: {})",
        idle.total, idle.monitoring, idle.by_command
    ));
    assert!(
        idle_rate <= IDLE_BUDGET,
        "an idle replica sent {idle_rate:.2} commands a second: {}",
        idle.by_command
    );

    // Logins: at most 2 commands each, beside what the replica sends anyway.
    const LOGINS: usize = 200;
    counter.reset().await;
    let started = Instant::now();
    let sessions = log_in(&wechat, &a.url(), LOGINS).await;
    let busy = counter.counts().await;
    let seconds = started.elapsed().as_secs_f64();
    let per_login = (busy.total as f64 - IDLE_BUDGET * seconds).max(0.0) / LOGINS as f64;
    figure(format!(
        "login: {per_login:.2} store commands each ({} commands for {LOGINS} logins in {seconds:.1} s: {})",
        busy.total, busy.by_command
    ));
    assert!(
        per_login <= 2.0,
        "{per_login:.2} commands a login: {}",
        busy.by_command
    );

    // Quiet costs no promise: after both replicas have idled, a revocation taken by replica 2
    // reaches gateway A, which follows replica 1, within a second.
    let mut replica_2 = SessionServiceClient::connect(replicas[1].url())
        .await
        .expect("replica 2 accepts gRPC");
    for session in sessions.iter().take(3) {
        assert_eq!(me_status(&a.url(), session).await, 200, "warm in A's cache");
        let open_id = open_id_at(&b.url(), session).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        replica_2
            .revoke_user(RevokeUserRequest {
                open_id,
                ..Default::default()
            })
            .await
            .expect("RevokeUser");
        let revoked = Instant::now();
        loop {
            match me_status(&a.url(), session).await {
                401 => break,
                200 => {}
                other => panic!("only 200 until the revocation, then 401: {other}"),
            }
            assert!(
                revoked.elapsed() < Duration::from_secs(5),
                "the revocation never reached A:\n{}",
                replicas[0].log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = revoked.elapsed();
        figure(format!("revocation across replicas after idling: {took:?}"));
        assert!(took < REVOCATION_BOUND, "A learned of it after {took:?}");
    }
}
