//! Plumbing shared by Keel's example services (users, products, orders), so each
//! service holds only its own rules: one database seam that runs the same queries on
//! SQLite and PostgreSQL, JSON bodies validated into problem+json naming the field,
//! `Idempotency-Key` handling, and event envelopes stamped with the request's context.
//!
//! # Layout
//!
//! - `error.rs`: [`ServiceError`], and its mapping to [`keel_service::Problem`]
//!   (a version conflict is 409, the rest 500 with the details in the log).
//! - `db.rs`: [`Db`] (the event log of either store, with its pool), [`Tx`] (a
//!   transaction that runs service queries and appends events), [`Arg`] and [`args!`]
//!   (query arguments for both dialects), [`DbInbox`] (the store's transactional inbox
//!   as one `keel_bus` inbox).
//! - `json.rs`: [`JsonBody`] (the body as a `serde_json::Value`, read by the kit's
//!   strict extractor: 415, 413, 400 and 422 as problem+json) and [`Fields`] (field
//!   checks that collect `errors[].pointer`, unknown members included).
//! - `context.rs`: [`request_context`] (the actor, trace and correlation of a request,
//!   as the kit's middleware set them) and [`envelope`] (a typed event as a stamped
//!   CloudEvent).
//! - `events.rs`: the domain events the services exchange, their topics and streams.
//! - `consumer.rs`: [`start_inbox_consumer`] (an effectively-once subscriber whose
//!   handler writes in the inbox's transaction). A service binary running alone gets
//!   its bus from `keel_runtime::system_bus` (the log itself, or `KEEL_BUS_URL`).
//! - `idempotency.rs`: [`Idempotency`] and [`IdempotencyKey`]: the first response to
//!   a caller's key, stored in the effect's transaction, is the answer to every retry
//!   until the key expires; handlers replay before any other check.

// `keel_service::Problem` (the problem+json answer, built at most once per request)
// is the error type of the HTTP paths; boxing it would only add allocations.
#![allow(clippy::result_large_err)]

mod consumer;
mod context;
mod db;
mod error;
pub mod events;
mod idempotency;
mod json;

pub use consumer::start_inbox_consumer;
pub use context::{SUBJECT_HEADER, envelope, request_context};
pub use db::{Arg, Db, DbInbox, Tx};
pub use error::{Result, ServiceError};
pub use idempotency::{DEFAULT_IDEMPOTENCY_TTL, IDEMPOTENCY_HEADER, Idempotency, IdempotencyKey};
pub use json::{Fields, JsonBody, MAX_BODY_BYTES, body_limit};
