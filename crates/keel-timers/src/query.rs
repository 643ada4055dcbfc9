//! Looking at the timers in the store from outside the dispatcher: what is pending,
//! what each will publish, how late the oldest overdue one is (`keel timers list`,
//! `keel status`).

use chrono::{DateTime, Utc};
use keel_core::{CloudEvent, StreamId, codec};
use keel_sql::{Db, args};

use crate::error::Result;

/// A timer still in the store: pending, or failed (its message could never be
/// appended; kept, never fired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTimer {
    /// The dispatcher name it belongs to.
    pub dispatcher: String,
    /// Its key within that dispatcher name.
    pub key: String,
    /// When it is due.
    pub due_at: DateTime<Utc>,
    /// When it was (last) scheduled.
    pub scheduled_at: DateTime<Utc>,
    /// The stream its message will be appended to.
    pub stream: String,
    /// The message's CloudEvents type; `None` if the stored message does not decode.
    pub event_type: Option<String>,
    /// The topic the relay will publish the message on (its `topic` extension, else
    /// the stream's category); `None` if the message does not decode or names no
    /// valid topic.
    pub topic: Option<String>,
    /// Why it failed, for a failed timer.
    pub failed: Option<String>,
}

/// Which timers [`list_timers`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerQuery {
    /// Only this dispatcher name's timers; `None`: every dispatcher's.
    pub dispatcher: Option<String>,
    /// Only timers due strictly before this time.
    pub due_before: Option<DateTime<Utc>>,
    /// At most this many, the soonest due first.
    pub limit: usize,
}

impl Default for TimerQuery {
    /// Every dispatcher's timers, the first 100.
    fn default() -> Self {
        Self { dispatcher: None, due_before: None, limit: 100 }
    }
}

/// The timers matching `query`, the soonest due first (then by dispatcher and key),
/// failed ones included (see [`StoredTimer::failed`]).
pub async fn list_timers(db: &Db, query: &TimerQuery) -> Result<Vec<StoredTimer>> {
    let before = query.due_before.map_or(i64::MAX, |t| t.timestamp_micros());
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    type Row = (String, String, i64, i64, String, String, Option<String>);
    let columns = "SELECT dispatcher, timer_key, due_at, scheduled_at, stream_id, event, failed
                   FROM keel_timers";
    let rows: Vec<Row> = match &query.dispatcher {
        Some(dispatcher) => {
            let sql = format!(
                "{columns} WHERE dispatcher = $1 AND due_at < $2
                 ORDER BY due_at, dispatcher, timer_key LIMIT $3"
            );
            db.fetch_all(&sql, args![dispatcher.as_str(), before, limit]).await?
        }
        None => {
            let sql = format!(
                "{columns} WHERE due_at < $1 ORDER BY due_at, dispatcher, timer_key LIMIT $2"
            );
            db.fetch_all(&sql, args![before, limit]).await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(dispatcher, key, due_at, scheduled_at, stream, event, failed)| {
            let event: Option<CloudEvent> = codec::from_structured(event.as_bytes()).ok();
            let topic = event.as_ref().and_then(|event| {
                let stream = StreamId::new(stream.as_str()).ok()?;
                keel_store::topic_of(&stream, event).ok()
            });
            StoredTimer {
                dispatcher,
                key,
                due_at: from_micros(due_at),
                scheduled_at: from_micros(scheduled_at),
                stream,
                event_type: event.map(|event| event.ty().to_owned()),
                topic,
                failed,
            }
        })
        .collect())
}

/// Every dispatcher's timers at a glance (`keel status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerSummary {
    /// Timers waiting to fire (not failed), due or not.
    pub pending: u64,
    /// Timers whose message could never be appended.
    pub failed: u64,
    /// The due time of the oldest pending timer that is due by `now`: a dispatcher
    /// that keeps up leaves none for longer than its poll interval, so one that stays
    /// says no dispatcher of its name is running (or it cannot keep up).
    pub oldest_overdue: Option<DateTime<Utc>>,
}

impl TimerSummary {
    /// How late the oldest overdue timer is at `now`.
    pub fn lateness(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        self.oldest_overdue.map(|due| now - due)
    }
}

/// Counts the timers and finds the oldest one overdue at `now`.
pub async fn timer_summary(db: &Db, now: DateTime<Utc>) -> Result<TimerSummary> {
    let row: Option<(i64, i64, Option<i64>)> = db
        .fetch_optional(
            "SELECT CAST(COUNT(*) - COUNT(failed) AS BIGINT), CAST(COUNT(failed) AS BIGINT),
                    MIN(CASE WHEN failed IS NULL AND due_at <= $1 THEN due_at END)
             FROM keel_timers",
            args![now.timestamp_micros()],
        )
        .await?;
    let (pending, failed, oldest) = row.unwrap_or((0, 0, None));
    Ok(TimerSummary {
        pending: u64::try_from(pending).unwrap_or(0),
        failed: u64::try_from(failed).unwrap_or(0),
        oldest_overdue: oldest.map(from_micros),
    })
}

/// A stored time (microseconds since the epoch); out of chrono's range is clamped.
fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
