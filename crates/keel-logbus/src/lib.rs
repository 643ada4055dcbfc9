//! Keel's log-as-bus backend (DESIGN 2.11): the event log itself is the bus, so
//! `keel up` needs no broker and a crash loses nothing.
//!
//! [`LogBus`] implements the bus traits of `keel_core::bus` over a SQL event log
//! ([`keel_sqlite::SqliteEventLog`] or [`keel_postgres::PgEventLog`]):
//! - publishing appends to the log (one transaction per batch, into a stream of the
//!   batch's own, whatever the events' subjects) and returns once it is committed;
//!   events that services append to the log in their own transactions are
//!   delivered the same way, on the topic the log records for them (their `topic`
//!   extension, else their stream's category), with no relay in between;
//! - a consumer group (topic and group name) is a durable subscription on the log: its
//!   cursor is a store checkpoint named `bus:<topic>:<group>` that only ever moves past
//!   a settled (acked or dead-lettered) prefix, so whatever was not settled before a
//!   crash is delivered again. Competing members in one process share the group's
//!   deliveries, in order per partition key, with bounded prefetch, nack delays and
//!   attempt counts that go on across crashes (tables `keel_bus_read_marks` and
//!   `keel_bus_attempts`, migration `20261206130011_keel_bus_attempts.sql`); across
//!   processes the store's lease lets one process feed a group at a time, and another
//!   takes over when it dies. A new group starts at the beginning of the log
//!   ([`keel_core::StartFrom::Earliest`]) or at its end;
//! - dead letters are rows of `keel_bus_dead_letters` (migration
//!   `20261127000003_keel_bus.sql`); rows of the log that do not decode are
//!   dead-lettered at once with the reason.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use keel_core::{CloudEvent, Publisher, Subscriber, SubscriptionSpec};
//!
//! let log = Arc::new(keel_sqlite::SqliteEventLog::connect("sqlite://keel-data/keel.db").await?);
//! let bus = keel_logbus::open(log).await?;
//! let mut orders = bus.subscribe(SubscriptionSpec::new("order", "billing")).await?;
//! bus.publish("order", &[CloudEvent::builder("order.placed", "/orders").build()?]).await?;
//! if let Some(delivery) = orders.next().await {
//!     delivery?.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - `lib.rs`: [`LogBus`], [`LogBusOptions`], [`open`], and the `Publisher`,
//!   `Subscriber` and `DeadLetters` implementations.
//! - [`store`]: [`BusStore`], what the bus needs from a store beyond the event log
//!   (raw rows, the dead-letter table, stored attempts), for SQLite and PostgreSQL.
//! - `envelope.rs`: published events into the log and back, unchanged.
//! - `group.rs`: one group's in-process state: its [`keel_lanes::Lanes`] (key lanes,
//!   prefetch, nack delays), generations, the read-ahead bound, the settled prefix
//!   that bounds the checkpoint, attempts across crashes, and retried letters.
//! - `feeder.rs`: the task per group that holds its lease and reads the log into it.
//! - `subscription.rs`: a group member and the settle handle of its deliveries.
//! - `progress.rs`: the groups' progress written together (group commit).
//! - `shared.rs`: what members, settle handles and the feeder share; the registry.
//! - [`error`]: the crate's [`Error`] and its mapping to `BusError`.
#![warn(missing_docs)]

mod envelope;
pub mod error;
mod feeder;
mod group;
mod progress;
mod shared;
pub mod store;
mod subscription;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use keel_core::bus::{
    BusError, DeadLetter, DeadLetterId, DeadLetters, GroupDepth, Publisher, Subscriber,
    Subscription, SubscriptionSpec, validate_group, validate_topic,
};
use keel_core::{CloudEvent, ExpectedVersion, StreamId};
use keel_store::{Cursor, LogFilter, StoreError};
use tokio::sync::watch;

pub use envelope::MARKER;
pub use error::{Error, Result};
pub use shared::checkpoint_name;
pub use store::BusStore;

use crate::shared::{GroupShared, Registry};
use crate::subscription::LogSubscription;

/// A group's lag ([`Subscriber::depth`]) is counted by reading the topic's events after
/// its checkpoint, up to this many: the figure stops there.
pub const DEPTH_SCAN_LIMIT: usize = 10_000;

/// How a [`LogBus`] reads and coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogBusOptions {
    /// Events read per query, and the least a group reads ahead.
    pub batch_size: usize,
    /// The polling fallback when no change notification comes.
    pub poll_interval: Duration,
    /// After a notification that found nothing yet (PostgreSQL: the writer is not
    /// below the snapshot horizon yet), read again after this, doubling.
    pub settle_delay: Duration,
    /// How often a process that does not feed a group asks for its lease.
    pub lease_poll: Duration,
    /// How often the feeding process renews (checks) its lease.
    pub lease_renew: Duration,
    /// A group without members in this process lets its lease go after this long.
    pub idle_release: Duration,
    /// At most this much event data is read ahead per group.
    pub max_buffered_bytes: usize,
}

impl Default for LogBusOptions {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            settle_delay: Duration::from_millis(5),
            lease_poll: Duration::from_millis(500),
            lease_renew: Duration::from_secs(5),
            idle_release: Duration::from_secs(5),
            max_buffered_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Opens the log bus over `log` with default options; fails if the store lacks the
/// log bus's tables (migrations `20261127000003_keel_bus` and
/// `20261206130011_keel_bus_attempts`).
pub async fn open<L: BusStore>(log: Arc<L>) -> Result<LogBus<L>> {
    LogBus::open(log, LogBusOptions::default()).await
}

/// The log as a bus. Cheap to clone; clones share the consumer groups. Dropping the
/// last clone stops feeding its groups (their members' `next` ends).
pub struct LogBus<L> {
    inner: Arc<Inner<L>>,
}

impl<L> Clone for LogBus<L> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

struct Inner<L> {
    log: Arc<L>,
    store: Arc<dyn BusStore>,
    progress: Arc<progress::ProgressWriter>,
    options: LogBusOptions,
    registry: Arc<Registry>,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl<L> Drop for Inner<L> {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

impl<L> fmt::Debug for LogBus<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogBus")
            .field("options", &self.inner.options)
            .field("closed", &self.inner.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl<L: BusStore> LogBus<L> {
    /// Opens the log bus over `log`; fails if the store lacks the log bus's tables.
    pub async fn open(log: Arc<L>, options: LogBusOptions) -> Result<Self> {
        let store: Arc<dyn BusStore> = log.clone();
        store.dead_letters("keel", "keel", false, 1).await.map_err(store::explain)?;
        store.attempts("keel", keel_store::Cursor::START).await.map_err(store::explain)?;
        let (shutdown, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                log,
                progress: Arc::new(progress::ProgressWriter::new(store.clone())),
                store,
                options,
                registry: Arc::new(Registry::default()),
                closed: AtomicBool::new(false),
                shutdown,
            }),
        })
    }

    /// The event log underneath.
    pub fn log(&self) -> &Arc<L> {
        &self.inner.log
    }

    /// Appends a published batch, turning it into log rows (see [`envelope`]), into a
    /// stream of its own, `<topic>-<uuid>`: never into the stream an event's subject
    /// names, which may be an aggregate's. One stream per batch: one per event would
    /// fill the stream index, one per topic would make concurrent publishers race for
    /// its versions.
    async fn append(&self, topic: &str, events: &[CloudEvent]) -> Result<()> {
        let stream = StreamId::new(format!("{topic}-{}", uuid::Uuid::now_v7().simple()))?;
        let mut fresh = false;
        let mut backoff = Duration::from_millis(2);
        let mut attempts = 0;
        loop {
            let stored = events
                .iter()
                .map(|event| envelope::to_log(topic, event, &stream, fresh))
                .collect::<Result<Vec<_>, _>>()?;
            match self.inner.store.append(&stream, ExpectedVersion::NoStream, &stored).await {
                Ok(_) => return Ok(()),
                // Publishing an event that is in the log already (a replay, a
                // redelivery passed on): store it under a new row id.
                Err(StoreError::DuplicateEvent { .. }) if !fresh => fresh = true,
                // Nobody else knows the stream: it exists because an earlier try
                // committed although it reported an error.
                Err(StoreError::VersionConflict { .. }) if attempts > 0 => return Ok(()),
                Err(error) if error.is_retryable() && attempts < 20 => {
                    attempts += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

#[async_trait]
impl<L: BusStore> Publisher for LogBus<L> {
    async fn publish(&self, topic: &str, events: &[CloudEvent]) -> Result<(), BusError> {
        validate_topic(topic)?;
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BusError::Closed);
        }
        if events.is_empty() {
            return Ok(());
        }
        self.append(topic, events).await?;
        metrics::counter!("keel_logbus_published_total", "topic" => topic.to_owned())
            .increment(u64::try_from(events.len()).unwrap_or(u64::MAX));
        Ok(())
    }

    /// Publishing is synchronous (a publish returns once committed), so there is
    /// nothing to wait for: later publishes fail with [`BusError::Closed`].
    async fn close(&self) -> Result<(), BusError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl<L: BusStore> Subscriber for LogBus<L> {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        spec.validate()?;
        let inner = &self.inner;
        let member = inner.registry.next_member.fetch_add(1, Ordering::SeqCst);
        let group = {
            let mut groups = inner.registry.lock();
            let key = (spec.topic.clone(), spec.group.clone());
            let group = groups
                .entry(key)
                .or_insert_with(|| {
                    let group = Arc::new(GroupShared::new(
                        &spec.topic,
                        &spec.group,
                        spec.start,
                        spec.types.clone(),
                        Arc::clone(&inner.store),
                        Arc::clone(&inner.progress),
                    ));
                    tokio::spawn(feeder::run(
                        Arc::clone(&group),
                        Arc::clone(&inner.registry),
                        inner.options,
                        inner.shutdown.subscribe(),
                    ));
                    group
                })
                .clone();
            {
                let mut state = group.lock();
                // The latest subscription's type filter applies from now on.
                if state.types != spec.types {
                    state.types.clone_from(&spec.types);
                }
                state.join(member, usize::try_from(spec.prefetch).unwrap_or(usize::MAX));
            }
            group
        };
        group.feeder.notify_one();
        Ok(Box::new(LogSubscription::new(group, member)))
    }

    /// Lag: the events of the topic after the group's checkpoint (from the start of the
    /// log when it has none yet), read and counted up to [`DEPTH_SCAN_LIMIT`].
    async fn depth(&self, topic: &str, group: &str) -> Result<GroupDepth, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        let store = &self.inner.store;
        let checkpoint = store
            .checkpoint(&checkpoint_name(topic, group))
            .await
            .map_err(Error::from)?
            .unwrap_or(Cursor::START);
        let waiting = store
            .read_after(checkpoint, &LogFilter::topic(topic), DEPTH_SCAN_LIMIT)
            .await
            .map_err(Error::from)?;
        let lag = u64::try_from(waiting.events.len()).unwrap_or(u64::MAX);
        let dead_letters = store.count_dead_letters(topic, group).await.map_err(Error::from)?;
        Ok(GroupDepth::new(Some(lag), Some(dead_letters)))
    }
}

#[async_trait]
impl<L: BusStore> DeadLetters for LogBus<L> {
    async fn list(
        &self,
        topic: &str,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        Ok(self.inner.store.dead_letters(topic, group, false, limit).await.map_err(Error::from)?)
    }

    /// Marks the letter for another try; the process feeding the group (this one or
    /// another) hands it to the group's members, and it leaves the table once acked.
    async fn retry(&self, topic: &str, group: &str, id: &DeadLetterId) -> Result<bool, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        if !self.inner.store.mark_retrying(topic, group, id).await.map_err(Error::from)? {
            return Ok(false);
        }
        let local = self.inner.registry.lock().get(&(topic.to_owned(), group.to_owned())).cloned();
        if let Some(local) = local {
            local.letters_due.store(true, Ordering::SeqCst);
            local.feeder.notify_one();
        }
        Ok(true)
    }

    async fn purge(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        Ok(self.inner.store.purge_dead_letters(topic, group).await.map_err(Error::from)?)
    }
}
