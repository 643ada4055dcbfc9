//! Keel's database seam for services: one API over the SQL event logs of either store
//! (SQLite, PostgreSQL), so a service writes each query once and appends its events in
//! the same transaction as its own state (the log is the outbox).
//!
//! ```no_run
//! # async fn example() -> keel_sql::Result<()> {
//! use keel_core::{ExpectedVersion, StreamId};
//! use keel_sql::{Db, args};
//!
//! let db = Db::connect("sqlite://keel-data/keel.db").await?;
//! let mut tx = db.begin().await?;
//! tx.execute("INSERT INTO notes (id, text) VALUES ($1, $2)", args!["n-1", "hello"]).await?;
//! # let event = keel_core::CloudEvent::builder("note.added", "/notes").build().map_err(|e| keel_sql::Error::Event(e.to_string()))?;
//! tx.append(&StreamId::new("note-n-1")?, ExpectedVersion::NoStream, &[event]).await?;
//! tx.commit().await?; // the row and the event, or neither
//! # Ok(()) }
//! ```
//!
//! Each dialect is a cargo feature (`sqlite`, `postgres`); a URL for a dialect the build
//! lacks is refused at start-up naming the feature.
//!
//! # Layout
//!
//! - `db.rs`: [`Db`] (the event log of either store, with its pool), [`Tx`] (a
//!   transaction that runs queries and appends events), [`Arg`] and [`args!`] (query
//!   arguments both dialects bind alike), [`Dialect`], [`Row`], and [`DbInbox`] (the store's
//!   transactional inbox as one `keel_bus` inbox).
//! - `consumer.rs`: [`start_inbox_consumer`]: an effectively-once subscriber whose
//!   handler writes in the inbox's transaction.
//! - `events.rs`: [`envelope`]: a typed event as a CloudEvent stamped with the current
//!   context (actor, trace, correlation, causation).
//! - `projection.rs`: [`Projection`] (a read model written once for both stores, applied
//!   through a [`Conn`]) and [`ProjectionSpec`] (a registered projection: run, catch up,
//!   rebuild on either store).
//! - `error.rs`: [`Error`], with the questions callers ask of it (unique violation,
//!   version conflict, worth retrying).
#![warn(missing_docs)]

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("keel-sql needs at least one of its features `sqlite` and `postgres`");

mod consumer;
mod db;
mod error;
mod events;
mod projection;

pub use consumer::{INBOX_ATTEMPTS, start_inbox_consumer};
pub use db::{Arg, Db, DbInbox, Dialect, PgRowType, Row, SqliteRowType, Tx};
pub use error::{Error, Result};
pub use events::envelope;
pub use projection::{Conn, Projection, ProjectionSpec};
