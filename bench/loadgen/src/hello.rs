//! The physical limit: the smallest axum service there is, on the same runtime and machine.
use axum::{Router, routing::get};

pub async fn serve(listen: &str) -> Result<serde_json::Value, String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The harness reads this line to learn the port.
    println!("listening on {addr}");
    let app = Router::new().fallback(get(|| async { "hello" }));
    axum::serve(listener, app)
        .await
        .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({}))
}
