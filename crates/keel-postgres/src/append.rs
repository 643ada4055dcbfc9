//! Appending: one statement that moves the stream's head and inserts the events.
//!
//! The statement updates (or creates) the stream's row in `keel_streams` only if the
//! expected version holds and the stream's last writer is not a younger transaction,
//! then inserts the events numbered from the old version. When the head does not move
//! no event is inserted, and a second query in the same transaction tells a version
//! conflict from a write-order refusal.

use keel_core::{CloudEvent, ExpectedVersion, Position, StreamId, StreamVersion};
use keel_store::stored::new_events;
use keel_store::{AppendResult, Result, StoreError};
use sqlx::{PgConnection, PgPool};

/// How many times a standalone append retries a write-order refusal (each retry is a
/// new transaction with a newer id, so it succeeds unless writers keep overtaking).
const WRITE_ORDER_RETRIES: usize = 20;

const META: &str = "meta AS MATERIALIZED (
    SELECT keel_epoch() AS epoch, pg_current_xact_id()::text::bigint AS xid)";

/// The head-moving CTE for an expectation; `$1` stream, `$2` event count, `$12` version.
fn head(expected: ExpectedVersion) -> &'static str {
    match expected {
        ExpectedVersion::Any => {
            "head AS (
                INSERT INTO keel_streams AS s (stream_id, version, last_epoch, last_xid)
                SELECT $1, $2, meta.epoch, meta.xid FROM meta
                ON CONFLICT (stream_id) DO UPDATE
                SET version = s.version + $2, last_epoch = excluded.last_epoch, last_xid = excluded.last_xid
                WHERE (s.last_epoch, s.last_xid) <= (excluded.last_epoch, excluded.last_xid)
                RETURNING s.version - $2 AS base)"
        }
        ExpectedVersion::NoStream | ExpectedVersion::Exact(StreamVersion::NONE) => {
            "head AS (
                INSERT INTO keel_streams AS s (stream_id, version, last_epoch, last_xid)
                SELECT $1, $2, meta.epoch, meta.xid FROM meta
                ON CONFLICT (stream_id) DO NOTHING
                RETURNING s.version - $2 AS base)"
        }
        ExpectedVersion::Exact(_) => {
            "head AS (
                UPDATE keel_streams AS s
                SET version = s.version + $2, last_epoch = meta.epoch, last_xid = meta.xid
                FROM meta
                WHERE s.stream_id = $1 AND s.version = $12
                  AND (s.last_epoch, s.last_xid) <= (meta.epoch, meta.xid)
                RETURNING s.version - $2 AS base)"
        }
        ExpectedVersion::StreamExists => {
            "head AS (
                UPDATE keel_streams AS s
                SET version = s.version + $2, last_epoch = meta.epoch, last_xid = meta.xid
                FROM meta
                WHERE s.stream_id = $1
                  AND (s.last_epoch, s.last_xid) <= (meta.epoch, meta.xid)
                RETURNING s.version - $2 AS base)"
        }
    }
}

const INSERT: &str = "
INSERT INTO keel_events (epoch, transaction_id, stream_id, stream_version, event_id, topic,
                         event_type, source, time, datacontenttype, dataschema, data, extensions)
SELECT meta.epoch, meta.xid, $1, head.base + e.ord, e.id, e.topic, e.ty, e.source, e.time,
       e.ct, e.schema, e.data, e.ext::json
FROM meta, head,
     unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[],
            $9::text[], $10::bytea[], $11::text[])
     WITH ORDINALITY AS e(id, topic, ty, source, time, ct, schema, data, ext, ord)
ORDER BY e.ord
RETURNING position, stream_version";

fn statement(expected: ExpectedVersion) -> String {
    format!("WITH {META}, {}\n{INSERT}", head(expected))
}

/// Why the head did not move: the stream's version and whether its last writer is
/// younger than this transaction.
const EXPLAIN: &str = "
SELECT s.version,
       (s.last_epoch, s.last_xid) > (keel_epoch(), pg_current_xact_id()::text::bigint)
FROM keel_streams s WHERE s.stream_id = $1";

enum Attempt {
    Done(AppendResult),
    /// The head did not move.
    Refused,
}

async fn attempt(
    conn: &mut PgConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[CloudEvent],
) -> Result<Attempt> {
    let rows = new_events(stream, events)?;
    let count = i64::try_from(rows.len())
        .map_err(|_| StoreError::InvalidEvent("too many events".into()))?;
    let expected_version = match expected {
        ExpectedVersion::Exact(v) => i64::try_from(v.0).unwrap_or(i64::MAX),
        _ => 0,
    };
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
    let sql = statement(expected);
    let mut query = sqlx::query_as::<_, (i64, i64)>(&sql)
        .bind(stream.as_str())
        .bind(count)
        .bind(&ids)
        .bind(&topics)
        .bind(&types)
        .bind(&sources)
        .bind(&times)
        .bind(&content_types)
        .bind(&schemas)
        .bind(&datas)
        .bind(&extensions);
    // `$12` only appears in the exact-version statement.
    if matches!(expected, ExpectedVersion::Exact(v) if v != StreamVersion::NONE) {
        query = query.bind(expected_version);
    }
    let inserted = query.fetch_all(&mut *conn).await.map_err(|e| classify(e, &ids))?;
    if inserted.is_empty() {
        return Ok(Attempt::Refused);
    }
    let version = inserted.last().map_or(0, |(_, v)| *v);
    Ok(Attempt::Done(AppendResult {
        version: StreamVersion(u64::try_from(version).unwrap_or(0)),
        positions: inserted.iter().map(|(p, _)| Position(u64::try_from(*p).unwrap_or(0))).collect(),
    }))
}

/// Unique violations become typed errors.
fn classify(error: sqlx::Error, ids: &[String]) -> StoreError {
    if let sqlx::Error::Database(db) = &error
        && db.is_unique_violation()
        && db.constraint() == Some("keel_events_event_id_key")
    {
        let id = ids.first().cloned().unwrap_or_default();
        return StoreError::DuplicateEvent { id };
    }
    StoreError::Database(error)
}

/// Appends in the caller's transaction. A refusal is a [`StoreError::VersionConflict`]
/// or, when the stream's last writer is younger, a retryable
/// [`StoreError::WriteOrder`]: roll back and run the whole transaction again.
pub async fn in_transaction(
    conn: &mut PgConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[CloudEvent],
) -> Result<AppendResult> {
    match attempt(conn, stream, expected, events).await? {
        Attempt::Done(result) => Ok(result),
        Attempt::Refused => {
            let head: Option<(i64, bool)> =
                sqlx::query_as(EXPLAIN).bind(stream.as_str()).fetch_optional(&mut *conn).await?;
            let (version, younger) = head.unwrap_or((0, false));
            let actual = StreamVersion(u64::try_from(version).unwrap_or(0));
            if younger && expected.accepts(actual) {
                Err(StoreError::WriteOrder { stream: stream.clone() })
            } else {
                Err(StoreError::VersionConflict { stream: stream.clone(), expected, actual })
            }
        }
    }
}

/// Appends in a transaction of its own (one statement, autocommit), retrying
/// write-order refusals.
pub async fn standalone(
    pool: &PgPool,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[CloudEvent],
) -> Result<AppendResult> {
    let mut conn = pool.acquire().await?;
    for _ in 0..WRITE_ORDER_RETRIES {
        match attempt(&mut conn, stream, expected, events).await? {
            Attempt::Done(result) => return Ok(result),
            Attempt::Refused => {
                let version: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM keel_streams WHERE stream_id = $1")
                        .bind(stream.as_str())
                        .fetch_optional(&mut *conn)
                        .await?;
                let actual =
                    StreamVersion(version.and_then(|v| u64::try_from(v).ok()).unwrap_or(0));
                if !expected.accepts(actual) {
                    return Err(StoreError::VersionConflict {
                        stream: stream.clone(),
                        expected,
                        actual,
                    });
                }
                // The expectation holds, so a younger writer got in first: try again
                // with a newer transaction id.
                tracing::debug!(%stream, "append refused for write order; retrying");
            }
        }
    }
    Err(StoreError::WriteOrder { stream: stream.clone() })
}
