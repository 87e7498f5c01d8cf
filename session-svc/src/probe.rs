//! `session-svc healthcheck`: asks a running session-svc, over gRPC, whether it is SERVING.
use std::{net::SocketAddr, time::Duration};

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use weapp_proto::session::v1::session_service_server::SERVICE_NAME;

/// Checks the service listening on `listen` (an unspecified address means this host).
pub async fn check(listen: SocketAddr) -> Result<(), String> {
    let target = weapp_common::probe_target(listen);
    let probe = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {target}: {e}"))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: SERVICE_NAME.into(),
            })
            .await
            .map_err(|e| format!("health check failed: {}", e.message()))?;
        match answer.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("session-svc reports {}", other.as_str_name())),
        }
    };
    tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {target} within 3s")))
}
