//! A stream's events, read page by page through the pool or inside a transaction,
//! decoded and folded into an aggregate's state.
//!
//! The read is written here (one query text for both dialects, rows decoded into the
//! store's own [`StoredEvent`]) because `keel_sql::Tx` has no stream read of its own,
//! and a command executed in the caller's transaction must read there: it sees the
//! transaction's own writes, and an in-memory SQLite database has one connection, which
//! the transaction holds.

use chrono::{DateTime, Utc};
use keel_core::{CloudEvent, StreamId, StreamVersion};
use keel_sql::{Arg, Db, Row, Tx, args};
use keel_store::stored::StoredEvent;

use crate::aggregate::Aggregate;
use crate::error::Error;

/// Events read per query.
const PAGE: i64 = 1000;

/// The columns of the log both dialects decode alike: `time` is a timestamp on
/// PostgreSQL and RFC 3339 text on SQLite (sqlx decodes either), `extensions` JSON on
/// PostgreSQL and text on SQLite.
const READ: &str = "SELECT position, stream_id, stream_version, event_id, topic, event_type,
        source, time, datacontenttype, dataschema, data, CAST(extensions AS TEXT) AS extensions
    FROM keel_events WHERE stream_id = $1 AND stream_version > $2
    ORDER BY stream_version LIMIT $3";

#[derive(sqlx::FromRow)]
struct EventRow {
    position: i64,
    stream_id: String,
    stream_version: i64,
    event_id: String,
    topic: String,
    event_type: String,
    source: String,
    time: DateTime<Utc>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    data: Option<Vec<u8>>,
    extensions: String,
}

impl EventRow {
    fn into_event(self) -> keel_sql::Result<CloudEvent> {
        let stored = StoredEvent {
            position: self.position,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_id: self.event_id,
            topic: self.topic,
            event_type: self.event_type,
            source: self.source,
            time: self.time,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            data: self.data,
            extensions: self.extensions,
        };
        Ok(stored.into_cloud_event()?)
    }
}

/// Where reads go: the pool (each query on any connection) or an open transaction.
pub(crate) enum Reader<'a> {
    Db(&'a Db),
    Tx(&'a mut Tx),
}

impl Reader<'_> {
    pub(crate) async fn fetch_all<T: Row>(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
    ) -> keel_sql::Result<Vec<T>> {
        match self {
            Self::Db(db) => db.fetch_all(sql, args).await,
            Self::Tx(tx) => tx.fetch_all(sql, args).await,
        }
    }

    pub(crate) async fn fetch_optional<T: Row>(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
    ) -> keel_sql::Result<Option<T>> {
        match self {
            Self::Db(db) => db.fetch_optional(sql, args).await,
            Self::Tx(tx) => tx.fetch_optional(sql, args).await,
        }
    }
}

/// Folds the events of `stream` after version `from` into `state`; returns the
/// stream's version (`from` when there are none).
pub(crate) async fn fold_stream<A: Aggregate>(
    reader: &mut Reader<'_>,
    stream: &StreamId,
    state: &mut A,
    from: StreamVersion,
) -> Result<StreamVersion, Error<A::Error>> {
    let mut version = from;
    loop {
        let after = i64::try_from(version.0).unwrap_or(i64::MAX);
        let rows: Vec<EventRow> =
            reader.fetch_all(READ, args![stream.as_str(), after, PAGE]).await?;
        let done = i64::try_from(rows.len()).unwrap_or(i64::MAX) < PAGE;
        for row in rows {
            let at = StreamVersion(u64::try_from(row.stream_version).unwrap_or(0));
            let event = row.into_event()?;
            apply_one(state, stream, at, &event)?;
            version = at;
        }
        if done {
            return Ok(version);
        }
    }
}

/// Decodes `event` (upcasting it as its type declares) and folds it into `state`.
fn apply_one<A: Aggregate>(
    state: &mut A,
    stream: &StreamId,
    version: StreamVersion,
    event: &CloudEvent,
) -> Result<(), Error<A::Error>> {
    let decoded = event.decode::<A::Event>().map_err(|source| Error::Decode {
        stream: stream.clone(),
        version,
        event_id: event.id().to_owned(),
        source,
    })?;
    state.apply(&decoded);
    Ok(())
}

/// Folds envelopes already in hand (a stream read some other way, a test's events)
/// into a fresh state; returns it with the version of the last event (taken from each
/// envelope's `streamversion`, or counted when an envelope has none).
pub fn fold<'a, A: Aggregate>(
    events: impl IntoIterator<Item = &'a CloudEvent>,
) -> Result<(A, StreamVersion), Error<A::Error>> {
    let mut state = A::default();
    let mut version = StreamVersion::NONE;
    for event in events {
        version = event.stream_version().unwrap_or(version.next());
        let stream =
            event.subject().map_or_else(|| A::stream_id("?"), StreamId::new).map_err(|source| {
                Error::InvalidId { id: event.subject().unwrap_or("").into(), source }
            })?;
        apply_one(&mut state, &stream, version, event)?;
    }
    Ok((state, version))
}
