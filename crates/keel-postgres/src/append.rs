//! Appending: one statement that checks the stream's head and inserts the events.
//!
//! The head is the stream's last event (found through the `(stream_id,
//! stream_version)` unique index). The statement inserts only if the expected version
//! holds and the head was not written by a younger transaction (which would make this
//! append sort before it in subscription order); the unique index makes concurrent
//! writers of the same version fail instead of both committing. When nothing is
//! inserted, a second query in the same transaction tells a version conflict from a
//! write-order refusal.

use std::sync::OnceLock;

use keel_core::{CloudEvent, ExpectedVersion, Position, StreamId, StreamVersion};
use keel_store::stored::{NewEvent, new_events};
use keel_store::{AppendResult, Result, StoreError};
use sqlx::{PgConnection, PgPool};

/// How many times a standalone append retries a write-order refusal or a concurrent
/// append of an open-ended expectation (each retry is a new transaction).
const RETRIES: usize = 20;

/// The expectation on `base` (the stream's current version); `$12` is the exact version
/// (bound as 0 and unused otherwise).
fn expectation(expected: ExpectedVersion) -> &'static str {
    match expected {
        ExpectedVersion::Any => "true",
        ExpectedVersion::NoStream | ExpectedVersion::Exact(StreamVersion::NONE) => "head.base = 0",
        ExpectedVersion::Exact(_) => "head.base = $12",
        ExpectedVersion::StreamExists => "head.base > 0",
    }
}

/// The statement that starts a stream with one event: version 1, unless the stream
/// exists. The unique `(stream_id, stream_version)` index is the whole check (a
/// stream's versions start at 1 and have no gaps, so it exists exactly when version 1
/// does), and there is no earlier event whose writer could be younger, so no head
/// lookup is needed. `ON CONFLICT DO NOTHING` turns "exists" into an empty result
/// instead of an error, so the caller's transaction survives a version conflict; a
/// concurrent creator is waited for, as the index does. The one row cannot be half
/// inserted, which is why batches do not take this path.
const START_STREAM: &str = "
INSERT INTO keel_events (epoch, transaction_id, stream_id, stream_version, event_id, topic,
                         event_type, source, time, datacontenttype, dataschema, data, extensions)
SELECT $13::bigint, pg_current_xact_id()::text::bigint, $1, 1, $3::text, $4::text, $5::text,
       $6::text, $7::timestamptz, $8::text, $9::text, $10::bytea, $11::json
WHERE $2 > 0 AND $12::bigint >= 0
ON CONFLICT (stream_id, stream_version) DO NOTHING
RETURNING position, stream_version";

/// The statement for a batch (`unnest` of one array per column) or, for one event,
/// with scalar parameters: the same shape, minus building and sorting a set for a
/// single row.
fn statement(expected: ExpectedVersion, single: bool) -> String {
    if single
        && matches!(
            expected,
            ExpectedVersion::NoStream | ExpectedVersion::Exact(StreamVersion::NONE)
        )
    {
        return START_STREAM.to_owned();
    }
    let values = if single {
        "$3::text, $4::text, $5::text, $6::text, $7::timestamptz, $8::text, $9::text, $10::bytea,
         $11::json FROM meta, head"
    } else {
        "e.id, e.topic, e.ty, e.source, e.time, e.ct, e.schema, e.data, e.ext::json
         FROM meta, head,
              unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[],
                     $9::text[], $10::bytea[], $11::text[])
              WITH ORDINALITY AS e(id, topic, ty, source, time, ct, schema, data, ext, ord)"
    };
    let (ord, order) = if single { ("1", "") } else { ("e.ord", "ORDER BY e.ord") };
    format!(
        "WITH meta AS MATERIALIZED (
             SELECT $13::bigint AS epoch, pg_current_xact_id()::text::bigint AS xid),
         last AS MATERIALIZED (
             SELECT stream_version, epoch, transaction_id FROM keel_events
             WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1),
         head AS (
             SELECT COALESCE((SELECT stream_version FROM last), 0) AS base,
                    EXISTS (SELECT 1 FROM last, meta
                            WHERE (last.epoch, last.transaction_id) > (meta.epoch, meta.xid)) AS younger)
         INSERT INTO keel_events (epoch, transaction_id, stream_id, stream_version, event_id, topic,
                                  event_type, source, time, datacontenttype, dataschema, data, extensions)
         SELECT meta.epoch, meta.xid, $1, head.base + {ord}, {values}
         WHERE NOT head.younger AND {} AND $2 > 0 AND $12::bigint >= 0
         {order}
         RETURNING position, stream_version",
        expectation(expected)
    )
}

/// Every statement, built once: [`ExpectedVersion`]'s four shapes, batch and single.
fn cached_statement(expected: ExpectedVersion, single: bool) -> &'static str {
    static STATEMENTS: OnceLock<Vec<String>> = OnceLock::new();
    let shapes = [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(StreamVersion(1)),
        ExpectedVersion::StreamExists,
    ];
    let statements = STATEMENTS.get_or_init(|| {
        shapes
            .iter()
            .flat_map(|shape| [statement(*shape, false), statement(*shape, true)])
            .collect()
    });
    let shape = match expected {
        ExpectedVersion::Any => 0,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(StreamVersion::NONE) => 1,
        ExpectedVersion::Exact(_) => 2,
        ExpectedVersion::StreamExists => 3,
    };
    &statements[shape * 2 + usize::from(single)]
}

/// The stream's head: its version and whether a younger transaction wrote it.
const HEAD: &str = "
SELECT stream_version,
       (epoch, transaction_id) > (keel_epoch(), pg_current_xact_id()::text::bigint)
FROM keel_events WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1";

enum Attempt {
    Done(AppendResult),
    /// Nothing was inserted: the expectation or the write order did not hold.
    Refused,
    /// Another transaction inserted the same version first.
    Raced,
}

async fn attempt(
    conn: &mut PgConnection,
    epoch: i64,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[CloudEvent],
) -> Result<Attempt> {
    let rows = new_events(stream, events)?;
    let count = i64::try_from(rows.len())
        .map_err(|_| StoreError::InvalidEvent("too many events".into()))?;
    let exact = match expected {
        ExpectedVersion::Exact(v) => i64::try_from(v.0).unwrap_or(i64::MAX),
        _ => 0,
    };
    let query = match <[NewEvent; 1]>::try_from(rows) {
        Ok([row]) => sqlx::query_as::<_, (i64, i64)>(cached_statement(expected, true))
            .bind(stream.as_str())
            .bind(count)
            .bind(row.event_id)
            .bind(row.topic)
            .bind(row.event_type)
            .bind(row.source)
            .bind(row.time)
            .bind(row.datacontenttype)
            .bind(row.dataschema)
            .bind(row.data)
            .bind(row.extensions),
        Err(rows) => {
            let mut ids = Vec::with_capacity(rows.len());
            let mut topics = Vec::with_capacity(rows.len());
            let mut types = Vec::with_capacity(rows.len());
            let mut sources = Vec::with_capacity(rows.len());
            let mut times = Vec::with_capacity(rows.len());
            let mut content_types = Vec::with_capacity(rows.len());
            let mut schemas = Vec::with_capacity(rows.len());
            let mut datas = Vec::with_capacity(rows.len());
            let mut extensions = Vec::with_capacity(rows.len());
            for row in rows {
                ids.push(row.event_id);
                topics.push(row.topic);
                types.push(row.event_type);
                sources.push(row.source);
                times.push(row.time);
                content_types.push(row.datacontenttype);
                schemas.push(row.dataschema);
                datas.push(row.data);
                extensions.push(row.extensions);
            }
            sqlx::query_as::<_, (i64, i64)>(cached_statement(expected, false))
                .bind(stream.as_str())
                .bind(count)
                .bind(ids)
                .bind(topics)
                .bind(types)
                .bind(sources)
                .bind(times)
                .bind(content_types)
                .bind(schemas)
                .bind(datas)
                .bind(extensions)
        }
    };
    let query = query.bind(exact).bind(epoch);
    let inserted = match query.fetch_all(&mut *conn).await {
        Ok(inserted) => inserted,
        Err(sqlx::Error::Database(db))
            if db.is_unique_violation()
                && db.constraint() == Some("keel_events_stream_version_key") =>
        {
            return Ok(Attempt::Raced);
        }
        Err(sqlx::Error::Database(db))
            if db.is_unique_violation() && db.constraint() == Some("keel_events_event_id_key") =>
        {
            return Err(StoreError::DuplicateEvent {
                id: events.first().map(|e| e.id().to_owned()).unwrap_or_default(),
            });
        }
        Err(error) => return Err(error.into()),
    };
    if inserted.is_empty() {
        return Ok(Attempt::Refused);
    }
    let version = inserted.last().map_or(0, |(_, v)| *v);
    Ok(Attempt::Done(AppendResult {
        version: StreamVersion(u64::try_from(version).unwrap_or(0)),
        positions: inserted.iter().map(|(p, _)| Position(u64::try_from(*p).unwrap_or(0))).collect(),
    }))
}

/// The stream's version and whether its last writer is younger than this transaction.
async fn head(conn: &mut PgConnection, stream: &StreamId) -> Result<(StreamVersion, bool)> {
    let head: Option<(i64, bool)> =
        sqlx::query_as(HEAD).bind(stream.as_str()).fetch_optional(&mut *conn).await?;
    let (version, younger) = head.unwrap_or((0, false));
    Ok((StreamVersion(u64::try_from(version).unwrap_or(0)), younger))
}

/// Appends in the caller's transaction. A refusal is a [`StoreError::VersionConflict`];
/// a younger last writer ([`StoreError::WriteOrder`]) or a concurrent writer of the
/// same version ([`StoreError::ConcurrentAppend`], which aborts the transaction) are
/// retryable: roll back and run the whole transaction again.
pub async fn in_transaction(
    conn: &mut PgConnection,
    epoch: i64,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[CloudEvent],
) -> Result<AppendResult> {
    match attempt(conn, epoch, stream, expected, events).await? {
        Attempt::Done(result) => Ok(result),
        Attempt::Raced => Err(StoreError::ConcurrentAppend { stream: stream.clone() }),
        Attempt::Refused => {
            let (actual, younger) = head(conn, stream).await?;
            if younger && expected.accepts(actual) {
                Err(StoreError::WriteOrder { stream: stream.clone() })
            } else {
                Err(StoreError::VersionConflict { stream: stream.clone(), expected, actual })
            }
        }
    }
}

/// Appends in a transaction of its own (one statement, autocommit), retrying
/// write-order refusals and races that the expectation still allows.
pub async fn standalone(
    pool: &PgPool,
    epoch: i64,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[CloudEvent],
) -> Result<AppendResult> {
    let mut conn = pool.acquire().await?;
    for _ in 0..RETRIES {
        match attempt(&mut conn, epoch, stream, expected, events).await? {
            Attempt::Done(result) => return Ok(result),
            Attempt::Refused | Attempt::Raced => {
                let (actual, _) = head(&mut conn, stream).await?;
                if !expected.accepts(actual) {
                    return Err(StoreError::VersionConflict {
                        stream: stream.clone(),
                        expected,
                        actual,
                    });
                }
                // The expectation still holds: a younger or concurrent writer got in
                // first. Try again in a new transaction.
                tracing::debug!(%stream, "append raced or refused for write order; retrying");
            }
        }
    }
    Err(StoreError::WriteOrder { stream: stream.clone() })
}
