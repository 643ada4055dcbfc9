//! Keel's handler layer: typed publishing and consuming over any bus backend.
//!
//! A backend (in-memory, the event log, RabbitMQ, Kafka) implements the small traits
//! of `keel_core::bus`; this crate builds everything else once, on top of them.
//! Handlers are [`tower::Service`]s of [`Message`] (or of `Vec<Message>` for batch
//! handlers), so cross-cutting behaviour composes as tower layers.
//!
//! Layout:
//! - [`message`]: the [`Message`] a handler receives and [`HandlerError`], which says
//!   whether a failure is worth retrying.
//! - [`handler`]: building handlers from closures: [`handler_fn`], [`typed`] (decode the
//!   data into an [`keel_core::Event`]), [`batch_fn`].
//! - [`layer`]: middleware: [`layer::RetryLayer`] (exponential backoff with jitter),
//!   [`layer::TimeoutLayer`], [`layer::TraceLayer`] (a span per message that continues
//!   the envelope's `traceparent`), [`layer::InboxLayer`] (deduplication through the
//!   [`layer::Inbox`] seam that stores fill).
//! - `Backoff` (from `keel_core`): the bounded exponential backoff shared by the retry layer and the
//!   consumer's redelivery policy.
//! - [`consumer`]: [`Consumer`], which runs a handler for a consumer group: ordered
//!   concurrency per partition key, batches, ack after success, nack with backoff,
//!   dead-letter after the last attempt (or, by the [`Unreadable`] policy, at once
//!   for messages the code cannot read; or skip them, or stop), a
//!   handler panic counted as a transient failure, clean shutdown.
//! - [`publisher`]: [`EventPublisher`], which publishes typed events with the current
//!   trace context.

#![warn(missing_docs)]

pub mod consumer;
pub mod handler;
pub mod layer;
pub mod message;
pub mod publisher;

pub use consumer::{Consumer, ConsumerHandle, RedeliveryPolicy, Unreadable};
pub use handler::{Typed, batch_fn, handler_fn, typed};
pub use keel_core::Backoff;
pub use message::{HandlerError, Message};
pub use publisher::EventPublisher;

/// Boxed error type handlers may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
