//! Keel's service client: calls another service by name, resolving its healthy
//! instances through a [`keel_registry::Registry`], with load balancing, per-call
//! timeouts, retries of idempotent calls within a retry budget, and a circuit breaker
//! per instance. The gateway reuses the same [`Endpoints`] pool to pick upstreams.
//!
//! # Layout
//!
//! - `pool.rs`: [`Endpoints`], the instances of one upstream with their breakers and
//!   in-flight counts, and [`Pick`], one chosen instance whose outcome is reported back.
//! - `budget.rs`: [`RetryBudget`], retries as a fraction of the calls (tower's
//!   `TpsBudget`).
//! - `client.rs`: [`ServiceClient`], HTTP calls over a pool with timeouts, budgeted
//!   retries and context propagation.
//! - `error.rs`: [`ClientError`].

#![warn(missing_docs)]

mod budget;
mod client;
mod error;
mod pool;

pub use budget::RetryBudget;
pub use client::{
    ClientConfig, IDEMPOTENCY_KEY, REQUEST_ID, SUBJECT, ServedBy, ServiceClient, TRACEPARENT,
    TRACESTATE, is_idempotent,
};
pub use error::ClientError;
pub use pool::{Balance, BreakerConfig, BreakerState, Endpoints, Pick, PickError, PoolConfig};

/// Results of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
