//! The kit's per-request middleware: request ids, W3C trace context with the
//! [`EventContext`] handlers run in, problem+json for every error, panics as 500.

use std::any::Any;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use keel_bus::layer::{EventContext, with_context};
use keel_core::TraceContext;
use tower_http::request_id::{MakeRequestId, RequestId};
use tracing::Instrument as _;

use crate::Problem;
use crate::identity::{Caller, IDENTITY_HEADER, Identity, IdentityKey};
use crate::problem::PROBLEM_JSON;

/// The request id header, taken from the request or generated.
pub const REQUEST_ID: &str = "x-request-id";
/// The header naming who the request acts for in the open mode (no identity key); with
/// a key, services read the signed [`IDENTITY_HEADER`] instead.
pub const SUBJECT: &str = "x-keel-subject";
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Request ids are UUIDv7: unique, and sortable by time in the logs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MakeUuidV7;

impl MakeRequestId for MakeUuidV7 {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()).ok().map(RequestId::new)
    }
}

/// The trace context of an incoming request: a child span of its `traceparent` (or a
/// new root), with its `tracestate`. An invalid `traceparent` starts a new trace, as
/// the W3C spec says.
pub(crate) fn server_span(headers: &HeaderMap) -> TraceContext {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match text(TRACEPARENT).and_then(|tp| TraceContext::parse(tp).ok()) {
        Some(parent) => parent.child().with_state(text(TRACESTATE).map(str::to_owned)),
        None => TraceContext::new_root(),
    }
}

/// Who the request acts for. With a key, the verified `x-keel-identity` (a bad one is
/// 401) and never `x-keel-subject`; without one, `x-keel-subject` at its word.
/// The error is the answer's status and detail.
fn caller(key: Option<&IdentityKey>, headers: &HeaderMap) -> Result<Caller, (StatusCode, String)> {
    let text = |name: &str| {
        headers.get(name).map(|v| {
            v.to_str().map(str::trim).map_err(|_| {
                (StatusCode::BAD_REQUEST, format!("the {name} header is not visible ASCII"))
            })
        })
    };
    match key {
        Some(key) => match text(IDENTITY_HEADER).transpose()? {
            None => Ok(Caller::anonymous(true)),
            Some(token) => match key.verify(token) {
                Ok(identity) => Ok(Caller::verified(identity, token.to_owned())),
                Err(error) => {
                    Err((StatusCode::UNAUTHORIZED, format!("{IDENTITY_HEADER}: {error}")))
                }
            },
        },
        None => match text(SUBJECT).transpose()?.filter(|s| !s.is_empty()) {
            None => Ok(Caller::unverified(None)),
            Some(subject) => Identity::new(subject)
                .map(|identity| Caller::unverified(Some(identity)))
                .map_err(|error| (StatusCode::BAD_REQUEST, format!("{SUBJECT}: {error}"))),
        },
    }
}

/// Who is calling ([`Caller`], in the request's extensions), a `tracing` span per
/// request and the [`EventContext`] its handler runs in (trace, correlation id =
/// request id, actor = the caller's subject); the response carries the server span's
/// `traceparent`.
pub(crate) async fn trace(key: Option<IdentityKey>, mut request: Request, next: Next) -> Response {
    let caller = match caller(key.as_ref(), request.headers()) {
        Ok(caller) => caller,
        Err((status, detail)) => return Problem::new(status).with_detail(detail).into_response(),
    };
    let actor = caller.subject().map(str::to_owned);
    let credentials = caller.token().map(str::to_owned);
    request.extensions_mut().insert(caller);
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request_id = text(REQUEST_ID);
    let span = tracing::info_span!(
        "http.request",
        method = %request.method(),
        path = request.uri().path(),
        request_id = request_id.as_deref().unwrap_or_default(),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    // With OpenTelemetry export on, the span joins the caller's trace and its span id
    // is the one written to events and responses; otherwise Keel makes the child span.
    if let Some(parent) = text(TRACEPARENT).and_then(|tp| TraceContext::parse(&tp).ok()) {
        keel_telemetry::continue_trace(&span, &parent.with_state(text(TRACESTATE)));
    }
    let trace =
        span.in_scope(keel_telemetry::current_trace).unwrap_or_else(|| server_span(headers));
    span.record("trace_id", trace.trace_id());
    span.record("span_id", trace.span_id());
    let context = EventContext {
        trace: Some(trace.clone()),
        correlation_id: request_id,
        causation_id: None,
        actor,
        credentials,
    };
    let mut response = with_context(context, next.run(request)).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&trace.traceparent()) {
        headers.insert(HeaderName::from_static(TRACEPARENT), value);
    }
    if let Some(state) = trace.tracestate().and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(HeaderName::from_static(TRACESTATE), state);
    }
    response
}

/// Refuses control characters (NUL above all: PostgreSQL cannot store it in text, and
/// no id or filter needs one) in the percent-decoded path and query, with a 400 naming
/// the path or the query parameter: one check, before any handler or store of any
/// service sees them.
pub(crate) async fn input_hygiene(request: Request, next: Next) -> Response {
    match control_characters(request.uri()) {
        Some(problem) => problem.into_response(),
        None => next.run(request).await,
    }
}

fn control_characters(uri: &http::Uri) -> Option<Problem> {
    const DETAIL: &str = "must not contain control characters";
    let has_control = |text: &str| text.chars().any(char::is_control);
    let path = percent_encoding::percent_decode_str(uri.path()).decode_utf8_lossy();
    if has_control(&path) {
        return Some(Problem::invalid_field("path", DETAIL));
    }
    for (name, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        if has_control(&name) {
            return Some(Problem::invalid_field("query", format!("parameter names {DETAIL}")));
        }
        if has_control(&value) {
            return Some(Problem::invalid_field(name.into_owned(), DETAIL));
        }
    }
    None
}

/// Turns the error responses axum and tower-http produce themselves (404 and 405
/// with empty bodies, text/plain rejections, 413) into problem+json, keeping their
/// other headers (`Allow`, `Retry-After`). Error responses that already have another
/// content type pass unchanged.
pub(crate) async fn problems(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let plain = match response.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(value) => value.to_str().is_ok_and(|v| v.starts_with("text/plain")),
    };
    if !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let detail = match status {
        _ if !text.is_empty() => text,
        StatusCode::NOT_FOUND => format!("no resource at {path}"),
        StatusCode::METHOD_NOT_ALLOWED => format!("{path} does not accept {method}"),
        _ => String::new(),
    };
    let mut problem = Problem::new(status);
    if !detail.is_empty() {
        problem = problem.with_detail(detail);
    }
    let mut converted = problem.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.extend(converted.headers_mut().drain());
    parts.status = status;
    Response::from_parts(parts, converted.into_body())
}

/// A panicking handler becomes a 500 problem; the panic message goes to the log only.
pub(crate) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> http::Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "handler panicked");
    Problem::internal().into_response()
}

/// Ends a live stream (a `text/event-stream` response) when the service starts
/// stopping: a graceful shutdown waits for in-flight responses, and a Server-Sent
/// Events tail is one that never finishes by itself, so without this Ctrl-C waited out
/// the whole grace period for a client to hang up. The client sees the stream end and
/// may reconnect (to another instance) with `Last-Event-ID`.
pub(crate) async fn end_streams_on_shutdown(
    mut stopping: tokio::sync::watch::Receiver<bool>,
    request: Request,
    next: Next,
) -> Response {
    use futures::StreamExt as _;

    let response = next.run(request).await;
    let live = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !live {
        return response;
    }
    let (parts, body) = response.into_parts();
    let stopped = async move {
        // An error: the service is gone, which ends the stream too.
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    Response::from_parts(parts, Body::from_stream(body.into_data_stream().take_until(stopped)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_an_invalid_one_replaced() {
        let mut headers = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert(TRACEPARENT, HeaderValue::from_static(parent));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        let span = server_span(&headers);
        assert_eq!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span.span_id(), "00f067aa0ba902b7");
        assert_eq!(span.tracestate(), Some("vendor=1"));

        headers.insert(TRACEPARENT, HeaderValue::from_static("00-zz-00f067aa0ba902b7-01"));
        let span = server_span(&headers);
        assert_ne!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.tracestate(), None);
    }
}
