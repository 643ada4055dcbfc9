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
use keel_client::Pick;
use keel_service::Problem;
use keel_service::identity::IdentityKey;

use crate::auth::Authenticator;
use crate::downstream::{BodyFault, BodyWatch, ClientBody};
use crate::route::{ClientKey, Route, RouteTable};
use crate::upstream::{UpstreamError, UpstreamPool};

/// The authenticated subject in clear, for logs, when it is ASCII; services trust only
/// the signed [`IDENTITY_HEADER`] once they have a key (see `keel_service::identity`).
pub const SUBJECT_HEADER: HeaderName = HeaderName::from_static("x-keel-subject");
/// The caller's identity, signed with the deployment's identity key.
pub const IDENTITY_HEADER: HeaderName =
    HeaderName::from_static(keel_service::identity::IDENTITY_HEADER);
/// Propagated when the client sends a sane one, generated otherwise; echoed in the response.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

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
    /// Signs the identity forwarded to services; `None`: only `x-keel-subject` goes.
    pub(crate) identity_key: Option<IdentityKey>,
    pub(crate) upstream: UpstreamPool,
}

impl Shared {
    pub(crate) async fn proxy(
        &self,
        req: Request<Body>,
        downstream: &Downstream,
    ) -> Response<Body> {
        let Some(route) = self.routes.find(req.uri().path()) else {
            self.routes.unmatched.count(StatusCode::NOT_FOUND.as_u16());
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
            response.headers_mut().insert(header::ALLOW, route.allow.clone());
            return response;
        }
        let seen = survey(&parts.headers);
        let host = match take_host(&mut parts.headers, parts.version) {
            Ok(host) => host,
            Err((status, detail)) => return client_fault(status, detail),
        };
        if seen & NEEDS_CHECK != 0
            && let Err((status, detail)) = check_framing(&parts.headers, seen)
        {
            return client_fault(status, detail);
        }
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if content_length.is_some_and(|len| len > route.max_body_bytes) {
            return too_large(route.max_body_bytes);
        }

        let identity = match (&self.auth, route.config.auth) {
            (Some(auth), mode) if mode != crate::AuthMode::None => {
                match auth.authenticate(&parts.headers).await {
                    Ok(identity) => identity,
                    Err(refusal) => {
                        tracing::debug!(route = %route.prefix, ?refusal, "credentials refused");
                        return unauthorized(refusal.detail());
                    }
                }
            }
            _ => None,
        };
        if identity.is_none() && route.needs_auth(&parts.method) {
            return unauthorized("credentials are required");
        }
        if let Some(allowed) = &route.config.allow_subjects
            && !identity.as_ref().is_some_and(|i| allowed.iter().any(|a| a == i.subject()))
        {
            return problem(StatusCode::FORBIDDEN, "this subject may not use this route");
        }
        if route.limiter.is_some() {
            let key = match (&identity, peer) {
                (Some(identity), _) => ClientKey::Subject(identity.subject().to_owned()),
                (None, Some(peer)) => ClientKey::Ip(peer.ip()),
                (None, None) => ClientKey::Unknown,
            };
            if let Err(wait) = route.check_rate(&key) {
                return Problem::new(StatusCode::TOO_MANY_REQUESTS)
                    .with_detail("rate limit exceeded")
                    .with_retry_after(u32::try_from(wait.max(1)).unwrap_or(u32::MAX))
                    .into_response();
            }
        }
        let caller = identity.map(|identity| ForwardedAs {
            // The subject in clear is for logs; the signed identity carries any Unicode.
            subject: identity
                .subject()
                .is_ascii()
                .then(|| HeaderValue::from_str(identity.subject()).ok())
                .flatten(),
            identity: self
                .identity_key
                .as_ref()
                .and_then(|key| HeaderValue::try_from(key.sign(&identity)).ok()),
        });

        rewrite_request_headers(
            &mut parts.headers,
            seen,
            host,
            downstream.peer_ip.as_ref(),
            caller,
            request_id,
        );
        // A body still to come is watched, so that its failures and delays are told
        // apart from the upstream's (and a chunked one is held to the limit).
        let (body, watch) = if body.is_end_stream() {
            (body, None)
        } else {
            let (body, watch) = ClientBody::new(body, route.max_body_bytes);
            (Body::new(body), Some(watch))
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
            && watch.is_none();
        // Retries after the request went out: idempotent methods with no body only.
        let mut retries_left = if replayable { route.config.retries } else { 0 };
        let mut body = Some(body);
        let mut headers = parts.headers;
        // Built when the last attempt has failed, not up front: a problem body is JSON.
        let mut failure = (StatusCode::BAD_GATEWAY, "the upstream failed");
        // Instances already tried: another attempt goes elsewhere, never back to one
        // that just failed this request.
        let mut tried: Vec<String> = Vec::new();
        // The instance a retry goes to, when one was found before giving up on an answer.
        let mut next: Option<Pick> = None;
        loop {
            let picked = match next.take() {
                Some(pick) => Ok(pick),
                None => route.endpoints.pick_untried(&tried),
            };
            let pick = match picked {
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
                    // A 4xx is the upstream answering the client: never a failure.
                    if response.status().is_server_error() {
                        // Retried only on another instance; with none, this answer stands.
                        if retries_left > 0 {
                            tried.push(pick.base_url().to_owned());
                            next = route.endpoints.pick_untried(&tried).ok();
                        }
                        pick.failure();
                        if next.is_some() {
                            retries_left -= 1;
                            continue;
                        }
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
                    // The client's body broke or grew too large: the client's fault, so
                    // the instance's breaker hears nothing of it (the pick is dropped).
                    if let Some(fault) = watch.as_deref().and_then(BodyWatch::fault) {
                        tracing::debug!(route = %route.prefix, error = %e, ?fault, "client body failed");
                        return match fault {
                            BodyFault::TooLarge => too_large(route.max_body_bytes),
                            BodyFault::Broken => client_fault(
                                StatusCode::BAD_REQUEST,
                                "the request body is malformed or ended early",
                            ),
                        };
                    }
                    tracing::debug!(route = %route.prefix, error = %e, "upstream call failed");
                    failure = (StatusCode::BAD_GATEWAY, "the upstream failed");
                }
                Err(_) => {
                    if watch.as_deref().is_some_and(BodyWatch::is_waiting_for_client) {
                        tracing::debug!(route = %route.prefix, "client body too slow");
                        return client_fault(
                            StatusCode::REQUEST_TIMEOUT,
                            "the request body did not arrive in time",
                        );
                    }
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

/// The identity a request is forwarded with: the subject in clear when it is ASCII
/// (for logs), and the signed identity when the gateway has a key.
struct ForwardedAs {
    subject: Option<HeaderValue>,
    identity: Option<HeaderValue>,
}

/// Header names a request is surveyed for in one look over its names (a bit each).
const HOP: u8 = 1;
const CHUNKED: u8 = 2;
const EXPECTS: u8 = 4;
/// Headers only the gateway may set: what a client sends under these names is dropped.
const UNTRUSTED: u8 = 8;
/// The headers [`check_framing`] looks at.
const NEEDS_CHECK: u8 = CHUNKED | EXPECTS;

/// Which of the headers the gateway treats specially `headers` has, as bits. One look
/// over the names, so that a request with none of them (the usual case) costs no
/// lookups.
fn survey(headers: &HeaderMap) -> u8 {
    headers.keys().fold(0, |seen, name| seen | class(name))
}

fn class(name: &HeaderName) -> u8 {
    match name.as_str() {
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "te"
        | "trailer"
        | "upgrade"
        | "proxy-authenticate"
        | "proxy-authorization" => HOP,
        "transfer-encoding" => HOP | CHUNKED,
        "expect" => EXPECTS,
        "x-keel-identity" | "x-keel-subject" | "forwarded" | "x-real-ip" => UNTRUSTED,
        _ => 0,
    }
}

/// A request refused before it is forwarded: the status and what the problem says.
type Refused = (StatusCode, &'static str);

/// Takes the `Host` header out: exactly one is required of HTTP/1.1 requests, and
/// more than one is refused whatever the version (RFC 9112 3.2).
fn take_host(headers: &mut HeaderMap, version: Version) -> Result<Option<HeaderValue>, Refused> {
    let mut hosts = match headers.entry(header::HOST) {
        http::header::Entry::Occupied(entry) => entry.remove_entry_mult().1,
        http::header::Entry::Vacant(_) if version == Version::HTTP_11 => {
            return Err((StatusCode::BAD_REQUEST, "the request has no Host header"));
        }
        http::header::Entry::Vacant(_) => return Ok(None),
    };
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err((StatusCode::BAD_REQUEST, "the request has more than one Host header"));
    }
    Ok(host)
}

/// RFC 9112's framing rules hyper leaves to the application: `chunked` is the only
/// transfer coding the gateway decodes (501 for others, which the upstream would
/// receive still encoded), and `100-continue` the only expectation (417).
fn check_framing(headers: &HeaderMap, seen: u8) -> Result<(), Refused> {
    if seen & CHUNKED != 0 {
        let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
        let only_chunked = codings
            .next()
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !only_chunked {
            return Err((
                StatusCode::NOT_IMPLEMENTED,
                "the only transfer coding accepted is chunked",
            ));
        }
    }
    if seen & EXPECTS != 0 {
        let continues = headers
            .get_all(header::EXPECT)
            .iter()
            .all(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"100-continue"));
        if !continues {
            return Err((
                StatusCode::EXPECTATION_FAILED,
                "the only expectation supported is 100-continue",
            ));
        }
    }
    Ok(())
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

/// A problem caused by the client's request, on a connection that is then closed:
/// what is left of the request (an unread or unframeable body) cannot be trusted.
fn client_fault(status: StatusCode, detail: &'static str) -> Response<Body> {
    let mut response = problem(status, detail);
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn too_large(limit: u64) -> Response<Body> {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
        .with_detail(format!("the request body exceeds {limit} bytes"))
        .into_response()
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if survey(headers) & HOP != 0 {
        strip_surveyed_hop_by_hop(headers);
    }
}

/// [`strip_hop_by_hop`] once [`survey`] has found one.
fn strip_surveyed_hop_by_hop(headers: &mut HeaderMap) {
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

/// Hop-by-hop headers and what a client may not claim out (`seen` is the request's
/// [`survey`]); then the headers the gateway owns are set, after the stripping so that
/// no `Connection` trick can remove them.
fn rewrite_request_headers(
    headers: &mut HeaderMap,
    seen: u8,
    host: Option<HeaderValue>,
    peer_ip: Option<&HeaderValue>,
    caller: Option<ForwardedAs>,
    request_id: &HeaderValue,
) {
    if seen & HOP != 0 {
        strip_surveyed_hop_by_hop(headers);
    }
    if seen & EXPECTS != 0 {
        // The client's `Expect: 100-continue` was answered by this hop.
        headers.remove(header::EXPECT);
    }
    if seen & UNTRUSTED != 0 {
        for name in [IDENTITY_HEADER, SUBJECT_HEADER, FORWARDED, X_REAL_IP] {
            headers.remove(name);
        }
    }
    if let Some(caller) = caller {
        if let Some(subject) = caller.subject {
            headers.insert(SUBJECT_HEADER, subject);
        }
        if let Some(identity) = caller.identity {
            headers.insert(IDENTITY_HEADER, identity);
        }
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
    #![allow(clippy::unwrap_used)]

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
            HeaderValue::from_static("x-keel-subject, x-keel-identity, x-forwarded-for"),
        );
        headers.insert(SUBJECT_HEADER, HeaderValue::from_static("mallory"));
        headers.insert(IDENTITY_HEADER, HeaderValue::from_static("forged"));
        let id = HeaderValue::from_static("rid");
        let seen = survey(&headers);
        rewrite_request_headers(
            &mut headers,
            seen,
            None,
            Downstream::ip_header(([10, 0, 0, 1], 5).into()).as_ref(),
            Some(ForwardedAs {
                subject: Some(HeaderValue::from_static("alice")),
                identity: Some(HeaderValue::from_static("signed")),
            }),
            &id,
        );
        assert_eq!(headers[SUBJECT_HEADER], "alice");
        assert_eq!(headers[IDENTITY_HEADER], "signed");
        assert_eq!(headers[X_FORWARDED_FOR], "10.0.0.1");
        assert_eq!(headers.get_all(SUBJECT_HEADER).iter().count(), 1);
        assert_eq!(headers.get_all(IDENTITY_HEADER).iter().count(), 1);
    }

    #[test]
    fn what_a_client_may_not_claim_is_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-keel-identity", "forged"),
            ("x-keel-subject", "root"),
            ("forwarded", "for=203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
            ("x-kept", "1"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let seen = survey(&headers);
        assert_eq!(seen, UNTRUSTED);
        rewrite_request_headers(
            &mut headers,
            seen,
            None,
            None,
            None,
            &HeaderValue::from_static("r"),
        );
        for name in ["x-keel-identity", "x-keel-subject", "forwarded", "x-real-ip"] {
            assert!(!headers.contains_key(name), "{name}");
        }
        assert_eq!(headers["x-kept"], "1");
    }

    #[test]
    fn the_survey_finds_each_class() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("*/*"));
        assert_eq!(survey(&headers), 0);
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        assert_eq!(survey(&headers), HOP | CHUNKED | EXPECTS);
        assert!(check_framing(&headers, survey(&headers)).is_ok());
        headers.insert(header::EXPECT, HeaderValue::from_static("other"));
        assert_eq!(check_framing(&headers, survey(&headers)).unwrap_err().0, 417);
        headers.remove(header::EXPECT);
        headers.append(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert_eq!(check_framing(&headers, survey(&headers)).unwrap_err().0, 501);
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
