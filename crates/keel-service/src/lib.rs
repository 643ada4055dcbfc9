//! Keel's service kit: what every axum service built on Keel shares.
//! `Service::new(config).readiness(checks).router(app).serve(ctrl_c)` gives a service
//! `/health`, `/ready` and `/metrics`, problem+json errors (RFC 9457), request ids,
//! W3C trace context in and out (handlers run in a `keel_bus` [`EventContext`] so the
//! events they write carry the trace and actor), registration with an HTTP health
//! check, and graceful shutdown (deregister, stop accepting, drain).
//!
//! [`EventContext`]: keel_bus::layer::EventContext
//!
//! # Layout
//!
//! - `service.rs`: [`ServiceConfig`], [`Service`] (the bootstrap), [`RunningService`].
//! - [`identity`]: who a request acts for: the gateway's signed [`Identity`]
//!   (`x-keel-identity`), verified with the [`IdentityKey`], handed to handlers as a
//!   [`Caller`] that answers the authorization questions (owner or admin).
//! - `readiness.rs`: [`Readiness`], the named checks behind `/ready`.
//! - `problem.rs`: [`Problem`], RFC 9457 `application/problem+json` error responses.
//! - `json.rs`: [`Json`], the strict JSON extractor (UTF-8 only, no duplicate
//!   members, no NUL in text) whose rejections name the field.
//! - `query.rs`: [`Query`], the query-string extractor whose rejections name the
//!   parameter (unknown ones included, with `#[serde(deny_unknown_fields)]`).
//! - `fields.rs`: [`JsonBody`] and [`Fields`], field-by-field checks of a JSON body
//!   that answer every fault at once as a 422 naming each field (unknown members
//!   included), and the body limit services carry ([`body_limit`]).
//! - `context.rs`: [`request_context`], the context (trace, correlation, the verified
//!   actor) that the events a request writes inherit.
//! - `idempotency.rs` (feature `sql`): [`Idempotency`], `Idempotency-Key` answered once
//!   and replayed, stored in the effect's own transaction, scoped per caller, expiring.
//! - `middleware.rs`: request id, trace context and the [`Caller`], problem+json for
//!   the errors axum and tower-http produce, control characters in paths and queries
//!   refused, panics as 500, live streams (SSE) ended when the service stops.
//! - [`openapi`]: what the services' OpenAPI documents share (the `Problem` schema,
//!   the error responses, the security schemes) and [`openapi::merge`].
//! - `metrics.rs`: the process-wide Prometheus recorder ([`prometheus`]) and the
//!   request counter and latency histogram, labelled from closed sets.

#![warn(missing_docs)]

mod context;
mod fields;
#[cfg(feature = "sql")]
mod idempotency;
pub mod identity;
mod json;
mod metrics;
mod middleware;
pub mod openapi;
mod problem;
mod query;
mod readiness;
mod service;

use std::net::SocketAddr;

/// The axum this kit is built on: routers handed to the kit are this crate's, so
/// depending on it through here avoids a second, mismatched axum.
pub use axum;
pub use context::request_context;
pub use fields::{Fields, JsonBody, MAX_BODY_BYTES, body_limit};
#[cfg(feature = "sql")]
pub use idempotency::{DEFAULT_IDEMPOTENCY_TTL, IDEMPOTENCY_HEADER, Idempotency, IdempotencyKey};
pub use identity::{Caller, Denied, IDENTITY_HEADER, Identity, IdentityKey};
pub use json::Json;
pub use metrics::{HTTP_REQUEST_DURATION, HTTP_REQUESTS, prometheus};
pub use middleware::{REQUEST_ID, SUBJECT};
pub use problem::{PROBLEM_JSON, Problem, ProblemField};
pub use query::Query;
pub use readiness::Readiness;
pub use service::{RunningService, Service, ServiceConfig};

/// What can stop a service from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The listen address cannot be bound (in use, not local, not permitted).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The registry refused the registration or could not be reached.
    #[error("cannot register with the registry: {0}")]
    Register(#[from] keel_registry::RegistryError),
    /// The server stopped with an I/O error while serving.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}
