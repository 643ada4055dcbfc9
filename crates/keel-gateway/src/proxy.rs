//! One proxied request: route, method, size, auth and rate checks, header rewriting,
//! then the upstream call with its timeout, retries and breaker reports. Bodies pass
//! through as streams both ways; nothing here reads or re-encodes them.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::response::IntoResponse;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{LengthLimitError, Limited};
use keel_service::Problem;

use crate::auth::{Authenticator, Refusal};
use crate::route::{ClientKey, Route, RouteTable};
use crate::upstream::{UpstreamError, UpstreamPool};

/// Set by the gateway after authentication; services record it as the actor.
pub const SUBJECT_HEADER: HeaderName = HeaderName::from_static("x-keel-subject");
/// Propagated when the client sends a sane one, generated otherwise; echoed in the response.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 7.6.1) plus the non-standard ones proxies also drop.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Where a request came from: the client's address (its IP already as an
/// `X-Forwarded-For` value, made once per connection) and the upstream pool of the
/// runtime serving the connection.
pub(crate) struct Downstream {
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) peer_ip: Option<HeaderValue>,
    pub(crate) upstream: UpstreamPool,
}

impl Downstream {
    pub(crate) fn new(peer: SocketAddr, upstream: UpstreamPool) -> Self {
        Self { peer: Some(peer), peer_ip: Self::ip_header(peer), upstream }
    }

    pub(crate) fn ip_header(peer: SocketAddr) -> Option<HeaderValue> {
        HeaderValue::try_from(peer.ip().to_string()).ok()
    }
}

/// What a request needs from the gateway, shared by every connection.
pub(crate) struct Shared {
    pub(crate) routes: RouteTable,
    pub(crate) auth: Option<Authenticator>,
    pub(crate) upstream: UpstreamPool,
}

impl Shared {
    pub(crate) async fn proxy(
        &self,
        req: Request<Body>,
        downstream: &Downstream,
    ) -> Response<Body> {
        let Some(route) = self.routes.find(req.uri().path()) else {
            return problem(StatusCode::NOT_FOUND, "no route matches this path");
        };
        let started = Instant::now();
        let request_id = request_id(req.headers());
        let mut response = self.forward(route, req, downstream, &request_id).await;
        response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
        route.metrics.record(response.status().as_u16(), started.elapsed());
        response
    }

    async fn forward(
        &self,
        route: &Route,
        req: Request<Body>,
        downstream: &Downstream,
        request_id: &HeaderValue,
    ) -> Response<Body> {
        let peer = downstream.peer;
        let (mut parts, body) = req.into_parts();
        if !route.allows(&parts.method) {
            let mut response =
                problem(StatusCode::METHOD_NOT_ALLOWED, "this route does not accept the method");
            if let Some(allow) = &route.allow {
                response.headers_mut().insert(header::ALLOW, allow.clone());
            }
            return response;
        }
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if content_length.is_some_and(|len| len > route.max_body_bytes) {
            return too_large(route.max_body_bytes);
        }

        let subject = match (&self.auth, route.config.auth) {
            (Some(auth), mode) if mode != crate::AuthMode::None => {
                match auth.authenticate(&parts.headers) {
                    Ok(subject) => subject,
                    Err(refusal) => {
                        tracing::debug!(route = %route.prefix, ?refusal, "credentials refused");
                        return unauthorized(match refusal {
                            Refusal::Token(_) => "the bearer token is invalid",
                            Refusal::ApiKey => "the API key is invalid",
                        });
                    }
                }
            }
            _ => None,
        };
        let subject_value = match subject.as_deref().map(HeaderValue::from_str) {
            Some(Ok(value)) => Some(value),
            Some(Err(_)) => return unauthorized("the subject cannot be carried in a header"),
            None if route.needs_auth(&parts.method) => {
                return unauthorized("credentials are required");
            }
            None => None,
        };
        if let Some(allowed) = &route.config.allow_subjects
            && !subject.as_ref().is_some_and(|s| allowed.contains(s))
        {
            return problem(StatusCode::FORBIDDEN, "this subject may not use this route");
        }
        if route.limiter.is_some() {
            let key = match (subject, peer) {
                (Some(subject), _) => ClientKey::Subject(subject),
                (None, Some(peer)) => ClientKey::Ip(peer.ip()),
                (None, None) => ClientKey::Unknown,
            };
            if let Err(wait) = route.check_rate(&key) {
                return Problem::new(StatusCode::TOO_MANY_REQUESTS)
                    .with_detail("rate limit exceeded")
                    .with_retry_after(wait.max(1))
                    .into_response();
            }
        }

        rewrite_request_headers(
            &mut parts.headers,
            downstream.peer_ip.as_ref(),
            subject_value,
            request_id,
        );
        let body = if content_length.is_none() && !body.is_end_stream() {
            Body::new(Limited::new(
                body,
                usize::try_from(route.max_body_bytes).unwrap_or(usize::MAX),
            ))
        } else {
            body
        };

        // The path and query below the instance's base URL: the client's own when the
        // route keeps the path (no copy, no parse).
        let path = route.upstream_path(parts.uri.path());
        let origin = if path == parts.uri.path() {
            parts.uri.path_and_query().cloned().map_or_else(|| Uri::from_static("/"), Uri::from)
        } else {
            let query = parts.uri.query();
            let mut url = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
            url.push_str(path);
            if let Some(query) = query {
                url.push('?');
                url.push_str(query);
            }
            match Uri::try_from(url) {
                Ok(uri) => uri,
                Err(_) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "the request path cannot be forwarded",
                    );
                }
            }
        };
        let replayable = route.config.retries > 0
            && matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
            )
            && body.is_end_stream();
        // Retries after the request went out: idempotent methods with no body only.
        let mut retries_left = if replayable { route.config.retries } else { 0 };
        let mut body = Some(body);
        let mut headers = parts.headers;
        // Built when the last attempt has failed, not up front: a problem body is JSON.
        let mut failure = (StatusCode::BAD_GATEWAY, "the upstream failed");
        // Instances already tried, so that another attempt goes elsewhere.
        let mut tried: Vec<String> = Vec::new();
        loop {
            let pick = match route.endpoints.pick_excluding(&tried) {
                Ok(pick) => pick,
                Err(e) if tried.is_empty() => {
                    tracing::debug!(route = %route.prefix, error = %e, "no upstream instance");
                    return problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no healthy upstream instance",
                    );
                }
                Err(_) => return problem(failure.0, failure.1),
            };
            let attempt = async {
                let lease =
                    downstream.upstream.lease(pick.base_url()).await.map_err(Failed::Unsent)?;
                let mut upstream_req = Request::new(body.take().unwrap_or_default());
                *upstream_req.method_mut() = parts.method.clone();
                *upstream_req.uri_mut() = origin.clone();
                *upstream_req.version_mut() = Version::HTTP_11;
                *upstream_req.headers_mut() =
                    if retries_left > 0 { headers.clone() } else { std::mem::take(&mut headers) };
                lease.send(upstream_req).await.map_err(Failed::Sent)
            };
            match tokio::time::timeout(route.timeout, attempt).await {
                Ok(Ok(response)) => {
                    if response.status().is_server_error() {
                        if retries_left > 0 {
                            retries_left -= 1;
                            tried.push(pick.base_url().to_owned());
                            pick.failure();
                            continue;
                        }
                        pick.failure();
                    } else {
                        pick.success();
                    }
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    return Response::from_parts(parts, Body::new(body));
                }
                Ok(Err(Failed::Unsent(e))) => {
                    // No connection, so nothing went out: another instance may take the
                    // request whatever its method (as nginx's `proxy_next_upstream error`).
                    tracing::debug!(route = %route.prefix, error = %e, "upstream unreachable");
                    failure = (StatusCode::BAD_GATEWAY, "the upstream failed");
                    tried.push(pick.base_url().to_owned());
                    pick.failure();
                    continue;
                }
                Ok(Err(Failed::Sent(e))) => {
                    if is_length_limit(&e) {
                        // The client sent too much; the upstream did nothing wrong.
                        return too_large(route.max_body_bytes);
                    }
                    tracing::debug!(route = %route.prefix, error = %e, "upstream call failed");
                    failure = (StatusCode::BAD_GATEWAY, "the upstream failed");
                }
                Err(_) => {
                    tracing::debug!(route = %route.prefix, "upstream timed out");
                    failure = (StatusCode::GATEWAY_TIMEOUT, "the upstream did not answer in time");
                }
            }
            // The request went out (or may have) and failed.
            if retries_left == 0 {
                pick.failure();
                return problem(failure.0, failure.1);
            }
            retries_left -= 1;
            tried.push(pick.base_url().to_owned());
            pick.failure();
        }
    }
}

/// How an attempt failed: before the request went out, or after.
enum Failed {
    Unsent(UpstreamError),
    Sent(UpstreamError),
}

pub(crate) fn problem(status: StatusCode, detail: &'static str) -> Response<Body> {
    Problem::new(status).with_detail(detail).into_response()
}

fn unauthorized(detail: &'static str) -> Response<Body> {
    let mut response = problem(StatusCode::UNAUTHORIZED, detail);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn too_large(limit: u64) -> Response<Body> {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
        .with_detail(format!("the request body exceeds {limit} bytes"))
        .into_response()
}

fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look over the names present (rarely one of these) instead of nine removals
    // that each hash a name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Hop-by-hop headers out; then the headers the gateway owns are set, after the
/// stripping so that no `Connection` trick can remove them.
fn rewrite_request_headers(
    headers: &mut HeaderMap,
    peer_ip: Option<&HeaderValue>,
    subject: Option<HeaderValue>,
    request_id: &HeaderValue,
) {
    strip_hop_by_hop(headers);
    // The client's `Expect: 100-continue` was answered by this hop.
    headers.remove(header::EXPECT);
    let host = headers.remove(header::HOST);
    headers.remove(SUBJECT_HEADER);
    if let Some(subject) = subject {
        headers.insert(SUBJECT_HEADER, subject);
    }
    if let Some(ip) = peer_ip {
        let forwarded = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(previous) if !previous.trim().is_empty() => {
                let mut list = Vec::with_capacity(previous.len() + 2 + ip.len());
                list.extend_from_slice(previous.as_bytes());
                list.extend_from_slice(b", ");
                list.extend_from_slice(ip.as_bytes());
                HeaderValue::from_maybe_shared(bytes::Bytes::from(list)).ok()
            }
            _ => Some(ip.clone()),
        };
        if let Some(value) = forwarded {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.insert(REQUEST_ID_HEADER, request_id.clone());
    let traceparent = next_traceparent(headers.get(TRACEPARENT));
    headers.insert(TRACEPARENT, traceparent);
}

/// Continues the incoming trace with a new span id, or starts a new sampled trace.
fn next_traceparent(incoming: Option<&HeaderValue>) -> HeaderValue {
    // fastrand, not uuid's OS randomness: ids need to be unique, not secret, and
    // this runs on every request.
    let (trace_id, sampled) = match incoming
        .and_then(|v| v.to_str().ok())
        .and_then(|v| keel_core::TraceContext::parse(v).ok())
    {
        Some(parent) => (parent.trace_id_bytes(), parent.sampled()),
        None => (fastrand::u128(1..).to_be_bytes(), true),
    };
    let span_id = fastrand::u64(1..).to_be_bytes();
    // Spelled out by hand on the stack: the header value is then the only allocation.
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-01";
    hex_into(&mut text[3..35], &trace_id);
    hex_into(&mut text[36..52], &span_id);
    if !sampled {
        text[54] = b'0';
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
    })
}

/// Lowercase hex of `bytes` into `out` (two digits per byte).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// The client's request id when it is short and printable, a new UUID otherwise.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(REQUEST_ID_HEADER)
        && !id.is_empty()
        && id.len() <= 128
        && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return id.clone();
    }
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn connection_cannot_remove_gateway_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-keel-subject, x-forwarded-for"),
        );
        headers.insert(SUBJECT_HEADER, HeaderValue::from_static("mallory"));
        let id = HeaderValue::from_static("rid");
        rewrite_request_headers(
            &mut headers,
            Downstream::ip_header(([10, 0, 0, 1], 5).into()).as_ref(),
            Some(HeaderValue::from_static("alice")),
            &id,
        );
        assert_eq!(headers[SUBJECT_HEADER], "alice");
        assert_eq!(headers[X_FORWARDED_FOR], "10.0.0.1");
        assert_eq!(headers.get_all(SUBJECT_HEADER).iter().count(), 1);
    }

    #[test]
    fn traceparent_continues_the_trace() {
        let parent =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let next = next_traceparent(Some(&parent));
        let next = next.to_str().expect("ascii");
        assert!(next.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!next.contains("00f067aa0ba902b7"));
        let root = next_traceparent(Some(&HeaderValue::from_static("garbage")));
        let root = keel_core::TraceContext::parse(root.to_str().expect("ascii")).expect("valid");
        assert!(root.sampled());
        let unsampled =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let next = next_traceparent(Some(&unsampled));
        let next = keel_core::TraceContext::parse(next.to_str().expect("ascii")).expect("valid");
        assert_eq!(next.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!next.sampled());
    }

    #[test]
    fn hop_by_hop_headers_go_without_a_connection_header() {
        let mut headers = HeaderMap::new();
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&headers).len(), 36);
    }
}
