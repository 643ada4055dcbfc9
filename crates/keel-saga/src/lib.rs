//! Keel's sagas (process managers, DESIGN 2.17): a [`Saga`] is a state machine keyed
//! by a correlation id that reacts to events from any service, and decides
//! [`Step`]s: events to append, timeouts to schedule, timers to cancel.
//!
//! # Design
//!
//! - **One transaction per input.** [`SagaRunner::start`] consumes the saga's topics
//!   through the store's inbox ([`keel_sql::start_inbox_consumer`]); for each input it
//!   loads the instance's row from `keel_sagas`, calls [`Saga::handle`], writes the new
//!   state expecting the version it read, appends the emitted events to the log (the
//!   outbox: the relay publishes them), schedules and cancels the saga's timers
//!   (`keel_timers`), and the inbox marks the event processed: all in one transaction,
//!   on SQLite or PostgreSQL. A crash at any point leaves all of it or none; a
//!   redelivered event (same id) is skipped by the inbox.
//! - **Any order, duplicates.** Inputs come from several streams and topics and are
//!   redelivered in other orders (broker retries, `keel dlq retry`). The state records
//!   what has been seen and what has been done, and each step is decided from those,
//!   once: "stock reserved" before "order placed" is recorded and acted on when the
//!   order shows up; a second "stock reserved" changes nothing. The property tests of
//!   this crate and of the example orders service deliver every permutation with
//!   duplicates and check the final state against in-order delivery.
//! - **Concurrency.** Two inputs of one instance handled at once: the second write
//!   finds another version (or the row inserted under it) and fails as
//!   [`Error::Conflict`], which the consumer retries on the state that won.
//!   Instances are independent.
//! - **Timeouts** are durable timers ([`Step::Schedule`]): the timer's message is an
//!   input of the saga, published on [`Saga::TIMER_TOPIC`] by a
//!   `keel_timers::Dispatcher` once due (at once when scheduled in the past), and
//!   comes back to the saga like any input; settling the saga cancels it
//!   ([`Step::Cancel`]). Timer keys are `saga:<NAME>:<correlation id>:<key>`.
//! - **Compensation** is a step like any other: when the state shows that something
//!   done must be undone (stock reserved for an order that was cancelled, in whichever
//!   order the two were heard), the saga emits the compensating request once.
//! - **Unknown correlations.** An input that finds no instance starts one only if
//!   [`Saga::starts`] allows it; otherwise it is dead-lettered with
//!   [`Error::UnknownCorrelation`] (a permanent handler error naming the saga, the
//!   correlation id and the event), never dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use keel_core::Event;
//! use keel_saga::{Saga, SagaRunner, Step, Steps};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
//! #[event(type = "payment.requested", key = order)]
//! struct Requested { order: String }
//! #[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
//! #[event(type = "payment.overdue", key = order)]
//! struct Overdue { order: String }
//! keel_aggregate::event_set! {
//!     #[derive(Debug, Clone, PartialEq)]
//!     enum Input { Requested(Requested), Overdue(Overdue) }
//! }
//! #[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
//! #[event(type = "payment.reminder_sent", key = order)]
//! struct Reminded { order: String }
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Payment { requested: bool, reminded: bool }
//!
//! impl Saga for Payment {
//!     const NAME: &'static str = "payment";
//!     const TOPICS: &'static [&'static str] = &["payment"];
//!     const TIMER_TOPIC: &'static str = "payment";
//!     type Input = Input;
//!     type Output = Reminded;
//!     fn correlation_id(input: &Input) -> &str {
//!         match input { Input::Requested(e) => &e.order, Input::Overdue(e) => &e.order }
//!     }
//!     fn starts(input: &Input) -> bool { matches!(input, Input::Requested(_)) }
//!     fn handle(&mut self, input: &Input) -> Steps<Self> {
//!         match input {
//!             Input::Requested(e) if !self.requested => {
//!                 self.requested = true;
//!                 let overdue = Overdue { order: e.order.clone() };
//!                 vec![Step::schedule("overdue", Duration::from_secs(3600), overdue)]
//!             }
//!             Input::Overdue(e) if !self.reminded => {
//!                 self.reminded = true;
//!                 vec![Step::emit(format!("payment-{}", e.order), Reminded { order: e.order.clone() })]
//!             }
//!             _ => vec![], // a duplicate
//!         }
//!     }
//! }
//!
//! # async fn run(db: keel_sql::Db, bus: std::sync::Arc<dyn keel_core::Subscriber>) -> Result<(), keel_core::BusError> {
//! let consumers = SagaRunner::<Payment>::new().start(&db, bus, "payment-saga", 4).await?;
//! // ... and a keel_timers::Dispatcher running somewhere, for the timeouts.
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `saga.rs`: the [`Saga`] trait and [`Step`] (what a saga decides).
//! - `runner.rs`: [`SagaRunner`]: handle an input in a transaction
//!   ([`SagaRunner::handle_in`], returning [`Handled`]), load an [`Instance`], consume
//!   the saga's topics; the `keel_sagas` rows.
//! - `error.rs`: [`Error`], and how it becomes a retry or a dead letter.
//! - `testing.rs` (feature `testing`): [`testing::Given`], the given/when/then kit,
//!   and [`testing::deliver`] (the runner's delivery rule without a database).
//!
//! The table's migrations live with each store (`crates/keel-sqlite/migrations`,
//! `crates/keel-postgres/migrations`, `*_keel_sagas.sql`), so `Db::connect` creates it.
#![warn(missing_docs)]

mod error;
mod runner;
mod saga;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
pub use keel_timers::Due;
pub use runner::{Handled, Instance, SagaRunner};
pub use saga::{Saga, Step, Steps};
