//! `gateway-svc healthcheck`: asks a running gateway's `/readyz` whether it is ready.
use std::{net::SocketAddr, time::Duration};

/// Checks the gateway listening on `listen` (an unspecified address means this host).
pub async fn check(listen: SocketAddr) -> Result<(), String> {
    let target = weapp_common::probe_target(listen);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(format!("http://{target}/readyz"))
        .send()
        .await
        .map_err(|e| format!("no answer from {target}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        Err(format!("/readyz answered {status}: {body}"))
    }
}
