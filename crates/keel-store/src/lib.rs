//! Keel's event log seam, and what is built on it once for every store.
//!
//! A store (PostgreSQL in `keel-postgres`, SQLite in `keel-sqlite`) implements the small
//! [`EventLog`] trait: append with an expected version, read a stream or the global
//! log, and one subscription primitive, [`EventLog::read_after`], which returns only
//! events that no later commit can precede. Everything else lives here:
//!
//! Layout:
//! - [`log`]: the [`EventLog`] trait and its types: [`Cursor`] (the subscription order),
//!   [`LogEvent`], [`LogQuery`], [`LogFilter`], [`AppendResult`], [`Lease`].
//! - [`sql`]: [`SqlEventLog`], the extra seam of SQL stores: append and checkpoint
//!   inside the caller's own transaction.
//! - [`changes`]: [`Changes`], the change counters a store wakes its subscribers
//!   with, per topic where it can tell the topics apart.
//! - [`error`]: the [`StoreError`] type.
//! - [`stored`]: the row shape both SQL stores share, to and from envelopes.
//! - [`subscription`]: catch up from a cursor, then follow live: pages from
//!   `read_after`, woken by the store's change notifications, with a polling fallback.
//! - [`relay`]: the log-as-outbox relay: tails the log, publishes in log order to any
//!   bus, waits for the broker's confirmation, then stores its checkpoint; one active
//!   relay per name through the store's lease.
//! - [`relay_dlq`]: [`RelayDeadLetter`], the record of an event the bus can never
//!   take, and retrying one.
//! - [`backfill`]: [`backfill_group`], publishing a topic's events from the log to one
//!   consumer group created after they were published.
//! - [`lineage()`]: [`Lineage`], what caused an event and what it caused (through
//!   `causationid` and `correlationid`), for `keel why` and the console.
//! - [`projection`]: read models fed from the log with the read-model change and the
//!   checkpoint in one transaction; one active runner per projection (its lease renewed
//!   while it runs, each page's checkpoint a compare-and-set); blue/green rebuilds (a
//!   new generation in shadow tables, switched in one transaction), with progress.
#![warn(missing_docs)]

pub mod backfill;
pub mod changes;
pub mod error;
pub mod lineage;
pub mod log;
pub mod projection;
pub mod relay;
pub mod relay_dlq;
pub mod sql;
pub mod stored;
pub mod subscription;

pub use backfill::{BackfillProgress, GroupBackfill, backfill_group};
pub use changes::Changes;
pub use error::{Result, StoreError, is_transient};
pub use lineage::{Caused, Lineage, lineage};
pub use log::{
    AppendResult, Category, Cursor, Direction, EventLog, Lease, LogEvent, LogFilter, LogQuery,
    Page, Skipped, StreamSummary, topic_of,
};
pub use projection::{
    Projection, ProjectionRunner, RebuildProgress, RebuildState, Rebuilt, Tables,
};
pub use relay::{Relay, RelayOptions};
pub use relay_dlq::RelayDeadLetter;
pub use sql::SqlEventLog;
pub use subscription::{SubscribeOptions, read_ahead, subscribe};
