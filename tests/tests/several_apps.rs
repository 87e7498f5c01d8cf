//! Several mini-programs, one deployment, on the shipped binaries: two session-svc replicas on
//! one MongoDB-wire store (nx-27017) with an apps file, one gateway with a routes file, the
//! WeChat sandbox knowing three apps of one company, a recording upstream. Every login,
//! session, token, push and forwarded request names its app; a third app comes and goes by
//! `SIGHUP` with no restart.
use std::{path::Path, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::Value;
use tokio_tungstenite::{connect_async, tungstenite::protocol::frame::coding::CloseCode};
use tonic::{Code, Request, transport::Channel};
use weapp_proto::session::v1::{
    GetAccessTokenRequest, PublishRequest, PushMessage, RevokeUserRequest, ValidateRequest,
    push_message::Target, session_service_client::SessionServiceClient,
};
use weapp_tests::{
    ClientSession, WeChat,
    mongo::MongoServer,
    ports::Port,
    services::ServiceProcess,
    session_from,
    upstream::Upstream,
    wechat_sandbox::{MintRequest, MintedLogin},
    ws::{close_code, next_frame, next_text},
};

const UNION: &str = "u-one-person-across-apps";

struct Keys {
    backend: String,
    club: String,
    legacy: String,
}

/// The apps file: `apps` (AppId, AppSecret), the first the default; the second may serve
/// only `/wxa/msg_sec_check` through the open-API proxy.
fn write_apps(dir: &Path, apps: &[(String, String)]) {
    let mut text = format!("default = \"{}\"\n", apps[0].0);
    for (index, (app_id, secret)) in apps.iter().enumerate() {
        std::fs::write(dir.join(format!("{app_id}.secret")), secret).unwrap();
        text.push_str(&format!(
            "\n[[app]]\nappid = \"{app_id}\"\nname = \"app-{index}\"\nsecret_file = \"{app_id}.secret\"\n"
        ));
        if index == 1 {
            text.push_str("openapi = [\"/wxa/msg_sec_check\"]\n");
        }
    }
    std::fs::write(dir.join("apps.toml"), text).unwrap();
}

/// The gateway's routes file: `/shop/` serves `shop_apps`, `/any/` every app, `/shared/` is A's
/// resources shared with other apps' users; logins on `/club/login` are B's.
fn write_routes(dir: &Path, up: &str, (a, b): (&str, &str), shop_apps: &[&str]) {
    std::fs::write(
        dir.join("routes.toml"),
        format!(
            r#"
[[route]]
prefix = "/shop/"
upstream = "{up}"
session = "required"
identity_headers = "both"
apps = {shop_apps:?}

[[route]]
prefix = "/any/"
upstream = "{up}"
session = "required"
identity_headers = "both"

[[route]]
prefix = "/shared/"
upstream = "{up}"
session = "required"
identity_headers = "cloudrun"
resource_appid = "{a}"

[[login]]
path = "/club/login"
app = "{b}"
"#
        ),
    )
    .unwrap();
}

fn random_key() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

struct Deployment {
    wechat: WeChat,
    _mongo: MongoServer,
    dir: tempfile::TempDir,
    replicas: [ServiceProcess; 2],
    gateway: ServiceProcess,
    upstream: Upstream,
    keys: Keys,
    openapi: String,
    _openapi_port: Port,
}

impl Deployment {
    /// Apps A (default) and B served; C known to WeChat only.
    async fn start() -> Self {
        let wechat = WeChat::start_apps(3, None).await;
        let mongo = MongoServer::start();
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        write_apps(dir.path(), &wechat.apps[..2]);
        let (a, b) = (&wechat.apps[0].0, &wechat.apps[1].0);
        let keys = Keys {
            backend: random_key(),
            club: random_key(),
            legacy: random_key(),
        };
        let gateway_key = random_key();
        for (name, key) in [
            ("gateway", &gateway_key),
            ("backend", &keys.backend),
            ("club", &keys.club),
            ("legacy", &keys.legacy),
        ] {
            std::fs::write(dir.path().join(format!("{name}.key")), key).unwrap();
        }
        std::fs::write(
            dir.path().join("api-keys.toml"),
            format!(
                r#"
[[key]]
name = "gateway"
file = "gateway.key"
scopes = ["validate", "login", "follow"]

[[key]]
name = "backend"
file = "backend.key"
scopes = ["validate", "admin", "push", "wechat.token"]
apps = ["*"]

[[key]]
name = "club"
file = "club.key"
scopes = ["push", "admin", "wechat.token", "wechat.openapi"]
openapi = ["/wxa/msg_sec_check"]
apps = ["{b}"]

[[key]]
name = "legacy"
file = "legacy.key"
scopes = ["wechat.token"]
"#
            ),
        )
        .unwrap();
        let identity = dir.path().join("identity.pem");
        std::fs::write(&identity, weapp_tests::stack::new_identity_key()).unwrap();
        let openapi_port = Port::reserve();
        let openapi = openapi_port.addr().to_string();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let env = |openapi_listen: Option<&str>| {
            let mut env = vec![
                ("WEAPP_APPS_FILE", path("apps.toml")),
                ("WEAPP_API_KEYS_FILE", path("api-keys.toml")),
                ("WEAPP_IDENTITY_KEY_FILES", identity.display().to_string()),
                ("WEAPP_WECHAT_BASE_URL", wechat.base_url()),
                ("WEAPP_MONGODB_URI", mongo.uri()),
                ("WEAPP_MONGODB_DATABASE", "weapp_apps".into()),
                ("WEAPP_MONGODB_TIMEOUT", "500ms".into()),
            ];
            if let Some(listen) = openapi_listen {
                env.push(("WEAPP_OPENAPI_LISTEN", listen.to_owned()));
            }
            env
        };
        let replicas = [
            ServiceProcess::session_svc(&env(Some(&openapi))),
            ServiceProcess::session_svc(&env(None)),
        ];
        write_routes(dir.path(), &upstream.url(), (a, b), &[a]);
        let gateway = ServiceProcess::gateway(&[
            (
                "WEAPP_SESSION_SVC_URL",
                format!("{},{}", replicas[0].url(), replicas[1].url()),
            ),
            ("WEAPP_SESSION_SVC_KEY_FILE", path("gateway.key")),
            ("WEAPP_ROUTES_FILE", path("routes.toml")),
            ("WEAPP_LOGIN_RATE_PER_ADDRESS", "0".into()),
        ]);
        let deployment = Self {
            wechat,
            _mongo: mongo,
            dir,
            replicas,
            gateway,
            upstream,
            keys,
            openapi: format!("http://{openapi}"),
            _openapi_port: openapi_port,
        };
        deployment.wait_until_ready().await;
        deployment.wait_for_the_gateway_to_follow().await;
        deployment
    }

    fn app(&self, index: usize) -> &str {
        &self.wechat.apps[index].0
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url())
    }

    async fn wait_until_ready(&self) {
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = http.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway never became ready:\n{}", self.gateway.log());
    }

    /// Until the gateway follows a replica (a publish counts it): pushes reach it from then on.
    async fn wait_for_the_gateway_to_follow(&self) {
        let mut grpc = self.grpc(0).await;
        for _ in 0..200 {
            let probe = with_key(
                PublishRequest {
                    message: Some(PushMessage {
                        target: Some(Target::OpenId("o-nobody".into())),
                        text: "probe".into(),
                        ..Default::default()
                    }),
                },
                &self.keys.backend,
            );
            if grpc
                .publish(probe)
                .await
                .unwrap()
                .into_inner()
                .gateways_answered
                >= 1
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the gateway never followed a replica:\n{}",
            self.gateway.log()
        );
    }

    fn mint(&self, app: usize, open_id: &str, union_id: Option<&str>) -> MintedLogin {
        self.wechat.mint(MintRequest {
            appid: Some(self.app(app).to_owned()),
            openid: Some(open_id.to_owned()),
            unionid: union_id.map(str::to_owned),
            ..Default::default()
        })
    }

    /// A code-only login on `path`, with a `Referer` naming `referer_app` if given.
    async fn login(
        &self,
        path: &str,
        minted: &MintedLogin,
        referer_app: Option<&str>,
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .get(self.url(path))
            .header("X-WX-Code", &minted.code);
        if let Some(app) = referer_app {
            request = request.header(
                "Referer",
                format!("https://servicewechat.com/{app}/12/page-frame.html"),
            );
        }
        request.send().await.unwrap()
    }

    async fn get(&self, path: &str, session: &ClientSession) -> reqwest::Response {
        reqwest::Client::new()
            .get(self.url(path))
            .headers(session.headers())
            .send()
            .await
            .unwrap()
    }

    async fn grpc(&self, replica: usize) -> SessionServiceClient<Channel> {
        let channel = Channel::from_shared(self.replicas[replica].url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        SessionServiceClient::new(channel)
    }

    fn reload(&self) {
        for replica in &self.replicas {
            replica.signal("HUP");
        }
    }

    /// Everything the processes logged, and their metrics: where no secret may appear.
    async fn logs_and_metrics(&self) -> String {
        let mut all = self.gateway.log();
        for replica in &self.replicas {
            all.push_str(&replica.log());
        }
        all
    }
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// What the upstream received last, as its `/echo` describes it.
fn last_seen(upstream: &Upstream) -> Value {
    upstream
        .seen()
        .last()
        .cloned()
        .expect("a request reached the upstream")
}

/// The close code a socket ends with (after the text frame that says why).
async fn closed_with<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> CloseCode
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match next_frame(ws).await {
            tokio_tungstenite::tungstenite::Message::Text(_) => continue,
            frame => return close_code(frame),
        }
    }
}

fn claims(assertion: &str) -> Value {
    let payload = assertion.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_share_one_deployment_and_every_session_says_its_app() {
    let d = Deployment::start().await;
    let (a, b) = (d.app(0).to_owned(), d.app(1).to_owned());

    // Each way of choosing the app: the operator's rule (an extra login path), WeChat's
    // Referer, the default app.
    let club = d.mint(1, "o-club", Some(UNION));
    let by_rule = d.login("/club/login", &club, None).await;
    assert_eq!(
        header(&by_rule, "x-weapp-app-id").as_deref(),
        Some(b.as_str())
    );
    let club_session = session_from(by_rule).await;
    let shop = d.mint(0, "o-shop", Some(UNION));
    let by_referer = d.login("/login", &shop, Some(&a)).await;
    assert_eq!(
        header(&by_referer, "x-weapp-app-id").as_deref(),
        Some(a.as_str())
    );
    let shop_session = session_from(by_referer).await;
    let club2 = d.mint(1, "o-club-2", None);
    let by_referer_b = d.login("/login", &club2, Some(&b)).await;
    assert_eq!(
        header(&by_referer_b, "x-weapp-app-id").as_deref(),
        Some(b.as_str())
    );
    let stranger = d.mint(0, "o-stranger", Some("u-someone-else"));
    let by_default = d.login("/login", &stranger, None).await;
    assert_eq!(
        header(&by_default, "x-weapp-app-id").as_deref(),
        Some(a.as_str())
    );
    let stranger_session = session_from(by_default).await;

    // A code of one app sent as another's: WeChat refuses it (40029), nothing is stored, and
    // the code is still good for its own app. A rule and a Referer that disagree, or an app
    // not served: 400 before WeChat is called.
    let misdirected = d.mint(1, "o-misdirected", None);
    let refused = d.login("/login", &misdirected, Some(&a)).await;
    assert_eq!(refused.status(), 401, "{:?}", refused.text().await);
    let stats = d.wechat.sandbox.code_stats(&misdirected.code).unwrap();
    assert!(!stats.used, "the code is not spent by the wrong app");
    for (path, referer) in [
        ("/club/login", Some(a.as_str())),
        ("/login", Some(d.app(2))),
    ] {
        let minted = d.mint(1, "o-never", None);
        let answer = d.login(path, &minted, referer).await;
        assert_eq!(answer.status(), 400, "{path} {referer:?}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "ERR_LOGIN_FAILED");
        assert_eq!(
            d.wechat.sandbox.code_stats(&minted.code).unwrap().exchanges,
            0
        );
    }
    let mut grpc = d.grpc(0).await;
    for session in [&club_session, &shop_session] {
        let answer = grpc
            .validate(with_key(
                ValidateRequest {
                    id: session.id.clone(),
                    skey: session.skey.clone(),
                    want_identity_assertion: false,
                },
                &d.keys.backend,
            ))
            .await;
        assert!(answer.is_ok());
    }
    let sessions = mongodb::Client::with_uri_str(d._mongo.uri())
        .await
        .unwrap()
        .database("weapp_apps")
        .collection::<mongodb::bson::Document>("sessions")
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();
    assert_eq!(
        sessions, 4,
        "four logins succeeded, nothing else was stored"
    );

    // /me: wafer's exact body, the app beside it.
    let me = d.get("/me", &club_session).await;
    assert_eq!(header(&me, "x-weapp-app-id").as_deref(), Some(b.as_str()));
    let body: Value = me.json().await.unwrap();
    assert_eq!(body["openId"], "o-club");
    assert_eq!(body["unionId"], UNION);

    // A route of app A refuses app B's session without forwarding it; the session stays
    // valid; A's session goes through with its app everywhere.
    let before = d.upstream.seen().len();
    let refused = d.get("/shop/echo", &club_session).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(d.upstream.seen().len(), before, "not forwarded");
    assert_eq!(
        d.get("/me", &club_session).await.status(),
        200,
        "still valid"
    );
    assert!(
        d.get("/shop/echo", &shop_session)
            .await
            .status()
            .is_success()
    );
    let seen = last_seen(&d.upstream);
    let h = &seen["headers"];
    assert_eq!(h["x-weapp-app-id"], a.as_str());
    assert_eq!(h["x-wx-appid"], a.as_str());
    assert_eq!(h["x-wx-openid"], "o-shop");
    assert_eq!(h["x-wx-unionid"], UNION);
    assert_eq!(
        claims(h["x-weapp-assertion"].as_str().unwrap())["appid"],
        a.as_str()
    );

    // One person, two apps: the same unionid, two openids.
    assert!(
        d.get("/any/echo", &club_session)
            .await
            .status()
            .is_success()
    );
    let seen = last_seen(&d.upstream);
    let h = &seen["headers"];
    assert_eq!(h["x-wx-appid"], b.as_str());
    assert_eq!(h["x-wx-openid"], "o-club");
    assert_eq!(h["x-wx-unionid"], UNION);
    assert_eq!(
        claims(h["x-weapp-assertion"].as_str().unwrap())["appid"],
        b.as_str()
    );

    // Cloud Run's resource sharing: B's user reaches A's backend as X-WX-FROM-*.
    assert!(
        d.get("/shared/echo", &club_session)
            .await
            .status()
            .is_success()
    );
    let seen = last_seen(&d.upstream);
    let h = &seen["headers"];
    assert_eq!(h["x-wx-appid"], a.as_str());
    assert!(h.get("x-wx-openid").is_none(), "{h}");
    assert_eq!(h["x-wx-from-appid"], b.as_str());
    assert_eq!(h["x-wx-from-openid"], "o-club");
    assert_eq!(h["x-wx-from-unionid"], UNION);
    assert!(
        d.get("/shared/echo", &shop_session)
            .await
            .status()
            .is_success()
    );
    let seen = last_seen(&d.upstream);
    assert_eq!(
        seen["headers"]["x-wx-openid"], "o-shop",
        "A's own user as usual"
    );

    // One token per app, from one refresh per app, with both replicas asking at once.
    let mut asks = Vec::new();
    for round in 0..6 {
        for app in [&a, &b] {
            let (key, app, replica) = (d.keys.backend.clone(), app.clone(), round % 2);
            let mut client = d.grpc(replica).await;
            asks.push(tokio::spawn(async move {
                let token = client
                    .get_access_token(with_key(
                        GetAccessTokenRequest {
                            app_id: app.clone(),
                        },
                        &key,
                    ))
                    .await
                    .expect("a token")
                    .into_inner()
                    .access_token;
                (app, token)
            }));
        }
    }
    let mut tokens: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for ask in asks {
        let (app, token) = ask.await.unwrap();
        tokens.entry(app).or_default().insert(token);
    }
    assert_eq!(tokens[&a].len(), 1, "one token for A: {tokens:?}");
    assert_eq!(tokens[&b].len(), 1, "one token for B");
    let (token_a, token_b) = (
        tokens[&a].first().unwrap().clone(),
        tokens[&b].first().unwrap().clone(),
    );
    assert_ne!(token_a, token_b);
    assert_eq!(
        d.wechat.sandbox.apis().app_of_token(&token_b).as_deref(),
        Some(b.as_str())
    );
    assert_eq!(d.wechat.sandbox.apis().stable_token_calls(&a), 1);
    assert_eq!(d.wechat.sandbox.apis().stable_token_calls(&b), 1);

    // Keys act for their apps: the club's for B only, an old key for the default app only.
    let asked = |key: &str, app: &str| {
        with_key(
            GetAccessTokenRequest {
                app_id: app.to_owned(),
            },
            key,
        )
    };
    let denied = grpc
        .get_access_token(asked(&d.keys.club, &a))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(grpc.get_access_token(asked(&d.keys.club, &b)).await.is_ok());
    assert!(
        grpc.get_access_token(asked(&d.keys.legacy, ""))
            .await
            .is_ok()
    );
    let denied = grpc
        .get_access_token(asked(&d.keys.legacy, &b))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // The open-API proxy calls with the right app's token: the club key's is B's.
    let http = reqwest::Client::new();
    let check = |query: &str| {
        http.post(format!("{}/wxa/msg_sec_check{query}", d.openapi))
            .bearer_auth(&d.keys.club)
            .json(&serde_json::json!({ "content": "hello" }))
            .send()
    };
    let answer = check("").await.unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    let call = d.wechat.sandbox.wxa().calls().pop().unwrap();
    let used = call.access_token.unwrap();
    assert_eq!(
        d.wechat.sandbox.apis().app_of_token(&used).as_deref(),
        Some(b.as_str())
    );
    let refused = check(&format!("?from_appid={a}")).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["errcode"], 48001);

    // A publish by unionid reaches the person's sockets in both apps and nobody else's; a
    // key for B reaches B's only.
    let ws = |session: &ClientSession| {
        let url = format!("ws://{}/ws?{}", d.gateway.addr(), session.query());
        async move {
            let (mut ws, _) = connect_async(url).await.expect("upgrade accepted");
            next_text(&mut ws).await; // the greeting
            ws
        }
    };
    let (mut on_a, mut on_b, mut other) = (
        ws(&shop_session).await,
        ws(&club_session).await,
        ws(&stranger_session).await,
    );
    let publish = |key: &str, text: &str| {
        with_key(
            PublishRequest {
                message: Some(PushMessage {
                    target: Some(Target::UnionId(UNION.into())),
                    text: text.into(),
                    ..Default::default()
                }),
            },
            key,
        )
    };
    let answer = grpc
        .publish(publish(&d.keys.backend, "to-both"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.sockets, 2, "{answer:?}");
    assert_eq!(next_text(&mut on_a).await, "to-both");
    assert_eq!(next_text(&mut on_b).await, "to-both");
    let answer = grpc
        .publish(publish(&d.keys.club, "to-b"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.sockets, 1, "{answer:?}");
    assert_eq!(next_text(&mut on_b).await, "to-b");
    let quiet = tokio::time::timeout(Duration::from_millis(300), next_frame(&mut other)).await;
    assert!(quiet.is_err(), "the stranger got nothing");
    let quiet = tokio::time::timeout(Duration::from_millis(300), next_frame(&mut on_a)).await;
    assert!(quiet.is_err(), "A's socket got nothing of B's push");

    // Revoke by unionid with the club key: B's sessions end, A's stay.
    let revoked = grpc
        .revoke_user(with_key(
            RevokeUserRequest {
                union_id: UNION.into(),
                ..Default::default()
            },
            &d.keys.club,
        ))
        .await
        .unwrap()
        .into_inner()
        .revoked;
    assert_eq!(revoked, 1);
    assert_eq!(closed_with(&mut on_b).await, CloseCode::Policy);
    assert_eq!(d.get("/me", &club_session).await.status(), 401);
    assert!(
        d.get("/shop/echo", &shop_session)
            .await
            .status()
            .is_success()
    );

    // No AppSecret or access_token in any log or metric.
    let mut seen_by_operators = d.logs_and_metrics().await;
    for replica in &d.replicas {
        seen_by_operators.push_str(&replica.metrics().await);
    }
    for (app, secret) in &d.wechat.apps {
        assert!(
            !seen_by_operators.contains(secret.as_str()),
            "{app}'s AppSecret leaked"
        );
    }
    for token in [&token_a, &token_b] {
        assert!(
            !seen_by_operators.contains(token.as_str()),
            "an access_token leaked"
        );
    }
    assert!(seen_by_operators.contains("weapp_apps_configured 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_app_comes_and_goes_by_reload_with_no_restart() {
    let d = Deployment::start().await;
    let c = d.app(2).to_owned();
    let shop = d.mint(0, "o-shop", None);
    let shop_session = session_from(d.login("/login", &shop, None).await).await;

    // Not served yet.
    let early = d.mint(2, "o-third", None);
    assert_eq!(d.login("/login", &early, Some(&c)).await.status(), 400);

    // Added: logins for it at once, on either replica.
    write_apps(d.dir.path(), &d.wechat.apps);
    d.reload();
    for replica in &d.replicas {
        replica.wait_for_log("configuration reloaded", 1, Duration::from_secs(5));
    }
    let third = d.mint(2, "o-third", None);
    let answer = d.login("/login", &third, Some(&c)).await;
    assert_eq!(
        header(&answer, "x-weapp-app-id").as_deref(),
        Some(c.as_str())
    );
    let third_session = session_from(answer).await;
    assert!(
        d.get("/any/echo", &third_session)
            .await
            .status()
            .is_success()
    );
    // The gateway's SIGHUP reads its routes again: /shop/ serves C too from then on; a bad
    // routes file keeps the routes in force.
    assert_eq!(d.get("/shop/echo", &third_session).await.status(), 401);
    write_routes(
        d.dir.path(),
        &d.upstream.url(),
        (d.app(0), d.app(1)),
        &[d.app(0), &c],
    );
    d.gateway.signal("HUP");
    d.gateway
        .wait_for_log("routes file reloaded", 1, Duration::from_secs(5));
    assert!(
        d.get("/shop/echo", &third_session)
            .await
            .status()
            .is_success()
    );
    std::fs::write(
        d.dir.path().join("routes.toml"),
        "[[route]]\nprefix = \"/me\"\n",
    )
    .unwrap();
    d.gateway.signal("HUP");
    d.gateway
        .wait_for_log("routes file not reloaded", 1, Duration::from_secs(5));
    assert!(
        d.get("/shop/echo", &third_session)
            .await
            .status()
            .is_success()
    );

    let url = format!("ws://{}/ws?{}", d.gateway.addr(), third_session.query());
    let (mut socket, _) = connect_async(url).await.expect("upgrade accepted");
    next_text(&mut socket).await;

    // A bad file keeps what is in force, and says why.
    std::fs::write(
        d.dir.path().join("apps.toml"),
        "default = \"wxnone\"\n[[app]]\n",
    )
    .unwrap();
    d.reload();
    for replica in &d.replicas {
        replica.wait_for_log("configuration not reloaded", 1, Duration::from_secs(5));
    }
    assert!(
        d.get("/any/echo", &third_session)
            .await
            .status()
            .is_success()
    );

    // Removed: its sessions refused on the gateway within a second, its sockets closed,
    // every other session untouched; kept in the store, so adding it back restores them.
    write_apps(d.dir.path(), &d.wechat.apps[..2]);
    let removed_at = std::time::Instant::now();
    d.reload();
    assert_eq!(closed_with(&mut socket).await, CloseCode::Policy);
    loop {
        if d.get("/any/echo", &third_session).await.status() == 401 {
            break;
        }
        assert!(
            removed_at.elapsed() < Duration::from_secs(1),
            "the removed app's session still served after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = d.mint(2, "o-third", None);
    assert_eq!(d.login("/login", &again, Some(&c)).await.status(), 400);
    assert!(
        d.get("/any/echo", &shop_session)
            .await
            .status()
            .is_success()
    );

    write_apps(d.dir.path(), &d.wechat.apps);
    d.reload();
    for replica in &d.replicas {
        replica.wait_for_log("configuration reloaded", 3, Duration::from_secs(5));
    }
    assert!(
        d.get("/any/echo", &third_session)
            .await
            .status()
            .is_success(),
        "restored"
    );
    for replica in &d.replicas {
        let metrics = replica.metrics().await;
        assert!(metrics.contains("weapp_apps_configured 3"), "{metrics}");
        assert!(
            metrics.contains(r#"weapp_config_reloads_total{outcome="applied"} 3"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"weapp_config_reloads_total{outcome="error"} 1"#),
            "{metrics}"
        );
        assert!(
            replica.log().contains("apps file"),
            "the log names the file at fault"
        );
    }
}
