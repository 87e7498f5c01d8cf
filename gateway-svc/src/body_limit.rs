//! Request bodies. No gateway route reads one (wafer logs in with headers), so a body is only
//! ever a cost: past the limit it is refused with 413 before the request is routed — no
//! session check, no WeChat call, no code spent. An announced length is judged at once; a
//! chunked body is read and thrown away, within the header deadline, never kept in memory.
//! Checked in the server loop rather than as a router layer: as an axum middleware on every
//! request it cost a few percent of `/me` throughput (wrk, release build).
use axum::{
    body::{Body, HttpBody as _},
    http::{Request, header},
};
use futures::StreamExt as _;
use hyper::body::Incoming;

use crate::{config::HttpLimits, error::ApiError};

/// Lets `request` through, with an announced body of at most the limit (left for the route
/// to ignore) or none at all (a chunked body drained and replaced by an empty one), or says
/// why not. No await on the common path: requests without a body cost one header lookup.
pub async fn check(
    request: Request<Incoming>,
    limits: &HttpLimits,
) -> Result<Request<Body>, ApiError> {
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
        return Ok(request.map(Body::new));
    }
    if request.body().is_end_stream() {
        return Ok(request.map(Body::new));
    }
    let (parts, body) = request.into_parts();
    let mut chunks = Body::new(body).into_data_stream();
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
        Ok(Ok(())) => Ok(Request::from_parts(parts, Body::empty())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::BodyTimeout),
    }
}
