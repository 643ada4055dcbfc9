//! Durable timers and delayed messages for Keel (DESIGN 2.17).
//!
//! A timer is a row in the log's own store (`keel_timers`, in SQLite or PostgreSQL),
//! written in the same transaction as the state change that asks for it: schedule a
//! message for an instant or after a delay with [`schedule_in`], cancel it by key with
//! [`cancel_in`]. When it is due, a [`Dispatcher`] appends its message (a CloudEvent)
//! to the log and deletes the row in one transaction, so the message is published
//! exactly once through the log (the relay carries it to whichever bus is configured)
//! and a crash at any point loses none. One dispatcher per name is active across
//! processes (the store's lease); the others stand by and take over when it dies.
//!
//! ```no_run
//! # async fn example() -> keel_timers::Result<()> {
//! use std::time::Duration;
//! use keel_core::CloudEvent;
//! use keel_sql::Db;
//! use keel_timers::{Dispatcher, Timer, schedule_in};
//!
//! let db = Db::connect("sqlite://keel-data/keel.db").await?;
//! let mut tx = db.begin().await?;
//! // ... the order's own state change in `tx` ...
//! let reminder = CloudEvent::builder("order.payment_overdue", "/orders")
//!     .extension("topic", "order")
//!     .build()
//!     .map_err(|e| keel_sql::Error::Event(e.to_string()))?;
//! schedule_in(&mut tx, &Timer::after("order-17-payment", Duration::from_secs(900), reminder)).await?;
//! tx.commit().await?; // the state change and the timer, or neither
//!
//! // In some process (the same or another): fire due timers until shutdown.
//! Dispatcher::new(db).run(std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `timer.rs`: [`Timer`] (key, [`Due`] time, target stream, message, dispatcher name).
//! - `schedule.rs`: [`schedule_in`], [`cancel_in`] (the caller's transaction) and
//!   [`TimersExt`] (the same on a `Db`, each call its own transaction).
//! - `dispatcher.rs`: [`Dispatcher`]: the lease, the page-per-transaction firing loop,
//!   the lateness metric; [`DispatcherOptions`].
//! - `query.rs`: [`list_timers`] and [`timer_summary`]: the stored timers seen from
//!   outside (`keel timers list`, `keel status`).
//! - `error.rs`: [`Error`].
//!
//! The table's migrations live with each store (`crates/keel-sqlite/migrations`,
//! `crates/keel-postgres/migrations`, `*_keel_timers.sql`), so `Db::connect` creates it.
//!
//! # Metrics
//!
//! `keel_timer_lateness_seconds` (histogram: commit time of the firing transaction
//! less the due time), `keel_timers_fired_total` and `keel_timers_failed_total`
//! (counters), each labelled `dispatcher`.

mod dispatcher;
mod error;
mod query;
mod schedule;
mod timer;

pub use dispatcher::{Dispatcher, DispatcherOptions};
pub use error::{Error, Result};
pub use query::{StoredTimer, TimerQuery, TimerSummary, list_timers, timer_summary};
pub use schedule::{TimersExt, cancel_in, cancel_named_in, schedule_in};
pub use timer::{DEFAULT_DISPATCHER, Due, MAX_KEY_LEN, Timer};
