//! Relay dead letters as rows of `keel_relay_dead_letters` (see
//! [`keel_store::relay_dlq`]).

use chrono::{DateTime, Utc};
use keel_core::Position;
use keel_store::{RelayDeadLetter, Result};
use sqlx::SqlitePool;

fn signed(position: Position) -> i64 {
    i64::try_from(position.0).unwrap_or(i64::MAX)
}

pub(crate) async fn save(pool: &SqlitePool, letter: &RelayDeadLetter) -> Result<()> {
    sqlx::query(
        "INSERT INTO keel_relay_dead_letters
             (relay, position, event_id, topic, event_type, reason, dead_lettered_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)
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
    .bind(letter.dead_lettered_at.to_rfc3339())
    .execute(pool)
    .await?;
    Ok(())
}

type Row = (String, i64, String, String, String, String, String);

pub(crate) async fn list(
    pool: &SqlitePool,
    relay: Option<&str>,
    limit: usize,
) -> Result<Vec<RelayDeadLetter>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT relay, position, event_id, topic, event_type, reason, dead_lettered_at
         FROM keel_relay_dead_letters WHERE (? IS NULL OR relay = ?)
         ORDER BY relay, position LIMIT ?",
    )
    .bind(relay)
    .bind(relay)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(relay, position, event_id, topic, event_type, reason, at)| RelayDeadLetter {
            relay,
            position: Position(u64::try_from(position).unwrap_or(0)),
            event_id,
            topic,
            event_type,
            reason,
            dead_lettered_at: DateTime::parse_from_rfc3339(&at)
                .map_or_else(|_| Utc::now(), |t| t.with_timezone(&Utc)),
        })
        .collect())
}

pub(crate) async fn delete(pool: &SqlitePool, relay: &str, position: Position) -> Result<bool> {
    let done = sqlx::query("DELETE FROM keel_relay_dead_letters WHERE relay = ? AND position = ?")
        .bind(relay)
        .bind(signed(position))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub(crate) async fn purge(pool: &SqlitePool, relay: &str) -> Result<u64> {
    let done = sqlx::query("DELETE FROM keel_relay_dead_letters WHERE relay = ?")
        .bind(relay)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
