//! Reading: rows to envelopes, and the read queries.

use chrono::{TimeZone, Utc};
use keel_core::{CloudEvent, StreamId, StreamVersion};
use keel_store::stored::StoredEvent;
use keel_store::{Cursor, Direction, LogEvent, LogFilter, LogQuery, Page, Result, StoreError};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

const COLUMNS: &str = "position, stream_id, stream_version, event_id, topic, event_type, source,
    time_micros, datacontenttype, dataschema, data, extensions";

fn decode_at(row: &SqliteRow, at: usize) -> Result<LogEvent> {
    let position: i64 = row.try_get(at)?;
    let micros: i64 = row.try_get(at + 7)?;
    let time = Utc.timestamp_micros(micros).single().ok_or_else(|| StoreError::Decode {
        position,
        source: keel_core::DecodeError::NotACloudEvent(format!(
            "stored time {micros} is out of range"
        )),
    })?;
    let stored = StoredEvent {
        position,
        stream_id: row.try_get(at + 1)?,
        stream_version: row.try_get(at + 2)?,
        event_id: row.try_get(at + 3)?,
        topic: row.try_get(at + 4)?,
        event_type: row.try_get(at + 5)?,
        source: row.try_get(at + 6)?,
        time,
        datacontenttype: row.try_get(at + 8)?,
        dataschema: row.try_get(at + 9)?,
        data: row.try_get(at + 10)?,
        extensions: row.try_get(at + 11)?,
    };
    let topic = stored.topic.clone();
    Ok(LogEvent {
        cursor: Cursor { epoch: 0, txid: 0, position },
        topic,
        event: stored.into_cloud_event()?,
    })
}

fn limit(limit: usize) -> i64 {
    i64::try_from(limit.max(1)).unwrap_or(i64::MAX)
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `?` placeholders for the filters of `types` (SQLite has no arrays).
fn type_placeholders(types: &[String]) -> String {
    if types.is_empty() {
        String::new()
    } else {
        format!(" AND event_type IN ({})", vec!["?"; types.len()].join(", "))
    }
}

pub(crate) async fn stream(
    pool: &SqlitePool,
    stream: &StreamId,
    from: StreamVersion,
    direction: Direction,
    count: usize,
) -> Result<Vec<CloudEvent>> {
    let sql = match direction {
        Direction::Forward => format!(
            "SELECT {COLUMNS} FROM keel_events WHERE stream_id = ? AND stream_version >= ?
             ORDER BY stream_version ASC LIMIT ?"
        ),
        Direction::Backward => format!(
            "SELECT {COLUMNS} FROM keel_events WHERE stream_id = ? AND stream_version <= ?
             ORDER BY stream_version DESC LIMIT ?"
        ),
    };
    let rows = sqlx::query(&sql)
        .bind(stream.as_str())
        .bind(signed(from.0))
        .bind(limit(count))
        .fetch_all(pool)
        .await?;
    rows.iter().map(|row| decode_at(row, 0).map(|e| e.event)).collect()
}

pub(crate) async fn all(pool: &SqlitePool, query: &LogQuery) -> Result<Vec<LogEvent>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM keel_events
         WHERE position > ? AND (? IS NULL OR time_micros >= ?)
           AND (? IS NULL OR stream_id = ?) AND (? IS NULL OR topic = ?){}
         ORDER BY position LIMIT ?",
        type_placeholders(&query.types)
    );
    let since = query.since.map(|t| t.timestamp_micros());
    let stream = query.stream.as_ref().map(StreamId::as_str);
    let mut q = sqlx::query(&sql)
        .bind(signed(query.from.0))
        .bind(since)
        .bind(since)
        .bind(stream)
        .bind(stream)
        .bind(query.topic.as_deref())
        .bind(query.topic.as_deref());
    for ty in &query.types {
        q = q.bind(ty);
    }
    let rows = q.bind(limit(query.limit)).fetch_all(pool).await?;
    rows.iter().map(|row| decode_at(row, 0)).collect()
}

/// Reads after `cursor` in position order. Writers commit one at a time, so every
/// position up to the highest one visible is final: the page's `next` moves there
/// (read in the same statement) even when the filter matched nothing.
pub(crate) async fn after(
    pool: &SqlitePool,
    cursor: Cursor,
    filter: &LogFilter,
    count: usize,
) -> Result<Page> {
    let sql = format!(
        "WITH h AS (SELECT COALESCE(max(position), 0) AS head FROM keel_events)
         SELECT h.head, e.* FROM h LEFT JOIN (
             SELECT {COLUMNS} FROM keel_events
             WHERE position > ? AND position > ?
               AND (? IS NULL OR topic = ?) AND (? IS NULL OR stream_id = ?){}
             ORDER BY position LIMIT ?
         ) e ON 1 = 1",
        type_placeholders(&filter.types)
    );
    let stream = filter.stream.as_ref().map(StreamId::as_str);
    let mut q = sqlx::query(&sql)
        .bind(cursor.position)
        .bind(filter.after_position.map_or(0, |p| signed(p.0)))
        .bind(filter.topic.as_deref())
        .bind(filter.topic.as_deref())
        .bind(stream)
        .bind(stream);
    for ty in &filter.types {
        q = q.bind(ty);
    }
    let rows = q.bind(limit(count)).fetch_all(pool).await?;
    let mut head = 0i64;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        head = row.try_get(0)?;
        if row.try_get::<Option<i64>, _>(1)?.is_none() {
            continue;
        }
        events.push(decode_at(row, 1)?);
    }
    let mut next = events.last().map_or(cursor, |e| e.cursor);
    if events.len() < count.max(1) {
        next = next.max(Cursor { epoch: 0, txid: 0, position: head });
    }
    Ok(Page { events, next })
}

/// The event with this id (its unique index).
pub(crate) async fn by_id(pool: &SqlitePool, id: &str) -> Result<Option<LogEvent>> {
    let sql = format!("SELECT {COLUMNS} FROM keel_events WHERE event_id = ?");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    row.map(|row| decode_at(&row, 0)).transpose()
}

/// Up to `count` events whose string extension `name` (`causationid` or
/// `correlationid`, each with an index on its expression) is `value`.
pub(crate) async fn by_extension(
    pool: &SqlitePool,
    name: &str,
    value: &str,
    count: usize,
) -> Result<Vec<LogEvent>> {
    // The expression as the index has it, so that the index is used.
    let expression = format!("json_extract(extensions, '$.{name}')");
    let sql = format!(
        "SELECT {COLUMNS} FROM keel_events
         WHERE {expression} = ? AND {expression} IS NOT NULL ORDER BY position LIMIT ?"
    );
    let rows = sqlx::query(&sql).bind(value).bind(limit(count)).fetch_all(pool).await?;
    rows.iter().map(|row| decode_at(row, 0)).collect()
}

/// The stream categories with their stream and event counts.
pub(crate) async fn categories(pool: &SqlitePool) -> Result<Vec<keel_store::Category>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT CASE WHEN instr(stream_id, '-') > 0
                     THEN substr(stream_id, 1, instr(stream_id, '-') - 1) ELSE stream_id END AS c,
                count(DISTINCT stream_id), count(*)
         FROM keel_events GROUP BY c ORDER BY c",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, streams, events)| keel_store::Category {
            name,
            streams: u64::try_from(streams).unwrap_or(0),
            events: u64::try_from(events).unwrap_or(0),
        })
        .collect())
}

/// Up to `count` streams of `category` (all without one), by id.
pub(crate) async fn streams(
    pool: &SqlitePool,
    category: Option<&str>,
    count: usize,
) -> Result<Vec<keel_store::StreamSummary>> {
    let pattern = category.map(|c| format!("{}-%", like_escape(c)));
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT stream_id, max(stream_version), max(position) FROM keel_events
         WHERE ? IS NULL OR stream_id = ? OR stream_id LIKE ? ESCAPE '\\'
         GROUP BY stream_id ORDER BY stream_id LIMIT ?",
    )
    .bind(category)
    .bind(category)
    .bind(pattern)
    .bind(limit(count))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(stream, version, last_position)| keel_store::StreamSummary {
            stream,
            version: u64::try_from(version).unwrap_or(0),
            last_position,
        })
        .collect())
}

/// `text` matched literally by LIKE (with `ESCAPE '\'`).
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}
