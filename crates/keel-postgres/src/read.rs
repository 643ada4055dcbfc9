//! Reading: rows to envelopes, and the read queries.

use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use keel_core::{CloudEvent, Position, StreamId, StreamVersion};
use keel_store::stored::StoredEvent;
use keel_store::{Cursor, Direction, LogEvent, LogFilter, LogQuery, Page, Result};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

/// The columns every read selects, in [`decode`]'s order.
const COLUMNS: &str = "position, epoch, transaction_id, stream_id, stream_version, event_id, topic,
    event_type, source, time, datacontenttype, dataschema, data, extensions::text";

fn decode(row: &PgRow) -> Result<LogEvent> {
    decode_at(row, 0)
}

/// Decodes the [`COLUMNS`] starting at column `at`.
fn decode_at(row: &PgRow, at: usize) -> Result<LogEvent> {
    let stored = StoredEvent {
        position: row.try_get(at)?,
        stream_id: row.try_get(at + 3)?,
        stream_version: row.try_get(at + 4)?,
        event_id: row.try_get(at + 5)?,
        topic: row.try_get(at + 6)?,
        event_type: row.try_get(at + 7)?,
        source: row.try_get(at + 8)?,
        time: row.try_get::<DateTime<Utc>, _>(at + 9)?,
        datacontenttype: row.try_get(at + 10)?,
        dataschema: row.try_get(at + 11)?,
        data: row.try_get(at + 12)?,
        extensions: row.try_get(at + 13)?,
    };
    let cursor = Cursor {
        epoch: row.try_get(at + 1)?,
        txid: row.try_get(at + 2)?,
        position: stored.position,
    };
    let topic = stored.topic.clone();
    Ok(LogEvent { cursor, topic, event: stored.into_cloud_event()? })
}

fn limit(limit: usize) -> i64 {
    i64::try_from(limit.max(1)).unwrap_or(i64::MAX)
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) async fn stream(
    pool: &PgPool,
    stream: &StreamId,
    from: StreamVersion,
    direction: Direction,
    count: usize,
) -> Result<Vec<CloudEvent>> {
    let sql = match direction {
        Direction::Forward => format!(
            "SELECT {COLUMNS} FROM keel_events WHERE stream_id = $1 AND stream_version >= $2
             ORDER BY stream_version ASC LIMIT $3"
        ),
        Direction::Backward => format!(
            "SELECT {COLUMNS} FROM keel_events WHERE stream_id = $1 AND stream_version <= $2
             ORDER BY stream_version DESC LIMIT $3"
        ),
    };
    let rows = sqlx::query(&sql)
        .bind(stream.as_str())
        .bind(signed(from.0))
        .bind(limit(count))
        .fetch_all(pool)
        .await?;
    rows.iter().map(|row| decode(row).map(|e| e.event)).collect()
}

/// The global log in position order after `$1`, filtered; `$6` limits it (NULL: no limit).
fn all_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM keel_events
         WHERE position > $1
           AND ($2::timestamptz IS NULL OR time >= $2)
           AND (cardinality($3::text[]) = 0 OR event_type = ANY($3))
           AND ($4::text IS NULL OR stream_id = $4)
           AND ($5::text IS NULL OR topic = $5)
         ORDER BY position LIMIT $6"
    )
}

fn all_query<'q>(
    sql: &'q str,
    query: &'q LogQuery,
    limit: Option<i64>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(signed(query.from.0))
        .bind(query.since)
        .bind(&query.types)
        .bind(query.stream.as_ref().map(StreamId::as_str))
        .bind(query.topic.as_deref())
        .bind(limit)
}

pub(crate) async fn all(pool: &PgPool, query: &LogQuery) -> Result<Vec<LogEvent>> {
    let sql = all_sql();
    let rows = all_query(&sql, query, Some(limit(query.limit))).fetch_all(pool).await?;
    rows.iter().map(decode).collect()
}

/// How many batches each stage of a replay may run ahead of the next.
const REPLAY_AHEAD: usize = 2;

/// A replay as one streaming query instead of pages, in a pipeline of two tasks: one
/// receives rows from the server while the other decodes the previous batch, and the
/// caller handles the batch before that. On a small machine the server, the
/// receiving and the decoding then each keep a core busy instead of taking turns.
///
/// The replay holds one pooled connection (and its query's snapshot) until it ends. A
/// replay dropped half-way closes that connection instead of returning it to the
/// pool, which would otherwise first read the rest of the result.
pub(crate) fn replay(pool: PgPool, query: LogQuery) -> BoxStream<'static, Result<Vec<LogEvent>>> {
    let batch = query.limit.clamp(1, 10_000);
    let (rows_tx, mut rows_rx) = mpsc::channel::<Result<Vec<PgRow>>>(REPLAY_AHEAD);
    let (events_tx, mut events_rx) = mpsc::channel::<Result<Vec<LogEvent>>>(REPLAY_AHEAD);
    tokio::spawn(async move {
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(error) => {
                let _ = rows_tx.send(Err(error.into())).await;
                return;
            }
        };
        let sql = all_sql();
        let mut rows = all_query(&sql, &query, None).fetch(&mut *conn);
        let mut buffer = Vec::with_capacity(batch);
        let mut abandoned = false;
        while let Some(row) = rows.next().await {
            match row {
                Ok(row) => buffer.push(row),
                Err(error) => {
                    let _ = rows_tx.send(Err(error.into())).await;
                    return;
                }
            }
            if buffer.len() == batch {
                let full = std::mem::replace(&mut buffer, Vec::with_capacity(batch));
                if rows_tx.send(Ok(full)).await.is_err() {
                    abandoned = true; // the replay was dropped
                    break;
                }
            }
        }
        drop(rows);
        if abandoned {
            conn.close_on_drop();
        } else if !buffer.is_empty() {
            let _ = rows_tx.send(Ok(buffer)).await;
        }
    });
    tokio::spawn(async move {
        while let Some(rows) = rows_rx.recv().await {
            let events = rows.and_then(|rows| rows.iter().map(decode).collect::<Result<Vec<_>>>());
            let failed = events.is_err();
            if events_tx.send(events).await.is_err() || failed {
                return;
            }
        }
    });
    futures::stream::poll_fn(move |cx| events_rx.poll_recv(cx)).boxed()
}

/// The most events a page's vector is made room for at its first event.
const PAGE_CAPACITY: usize = 8_192;

/// Reads after `cursor` in subscription order, only rows whose writer's transaction is
/// below the snapshot's `xmin` (or from an earlier epoch): every transaction that could
/// still commit rows sorting before them has ended. The horizon is read in the same
/// statement (same snapshot) as the rows.
pub(crate) async fn after(
    pool: &PgPool,
    epoch: i64,
    cursor: Cursor,
    filter: &LogFilter,
    count: usize,
) -> Result<Page> {
    let sql = after_sql(filter);
    let mut query =
        sqlx::query(&sql).bind(cursor.epoch).bind(cursor.txid).bind(cursor.position).bind(epoch);
    if let Some(topic) = &filter.topic {
        query = query.bind(topic.as_str());
    }
    if !filter.types.is_empty() {
        query = query.bind(&filter.types);
    }
    if let Some(stream) = &filter.stream {
        query = query.bind(stream.as_str());
    }
    if let Some(position) = filter.after_position {
        query = query.bind(signed(position.0));
    }
    // Each row is decoded as it arrives, while the server goes on sending the next:
    // a page then takes about the longer of the two, not their sum.
    let mut rows = query.bind(limit(count)).fetch(pool);
    let mut horizon = 0i64;
    let mut events = Vec::new();
    while let Some(row) = rows.try_next().await? {
        horizon = row.try_get(0)?;
        // A row of NULLs when nothing matched.
        if row.try_get::<Option<i64>, _>(1)?.is_none() {
            continue;
        }
        if events.is_empty() {
            events.reserve(count.min(PAGE_CAPACITY));
        }
        events.push(decode_at(&row, 1)?);
    }
    let mut next = events.last().map_or(cursor, |e| e.cursor);
    if events.len() < count.max(1) {
        // Everything of this epoch below the horizon has been seen (or filtered out):
        // nothing can ever appear before it again.
        next = next.max(Cursor { epoch, txid: horizon - 1, position: i64::MAX });
    }
    Ok(Page { events, next })
}

/// The statement of [`after`] for `filter`: $1-$3 the cursor, $4 the epoch, then a
/// parameter for each condition the filter has (topic, types, stream, position, in
/// that order), then the limit.
fn after_sql(filter: &LogFilter) -> String {
    // Only the filter's own conditions, each a plain predicate: a condition that is
    // always true (`position > 0`, `$5 IS NULL OR ..`) can lead the planner to an index
    // that does not follow the order, scanning and sorting every row after the
    // cursor for each page (a rebuild then takes time quadratic in the log), most of
    // all on a table whose statistics lag behind a burst of appends. Each shape of
    // filter is a prepared statement of its own. `?` stands for the condition's
    // parameter, numbered from $5 in this order.
    let templates = [
        (filter.topic.is_some(), "topic = ?"),
        (!filter.types.is_empty(), "event_type = ANY(?)"),
        (filter.stream.is_some(), "stream_id = ?"),
        (filter.after_position.is_some(), "position > ?"),
    ];
    let mut conditions = String::new();
    let mut parameter = 5;
    for (_, template) in templates.iter().filter(|(wanted, _)| *wanted) {
        let condition = template.replace('?', &format!("${parameter}"));
        conditions.push_str(&format!("\n               AND {condition}"));
        parameter += 1;
    }
    format!(
        "WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin)
         SELECT h.xmin, e.* FROM h LEFT JOIN LATERAL (
             SELECT {COLUMNS} FROM keel_events
             WHERE (epoch, transaction_id, position) > ($1, $2, $3)
               AND (epoch < $4 OR transaction_id < h.xmin){conditions}
             ORDER BY epoch, transaction_id, position
             LIMIT ${parameter}
         ) e ON true"
    )
}

/// The cursor from which a subscription sees every event with a position above
/// `position` (used with [`LogFilter::after_position`]): just before the earliest such
/// committed event and before anything still in flight.
pub(crate) async fn cursor_before(pool: &PgPool, epoch: i64, position: Position) -> Result<Cursor> {
    let row: (i64, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin)
         SELECT h.xmin, e.epoch, e.transaction_id, e.position FROM h LEFT JOIN LATERAL (
             SELECT epoch, transaction_id, position FROM keel_events WHERE position > $1
             ORDER BY epoch, transaction_id, position LIMIT 1
         ) e ON true",
    )
    .bind(signed(position.0))
    .fetch_one(pool)
    .await?;
    let in_flight = Cursor { epoch, txid: row.0, position: 0 };
    let start = match (row.1, row.2, row.3) {
        (Some(epoch), Some(txid), Some(position)) => {
            in_flight.min(Cursor { epoch, txid, position })
        }
        _ => in_flight,
    };
    Ok(Cursor { position: start.position - 1, ..start })
}

/// The event with this id (its unique index).
pub(crate) async fn by_id(pool: &PgPool, id: &str) -> Result<Option<LogEvent>> {
    let sql = format!("SELECT {COLUMNS} FROM keel_events WHERE event_id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(decode).transpose()
}

/// Up to `count` events whose string extension `name` (`causationid` or
/// `correlationid`, each with an index on its expression) is `value`.
pub(crate) async fn by_extension(
    pool: &PgPool,
    name: &str,
    value: &str,
    count: usize,
) -> Result<Vec<LogEvent>> {
    // The expression as the index has it, so that the index is used; `name` is one of
    // Keel's extension names, never user input.
    let expression = format!("(extensions ->> '{name}')");
    let sql = format!(
        "SELECT {COLUMNS} FROM keel_events
         WHERE {expression} = $1 AND {expression} IS NOT NULL ORDER BY position LIMIT $2"
    );
    let rows = sqlx::query(&sql).bind(value).bind(limit(count)).fetch_all(pool).await?;
    rows.iter().map(decode).collect()
}

/// The stream categories with their stream and event counts.
pub(crate) async fn categories(pool: &PgPool) -> Result<Vec<keel_store::Category>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT split_part(stream_id, '-', 1) AS c, count(DISTINCT stream_id), count(*)
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
    pool: &PgPool,
    category: Option<&str>,
    count: usize,
) -> Result<Vec<keel_store::StreamSummary>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT stream_id, max(stream_version), max(position) FROM keel_events
         WHERE $1::text IS NULL OR split_part(stream_id, '-', 1) = $1
         GROUP BY stream_id ORDER BY stream_id LIMIT $2",
    )
    .bind(category)
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

#[cfg(all(test, feature = "integration"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use keel_core::{CloudEvent, ExpectedVersion, StreamId};
    use keel_store::{EventLog, LogFilter, SqlEventLog};

    use super::after_sql;
    use crate::{PgEventLog, PgOptions};

    /// The plan of a page of the whole log from its start, as text.
    async fn plan(log: &PgEventLog) -> String {
        let sql = format!("EXPLAIN {}", after_sql(&LogFilter::default()));
        let cursor_and_epoch =
            sqlx::query_scalar::<_, String>(&sql).bind(0i64).bind(0i64).bind(0i64);
        let query = cursor_and_epoch.bind(i64::MAX).bind(100i64);
        query.fetch_all(log.pool()).await.unwrap().join("\n")
    }

    /// A page of the whole log is read by walking the order index, not by sorting
    /// every row after the cursor, even on a table with no statistics yet (a log
    /// just filled, before autovacuum's first look): with an always-true `position > 0`
    /// the planner took the primary key and sorted the whole log for every page.
    #[tokio::test]
    async fn a_page_of_the_whole_log_walks_the_order_index_before_any_statistics() {
        let url = keel_testkit::postgres::fresh_database("pg").await;
        let log = PgEventLog::connect(&url, PgOptions::default()).await.unwrap();
        sqlx::query("ALTER TABLE keel_events SET (autovacuum_enabled = false)")
            .execute(log.pool())
            .await
            .unwrap();
        let events: Vec<CloudEvent> = (0..5_000)
            .map(|_| CloudEvent::builder("test.noted", "/test").build().unwrap())
            .collect();
        let stream = StreamId::new("noted-1").unwrap();
        log.append(&stream, ExpectedVersion::Any, &events).await.unwrap();

        let plan = plan(&log).await;
        assert!(plan.contains("Index Scan using keel_events_order"), "{plan}");
        assert!(!plan.contains("Sort"), "{plan}");
    }
}
