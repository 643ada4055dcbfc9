//! Relay dead letters as rows of `keel_relay_dead_letters` (see
//! [`keel_store::relay_dlq`]).

use chrono::{DateTime, Utc};
use keel_core::Position;
use keel_store::{RelayDeadLetter, Result};
use sqlx::PgPool;

fn signed(position: Position) -> i64 {
    i64::try_from(position.0).unwrap_or(i64::MAX)
}

pub(crate) async fn save(pool: &PgPool, letter: &RelayDeadLetter) -> Result<()> {
    sqlx::query(
        "INSERT INTO keel_relay_dead_letters
             (relay, position, event_id, topic, event_type, reason, dead_lettered_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (relay, position) DO UPDATE
         SET event_id = excluded.event_id, topic = excluded.topic,
             event_type = excluded.event_type, reason = excluded.reason,
             dead_lettered_at = excluded.dead_lettered_at",
    )
    .bind(&letter.relay)
    .bind(signed(letter.position))
    .bind(&letter.event_id)
    .bind(&letter.topic)
    .bind(&letter.event_type)
    .bind(&letter.reason)
    .bind(letter.dead_lettered_at)
    .execute(pool)
    .await?;
    Ok(())
}

type Row = (String, i64, String, String, String, String, DateTime<Utc>);

pub(crate) async fn list(
    pool: &PgPool,
    relay: Option<&str>,
    limit: usize,
) -> Result<Vec<RelayDeadLetter>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT relay, position, event_id, topic, event_type, reason, dead_lettered_at
         FROM keel_relay_dead_letters WHERE ($1::text IS NULL OR relay = $1)
         ORDER BY relay, position LIMIT $2",
    )
    .bind(relay)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(relay, position, event_id, topic, event_type, reason, dead_lettered_at)| {
            RelayDeadLetter {
                relay,
                position: Position(u64::try_from(position).unwrap_or(0)),
                event_id,
                topic,
                event_type,
                reason,
                dead_lettered_at,
            }
        })
        .collect())
}

pub(crate) async fn delete(pool: &PgPool, relay: &str, position: Position) -> Result<bool> {
    let done =
        sqlx::query("DELETE FROM keel_relay_dead_letters WHERE relay = $1 AND position = $2")
            .bind(relay)
            .bind(signed(position))
            .execute(pool)
            .await?;
    Ok(done.rows_affected() > 0)
}

pub(crate) async fn purge(pool: &PgPool, relay: &str) -> Result<u64> {
    let done = sqlx::query("DELETE FROM keel_relay_dead_letters WHERE relay = $1")
        .bind(relay)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
