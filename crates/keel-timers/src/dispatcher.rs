//! The dispatcher: fires due timers through the log, one active per name.
//!
//! Each page is one transaction: read up to a page of due timers (oldest due first),
//! and for each delete its row by its scheduling id and, only if that delete took the
//! row, append its message. The row and the message change together, so every due
//! message is appended exactly once whatever fails (a crash before the commit leaves
//! the rows for the next dispatcher; after it, they are gone). The lease keeps a
//! second dispatcher of the same name idle; the delete-by-id is what makes an overlap
//! harmless all the same (a holder notices a lost lease only at its next renewal): of
//! two transactions deleting one row, PostgreSQL lets the second see it gone, and
//! SQLite runs one writer at a time.
//!
//! A page that fails for good (a message the log refuses, such as an event id that is
//! already in the log) is tried again timer by timer under savepoints, and a timer
//! whose message still cannot be appended is marked failed with the reason: kept, not
//! fired, not retried, and counted in `keel_timers_failed_total`.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_core::{CloudEvent, ExpectedVersion, StreamId, codec};
use keel_sql::{Db, Tx, args};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::timer::{DEFAULT_DISPATCHER, check_name};

/// How often a standby dispatcher asks for the lease.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// How a dispatcher works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatcherOptions {
    /// Timers fired per transaction (default 500).
    pub page_size: usize,
    /// The longest it sleeps without looking for due timers (default 1 s): timers
    /// scheduled by other processes are seen within this, those scheduled by this
    /// process at once (it also wakes on the log's change notifications).
    pub poll_interval: Duration,
}

impl Default for DispatcherOptions {
    fn default() -> Self {
        Self { page_size: 500, poll_interval: Duration::from_secs(1) }
    }
}

/// Fires the due timers of one dispatcher name. See the module docs.
#[derive(Debug)]
pub struct Dispatcher {
    db: Db,
    name: String,
    options: DispatcherOptions,
    active: watch::Sender<bool>,
}

/// A due timer as read from `keel_timers`.
#[derive(Debug)]
struct DueTimer {
    id: String,
    key: String,
    due_at: i64,
    stream: String,
    event: String,
}

/// How one timer of a page went.
enum Outcome {
    /// Its message was appended (and its row deleted).
    Fired { due_at: i64 },
    /// Someone else fired, replaced or cancelled it meanwhile.
    Gone,
    /// Marked failed with a reason.
    Failed,
}

/// Why the active phase ended.
enum Ended {
    Shutdown,
    LeaseLost,
}

impl Dispatcher {
    /// The dispatcher of the default name ([`DEFAULT_DISPATCHER`]).
    pub fn new(db: Db) -> Self {
        Self::named(db, DEFAULT_DISPATCHER)
    }

    /// The dispatcher of the timers scheduled under `name`.
    pub fn named(db: Db, name: impl Into<String>) -> Self {
        Self {
            db,
            name: name.into(),
            options: DispatcherOptions::default(),
            active: watch::Sender::new(false),
        }
    }

    /// Sets the options.
    #[must_use]
    pub fn options(mut self, options: DispatcherOptions) -> Self {
        self.options = options;
        self
    }

    /// The dispatcher's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease a dispatcher of `name` holds while active.
    pub fn lease_name(name: &str) -> String {
        format!("timers:{name}")
    }

    /// Whether [`Dispatcher::run`] holds the lease and fires timers now (not standing by).
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    /// A receiver that changes when the dispatcher becomes active or stands by.
    pub fn watch_active(&self) -> watch::Receiver<bool> {
        self.active.subscribe()
    }

    /// Fires due timers until `shutdown`, as the only active dispatcher of its name
    /// across processes: stands by while another holds the lease, renews the lease
    /// while firing, and stands by again if it is lost. Store failures are logged and
    /// retried with backoff. Returns `Err` only for a name that can never work.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        check_name("dispatcher", &self.name)?;
        if self.options.page_size == 0 {
            return Err(Error::invalid("page_size", "must be at least 1"));
        }
        let mut shutdown = std::pin::pin!(shutdown);
        let log = self.db.log();
        let key = Self::lease_name(&self.name);
        loop {
            let mut lease = loop {
                tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(()),
                    lease = log.try_lease(&key) => match lease {
                        Ok(Some(lease)) => break lease,
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(dispatcher = %self.name, %error, "could not ask for the lease");
                        }
                    },
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(STANDBY_POLL) => {}
                }
            };
            tracing::info!(dispatcher = %self.name, "timer dispatcher is active");
            self.active.send_replace(true);
            // Dropping the work future mid-page drops its transaction uncommitted.
            let ended = tokio::select! {
                biased;
                () = &mut shutdown => Ended::Shutdown,
                () = lease.keep() => Ended::LeaseLost,
                () = self.fire_forever() => Ended::Shutdown,
            };
            self.active.send_replace(false);
            lease.release().await;
            match ended {
                Ended::Shutdown => return Ok(()),
                Ended::LeaseLost => {
                    tracing::warn!(dispatcher = %self.name, "lost the dispatcher's lease; standing by");
                }
            }
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(STANDBY_POLL) => {}
            }
        }
    }

    /// The active phase: fire pages while there are due timers, then sleep until the
    /// next one is due (at most the poll interval, less when the log changes).
    ///
    /// Each look starts with one statement, the earliest due time, and opens a
    /// transaction only when something is due: the log changes on every append in
    /// this process (an order's events, its stock's), and almost none of them
    /// schedules a timer due at once.
    async fn fire_forever(&self) {
        let mut changes = self.db.log().changes();
        let backoff = keel_core::Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        let mut attempt: u32 = 0;
        loop {
            changes.borrow_and_update();
            let wait = match self.next_due().await {
                Ok(Some(next)) if next <= Utc::now() => match self.fire_due().await {
                    // Look again: a full page may have left more, and firing takes time.
                    Ok(_) => {
                        attempt = 0;
                        continue;
                    }
                    Err(error) => {
                        attempt = attempt.saturating_add(1);
                        let wait = backoff.delay(attempt);
                        tracing::warn!(dispatcher = %self.name, %error, ?wait, "firing timers failed; retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                },
                Ok(Some(next)) => {
                    let until = next.signed_duration_since(Utc::now());
                    until.to_std().unwrap_or(Duration::ZERO).min(self.options.poll_interval)
                }
                Ok(None) => self.options.poll_interval,
                Err(error) => {
                    tracing::warn!(dispatcher = %self.name, %error, "could not read the next due time");
                    self.options.poll_interval
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = changes.changed() => {}
            }
        }
    }

    /// The earliest due time of this dispatcher's pending timers.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let row: Option<(Option<i64>,)> = self
            .db
            .fetch_optional(
                "SELECT MIN(due_at) FROM keel_timers WHERE dispatcher = $1 AND failed IS NULL",
                args![self.name.as_str()],
            )
            .await?;
        Ok(row.and_then(|(micros,)| micros).and_then(DateTime::from_timestamp_micros))
    }

    /// Fires one page of due timers (up to `page_size`, oldest due first) in one
    /// transaction and returns how many it fired (and marked failed).
    ///
    /// This does not take the lease: [`Dispatcher::run`] does. Calling it beside a
    /// running dispatcher (or another caller) is still safe: each timer is fired by
    /// exactly one of them.
    pub async fn fire_due(&self) -> Result<usize> {
        match self.fire_page(false).await {
            Ok(fired) => Ok(fired),
            Err(error) if error.is_retryable() => Err(error),
            Err(error) => {
                tracing::warn!(dispatcher = %self.name, %error, "a page of timers failed; firing them one at a time");
                self.fire_page(true).await
            }
        }
    }

    /// One page in one transaction; `careful` puts each timer under a savepoint and
    /// marks the ones whose message the log refuses as failed instead of failing the page.
    async fn fire_page(&self, careful: bool) -> Result<usize> {
        let mut tx = self.db.begin().await?;
        let now = Utc::now().timestamp_micros();
        let limit = i64::try_from(self.options.page_size).unwrap_or(i64::MAX);
        let rows: Vec<(String, String, i64, String, String)> = tx
            .fetch_all(
                "SELECT id, timer_key, due_at, stream_id, event FROM keel_timers
                 WHERE dispatcher = $1 AND failed IS NULL AND due_at <= $2
                 ORDER BY due_at, timer_key LIMIT $3",
                args![self.name.as_str(), now, limit],
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut fired = Vec::with_capacity(rows.len());
        let mut handled = 0;
        for (id, key, due_at, stream, event) in rows {
            let timer = DueTimer { id, key, due_at, stream, event };
            let outcome = if careful {
                self.fire_carefully(&mut tx, &timer).await?
            } else {
                fire_one(&mut tx, &timer).await?
            };
            match outcome {
                Outcome::Fired { due_at } => {
                    fired.push(due_at);
                    handled += 1;
                }
                Outcome::Failed => handled += 1,
                Outcome::Gone => {}
            }
        }
        tx.commit().await?;
        let at = Utc::now().timestamp_micros();
        let name = self.name.clone();
        let lateness =
            metrics::histogram!("keel_timer_lateness_seconds", "dispatcher" => name.clone());
        for due_at in &fired {
            // Microseconds to seconds; precision far beyond a histogram's buckets.
            #[allow(clippy::cast_precision_loss)]
            lateness.record(at.saturating_sub(*due_at).max(0) as f64 / 1e6);
        }
        metrics::counter!("keel_timers_fired_total", "dispatcher" => name)
            .increment(fired.len() as u64);
        Ok(handled)
    }

    /// [`fire_one`] under a savepoint: a timer whose message cannot be appended is
    /// marked failed (the rest of the page goes on).
    async fn fire_carefully(&self, tx: &mut Tx, timer: &DueTimer) -> Result<Outcome> {
        tx.execute("SAVEPOINT keel_timer", args![]).await?;
        match fire_one(tx, timer).await {
            Ok(outcome) => {
                tx.execute("RELEASE SAVEPOINT keel_timer", args![]).await?;
                Ok(outcome)
            }
            Err(error) if error.is_retryable() => Err(error),
            Err(error) => {
                tx.execute("ROLLBACK TO SAVEPOINT keel_timer", args![]).await?;
                tx.execute("RELEASE SAVEPOINT keel_timer", args![]).await?;
                tracing::error!(dispatcher = %self.name, key = %timer.key, %error, "a timer's message cannot be appended; marked failed");
                tx.execute(
                    "UPDATE keel_timers SET failed = $1 WHERE id = $2",
                    args![error.to_string(), timer.id.as_str()],
                )
                .await?;
                metrics::counter!("keel_timers_failed_total", "dispatcher" => self.name.clone())
                    .increment(1);
                Ok(Outcome::Failed)
            }
        }
    }
}

/// Deletes the timer's row by its scheduling id and, if that took it, appends its
/// message to its stream.
async fn fire_one(tx: &mut Tx, timer: &DueTimer) -> Result<Outcome> {
    let taken =
        tx.execute("DELETE FROM keel_timers WHERE id = $1", args![timer.id.as_str()]).await?;
    if taken == 0 {
        return Ok(Outcome::Gone);
    }
    let event: CloudEvent = codec::from_structured(timer.event.as_bytes())
        .map_err(|e| Error::invalid("event", format!("the stored message does not decode: {e}")))?;
    let stream = StreamId::new(timer.stream.as_str())
        .map_err(|e| Error::invalid("stream", e.to_string()))?;
    tx.append(&stream, ExpectedVersion::Any, &[event]).await?;
    Ok(Outcome::Fired { due_at: timer.due_at })
}
