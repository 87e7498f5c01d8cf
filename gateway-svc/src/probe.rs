//! `gateway-svc healthcheck`: asks a running gateway's `/readyz` whether it is ready (over the
//! gateway's own HTTP client, `upstream.rs`: the image needs no curl).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::body::Body;
use http_body_util::{BodyExt as _, Limited};

use crate::business::upstream::Upstream;

/// Checks the gateway listening on `listen` (an unspecified address means this host).
pub async fn check(listen: SocketAddr) -> Result<(), String> {
    let target = weapp_common::probe_target(listen);
    let asked = async {
        let upstream = Arc::new(Upstream::new(target.to_string(), Duration::from_secs(3)));
        let request = http::Request::get("/readyz")
            .header(http::header::HOST, target.to_string())
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let response = upstream
            .send(request)
            .await
            .map_err(|e| format!("no answer from {target}: {e}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Err(format!("/readyz answered {status}: {body}"))
    };
    tokio::time::timeout(Duration::from_secs(3), asked)
        .await
        .map_err(|_| format!("no answer from {target} within 3 s"))?
}
