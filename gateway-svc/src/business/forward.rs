//! Forwarding to business upstreams (`route_table.rs` says which): the request goes on as the
//! client sent it — method, path, query, headers, body — minus what must never leave the
//! gateway, plus the identity; the answer comes back the same way. Bodies stream both ways
//! (the fast path reads a small one whole first, `fast_forward.rs`), a client body that stalls
//! past the route's `body_timeout` is 408, at most `max_connections` requests of a route are in
//! flight (`route_table.rs`), each upstream has its own HTTP/1.1 keep-alive pool, and an
//! upstream that is down or slow gets a 502 or 504 within its route's timeouts, never a hang.
use std::{
    error::Error as _,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Bytes;
use axum::{
    body::Body,
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, Uri, Version, header},
    response::Response,
};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::{Frame, SizeHint};
use ipnet::IpNet;
use tokio::sync::OwnedSemaphorePermit;

use crate::{
    business::h1::HOP_BY_HOP,
    business::route_table::Business,
    business::upstream::UpstreamError,
    config::{client_ip, is_trusted_proxy},
    error::ApiError,
    sessions::identity,
    sessions::resolver::AuthSession,
    wafer,
};

/// Sends `request` to `business`'s upstream with `session`'s identity (or none), and
/// streams the answer back; `in_flight` (its place among the route's requests in flight) is
/// held until the answer's body has been passed on.
pub async fn forward(
    business: &Business,
    session: Option<&AuthSession>,
    client_address: ClientAddress<'_>,
    request: Request,
    in_flight: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let (route, upstream) = (&*business.route, &business.upstream);
    let (mut parts, body) = request.into_parts();
    let body = Body::new(from_client(body, route.body_timeout));
    let max = route.max_body_bytes;
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match length {
        Some(length) if length > max => {
            return Err(ApiError::BodyTooLarge(
                usize::try_from(max).unwrap_or(usize::MAX),
            ));
        }
        Some(_) => body,
        // A chunked body is counted as it streams; past the limit the upstream request
        // fails and the client gets 413.
        None => Body::new(Limited::new(
            body,
            usize::try_from(max).unwrap_or(usize::MAX),
        )),
    };
    let (path, query) = (parts.uri.path(), parts.uri.query());
    // Origin-form ("/path?query"): the connection already is the upstream's.
    let mut uri =
        String::with_capacity(route.base_path.len() + path.len() + query.map_or(0, str::len) + 2);
    route.push_upstream_path(&mut uri, path);
    push_query_without_session(&mut uri, query);
    parts.uri = Uri::try_from(uri).map_err(|_| ApiError::BadRequestTarget)?;
    parts.version = Version::HTTP_11;
    request_headers(
        &mut parts.headers,
        (
            session,
            route.identity_headers,
            route.resource_appid.as_ref(),
        ),
        client_address,
    );
    parts.headers.insert(header::HOST, route.host.clone());
    let outgoing = Request::from_parts(parts, body);
    let answer = tokio::time::timeout(route.timeout, upstream.send(outgoing)).await;
    let answer = match answer {
        Err(_) => return Err(ApiError::UpstreamTimeout(route.prefix.clone())),
        Ok(Err(e)) if caused_by::<LengthLimitError>(&e) => {
            return Err(ApiError::BodyTooLarge(
                usize::try_from(max).unwrap_or(usize::MAX),
            ));
        }
        Ok(Err(e)) if caused_by::<Stalled>(&e) => return Err(ApiError::BodyTimeout),
        // A malformed chunk, a body cut short: the client's error, not the upstream's.
        Ok(Err(e)) if caused_by::<ClientBody>(&e) => {
            tracing::debug!(error = %e, cause = ?e.source(), "the client's body broke");
            return Err(ApiError::BadBody);
        }
        Ok(Err(e)) => {
            tracing::warn!(route = %route.prefix, error = %e, cause = ?e.source(), "upstream request failed");
            return Err(match e.is_connect() {
                true => ApiError::UpstreamUnreachable(route.prefix.clone()),
                false => ApiError::UpstreamFailed(route.prefix.clone()),
            });
        }
        Ok(Ok(answer)) => answer,
    };
    let (mut parts, body) = answer.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    let body = Held {
        body,
        _in_flight: in_flight,
    };
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Who sent the request, for `X-Forwarded-For` and `-Proto`.
#[derive(Clone, Copy)]
pub struct ClientAddress<'a> {
    pub peer: SocketAddr,
    /// The reverse proxies whose forwarding headers are believed.
    pub trusted_proxies: &'a [IpNet],
}

impl ClientAddress<'_> {
    fn trusted(&self) -> bool {
        is_trusted_proxy(self.trusted_proxies, self.peer.ip())
    }
}

fn caused_by<E: std::error::Error + 'static>(e: &UpstreamError) -> bool {
    let mut source = e.source();
    while let Some(cause) = source {
        if cause.is::<E>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The client's body failed to arrive as framed, or stalled.
#[derive(Debug, thiserror::Error)]
#[error("the client's body did not arrive as framed")]
struct ClientBody(#[source] BoxError);

/// No part of the client's body came within the route's `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client's body stalled")]
struct Stalled;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's body as the upstream gets it: its errors marked as the client's, a stall
/// longer than `timeout` between two of its parts an error (nginx's `client_body_timeout`),
/// and its trailers (should hyper's client ever send them) without a client-made identity.
fn from_client(body: Body, timeout: Duration) -> FromClient {
    FromClient {
        body,
        timeout,
        stall: Box::pin(tokio::time::sleep(timeout)),
        waiting: false,
    }
}

struct FromClient {
    body: Body,
    timeout: Duration,
    stall: Pin<Box<tokio::time::Sleep>>,
    /// A part was asked for and has not come: the stall clock runs from when it was asked
    /// (an upstream slow to read makes hyper ask late, and that is not the client's stall).
    waiting: bool,
}

impl hyper::body::Body for FromClient {
    type Data = Bytes;
    type Error = ClientBody;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBody>>> {
        let this = self.get_mut();
        if !this.waiting {
            this.waiting = true;
            let deadline = tokio::time::Instant::now() + this.timeout;
            this.stall.as_mut().reset(deadline);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|frame| match frame {
                    Ok(frame) => Ok(match frame.into_trailers() {
                        Ok(mut trailers) => {
                            identity::strip_client_headers(&mut trailers);
                            Frame::trailers(trailers)
                        }
                        Err(frame) => frame,
                    }),
                    Err(e) => Err(ClientBody(e.into())),
                }))
            }
            Poll::Pending => match this.stall.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(ClientBody(Box::new(Stalled))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An answer's body that holds something until it has been read (or dropped).
struct Held<B, T> {
    body: B,
    _in_flight: T,
}

impl<B: hyper::body::Body + Unpin, T: Unpin> hyper::body::Body for Held<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// RFC 9110 §7.6.1: connection-specific fields end at this hop, with the fields the
/// `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        // One pass over the few fields there are, instead of a lookup for each of the nine.
        let present: Vec<HeaderName> = headers
            .keys()
            .filter(|name| HOP_BY_HOP.contains(name))
            .cloned()
            .collect();
        for name in present {
            headers.remove(name);
        }
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// What the upstream sees of the client's headers: no hop-by-hop fields, no session
/// credentials, no identity the client made up; the identity of the session (if any) and
/// the forwarding headers instead.
pub(crate) fn request_headers(
    headers: &mut HeaderMap,
    (session, names, resource): (Option<&AuthSession>, identity::Names, Option<&HeaderValue>),
    client_address: ClientAddress<'_>,
) {
    remove_hop_by_hop(headers);
    // The upstream answers in full; hyper does not speak 100-continue as a client.
    headers.remove(header::EXPECT);
    let trusted = client_address.trusted();
    // Read before the client's fields go: a trusted proxy's X-Real-IP names the client, its
    // X-Forwarded-For and -Proto go on. Anyone else's are claims nobody checked.
    let client = names.cloudrun().then(|| {
        client_ip(
            client_address.trusted_proxies,
            client_address.peer.ip(),
            headers,
        )
    });
    let forwarded_for = HeaderName::from_static("x-forwarded-for");
    let proto = HeaderName::from_static("x-forwarded-proto");
    let peer = client_address.peer.ip().to_canonical();
    let chain = match headers.get(&forwarded_for).and_then(|v| v.to_str().ok()) {
        Some(earlier) if trusted => format!("{earlier}, {peer}"),
        _ => peer.to_string(),
    };
    let told_proto = headers
        .get(&proto)
        .filter(|v| trusted && matches!(v.as_bytes(), b"http" | b"https"))
        .cloned();
    // The client's Host goes on as X-Forwarded-Host; the caller sets the upstream's.
    let host = headers.remove(header::HOST);
    // The session credentials (`X-WX-Id`, `X-WX-Skey`), every identity, address and route
    // the client made up, in any spelling; the forwarding fields are the gateway's alone.
    identity::strip_client_headers(headers);
    if let Some(session) = session {
        session.insert_identity_for(headers, names, resource);
    }
    if let Some(host) = host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    // Cloud Run's name for the client's address.
    if let Some(Ok(value)) = client.map(|ip| HeaderValue::try_from(ip.to_string())) {
        headers.insert(identity::ORIGINAL_FORWARDED_FOR, value);
    }
    if let Ok(value) = HeaderValue::try_from(chain) {
        headers.insert(forwarded_for, value);
    }
    headers.insert(
        proto,
        told_proto.unwrap_or(HeaderValue::from_static("http")),
    );
}

/// Appends the query string without wafer's session parameters (any letter case), the rest
/// kept byte for byte, with its `?` (nothing when nothing is left).
pub(crate) fn push_query_without_session(target: &mut String, query: Option<&str>) {
    let Some(query) = query else {
        return;
    };
    let mut first = true;
    for pair in query.split('&') {
        // Decoded as a form decoder reads it, so `X%2DWX%2DSkey` is caught too.
        let credential = url::form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(name, _)| {
                name.eq_ignore_ascii_case(wafer::HEADER_ID)
                    || name.eq_ignore_ascii_case(wafer::HEADER_SKEY)
            });
        if credential {
            continue;
        }
        target.push(if first { '?' } else { '&' });
        target.push_str(pair);
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_parameters_never_leave_in_the_query() {
        for (query, kept) in [
            (None, ""),
            (Some("x-wx-skey=s&a=1"), "?a=1"),
            (
                Some("a=1&X-WX-Id=i&b=%20x&X%2DWX%2DSkey=s&x-wx-skey"),
                "?a=1&b=%20x",
            ),
            (Some("X-WX-ID=i"), ""),
            (Some("x-wx-code=c&q=a+b"), "?x-wx-code=c&q=a+b"),
        ] {
            let mut target = String::new();
            push_query_without_session(&mut target, query);
            assert_eq!(target, kept, "{query:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_end_here() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("x-end-to-end", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-end-to-end"));
    }

    #[test]
    fn forwarding_headers_believe_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let with = |peer: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
            headers.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
            headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
            headers.insert(header::HOST, HeaderValue::from_static("weapp.example.com"));
            headers.insert(wafer::HEADER_SKEY, HeaderValue::from_static("secret"));
            request_headers(
                &mut headers,
                (None, identity::Names::Both, None),
                ClientAddress {
                    peer: peer.parse().unwrap(),
                    trusted_proxies: &trusted,
                },
            );
            headers
        };
        let behind_proxy = with("127.0.0.1:5000");
        assert_eq!(behind_proxy["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(behind_proxy["x-forwarded-proto"], "https");
        assert_eq!(behind_proxy["x-forwarded-host"], "weapp.example.com");
        assert_eq!(behind_proxy[identity::ORIGINAL_FORWARDED_FOR], "1.2.3.4");
        assert!(!behind_proxy.contains_key(header::HOST));
        assert!(!behind_proxy.contains_key(wafer::HEADER_SKEY));
        let direct = with("10.9.8.7:5000");
        assert_eq!(direct["x-forwarded-for"], "10.9.8.7");
        assert_eq!(direct["x-forwarded-proto"], "http");
        assert_eq!(direct[identity::ORIGINAL_FORWARDED_FOR], "10.9.8.7");
    }
}
