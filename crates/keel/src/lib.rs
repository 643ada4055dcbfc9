//! Keel: an event-sourced async messaging backbone for Rust services.
//!
//! Services append typed domain events to a log in the same transaction as their own
//! state (the log is the outbox); consumers in other services handle them through a bus
//! (the log itself, in memory, RabbitMQ or Kafka) with retries, dead letters and an
//! inbox that makes handlers effectively-once; read models are projections rebuilt by
//! replay. The synchronous side is a service kit on axum, discovery, a client with
//! breakers, and a gateway. This crate is the one dependency: each part is a module,
//! and each backend a cargo feature, so you compile only what you use.
//!
//! # Features
//!
//! | feature | gives | default |
//! |---|---|---|
//! | `sqlite` | [`sqlite`], [`sql`], [`aggregate`], [`timers`] and [`logbus`]: the embedded store, the log as the bus | yes |
//! | `postgres` | [`postgres`], [`sql`], [`aggregate`], [`timers`] and [`logbus`] | |
//! | `memory` | [`memory`]: the in-process bus | yes |
//! | `amqp` | [`amqp`]: RabbitMQ | |
//! | `kafka` | [`kafka`]: Kafka (builds librdkafka) | |
//! | `http` | [`http`] (the service kit), [`client`], [`registry`], [`runtime`] (the service runner) | yes |
//! | `consul` | Consul in [`registry`] and [`runtime`] | |
//! | `gateway` | [`gateway`] | |
//! | `console` | [`console`]: the web console, to mount on your gateway or router | |
//! | `otel` | OTLP trace export | |
//! | `saga` | [`saga`]: sagas (process managers), with `sqlite` or `postgres` | |
//! | `testing` | test kits: `aggregate::testing` and `saga::testing` (given/when/then) | |
//!
//! A configuration naming a backend the build lacks (`KEEL_BUS_URL=amqp://...`
//! without `amqp`) stops start-up with a message naming the feature.
//!
//! # Modules
//!
//! - [`core`]: the CloudEvents envelope, ids and versions, the [`Event`] trait and
//!   `#[derive(Event)]`, the bus traits;
//! - [`bus`]: publishing and consuming over any backend ([`bus::Consumer`],
//!   [`bus::EventPublisher`], handlers, tower layers, the inbox);
//! - [`store`]: the event log seam, subscriptions, the relay and projections;
//! - [`sql`]: one API over the SQLite and PostgreSQL logs: your queries and your
//!   appends in one transaction ([`sql::Db`], [`sql::Tx`]);
//! - [`aggregate`]: event-sourced aggregates: commands into events appended with the
//!   expected version, conflicts retried, snapshots;
//! - [`http`], [`client`], [`registry`], [`runtime`]: services;
//! - backends: [`sqlite`], [`postgres`], [`logbus`], [`memory`], [`amqp`], [`kafka`];
//! - [`timers`]: durable timers and delayed messages, scheduled in your transaction;
//! - `saga` (feature `saga`): sagas (process managers) keyed by a correlation id,
//!   correct in any input order, with timeouts and compensation;
//! - [`gateway`], [`console`], [`telemetry`].
//!
//! The guide (docs/guide.md in the repository) builds a first service step by step.
#![warn(missing_docs)]

pub use keel_bus as bus;
pub use keel_core as core;
pub use keel_store as store;
pub use keel_telemetry as telemetry;

// Aggregates come with either store: they add nothing to compile beyond `sql`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use keel_aggregate as aggregate;
#[cfg(feature = "amqp")]
pub use keel_amqp as amqp;
#[cfg(feature = "http")]
pub use keel_client as client;
#[cfg(feature = "console")]
pub use keel_console as console;
#[cfg(feature = "gateway")]
pub use keel_gateway as gateway;
#[cfg(feature = "kafka")]
pub use keel_kafka as kafka;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use keel_logbus as logbus;
#[cfg(feature = "memory")]
pub use keel_memory as memory;
#[cfg(feature = "postgres")]
pub use keel_postgres as postgres;
#[cfg(feature = "http")]
pub use keel_registry as registry;
#[cfg(feature = "http")]
pub use keel_runtime as runtime;
#[cfg(all(feature = "saga", any(feature = "sqlite", feature = "postgres")))]
pub use keel_saga as saga;
#[cfg(feature = "http")]
pub use keel_service as http;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use keel_sql as sql;
#[cfg(feature = "sqlite")]
pub use keel_sqlite as sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use keel_timers as timers;

/// The attribute for implementing Keel's async traits (a projection, a bus
/// backend): `#[keel::async_trait]`.
pub use async_trait::async_trait;
pub use keel_core::{
    CloudEvent, Event, EventSet, ExpectedVersion, Position, StreamId, StreamVersion,
};

/// What most services import: `use keel::prelude::*;`.
pub mod prelude {
    pub use keel_bus::{
        Consumer, ConsumerHandle, EventPublisher, HandlerError, Message, Typed, handler_fn, typed,
    };
    pub use keel_core::{
        CloudEvent, Event, ExpectedVersion, Position, StreamId, StreamVersion, SubscriptionSpec,
    };
    #[cfg(feature = "http")]
    pub use keel_runtime::{ServiceContext, ServiceRunner};
    #[cfg(feature = "http")]
    pub use keel_service::{Caller, Fields, Json, JsonBody, Problem};
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub use keel_sql::{Conn, Db, Projection, Tx, args};
}

// The README's code is compiled and run as a doc test of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
