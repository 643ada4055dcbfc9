//! Keel's core: the types every other Keel crate shares, and no I/O.
//!
//! Layout:
//! - [`ids`]: event ids (UUIDv7), stream ids, stream versions, global log positions and
//!   the expected-version rule used for optimistic concurrency.
//! - [`envelope`]: the CloudEvents 1.0 envelope ([`CloudEvent`]) with Keel's extensions,
//!   validated as the specification says.
//! - [`codec`]: the wire formats: structured mode (`application/cloudevents+json`) and
//!   binary mode, with the header mappings of the Kafka (`ce_`) and AMQP
//!   (`cloudEvents_`) bindings that both broker backends share.
//! - [`event`]: the [`Event`] trait for typed domain events (`#[derive(Event)]`) and the
//!   conversion between typed events and envelopes.
//! - [`upcast`]: bringing data written at an older schema version up to the code's,
//!   step by step (`#[event(upcast(from = 1, with = f))]`), and the version errors.
//! - `schema` (feature `schema`): JSON Schemas of event types (schemars) and the
//!   `Catalog` of known types that `keel schema export` and `keel schema check` use.
//! - [`backoff`]: bounded exponential backoff with jitter, for every retry loop.
//! - [`trace`]: W3C trace context: `traceparent` parsing and formatting, `tracestate`
//!   validated and bounded as the specification says.
//! - [`bus`]: the small traits a bus backend implements (publish with confirmation,
//!   subscribe as a consumer group, settle deliveries, dead letters).
//! - [`namespace`]: [`Namespace`] (`KEEL_NAMESPACE`), how a deployment's shared names
//!   are qualified, and [`NamespacedBus`], which applies it to a broker backend.
//! - [`error`]: the typed errors of decoding and validation.

#![warn(missing_docs)]

pub mod backoff;
pub mod bus;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod event;
pub mod ids;
pub mod namespace;
#[cfg(feature = "schema")]
pub mod schema;
pub mod trace;
pub mod upcast;

pub use backoff::Backoff;
pub use bus::{
    Bus, BusError, DeadLetter, DeadLetterId, DeadLetters, Delivery, GroupDepth, Payload, Publisher,
    RawMessage, Settle, StartFrom, Subscriber, Subscription, SubscriptionSpec,
};
pub use envelope::{CloudEvent, CloudEventBuilder, ExtensionValue, SPEC_VERSION};
pub use error::{DecodeError, Result};
pub use event::{Event, EventSet};
pub use ids::{EventId, ExpectedVersion, Position, StreamId, StreamVersion};
pub use namespace::{Namespace, NamespaceError, NamespacedBus};
/// JSON data, as upcasting steps read and write it.
pub use serde_json::Value as JsonValue;
pub use trace::TraceContext;

/// Derives [`Event`] for a struct: `#[derive(Event)] #[event(type = "order.placed", key = order_id)]`.
pub use keel_derive::Event;

#[doc(hidden)]
pub mod __private {
    pub use serde_json;
}
