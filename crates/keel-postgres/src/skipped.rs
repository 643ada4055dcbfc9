//! Skip records as rows of `keel_skipped` (see [`keel_store::Skipped`]).

use chrono::{DateTime, Utc};
use keel_core::Position;
use keel_store::{LogEvent, Result, Skipped};
use sqlx::{PgConnection, PgPool};

pub(crate) async fn record(
    conn: &mut PgConnection,
    subscriber: &str,
    event: &LogEvent,
    reason: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO keel_skipped (subscriber, event_id, position, event_type, reason, skipped_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (subscriber, event_id) DO UPDATE
         SET reason = excluded.reason, skipped_at = excluded.skipped_at",
    )
    .bind(subscriber)
    .bind(event.event.id())
    .bind(event.cursor.position)
    .bind(event.event.ty())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn clear(conn: &mut PgConnection, subscriber: &str) -> Result<()> {
    sqlx::query("DELETE FROM keel_skipped WHERE subscriber = $1")
        .bind(subscriber)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn counts(pool: &PgPool) -> Result<Vec<(String, u64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT subscriber, count(*) FROM keel_skipped GROUP BY subscriber ORDER BY subscriber",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(s, n)| (s, u64::try_from(n).unwrap_or(0))).collect())
}

type Row = (String, String, i64, String, String, DateTime<Utc>);

pub(crate) async fn list(
    pool: &PgPool,
    subscriber: Option<&str>,
    limit: usize,
) -> Result<Vec<Skipped>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT subscriber, event_id, position, event_type, reason, skipped_at
         FROM keel_skipped WHERE ($1::text IS NULL OR subscriber = $1)
         ORDER BY position, subscriber LIMIT $2",
    )
    .bind(subscriber)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(subscriber, event_id, position, event_type, reason, at)| Skipped {
            subscriber,
            event_id,
            position: Position(u64::try_from(position).unwrap_or(0)),
            event_type,
            reason,
            skipped_at: at,
        })
        .collect())
}
