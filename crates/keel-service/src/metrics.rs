//! The process-wide Prometheus recorder behind `/metrics`, and the per-request
//! counter and latency histogram.

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

/// Middleware counting and timing requests by matched route (never the raw path,
/// which would make one series per id).
pub(crate) async fn record(service: String, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
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
