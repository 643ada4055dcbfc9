//! Keel's event-sourced aggregates: an [`Aggregate`] folds its stream's events into its
//! state and decides, per command, which events come next; a [`Repository`] loads it
//! (from its latest snapshot, then the events after it), handles the command, and
//! appends the new events with the expected version, in your transaction or its own,
//! retrying version conflicts with a bounded [`keel_core::Backoff`]. Every N events it
//! stores a snapshot in the same transaction as the append.
//!
//! ```no_run
//! # use keel_aggregate::{Aggregate, Repository};
//! # use keel_core::Event;
//! # use serde::{Deserialize, Serialize};
//! #[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
//! #[event(type = "counter.added")]
//! struct Added { by: u32 }
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter { total: u64 }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("nothing to add")]
//! struct NothingToAdd;
//!
//! impl Aggregate for Counter {
//!     const CATEGORY: &'static str = "counter";
//!     type Event = Added;
//!     type Command = u32;
//!     type Error = NothingToAdd;
//!
//!     fn apply(&mut self, event: &Added) {
//!         self.total += u64::from(event.by);
//!     }
//!     fn handle(&self, by: &u32) -> Result<Vec<Added>, NothingToAdd> {
//!         if *by == 0 { return Err(NothingToAdd) }
//!         Ok(vec![Added { by: *by }])
//!     }
//! }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let db = keel_sql::Db::connect("sqlite://keel-data/keel.db").await?;
//! let counters = Repository::<Counter>::new(db.clone()).snapshot_every(100);
//! counters.execute("c-1", &5).await?; // its own transaction
//! let mut tx = db.begin().await?;
//! tx.execute("INSERT INTO audit (what) VALUES ($1)", keel_sql::args!["add 2"]).await?;
//! counters.execute_in(&mut tx, "c-1", &2).await?; // with your row, or not at all
//! tx.commit().await?;
//! assert_eq!(counters.load("c-1").await?.state.total, 7);
//! # Ok(()) }
//! ```
//!
//! Events decode through [`keel_core::CloudEvent::decode`], so upcasters declared on
//! the event types apply when an aggregate loads.
//!
//! # Layout
//!
//! - `aggregate.rs`: the [`Aggregate`] trait (state, events, commands, stream ids) and
//!   [`event_set!`] (an enum of event types as one [`keel_core::EventSet`]).
//! - `repository.rs`: [`Repository`]: load, execute, execute in a transaction, the
//!   retry rule ([`Retry`]); what they return ([`Loaded`], [`Executed`]).
//! - `snapshot.rs`: [`Snapshots`] (the policy) and the `keel_snapshots` rows: read,
//!   judged readable or discarded ([`SnapshotUse`]), written.
//! - `stream.rs`: a stream's events read page by page through a pool or inside a
//!   transaction, decoded and folded.
//! - `error.rs`: [`Error`]: the aggregate's own refusal, or what failed around it.
//! - `testing.rs` (feature `testing`): [`testing::Given`], the given/when/then kit.

mod aggregate;
mod error;
mod repository;
mod snapshot;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;

pub use aggregate::Aggregate;
pub use error::{Error, Result};
pub use repository::{Executed, Loaded, Repository, Retry};
pub use snapshot::{SnapshotUse, Snapshots};
pub use stream::fold;

#[doc(hidden)]
pub mod __private {
    pub use keel_core;
    pub use serde_json;
}
