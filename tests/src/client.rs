//! A client of the gateway that speaks wafer as `wafer-client-sdk` does: login requests with
//! the SDK's headers, session headers on every request.
use std::time::Duration;

use wechat_sandbox::MintedLogin;

use crate::ClientSession;

#[derive(Clone)]
pub struct WaferClient {
    pub http: reqwest::Client,
    /// `http://host:port` of the gateway (or of nginx in front of it).
    pub base: String,
}

impl WaferClient {
    pub fn new(base: String) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /login` with the code only (today's WeChat flow).
    pub async fn login_code_only(&self, code: &str) -> reqwest::Response {
        self.http
            .get(self.url("/login"))
            .header("X-WX-Code", code)
            .send()
            .await
            .expect("gateway answers")
    }

    /// `GET /login` as `wafer-client-sdk` sends it: code, encryptedData and iv headers.
    pub async fn login_encrypted(&self, minted: &MintedLogin) -> reqwest::Response {
        self.http
            .get(self.url("/login"))
            .header("X-WX-Code", &minted.code)
            .header("X-WX-Encrypted-Data", &minted.encrypted_data)
            .header("X-WX-IV", &minted.iv)
            .send()
            .await
            .expect("gateway answers")
    }

    pub async fn get(&self, path: &str, session: Option<&ClientSession>) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(session) = session {
            request = request.headers(session.headers());
        }
        request.send().await.expect("gateway answers")
    }
}
