//! The API keys in force, checked in front of the gRPC services (`access.rs` says what a key
//! is and may do; `live.rs` holds the keys a reload put in force).
use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};

use crate::{access::required_scope, live::LiveConfig};

/// Puts [`Access`] in front of the gRPC services; without keys it lets everything through
/// (loopback only, or the operator said `WEAPP_GRPC_INSECURE`). The keys are the live ones:
/// a reload takes effect on the next call.
#[derive(Clone)]
pub struct AccessLayer(pub Arc<LiveConfig>);

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            live: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    live: Arc<LiveConfig>,
}

impl<S, B> tower::Service<http::Request<B>> for Access<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let keys = self.live.keys();
        if let (Some(keys), Some(scope)) = (keys.as_deref(), required_scope(request.uri().path())) {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(http::HeaderValue::as_bytes);
            match keys.authorize(authorization, scope) {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                }
                Err(mut status) => {
                    status.metadata_mut().insert(
                        weapp_proto::metadata::API_KEY_REFUSED,
                        tonic::metadata::MetadataValue::from_static("1"),
                    );
                    return Either::Right(ready(Ok(status.into_http())));
                }
            }
        }
        Either::Left(self.inner.call(request))
    }
}
