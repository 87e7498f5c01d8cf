//! The test harness, one file per role:
//!
//! * `stack.rs` — the whole system in-process (sandbox, session-svc, gateway-svc), configured
//!   through the binaries' own parser; `wechat.rs` — the WeChat sandbox;
//! * `client.rs` — a wafer client of the gateway; `ws.rs` — WebSocket frames;
//! * `store_door.rs` — session-svc's store behind its back;
//! * `upstream.rs` — a business upstream behind the gateway's forwarding; `scripted.rs` — one
//!   whose answers are scripted byte for byte and which records what reached it as bytes;
//! * `raw.rs` — HTTP requests written byte for byte (paths no URL parser would leave alone);
//! * `ports.rs` — ports that cannot race; `process.rs` — waiting for spawned servers;
//! * `mongo.rs`, `nginx.rs`, `services.rs` — real nx-27017, real nginx and the shipped
//!   binaries as processes; `load.rs` — a recording load for the fault tests.
//!
//! Only WeChat is simulated, by the sandbox.
use reqwest::header::HeaderMap;

pub use wechat_sandbox;

pub mod client;
pub mod command_counter;
pub mod load;
pub mod mongo;
pub mod nginx;
pub mod otlp;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod raw;
pub mod scripted;
pub mod services;
pub mod stack;
pub mod store_door;
pub mod upstream;
pub mod wechat;
pub mod ws;

pub use stack::{ExtraGateway, ExtraSessionSvc, Service, Stack, StackBuilder};
pub use wechat::WeChat;

/// Which session store a stack's session-svc uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestStore {
    Embedded,
    /// MongoDB, served by a private nx-27017 process.
    Mongo,
}

impl TestStore {
    /// `WEAPP_TEST_STORE=mongodb` runs the whole end-to-end suite against MongoDB.
    pub fn from_env() -> Self {
        match std::env::var("WEAPP_TEST_STORE").as_deref() {
            Ok("mongodb") => Self::Mongo,
            Ok("embedded") | Err(_) => Self::Embedded,
            Ok(other) => panic!("WEAPP_TEST_STORE must be embedded or mongodb, not {other:?}"),
        }
    }
}

pub const MAGIC_KEY: &str = "F2C224D4-2BCE-4C64-AF9F-A6D872000D1A";

/// A session as the client SDK keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSession {
    pub id: String,
    pub skey: String,
}

impl ClientSession {
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("X-WX-Id", self.id.parse().expect("id is a valid header"));
        headers.insert(
            "X-WX-Skey",
            self.skey.parse().expect("skey is a valid header"),
        );
        headers
    }

    pub fn query(&self) -> String {
        format!("X-WX-Id={}&X-WX-Skey={}", self.id, self.skey)
    }
}

/// Reads a successful login answer and returns its session, failing the test otherwise.
pub async fn session_from(response: reqwest::Response) -> ClientSession {
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("login answers JSON");
    assert_eq!(status, 200, "login failed: {body}");
    assert_eq!(body[MAGIC_KEY], 1, "{body}");
    ClientSession {
        id: body["session"]["id"]
            .as_str()
            .expect("session.id")
            .to_owned(),
        skey: body["session"]["skey"]
            .as_str()
            .expect("session.skey")
            .to_owned(),
    }
}

/// Status and JSON body of a response.
pub async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body)
}
