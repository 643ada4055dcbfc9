//! Appending inside a write transaction.

use keel_core::{CloudEvent, ExpectedVersion, Position, StreamId, StreamVersion};
use keel_store::stored::new_events;
use keel_store::{AppendResult, Result, StoreError};
use sqlx::SqliteConnection;

/// Appends `events` to `stream` in the open (write) transaction on `conn`.
pub async fn append(
    conn: &mut SqliteConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[CloudEvent],
) -> Result<AppendResult> {
    let rows = new_events(stream, events)?;
    let current: Option<i64> =
        sqlx::query_scalar("SELECT version FROM keel_streams WHERE stream_id = ?")
            .bind(stream.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    let current = StreamVersion(current.and_then(|v| u64::try_from(v).ok()).unwrap_or(0));
    if !expected.accepts(current) {
        return Err(StoreError::VersionConflict {
            stream: stream.clone(),
            expected,
            actual: current,
        });
    }
    let base = i64::try_from(current.0).unwrap_or(i64::MAX);
    let mut positions = Vec::with_capacity(rows.len());
    let mut version = base;
    for row in rows {
        version += 1;
        let id = row.event_id.clone();
        let position: i64 = sqlx::query_scalar(
            "INSERT INTO keel_events (stream_id, stream_version, event_id, topic, event_type, source,
                                      time, time_micros, datacontenttype, dataschema, data, extensions)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING position",
        )
        .bind(stream.as_str())
        .bind(version)
        .bind(row.event_id)
        .bind(row.topic)
        .bind(row.event_type)
        .bind(row.source)
        .bind(row.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .bind(row.time.timestamp_micros())
        .bind(row.datacontenttype)
        .bind(row.dataschema)
        .bind(row.data)
        .bind(row.extensions)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| classify(e, id))?;
        positions.push(Position(u64::try_from(position).unwrap_or(0)));
    }
    sqlx::query(
        "INSERT INTO keel_streams (stream_id, version) VALUES (?, ?)
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
    )
    .bind(stream.as_str())
    .bind(version)
    .execute(&mut *conn)
    .await?;
    Ok(AppendResult { version: StreamVersion(u64::try_from(version).unwrap_or(0)), positions })
}

fn classify(error: sqlx::Error, id: String) -> StoreError {
    if let sqlx::Error::Database(db) = &error
        && db.is_unique_violation()
        && db.message().contains("event_id")
    {
        return StoreError::DuplicateEvent { id };
    }
    StoreError::Database(error)
}
