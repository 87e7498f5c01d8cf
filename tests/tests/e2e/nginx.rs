//! The shipped nginx site, on real nginx, in front of two gateways: HTTPS and WSS all the way
//! through to session-svc, as a mini-program reaches a production deployment.
use std::time::Duration;

use futures::SinkExt as _;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
use weapp_tests::{
    MAGIC_KEY, Stack,
    nginx::{Nginx, Site},
    session_from,
    wechat_sandbox::MintRequest,
    ws::next_text,
};

async fn wss_greeting_and_echo(nginx: &Nginx, query: &str) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", nginx.https_port))
        .await
        .unwrap();
    let server_name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = nginx
        .tls_connector()
        .connect(server_name, tcp)
        .await
        .expect("TLS handshake");
    let request = format!("wss://localhost:{}/ws?{query}", nginx.https_port)
        .into_client_request()
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("WSS upgrade through nginx");
    assert_eq!(response.status(), 101);
    assert_eq!(next_text(&mut ws).await, "Server: 恭喜，Sandbox User");
    for i in 0..10 {
        ws.send(Message::Text(format!("hello {i}").into()))
            .await
            .unwrap();
    }
    for i in 0..10 {
        assert_eq!(
            next_text(&mut ws).await,
            format!("Server: Received(hello {i})")
        );
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn https_and_wss_through_the_shipped_nginx_config_to_two_gateways() {
    let mut stack = Stack::start().await;
    let second = stack.extra_gateway().await;
    let nginx = Nginx::start(&[stack.gateway_addr(), second.addr]);
    let https = nginx.https_client();

    // Plain HTTP is redirected to HTTPS.
    let redirect = https.get(nginx.http_url("/me")).send().await.unwrap();
    assert_eq!(redirect.status(), 301);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("https://localhost/me"), "{location}");

    // Login and /me over HTTPS, as the client SDK sends them.
    let minted = stack.mint(MintRequest::default());
    let login = nginx.wafer_client().login_encrypted(&minted).await;
    assert_eq!(login.status(), 200, "{}", nginx.error_log());
    let hsts = login.headers().get("strict-transport-security").cloned();
    assert!(
        hsts.is_some_and(|v| v.to_str().unwrap().contains("max-age=")),
        "HSTS header"
    );
    let body: serde_json::Value = login.json().await.unwrap();
    assert_eq!(body[MAGIC_KEY], 1);
    let session = weapp_tests::ClientSession {
        id: body["session"]["id"].as_str().unwrap().into(),
        skey: body["session"]["skey"].as_str().unwrap().into(),
    };
    let me = |https: reqwest::Client, url: String, session: weapp_tests::ClientSession| async move {
        https
            .get(url)
            .headers(session.headers())
            .send()
            .await
            .unwrap()
    };
    let answer = me(https.clone(), nginx.https_url("/me"), session.clone()).await;
    assert_eq!(answer.status(), 200);
    let user: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(user["openId"], minted.openid.as_str());

    wss_greeting_and_echo(&nginx, &session.query()).await;
    // The WebSocket carried the skey in its query string; the access log must not keep it.
    // (nginx writes a WebSocket's line when the connection has closed.)
    let mut access_log = nginx.access_log();
    for _ in 0..40 {
        if access_log.contains("GET /ws") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        access_log = nginx.access_log();
    }
    assert!(access_log.contains("GET /ws"), "{access_log}");
    assert!(
        !access_log.contains(&session.skey),
        "skey in the access log: {access_log}"
    );

    // Both gateways are in the upstream: with either one down, everything still works.
    stack.stop_gateway().await;
    for _ in 0..4 {
        let answer = me(https.clone(), nginx.https_url("/me"), session.clone()).await;
        assert_eq!(answer.status(), 200, "served by the second gateway");
    }
    wss_greeting_and_echo(&nginx, &session.query()).await;
    stack.start_gateway().await;
    second.stop().await;
    for _ in 0..4 {
        let answer = me(https.clone(), nginx.https_url("/me"), session.clone()).await;
        assert_eq!(answer.status(), 200, "served by the first gateway again");
    }
    wss_greeting_and_echo(&nginx, &session.query()).await;
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_are_offered() {
    let stack = Stack::start().await;
    let nginx = Nginx::start(&[stack.gateway_addr()]);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls::pki_types::pem::PemObject::from_pem_slice(nginx.certificate_pem.as_bytes())
                .unwrap(),
        )
        .unwrap();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", nginx.https_port))
            .await
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
    }
}

/// The tutorial's own nginx config, unchanged but for certificate, listen and upstream: it
/// sends WebSocket upgrades upstream as HTTP/1.0, which Node accepted. A team that swaps its
/// Node app for weapp behind it keeps its logins, its exact `/me` and its WebSockets.
#[tokio::test]
async fn the_tutorials_own_nginx_config_works_unchanged_wss_included() {
    let stack = Stack::start().await;
    let nginx = Nginx::with_site(Site::Tutorial, &[stack.gateway_addr()]);
    let client = nginx.wafer_client();
    let minted = stack.mint(MintRequest::default());
    let session = session_from(client.login_encrypted(&minted).await).await;
    let me = client.get("/me", Some(&session)).await;
    assert_eq!(me.status(), 200, "{}", nginx.error_log());
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me, minted.decrypted);

    for _ in 0..2 {
        wss_greeting_and_echo(&nginx, &session.query()).await;
    }
}
