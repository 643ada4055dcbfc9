//! What the log bus needs from a store beyond [`EventLog`]: reading a row that does not
//! decode, the dead-letter table (`keel_bus_dead_letters`, migration
//! `20261127000003_keel_bus.sql`), and the delivery attempts that must survive a crash
//! (`keel_bus_read_marks` and `keel_bus_attempts`, migration
//! `20261206130011_keel_bus_attempts.sql`). Implemented for `SqliteEventLog` (feature
//! `sqlite`) and `PgEventLog` (feature `postgres`).

use async_trait::async_trait;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use bytes::Bytes;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use chrono::{DateTime, Utc};
use keel_core::bus::{DeadLetter, DeadLetterId, Payload, RawMessage};
#[cfg(feature = "postgres")]
use keel_postgres::PgEventLog;
#[cfg(feature = "sqlite")]
use keel_sqlite::SqliteEventLog;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use keel_store::SqlEventLog;
use keel_store::{Cursor, EventLog, Result, StoreError};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use sqlx::Row as _;

/// A log row that does not decode into an envelope, as far as it can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRow {
    /// Where the row is in the log.
    pub cursor: Cursor,
    /// The topic the log records for it.
    pub topic: String,
    /// The row's headers and body, as stored.
    pub message: RawMessage,
}

/// A dead letter to store.
#[derive(Clone, Debug)]
pub struct NewDeadLetter {
    /// The letter's id.
    pub id: DeadLetterId,
    /// The topic it was consumed from.
    pub topic: String,
    /// The consumer group that gave up on it.
    pub group: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// How many times it was delivered.
    pub attempts: u32,
    /// The event, or the raw message that did not decode.
    pub payload: Payload,
}

/// What is stored about a consumer group's delivery attempts (see the log bus's
/// `group.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// How far the process that fed the group last had read, unless it stopped cleanly.
    pub read_mark: Option<Cursor>,
    /// The highest attempt at which each event may have been handed out, where it was
    /// a redelivery (or known at a clean stop).
    pub recorded: Vec<(Cursor, u32)>,
}

/// What to do with a group's read mark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMark {
    #[default]
    /// Leave the stored read mark as it is.
    Keep,
    /// Store this read mark.
    Set(Cursor),
    /// Remove the stored read mark.
    Clear,
}

/// A consumer group's progress, stored in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The new checkpoint; attempt records up to it are deleted with it.
    pub checkpoint: Option<Cursor>,
    /// What to do with the group's stored read mark.
    pub read_mark: ReadMark,
    /// Attempt numbers to record (a stored higher one stays).
    pub attempts: Vec<(Cursor, u32)>,
}

/// The store seam of the log bus. Object safe: the bus keeps an `Arc<dyn BusStore>`.
#[async_trait]
pub trait BusStore: EventLog {
    /// The read mark of group `name` and the attempts recorded after `after`.
    async fn attempts(&self, name: &str, after: Cursor) -> Result<Attempts>;

    /// Stores the progress of each group named, in order, in one transaction: the
    /// log bus's feeders commit together what they queued meanwhile (`progress.rs`).
    async fn save_progress_of(&self, groups: &[(&str, &Progress)]) -> Result<()>;

    /// Moves group `name`'s checkpoint to `checkpoint` (back or forward) and forgets
    /// its read mark and recorded attempts, in one transaction: what the group gets
    /// next starts at attempt 1. Call it holding the group's lease (nobody feeding
    /// it), or the feeder's next save undoes it (`keel groups reset`).
    async fn reset_group(&self, name: &str, checkpoint: Cursor) -> Result<()>;

    /// The row at `position`, read column by column without building an envelope.
    async fn raw_row(&self, position: i64) -> Result<Option<RawRow>>;

    /// Stores a dead letter.
    async fn insert_dead_letter(&self, letter: &NewDeadLetter) -> Result<()>;

    /// Up to `limit` dead letters of a group, oldest first; with `retrying` those sent
    /// back for another try (and not settled since) instead of those at rest.
    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        retrying: bool,
        limit: usize,
    ) -> Result<Vec<DeadLetter>>;

    /// Marks a letter at rest as retrying; whether it was found.
    async fn mark_retrying(&self, topic: &str, group: &str, id: &DeadLetterId) -> Result<bool>;

    /// Puts a retried letter back to rest with a new reason.
    async fn dead_letter_again(&self, id: &DeadLetterId, reason: &str, attempts: u32)
    -> Result<()>;

    /// Deletes one dead letter (after it was retried or discarded).
    async fn delete_dead_letter(&self, id: &DeadLetterId) -> Result<()>;

    /// Deletes the letters of a group at rest; how many.
    async fn purge_dead_letters(&self, topic: &str, group: &str) -> Result<u64>;

    /// How many letters of a group are at rest (the `keel_dead_letters` gauge).
    async fn count_dead_letters(&self, topic: &str, group: &str) -> Result<u64>;
}

/// The columns of a dead letter as stored.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
struct LetterColumns {
    event: Option<Vec<u8>>,
    raw_headers: Option<String>,
    content_type: Option<String>,
    body: Option<Vec<u8>>,
    error: Option<String>,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn letter_columns(payload: &Payload) -> LetterColumns {
    match payload {
        Payload::Event(event) => LetterColumns {
            event: Some(keel_core::codec::to_structured(event)),
            raw_headers: None,
            content_type: None,
            body: None,
            error: None,
        },
        Payload::Undecodable(raw) => {
            let headers: Vec<(&str, String)> = raw
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value).into_owned()))
                .collect();
            LetterColumns {
                event: None,
                raw_headers: Some(serde_json::to_string(&headers).unwrap_or_default()),
                content_type: raw.content_type.clone(),
                body: Some(raw.body.to_vec()),
                error: Some(raw.error.clone()),
            }
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn letter_payload(columns: LetterColumns) -> Payload {
    if let Some(json) = columns.event {
        match keel_core::codec::from_structured(&json) {
            Ok(event) => return Payload::Event(event),
            Err(error) => {
                return Payload::Undecodable(RawMessage {
                    headers: Vec::new(),
                    content_type: Some("application/cloudevents+json".into()),
                    body: Bytes::from(json),
                    error: format!("the stored dead letter is not a CloudEvent: {error}"),
                });
            }
        }
    }
    let headers: Vec<(String, String)> = columns
        .raw_headers
        .as_deref()
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    Payload::Undecodable(RawMessage {
        headers: headers.into_iter().map(|(n, v)| (n, Bytes::from(v))).collect(),
        content_type: columns.content_type,
        body: Bytes::from(columns.body.unwrap_or_default()),
        error: columns.error.unwrap_or_default(),
    })
}

/// The headers of a raw row: its columns, named like binary-mode CloudEvents headers.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn raw_headers(fields: &[(&str, Option<String>)]) -> Vec<(String, Bytes)> {
    fields
        .iter()
        .filter_map(|(name, value)| {
            value.as_ref().map(|v| ((*name).to_owned(), Bytes::from(v.clone())))
        })
        .collect()
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn limit(limit: usize) -> i64 {
    i64::try_from(limit.max(1)).unwrap_or(i64::MAX)
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn attempts_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(feature = "sqlite")]
fn sqlite_cursor(position: i64) -> Cursor {
    Cursor { epoch: 0, txid: 0, position }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn decode_letter(row: &impl LetterRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: DeadLetterId(row.text("id")?),
        topic: row.text("topic")?,
        group: row.text("group_name")?,
        reason: row.text("reason")?,
        attempts: attempts_of(row.int("attempts")?),
        dead_lettered_at: row.time("dead_lettered_at")?,
        payload: letter_payload(LetterColumns {
            event: row.bytes("event")?,
            raw_headers: row.opt_text("raw_headers")?,
            content_type: row.opt_text("content_type")?,
            body: row.bytes("body")?,
            error: row.opt_text("error")?,
        }),
    })
}

/// Column access shared by the two row types.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
trait LetterRow {
    fn text(&self, name: &str) -> Result<String>;
    fn opt_text(&self, name: &str) -> Result<Option<String>>;
    fn int(&self, name: &str) -> Result<i64>;
    fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>>;
    fn time(&self, name: &str) -> Result<DateTime<Utc>>;
}

#[cfg(feature = "sqlite")]
impl LetterRow for sqlx::sqlite::SqliteRow {
    fn text(&self, name: &str) -> Result<String> {
        Ok(self.try_get(name)?)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>> {
        Ok(self.try_get(name)?)
    }
    fn int(&self, name: &str) -> Result<i64> {
        Ok(self.try_get(name)?)
    }
    fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get(name)?)
    }
    fn time(&self, name: &str) -> Result<DateTime<Utc>> {
        let text: String = self.try_get(name)?;
        Ok(DateTime::parse_from_rfc3339(&text)
            .map_or_else(|_| Utc::now(), |t| t.with_timezone(&Utc)))
    }
}

#[cfg(feature = "postgres")]
impl LetterRow for sqlx::postgres::PgRow {
    fn text(&self, name: &str) -> Result<String> {
        Ok(self.try_get(name)?)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>> {
        Ok(self.try_get(name)?)
    }
    fn int(&self, name: &str) -> Result<i64> {
        Ok(self.try_get(name)?)
    }
    fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get(name)?)
    }
    fn time(&self, name: &str) -> Result<DateTime<Utc>> {
        Ok(self.try_get(name)?)
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
const LETTER_COLUMNS: &str = "id, topic, group_name, reason, attempts, dead_lettered_at, event, \
                              raw_headers, content_type, body, error";

#[cfg(feature = "sqlite")]
#[async_trait]
impl BusStore for SqliteEventLog {
    async fn reset_group(&self, name: &str, checkpoint: Cursor) -> Result<()> {
        let mut tx = self.begin().await?;
        self.save_checkpoint_in(&mut tx, name, checkpoint).await?;
        for table in ["keel_bus_attempts", "keel_bus_read_marks"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE name = ?"))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn attempts(&self, name: &str, after: Cursor) -> Result<Attempts> {
        let read_mark: Option<i64> =
            sqlx::query_scalar("SELECT position FROM keel_bus_read_marks WHERE name = ?")
                .bind(name)
                .fetch_optional(self.pool())
                .await?;
        let recorded: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT position, attempts FROM keel_bus_attempts
             WHERE name = ? AND position > ? ORDER BY position",
        )
        .bind(name)
        .bind(after.position)
        .fetch_all(self.pool())
        .await?;
        Ok(Attempts {
            read_mark: read_mark.map(sqlite_cursor),
            recorded: recorded
                .into_iter()
                .map(|(position, attempts)| (sqlite_cursor(position), attempts_of(attempts)))
                .collect(),
        })
    }

    async fn save_progress_of(&self, groups: &[(&str, &Progress)]) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for &(name, progress) in groups {
            write_progress_sqlite(self, &mut tx, name, progress).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn raw_row(&self, position: i64) -> Result<Option<RawRow>> {
        let row = sqlx::query(
            "SELECT position, stream_id, stream_version, event_id, topic, event_type, source,
                    time, datacontenttype, data, extensions
             FROM keel_events WHERE position = ?",
        )
        .bind(position)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let text = |i: usize| row.try_get::<Option<String>, _>(i).ok().flatten();
        let version = row.try_get::<Option<i64>, _>(2).ok().flatten().map(|v| v.to_string());
        let headers = raw_headers(&[
            ("ce_id", text(3)),
            ("ce_type", text(5)),
            ("ce_source", text(6)),
            ("ce_subject", text(1)),
            ("ce_time", text(7)),
            ("ce_streamversion", version),
            ("ce_position", Some(position.to_string())),
            ("keel_extensions", text(10)),
        ]);
        Ok(Some(RawRow {
            cursor: Cursor { epoch: 0, txid: 0, position },
            topic: text(4).unwrap_or_default(),
            message: RawMessage {
                headers,
                content_type: text(8),
                body: Bytes::from(
                    row.try_get::<Option<Vec<u8>>, _>(9).ok().flatten().unwrap_or_default(),
                ),
                error: String::new(),
            },
        }))
    }

    async fn insert_dead_letter(&self, letter: &NewDeadLetter) -> Result<()> {
        let columns = letter_columns(&letter.payload);
        sqlx::query(
            "INSERT INTO keel_bus_dead_letters
                 (id, topic, group_name, reason, attempts, dead_lettered_at, event, raw_headers,
                  content_type, body, error, retrying)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        )
        .bind(&letter.id.0)
        .bind(&letter.topic)
        .bind(&letter.group)
        .bind(&letter.reason)
        .bind(i64::from(letter.attempts))
        .bind(Utc::now().to_rfc3339())
        .bind(columns.event)
        .bind(columns.raw_headers)
        .bind(columns.content_type)
        .bind(columns.body)
        .bind(columns.error)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        retrying: bool,
        count: usize,
    ) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(&format!(
            "SELECT {LETTER_COLUMNS} FROM keel_bus_dead_letters
             WHERE topic = ? AND group_name = ? AND retrying = ? ORDER BY id LIMIT ?"
        ))
        .bind(topic)
        .bind(group)
        .bind(i64::from(retrying))
        .bind(limit(count))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(decode_letter).collect()
    }

    async fn mark_retrying(&self, topic: &str, group: &str, id: &DeadLetterId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE keel_bus_dead_letters SET retrying = 1
             WHERE id = ? AND topic = ? AND group_name = ? AND retrying = 0",
        )
        .bind(&id.0)
        .bind(topic)
        .bind(group)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn dead_letter_again(
        &self,
        id: &DeadLetterId,
        reason: &str,
        attempts: u32,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE keel_bus_dead_letters
             SET retrying = 0, reason = ?, attempts = ?, dead_lettered_at = ? WHERE id = ?",
        )
        .bind(reason)
        .bind(i64::from(attempts))
        .bind(Utc::now().to_rfc3339())
        .bind(&id.0)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn delete_dead_letter(&self, id: &DeadLetterId) -> Result<()> {
        sqlx::query("DELETE FROM keel_bus_dead_letters WHERE id = ?")
            .bind(&id.0)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn count_dead_letters(&self, topic: &str, group: &str) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM keel_bus_dead_letters
             WHERE topic = ? AND group_name = ? AND retrying = 0",
        )
        .bind(topic)
        .bind(group)
        .fetch_one(self.pool())
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn purge_dead_letters(&self, topic: &str, group: &str) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM keel_bus_dead_letters WHERE topic = ? AND group_name = ? AND retrying = 0",
        )
        .bind(topic)
        .bind(group)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl BusStore for PgEventLog {
    async fn reset_group(&self, name: &str, checkpoint: Cursor) -> Result<()> {
        let mut tx = self.begin().await?;
        self.save_checkpoint_in(&mut tx, name, checkpoint).await?;
        for table in ["keel_bus_attempts", "keel_bus_read_marks"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE name = $1"))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn attempts(&self, name: &str, after: Cursor) -> Result<Attempts> {
        let read_mark: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT epoch, transaction_id, position FROM keel_bus_read_marks WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        let recorded: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT epoch, transaction_id, position, attempts FROM keel_bus_attempts
             WHERE name = $1 AND (epoch, transaction_id, position) > ($2, $3, $4)
             ORDER BY epoch, transaction_id, position",
        )
        .bind(name)
        .bind(after.epoch)
        .bind(after.txid)
        .bind(after.position)
        .fetch_all(self.pool())
        .await?;
        Ok(Attempts {
            read_mark: read_mark.map(|(epoch, txid, position)| Cursor { epoch, txid, position }),
            recorded: recorded
                .into_iter()
                .map(|(epoch, txid, position, attempts)| {
                    (Cursor { epoch, txid, position }, attempts_of(attempts))
                })
                .collect(),
        })
    }

    async fn save_progress_of(&self, groups: &[(&str, &Progress)]) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for &(name, progress) in groups {
            write_progress_postgres(self, &mut tx, name, progress).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn raw_row(&self, position: i64) -> Result<Option<RawRow>> {
        let row = sqlx::query(
            "SELECT position, epoch, transaction_id, stream_id, stream_version::text, event_id,
                    topic, event_type, source, time::text, datacontenttype, data, extensions::text
             FROM keel_events WHERE position = $1",
        )
        .bind(position)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let text = |i: usize| row.try_get::<Option<String>, _>(i).ok().flatten();
        let headers = raw_headers(&[
            ("ce_id", text(5)),
            ("ce_type", text(7)),
            ("ce_source", text(8)),
            ("ce_subject", text(3)),
            ("ce_time", text(9)),
            ("ce_streamversion", text(4)),
            ("ce_position", Some(position.to_string())),
            ("keel_extensions", text(12)),
        ]);
        Ok(Some(RawRow {
            cursor: Cursor { epoch: row.try_get(1)?, txid: row.try_get(2)?, position },
            topic: text(6).unwrap_or_default(),
            message: RawMessage {
                headers,
                content_type: text(10),
                body: Bytes::from(
                    row.try_get::<Option<Vec<u8>>, _>(11).ok().flatten().unwrap_or_default(),
                ),
                error: String::new(),
            },
        }))
    }

    async fn insert_dead_letter(&self, letter: &NewDeadLetter) -> Result<()> {
        let columns = letter_columns(&letter.payload);
        sqlx::query(
            "INSERT INTO keel_bus_dead_letters
                 (id, topic, group_name, reason, attempts, dead_lettered_at, event, raw_headers,
                  content_type, body, error, retrying)
             VALUES ($1, $2, $3, $4, $5, now(), $6, $7, $8, $9, $10, false)",
        )
        .bind(&letter.id.0)
        .bind(&letter.topic)
        .bind(&letter.group)
        .bind(&letter.reason)
        .bind(i64::from(letter.attempts))
        .bind(columns.event)
        .bind(columns.raw_headers)
        .bind(columns.content_type)
        .bind(columns.body)
        .bind(columns.error)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        retrying: bool,
        count: usize,
    ) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(&format!(
            "SELECT {LETTER_COLUMNS} FROM keel_bus_dead_letters
             WHERE topic = $1 AND group_name = $2 AND retrying = $3 ORDER BY id LIMIT $4"
        ))
        .bind(topic)
        .bind(group)
        .bind(retrying)
        .bind(limit(count))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(decode_letter).collect()
    }

    async fn mark_retrying(&self, topic: &str, group: &str, id: &DeadLetterId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE keel_bus_dead_letters SET retrying = true
             WHERE id = $1 AND topic = $2 AND group_name = $3 AND NOT retrying",
        )
        .bind(&id.0)
        .bind(topic)
        .bind(group)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn dead_letter_again(
        &self,
        id: &DeadLetterId,
        reason: &str,
        attempts: u32,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE keel_bus_dead_letters
             SET retrying = false, reason = $1, attempts = $2, dead_lettered_at = now()
             WHERE id = $3",
        )
        .bind(reason)
        .bind(i64::from(attempts))
        .bind(&id.0)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn delete_dead_letter(&self, id: &DeadLetterId) -> Result<()> {
        sqlx::query("DELETE FROM keel_bus_dead_letters WHERE id = $1")
            .bind(&id.0)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn count_dead_letters(&self, topic: &str, group: &str) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM keel_bus_dead_letters
             WHERE topic = $1 AND group_name = $2 AND NOT retrying",
        )
        .bind(topic)
        .bind(group)
        .fetch_one(self.pool())
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn purge_dead_letters(&self, topic: &str, group: &str) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM keel_bus_dead_letters
             WHERE topic = $1 AND group_name = $2 AND NOT retrying",
        )
        .bind(topic)
        .bind(group)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}

/// Maps a missing table to a message that says what to do.
pub(crate) fn explain(error: StoreError) -> StoreError {
    let StoreError::Database(sqlx::Error::Database(db)) = &error else { return error };
    let message = db.message();
    let migration = if message.contains("keel_bus_dead_letters") {
        "20261127000003_keel_bus"
    } else if message.contains("keel_bus_read_marks") || message.contains("keel_bus_attempts") {
        "20261206130011_keel_bus_attempts"
    } else {
        return error;
    };
    StoreError::Config(format!(
        "{error}: the log bus needs migration {migration} (run `keel migrate`)"
    ))
}

#[cfg(feature = "sqlite")]
/// One group's [`Progress`], inside the caller's transaction.
async fn write_progress_sqlite(
    log: &SqliteEventLog,
    tx: &mut sqlx::SqliteConnection,
    name: &str,
    progress: &Progress,
) -> Result<()> {
    if let Some(checkpoint) = progress.checkpoint {
        log.save_checkpoint_in(&mut *tx, name, checkpoint).await?;
        sqlx::query("DELETE FROM keel_bus_attempts WHERE name = ? AND position <= ?")
            .bind(name)
            .bind(checkpoint.position)
            .execute(&mut *tx)
            .await?;
    }
    match progress.read_mark {
        ReadMark::Keep => {}
        ReadMark::Set(mark) => {
            sqlx::query(
                "INSERT INTO keel_bus_read_marks (name, position) VALUES (?, ?)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            )
            .bind(name)
            .bind(mark.position)
            .execute(&mut *tx)
            .await?;
        }
        ReadMark::Clear => {
            sqlx::query("DELETE FROM keel_bus_read_marks WHERE name = ?")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
    }
    for (at, attempts) in &progress.attempts {
        sqlx::query(
            "INSERT INTO keel_bus_attempts (name, position, attempts) VALUES (?, ?, ?)
             ON CONFLICT (name, position)
             DO UPDATE SET attempts = max(attempts, excluded.attempts)",
        )
        .bind(name)
        .bind(at.position)
        .bind(i64::from(*attempts))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(feature = "postgres")]
/// One group's [`Progress`], inside the caller's transaction.
async fn write_progress_postgres(
    log: &PgEventLog,
    tx: &mut sqlx::PgConnection,
    name: &str,
    progress: &Progress,
) -> Result<()> {
    if let Some(checkpoint) = progress.checkpoint {
        log.save_checkpoint_in(&mut *tx, name, checkpoint).await?;
        sqlx::query(
            "DELETE FROM keel_bus_attempts
             WHERE name = $1 AND (epoch, transaction_id, position) <= ($2, $3, $4)",
        )
        .bind(name)
        .bind(checkpoint.epoch)
        .bind(checkpoint.txid)
        .bind(checkpoint.position)
        .execute(&mut *tx)
        .await?;
    }
    match progress.read_mark {
        ReadMark::Keep => {}
        ReadMark::Set(mark) => {
            sqlx::query(
                "INSERT INTO keel_bus_read_marks (name, epoch, transaction_id, position)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch,
                     transaction_id = excluded.transaction_id, position = excluded.position",
            )
            .bind(name)
            .bind(mark.epoch)
            .bind(mark.txid)
            .bind(mark.position)
            .execute(&mut *tx)
            .await?;
        }
        ReadMark::Clear => {
            sqlx::query("DELETE FROM keel_bus_read_marks WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
    }
    for (at, attempts) in &progress.attempts {
        sqlx::query(
            "INSERT INTO keel_bus_attempts (name, epoch, transaction_id, position, attempts)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name, epoch, transaction_id, position)
             DO UPDATE SET attempts = GREATEST(keel_bus_attempts.attempts, excluded.attempts)",
        )
        .bind(name)
        .bind(at.epoch)
        .bind(at.txid)
        .bind(at.position)
        .bind(i64::from(*attempts))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
