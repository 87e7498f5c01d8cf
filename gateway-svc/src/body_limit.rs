//! Request bodies. No gateway route reads one (wafer logs in with headers), so a body is only
//! ever a cost: past the limit it is refused with 413 before anything else happens — no
//! session check, no WeChat call, no code spent. An announced length is judged at once; a
//! chunked body is read and thrown away, within the header deadline, never kept in memory.
use axum::body::HttpBody as _;
use axum::{
    body::Body,
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::Response,
};
use futures::StreamExt as _;

use crate::{error::ApiError, server::HttpLimits};

pub async fn limit_body(
    State(limits): State<HttpLimits>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let max = limits.max_body_bytes;
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = length {
        if length > max as u64 {
            return Err(ApiError::BodyTooLarge(max));
        }
        return Ok(next.run(request).await);
    }
    if request.body().is_end_stream() {
        return Ok(next.run(request).await);
    }
    let (parts, body) = request.into_parts();
    let mut chunks = body.into_data_stream();
    let drained = tokio::time::timeout(limits.header_timeout, async {
        let mut total = 0usize;
        while let Some(chunk) = chunks.next().await {
            total = total.saturating_add(chunk.map_err(|_| ApiError::BadBody)?.len());
            if total > max {
                return Err(ApiError::BodyTooLarge(max));
            }
        }
        Ok(())
    })
    .await;
    match drained {
        Ok(Ok(())) => Ok(next.run(Request::from_parts(parts, Body::empty())).await),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::BodyTimeout),
    }
}
