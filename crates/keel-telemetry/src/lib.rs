//! Keel's observability in one place, so the service kit, the gateway, the client and
//! the `keel` binary share one tracing setup and one Prometheus recorder per process.
//!
//! # Layout
//! - `init.rs`: [`init`] / [`init_with`]: the global `tracing` subscriber (fmt to
//!   stderr under the env filter; beside it, under a filter of its own, the
//!   OpenTelemetry layer with OTLP/HTTP export when an endpoint is set), the W3C
//!   propagator, and the [`TelemetryGuard`] that flushes spans on drop.
//! - `trace.rs`: bridging [`keel_core::TraceContext`] and OpenTelemetry span contexts:
//!   [`continue_trace`] (incoming) and [`current_trace`] (outgoing).
//! - `prometheus.rs`: the process-wide Prometheus recorder ([`prometheus`],
//!   [`render_metrics`]).
//! - `error.rs`: [`TelemetryError`].
#![warn(missing_docs)]

mod error;
mod init;
mod prometheus;
mod trace;

pub use error::{Result, TelemetryError};
pub use init::{OTEL_EXPORTER_OTLP_ENDPOINT, TelemetryConfig, TelemetryGuard, init, init_with};
pub use prometheus::{LATENCY_BUCKETS, prometheus, render_metrics};
pub use trace::{continue_trace, current_trace};

/// Re-exported so callers can name the handle without depending on the exporter crate.
pub use metrics_exporter_prometheus::PrometheusHandle;
