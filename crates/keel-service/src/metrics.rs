//! The process-wide Prometheus recorder behind `/metrics`, and the per-request
//! counter and latency histogram (labels from closed sets, DESIGN 2.19).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;

/// Requests answered, by `service`, `method`, `route` and `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Seconds from request to response head, with the same labels as [`HTTP_REQUESTS`].
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";

/// The handle of the process-wide Prometheus recorder (`keel_telemetry::prometheus`):
/// several services in one process (`keel up`) share it and tell their series apart by
/// the `service` label.
pub fn prometheus() -> PrometheusHandle {
    keel_telemetry::prometheus().clone()
}

/// The methods that get a label of their own; any other is `other`.
const METHODS: [&str; 9] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Middleware counting and timing requests. Every label comes from a closed set, so a
/// client cannot add series: the method (RFC 9110's, else `other`), the matched route
/// (never the raw path, which would make one series per id; `unmatched` for none) and
/// the status code.
pub(crate) async fn record(service: String, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str();
    let method = METHODS.iter().find(|known| **known == method).copied().unwrap_or("other");
    let method = method.to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("service", service),
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}
