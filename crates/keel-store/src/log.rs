//! The event log seam.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use keel_core::envelope::ext;
use keel_core::{CloudEvent, ExpectedVersion, ExtensionValue, Position, StreamId, StreamVersion};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Result, StoreError};
use crate::relay_dlq::RelayDeadLetter;

/// A place in the log's *subscription order*, which may differ from position order.
///
/// PostgreSQL assigns positions from a sequence, and concurrent transactions commit out
/// of position order, so "everything after position P" is not a stable prefix while
/// writers are in flight (DESIGN 2.2). Its subscription order is
/// `(epoch, transaction id, position)`: the writer's transaction id, and an epoch that
/// grows when the database is restored into another cluster whose transaction ids
/// start lower. SQLite commits one writer at a time, so its order is the position
/// alone (epoch and transaction id are 0).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Cursor {
    /// Restarts of the store's transaction counter (PostgreSQL; 0 on SQLite).
    pub epoch: i64,
    /// The appending transaction's id (PostgreSQL; 0 on SQLite).
    pub txid: i64,
    /// The event's position in the global log.
    pub position: i64,
}

impl Cursor {
    /// Before every event.
    pub const START: Self = Self { epoch: 0, txid: 0, position: 0 };

    /// The log position part, as a [`Position`].
    pub fn log_position(&self) -> Position {
        Position(u64::try_from(self.position).unwrap_or(0))
    }
}

impl fmt::Display for Cursor {
    /// `epoch.txid.position`, as `keel status` shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.epoch, self.txid, self.position)
    }
}

impl FromStr for Cursor {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || StoreError::Config(format!("`{s}` is not a cursor (epoch.txid.position)"));
        let mut parts = s.split('.').map(str::parse::<i64>);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(epoch)), Some(Ok(txid)), Some(Ok(position)), None) => {
                Ok(Self { epoch, txid, position })
            }
            _ => Err(bad()),
        }
    }
}

/// An event read from the log, with its place in subscription order and its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEvent {
    /// Where the event is in subscription order.
    pub cursor: Cursor,
    /// The bus topic the event is published to.
    pub topic: String,
    /// The envelope, with `subject` = stream id and the `streamversion` and `position`
    /// extensions set.
    pub event: CloudEvent,
}

/// A page of a subscription read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The events read, in subscription order.
    pub events: Vec<LogEvent>,
    /// Where the next read starts. At least the last event's cursor; past it when the
    /// store knows that nothing can ever appear before a later point (so an idle
    /// filtered subscription does not rescan the same rows forever).
    pub next: Cursor,
}

/// Which events a subscription or read wants. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only events on this topic.
    pub topic: Option<String>,
    /// Only these event types (empty: all).
    pub types: Vec<String>,
    /// Only this stream's events.
    pub stream: Option<StreamId>,
    /// Only events with a position above this one.
    pub after_position: Option<Position>,
}

impl LogFilter {
    /// A filter on one topic.
    pub fn topic(topic: impl Into<String>) -> Self {
        Self { topic: Some(topic.into()), ..Self::default() }
    }

    /// Whether `event` (with `topic`) passes the filter.
    pub fn matches(&self, topic: &str, event: &CloudEvent) -> bool {
        self.topic.as_deref().is_none_or(|t| t == topic)
            && (self.types.is_empty() || self.types.iter().any(|t| t == event.ty()))
            && self.stream.as_ref().is_none_or(|s| Some(s.as_str()) == event.subject())
            && self.after_position.is_none_or(|p| event.position().is_some_and(|q| q > p))
    }
}

/// A read of the global log in position order (paged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogQuery {
    /// Events with a position above this one.
    pub from: Position,
    /// Events whose `time` is at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only these event types (empty: all).
    pub types: Vec<String>,
    /// Only this stream's events.
    pub stream: Option<StreamId>,
    /// Only events on this topic.
    pub topic: Option<String>,
    /// At most this many events per page.
    pub limit: usize,
}

impl Default for LogQuery {
    fn default() -> Self {
        Self {
            from: Position::START,
            since: None,
            types: Vec::new(),
            stream: None,
            topic: None,
            limit: 1000,
        }
    }
}

/// Which way to read a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    /// From older to newer versions.
    Forward,
    /// From newer to older versions.
    Backward,
}

/// What an append wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append.
    pub version: StreamVersion,
    /// The positions of the appended events, in order.
    pub positions: Vec<Position>,
}

/// An exclusive lease on a name across processes: one active relay, projection runner
/// or log-bus group feeder per name.
///
/// The holder renews it at least every [`Lease::renew_interval`] while it works (or
/// runs [`Lease::keep`] beside its work) and stops working as soon as a renewal says
/// the lease is lost. [`Lease::release`] gives it up at once; a lease dropped without
/// it is given up as soon as the store can (PostgreSQL: its connection closes; SQLite:
/// a delete in the background).
#[async_trait]
pub trait Lease: Send {
    /// Renews the lease where the store needs that (SQLite moves its expiry on) and
    /// checks it (PostgreSQL: the connection holding the lock is alive), and says
    /// whether it is still held. A renewal that cannot reach the database (busy,
    /// connection trouble) says "held" until the lease would really have expired.
    /// Once it says "lost" it always does.
    async fn renew(&mut self) -> bool;

    /// How often the holder renews: well within the lease's expiry, and often enough
    /// that a lost lease is noticed soon.
    fn renew_interval(&self) -> Duration;

    /// Renews the lease every [`Lease::renew_interval`] and completes when it is lost:
    /// for a holder to run beside its work (`tokio::select!`) and stop the work then.
    async fn keep(&mut self) {
        loop {
            tokio::time::sleep(self.renew_interval()).await;
            if !self.renew().await {
                return;
            }
        }
    }

    /// Gives the lease up.
    async fn release(self: Box<Self>);
}

/// The event log: what a store implements.
///
/// Appends are atomic per call: every event of the batch or none. Streams are in
/// version order everywhere; the global log has increasing positions with possible
/// holes (rolled-back writes).
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends `events` to `stream` if its version satisfies `expected`. Each event
    /// gets the stream id as `subject`; its topic is its `topic` extension if set,
    /// else the stream's category.
    ///
    /// ```no_run
    /// use keel_core::{CloudEvent, ExpectedVersion, StreamId};
    /// use keel_store::{EventLog, StoreError};
    ///
    /// async fn open_account(log: &impl EventLog) -> Result<(), Box<dyn std::error::Error>> {
    ///     let opened = CloudEvent::builder("account.opened", "/accounts")
    ///         .json_data(&serde_json::json!({ "owner": "ada" }))?
    ///         .build()?;
    ///     let stream = StreamId::new("account-42")?;
    ///     match log.append(&stream, ExpectedVersion::NoStream, &[opened]).await {
    ///         Ok(appended) => println!("account-42 is at version {}", appended.version),
    ///         // Someone opened it first: the append wrote nothing.
    ///         Err(StoreError::VersionConflict { .. }) => println!("already open"),
    ///         Err(other) => return Err(other.into()),
    ///     }
    ///     Ok(())
    /// }
    /// ```
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[CloudEvent],
    ) -> Result<AppendResult>;

    /// Up to `limit` events of a stream, forward from version `from` (inclusive) or
    /// backward from it (`StreamVersion(u64::MAX)` = from the end).
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<CloudEvent>>;

    /// The stream's current version (`StreamVersion::NONE` when it does not exist).
    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion>;

    /// A page of the global log in position order.
    async fn read_all(&self, query: &LogQuery) -> Result<Vec<LogEvent>>;

    /// Every event matching `query` in position order, in batches of about
    /// `query.limit`: what `keel replay` and rebuilds read. Events appended while the
    /// replay runs may or may not be included. The default pages through
    /// [`EventLog::read_all`]; a store with a faster bulk read overrides it.
    fn replay(&self, query: LogQuery) -> BoxStream<'_, Result<Vec<LogEvent>>> {
        futures::stream::try_unfold(Some(query), move |query| async move {
            let Some(mut query) = query else { return Ok(None) };
            let page = self.read_all(&query).await?;
            match page.last().and_then(|e| e.event.position()) {
                Some(last) => {
                    query.from = last;
                    Ok(Some((page, Some(query))))
                }
                None => Ok(None),
            }
        })
        .boxed()
    }

    /// The highest position in the log.
    async fn head(&self) -> Result<Position>;

    /// The categories of the log's streams (`order-17` is in `order`), with how many
    /// streams and events each has, by name. The default scans the log.
    async fn categories(&self) -> Result<Vec<Category>> {
        let mut categories: std::collections::BTreeMap<String, (HashSet<String>, u64)> =
            Default::default();
        let mut batches = self.replay(LogQuery::default());
        while let Some(batch) = batches.next().await {
            for event in batch? {
                let stream = event.event.subject().unwrap_or_default().to_owned();
                let category = stream.split_once('-').map_or(stream.as_str(), |(c, _)| c);
                let entry = categories.entry(category.to_owned()).or_default();
                entry.1 += 1;
                entry.0.insert(stream);
            }
        }
        Ok(categories
            .into_iter()
            .map(|(name, (streams, events))| Category {
                name,
                streams: streams.len() as u64,
                events,
            })
            .collect())
    }

    /// Up to `limit` streams of `category` (all without one), by stream id, each with
    /// its version and last position. The default scans the log.
    async fn streams(&self, category: Option<&str>, limit: usize) -> Result<Vec<StreamSummary>> {
        let mut streams: std::collections::BTreeMap<String, StreamSummary> = Default::default();
        let mut batches = self.replay(LogQuery::default());
        while let Some(batch) = batches.next().await {
            for event in batch? {
                let stream = event.event.subject().unwrap_or_default().to_owned();
                let in_category = stream.split_once('-').map_or(stream.as_str(), |(c, _)| c);
                if category.is_some_and(|c| c != in_category) {
                    continue;
                }
                let entry = streams.entry(stream.clone()).or_insert_with(|| StreamSummary {
                    stream,
                    version: 0,
                    last_position: 0,
                });
                entry.version = event.event.stream_version().map_or(entry.version, |v| v.0);
                entry.last_position = event.cursor.position;
            }
        }
        Ok(streams.into_values().take(limit).collect())
    }

    /// The event with this CloudEvents `id`, if the log has it. The default scans the
    /// log; SQL stores look it up by its unique index.
    async fn event_by_id(&self, id: &str) -> Result<Option<LogEvent>> {
        let mut batches = self.replay(LogQuery::default());
        while let Some(batch) = batches.next().await {
            if let Some(found) = batch?.into_iter().find(|e| e.event.id() == id) {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Up to `limit` events whose `causationid` is `id` (what the event or request `id`
    /// caused), in position order. The default scans the log; SQL stores use an index.
    async fn caused_by(&self, id: &str, limit: usize) -> Result<Vec<LogEvent>> {
        self.scan_extension(ext::CAUSATION_ID, id, limit).await
    }

    /// Up to `limit` events whose `correlationid` is `id` (one request's whole story),
    /// in position order. The default scans the log; SQL stores use an index.
    async fn correlated(&self, id: &str, limit: usize) -> Result<Vec<LogEvent>> {
        self.scan_extension(ext::CORRELATION_ID, id, limit).await
    }

    /// Up to `limit` events whose string extension `name` is `value`, scanning the whole
    /// log: the default of [`EventLog::caused_by`] and [`EventLog::correlated`].
    async fn scan_extension(&self, name: &str, value: &str, limit: usize) -> Result<Vec<LogEvent>> {
        let mut found = Vec::new();
        let mut batches = self.replay(LogQuery::default());
        while let Some(batch) = batches.next().await {
            for event in batch? {
                if found.len() >= limit {
                    return Ok(found);
                }
                if matches!(event.event.extension(name), Some(ExtensionValue::String(v)) if v == value)
                {
                    found.push(event);
                }
            }
        }
        Ok(found)
    }

    /// Up to `limit` events after `cursor` in subscription order that match `filter`,
    /// and only those that no later commit can precede: a subscriber that reads page
    /// after page never skips an event and sees every stream in version order.
    async fn read_after(&self, cursor: Cursor, filter: &LogFilter, limit: usize) -> Result<Page>;

    /// How many events with a position up to `up_to` lie after `cursor` in
    /// subscription order (relay lag; whether a replay has caught up).
    async fn count_after(&self, cursor: Cursor, up_to: Position) -> Result<u64>;

    /// The cursor just before the first event with a position above `position`:
    /// where a subscription "from a position" starts.
    async fn cursor_before(&self, position: Position) -> Result<Cursor>;

    /// A receiver that changes when events may have been appended (by this process,
    /// or by others where the store can tell).
    fn changes(&self) -> watch::Receiver<u64>;

    /// A receiver that changes when events may have been appended to `topic`: like
    /// [`changes`](Self::changes), without the appends to other topics where the store
    /// can tell them apart (the default cannot; see [`crate::changes`]).
    fn topic_changes(&self, topic: &str) -> watch::Receiver<u64> {
        let _ = topic;
        self.changes()
    }

    /// Whether a read that starts after a change notification always sees the append
    /// that caused it. On PostgreSQL it may not: [`read_after`](Self::read_after) holds
    /// events back behind a transaction still in flight, which may roll back without a
    /// notification, so subscribers there read again shortly after a notification that
    /// found nothing (their settle delay). A store with one writer at a time, whose
    /// positions follow commit order (SQLite), needs no second look.
    fn notified_appends_are_visible(&self) -> bool {
        false
    }

    /// The stored checkpoint of a relay, projection or consumer group.
    async fn checkpoint(&self, name: &str) -> Result<Option<Cursor>>;

    /// Stores a checkpoint.
    async fn save_checkpoint(&self, name: &str, cursor: Cursor) -> Result<()>;

    /// Every stored checkpoint, by name (for `keel status`).
    async fn checkpoints(&self) -> Result<Vec<(String, Cursor, DateTime<Utc>)>>;

    /// Takes the lease on `name` if nobody holds it.
    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>>;

    /// How many events each subscriber skipped as unreadable (`keel_skipped`), by
    /// subscriber name; subscribers without skips are absent. The default (a store
    /// without the table) has none.
    async fn skipped_counts(&self) -> Result<Vec<(String, u64)>> {
        Ok(Vec::new())
    }

    /// Up to `limit` skip records of one subscriber or of all, oldest position first.
    async fn skipped(&self, subscriber: Option<&str>, limit: usize) -> Result<Vec<Skipped>> {
        let _ = (subscriber, limit);
        Ok(Vec::new())
    }

    /// Records that a relay could never publish an event (see [`RelayDeadLetter`]).
    /// Storing the same relay and position again replaces the record. The relay stores
    /// its checkpoint past the event only after this returned `Ok`. The default (a
    /// store without the table) refuses, and the relay then keeps retrying the event.
    async fn save_relay_dead_letter(&self, letter: &RelayDeadLetter) -> Result<()> {
        Err(StoreError::Config(format!(
            "this store cannot keep relay dead letters (relay `{}`, position {})",
            letter.relay, letter.position
        )))
    }

    /// Up to `limit` relay dead letters, of one relay or of all, oldest position first.
    async fn relay_dead_letters(
        &self,
        relay: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RelayDeadLetter>> {
        let _ = (relay, limit);
        Ok(Vec::new())
    }

    /// Deletes one relay dead letter; `false` if there was none.
    async fn delete_relay_dead_letter(&self, relay: &str, position: Position) -> Result<bool> {
        let _ = (relay, position);
        Ok(false)
    }

    /// Deletes every dead letter of a relay; returns how many.
    async fn purge_relay_dead_letters(&self, relay: &str) -> Result<u64> {
        let _ = relay;
        Ok(0)
    }
}

/// A category of streams (the part of a stream id before its first `-`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Category {
    /// The category's name.
    pub name: String,
    /// How many streams it has.
    pub streams: u64,
    /// How many events its streams have.
    pub events: u64,
}

/// One stream, as the console lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamSummary {
    /// The stream id.
    pub stream: String,
    /// Its current version.
    pub version: u64,
    /// The position of its last event.
    pub last_position: i64,
}

/// An event a subscriber (a projection) could not read and skipped by its policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Who skipped it (`projection:<name>`).
    pub subscriber: String,
    /// The skipped event's id.
    pub event_id: String,
    /// Where the event is in the log.
    pub position: Position,
    /// The event's type.
    pub event_type: String,
    /// Why it could not be read.
    pub reason: String,
    /// When it was skipped.
    pub skipped_at: DateTime<Utc>,
}

/// The topic of an event appended to `stream`: its `topic` extension, or the stream's
/// category (`order-17` -> `order`).
pub fn topic_of(stream: &StreamId, event: &CloudEvent) -> Result<String> {
    let topic = match event.extension(ext::TOPIC) {
        Some(value) => value.to_string(),
        None => stream.category().to_owned(),
    };
    keel_core::bus::validate_topic(&topic).map_err(|e| StoreError::InvalidEvent(e.to_string()))?;
    Ok(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_order_by_epoch_then_transaction_then_position() {
        let a = Cursor { epoch: 0, txid: 900, position: 5 };
        let b = Cursor { epoch: 0, txid: 901, position: 2 };
        let c = Cursor { epoch: 1, txid: 3, position: 7 };
        assert!(a < b && b < c);
        assert_eq!(c.to_string().parse::<Cursor>().ok(), Some(c));
        assert!("1.2".parse::<Cursor>().is_err());
    }

    #[test]
    fn topic_defaults_to_the_stream_category() -> Result<()> {
        let stream =
            StreamId::new("order-17").map_err(|e| StoreError::InvalidEvent(e.to_string()))?;
        let plain = CloudEvent::builder("t", "/s")
            .build()
            .map_err(|e| StoreError::InvalidEvent(e.to_string()))?;
        assert_eq!(topic_of(&stream, &plain)?, "order");
        let routed = CloudEvent::builder("t", "/s")
            .extension(ext::TOPIC, "billing")
            .build()
            .map_err(|e| StoreError::InvalidEvent(e.to_string()))?;
        assert_eq!(topic_of(&stream, &routed)?, "billing");
        Ok(())
    }
}
