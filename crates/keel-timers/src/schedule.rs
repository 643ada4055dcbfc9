//! Scheduling and cancelling timers: rows in `keel_timers`, written in the caller's
//! transaction (or in one of their own through [`TimersExt`] on a `Db`).

use chrono::Utc;
use keel_core::codec;
use keel_sql::{Db, Tx, args};

use crate::error::{Error, Result};
use crate::timer::{DEFAULT_DISPATCHER, Timer, check_name};

/// Schedules `timer` inside `tx`: it exists once `tx` commits, and not at all if `tx`
/// rolls back. A pending timer with the same dispatcher name and key is replaced (due
/// time, stream and message). A due time in the past fires at the dispatcher's next
/// look, at once when it runs.
///
/// Refused with [`Error::InvalidTimer`] naming the field: an empty or over-long key or
/// dispatcher name, a delay out of range, an invalid stream.
pub async fn schedule_in(tx: &mut Tx, timer: &Timer) -> Result<()> {
    check_name("key", &timer.key)?;
    check_name("dispatcher", &timer.dispatcher)?;
    let stream = timer.target_stream()?;
    let now = Utc::now();
    let due = timer.due.resolve(now)?;
    let event = String::from_utf8(codec::to_structured(&timer.event))
        .map_err(|e| Error::invalid("event", e.to_string()))?;
    tx.execute(
        "INSERT INTO keel_timers
             (dispatcher, timer_key, id, due_at, stream_id, event, scheduled_at, failed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
         ON CONFLICT (dispatcher, timer_key) DO UPDATE SET
             id = excluded.id, due_at = excluded.due_at, stream_id = excluded.stream_id,
             event = excluded.event, scheduled_at = excluded.scheduled_at, failed = NULL",
        args![
            timer.dispatcher.as_str(),
            timer.key.as_str(),
            uuid::Uuid::now_v7().to_string(),
            due.timestamp_micros(),
            stream.as_str(),
            event,
            now.timestamp_micros(),
        ],
    )
    .await?;
    Ok(())
}

/// Cancels the timer `key` of the default dispatcher inside `tx`; says whether it was
/// pending (a timer that already fired, or never existed, is not).
pub async fn cancel_in(tx: &mut Tx, key: &str) -> Result<bool> {
    cancel_named_in(tx, DEFAULT_DISPATCHER, key).await
}

/// [`cancel_in`] for a timer of the dispatcher named `dispatcher`.
pub async fn cancel_named_in(tx: &mut Tx, dispatcher: &str, key: &str) -> Result<bool> {
    let deleted = tx
        .execute(
            "DELETE FROM keel_timers WHERE dispatcher = $1 AND timer_key = $2",
            args![dispatcher, key],
        )
        .await?;
    Ok(deleted > 0)
}

/// Timers on a [`Db`] without a transaction of the caller's: each call commits its
/// own. Use [`schedule_in`] and [`cancel_in`] to tie a timer to a state change.
pub trait TimersExt {
    /// Schedules `timer` in a transaction of its own (see [`schedule_in`]).
    fn schedule(&self, timer: &Timer) -> impl Future<Output = Result<()>> + Send;

    /// Cancels the default dispatcher's timer `key`; says whether it was pending.
    fn cancel(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Cancels the timer `key` of the dispatcher named `dispatcher`.
    fn cancel_named(
        &self,
        dispatcher: &str,
        key: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// How many timers of `dispatcher` are pending (not fired, not failed).
    fn pending_timers(&self, dispatcher: &str) -> impl Future<Output = Result<u64>> + Send;
}

impl TimersExt for Db {
    async fn schedule(&self, timer: &Timer) -> Result<()> {
        let mut tx = self.begin().await?;
        schedule_in(&mut tx, timer).await?;
        // Committing wakes this process's dispatchers (they watch the log's changes).
        tx.commit().await?;
        Ok(())
    }

    async fn cancel(&self, key: &str) -> Result<bool> {
        self.cancel_named(DEFAULT_DISPATCHER, key).await
    }

    async fn cancel_named(&self, dispatcher: &str, key: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let cancelled = cancel_named_in(&mut tx, dispatcher, key).await?;
        tx.commit().await?;
        Ok(cancelled)
    }

    async fn pending_timers(&self, dispatcher: &str) -> Result<u64> {
        let count: Option<(i64,)> = self
            .fetch_optional(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM keel_timers
                 WHERE dispatcher = $1 AND failed IS NULL",
                args![dispatcher],
            )
            .await?;
        Ok(count.map_or(0, |(n,)| u64::try_from(n).unwrap_or(0)))
    }
}
