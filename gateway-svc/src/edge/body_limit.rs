//! Request bodies of the gateway's own routes (business routes stream theirs under their own
//! limit, `forward.rs`). Few read one — `/phone-number` takes `{"code": …}` — and for the rest
//! a body is only a cost, so past the limit it is refused with 413 before the request is
//! routed: no session check, no WeChat call, no code spent. An announced length is judged at
//! once; a chunked body is read within the header deadline and, being at most the limit
//! (1 MiB by default), handed on whole, so a route reads it whatever its framing.
//! Checked in the server loop rather than as a router layer: as an axum middleware on every
//! request it cost a few percent of `/me` throughput (wrk, release build).
use axum::{
    body::{Body, HttpBody as _},
    http::{Request, header},
};
use futures::StreamExt as _;
use hyper::body::Incoming;

use crate::{config::HttpLimits, error::ApiError};

/// Lets `request` through with a body of at most the limit (an announced one as it streams,
/// a chunked one read whole), or says why not. No await on the common path: requests without
/// a body cost one header lookup.
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
    let read = tokio::time::timeout(limits.header_timeout, async {
        let mut whole = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| ApiError::BadBody)?;
            if whole.len().saturating_add(chunk.len()) > max {
                return Err(ApiError::BodyTooLarge(max));
            }
            whole.extend_from_slice(&chunk);
        }
        Ok(whole)
    })
    .await;
    match read {
        Ok(Ok(whole)) => Ok(Request::from_parts(parts, Body::from(whole))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::BodyTimeout),
    }
}
