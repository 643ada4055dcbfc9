//! Projections: read models fed from the log, each change committed with its
//! checkpoint in one transaction, so a crash never applies an event twice or skips one.
//!
//! One runner per projection is active across processes: [`ProjectionRunner::run`]
//! holds the store's lease, renews it while it applies, and stands by again when it is
//! lost. The lease alone cannot rule out an overlap (a holder notices a loss only at its
//! next renewal), so every page's checkpoint write is also a compare-and-set from the
//! cursor the runner last stored: a page whose checkpoint someone else moved meanwhile
//! (another runner, a rebuild) is rolled back whole, and its runner stops.
//!
//! An event the projection cannot read (its `apply` returns
//! [`HandlerError::unreadable`], as every decode error converts to) meets the
//! projection's [`Unreadable`] policy, [`Projection::on_unreadable`]. The default is
//! [`Unreadable::Skip`]: a read model is derived data, and a projection stopped for
//! good at one old or foreign event (the README's hand-written `keel publish`) takes
//! the read side down for every event after it, while a skip is recorded with the
//! event and the reason in `keel_skipped` (in the page's transaction), counted in
//! `keel status` and in `keel_events_skipped_total{subscriber, reason}`, and undone by
//! a rebuild once an upcaster reads the event. The page is applied again without the
//! event, so nothing the event's `apply` wrote before failing is kept.
//! [`Unreadable::Stop`] keeps retrying the page instead (the read model stops there
//! until the code can read the event); a projection has no queue to dead-letter to,
//! so [`Unreadable::DeadLetter`] skips and records as `Skip` does.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use keel_bus::consumer::count_skip;
use keel_bus::{HandlerError, Unreadable};
use keel_core::{CloudEvent, Position};
use tokio::sync::watch;

use crate::error::{Result, StoreError};
use crate::log::{Cursor, EventLog, LogFilter, Page};
use crate::sql::SqlEventLog;
use crate::subscription::{SubscribeOptions, subscribe};

/// A read model built from events, in the same database as the log.
#[async_trait]
pub trait Projection<Db: sqlx::Database>: Send + Sync + 'static {
    /// Unique name; the checkpoint is stored as `projection:<name>`.
    fn name(&self) -> &str;

    /// Which events the projection reads (default: all).
    fn filter(&self) -> LogFilter {
        LogFilter::default()
    }

    /// Applies one event to the read model inside the runner's transaction.
    async fn apply(
        &self,
        conn: &mut Db::Connection,
        event: &CloudEvent,
    ) -> Result<(), HandlerError>;

    /// Empties the read model (before a rebuild), inside the runner's transaction.
    async fn reset(&self, conn: &mut Db::Connection) -> Result<(), HandlerError>;

    /// What the runner does with an event `apply` cannot read (see the module docs;
    /// default: skip and record).
    fn on_unreadable(&self) -> Unreadable {
        Unreadable::Skip
    }
}

/// Progress of a rebuild: events applied so far of the log's total when it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Events applied so far.
    pub applied: u64,
    /// Events in the log when the rebuild started.
    pub total: u64,
}

/// How often a standby runner asks for the lease.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often an active runner reads its lag into `keel_projection_lag_events`.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// A filtered projection's lag is counted by reading the matching events after its
/// checkpoint, up to this many (the gauge stops there).
const LAG_SCAN_LIMIT: usize = 1000;

/// Runs a projection. See the module docs.
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_store::{Projection, ProjectionRunner, SqlEventLog};
///
/// async fn serve<L, P>(
///     log: Arc<L>,
///     projection: Arc<P>,
///     shutdown: impl Future<Output = ()> + Send,
/// ) -> keel_store::Result<()>
/// where
///     L: SqlEventLog,
///     P: Projection<L::Db>,
///     for<'c> &'c mut <L::Db as sqlx::Database>::Connection:
///         sqlx::Executor<'c, Database = L::Db>,
/// {
///     let runner = ProjectionRunner::new(log, projection);
///     // After a change to the read model's shape: empty it and replay the whole log.
///     let applied = runner.rebuild(|p| eprintln!("{}/{}", p.applied, p.total)).await?;
///     eprintln!("rebuilt from {applied} events");
///     // Then follow the log (one active runner per projection across processes).
///     runner.run(shutdown).await
/// }
/// ```
pub struct ProjectionRunner<L, P> {
    log: Arc<L>,
    projection: Arc<P>,
    options: SubscribeOptions,
    active: watch::Sender<bool>,
}

impl<L, P> std::fmt::Debug for ProjectionRunner<L, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("options", &self.options)
            .field("active", &*self.active.borrow())
            .finish_non_exhaustive()
    }
}

/// Why a runner's active phase ended.
enum Ended {
    Shutdown,
    LeaseLost,
    Failed(StoreError),
}

/// Why a page was not applied.
enum PageError {
    /// The checkpoint is not where this runner stored it: another writer is active.
    Moved(StoreError),
    /// The projection or the database failed; the page may succeed when tried again.
    Failed(String),
    /// The event at this index of the page cannot be read, and the policy skips it.
    Unreadable { index: usize, label: &'static str, reason: String },
}

impl<L, P> ProjectionRunner<L, P>
where
    L: SqlEventLog,
    P: Projection<L::Db>,
    for<'c> &'c mut <L::Db as sqlx::Database>::Connection: sqlx::Executor<'c, Database = L::Db>,
{
    /// A runner of `projection` on `log`, with default subscription options.
    pub fn new(log: Arc<L>, projection: Arc<P>) -> Self {
        Self {
            log,
            projection,
            options: SubscribeOptions::default(),
            active: watch::Sender::new(false),
        }
    }

    #[must_use]
    /// Sets how the runner reads the log (poll interval, page size).
    pub fn options(mut self, options: SubscribeOptions) -> Self {
        self.options = options;
        self
    }

    /// The checkpoint (and lease) name of a projection.
    pub fn checkpoint_name(name: &str) -> String {
        format!("projection:{name}")
    }

    fn key(&self) -> String {
        Self::checkpoint_name(self.projection.name())
    }

    /// Whether [`ProjectionRunner::run`] holds the lease and applies events now (not
    /// standing by).
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    /// Follows the log until `shutdown`, as the only runner of this projection across
    /// processes: stands by while another holds the lease, renews the lease while
    /// applying, and stands by again when the lease is lost or another writer moved
    /// the checkpoint. Failures are logged and retried; it returns at `shutdown`.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let key = self.key();
        loop {
            let mut lease = loop {
                tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(()),
                    lease = self.log.try_lease(&key) => match lease {
                        Ok(Some(lease)) => break lease,
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(projection = %key, %error, "could not ask for the lease")
                        }
                    },
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(STANDBY_POLL) => {}
                }
            };
            tracing::info!(projection = %key, "projection runner is active");
            self.active.send_replace(true);
            let mut ignore = |_| {};
            let ended = tokio::select! {
                biased;
                () = &mut shutdown => Ended::Shutdown,
                () = lease.keep() => Ended::LeaseLost,
                never = self.sample_lag(&key) => match never {},
                result = self.follow(false, &mut ignore) => match result {
                    Ok(_) => Ended::Shutdown,
                    Err(error) => Ended::Failed(error),
                },
            };
            self.active.send_replace(false);
            lease.release().await;
            match ended {
                Ended::Shutdown => return Ok(()),
                Ended::LeaseLost => {
                    tracing::warn!(projection = %key, "lost the projection's lease; standing by");
                }
                Ended::Failed(error @ StoreError::CheckpointMoved { .. }) => {
                    tracing::warn!(projection = %key, %error, "another runner is active; standing by");
                }
                Ended::Failed(error) => {
                    tracing::warn!(projection = %key, %error, "projection runner failed; retrying");
                }
            }
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(STANDBY_POLL) => {}
            }
        }
    }

    /// Reads the lag into `keel_projection_lag_events{projection}` every
    /// [`LAG_INTERVAL`], for ever: the events after the checkpoint that the projection
    /// wants (all of the log's when it has no filter; else counted up to
    /// [`LAG_SCAN_LIMIT`]).
    async fn sample_lag(&self, key: &str) -> std::convert::Infallible {
        let gauge = metrics::gauge!("keel_projection_lag_events", "projection" => key.to_owned());
        let filter = self.projection.filter();
        let mut ticks = tokio::time::interval(LAG_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let lag = async {
                let from = self.log.checkpoint(key).await?.unwrap_or(Cursor::START);
                if filter == LogFilter::default() {
                    self.log.count_after(from, Position(u64::MAX)).await
                } else {
                    let page = self.log.read_after(from, &filter, LAG_SCAN_LIMIT).await?;
                    Ok(page.events.len() as u64)
                }
            };
            match lag.await {
                #[allow(clippy::cast_precision_loss, reason = "a gauge is a float")]
                Ok(lag) => gauge.set(lag as f64),
                Err(error) => tracing::debug!(projection = %key, %error, "could not read the lag"),
            }
        }
    }

    /// Applies everything up to now and returns how many events it applied. The
    /// caller should make sure no other runner of this projection is active; if one
    /// is, the checkpoint's compare-and-set stops this call with
    /// [`StoreError::CheckpointMoved`] rather than apply a page twice.
    pub async fn catch_up(&self) -> Result<u64> {
        let mut ignore = |_| {};
        self.follow(true, &mut ignore).await
    }

    /// Resets the read model and its checkpoint in one transaction, then replays the
    /// whole log into it, reporting progress. Fails with [`StoreError::LeaseHeld`]
    /// while a runner of this projection is active elsewhere (or if the lease, renewed
    /// meanwhile, is lost).
    pub async fn rebuild(&self, mut progress: impl FnMut(RebuildProgress) + Send) -> Result<u64> {
        let key = self.key();
        let Some(mut lease) = self.log.try_lease(&key).await? else {
            return Err(StoreError::LeaseHeld(key));
        };
        let work = async {
            let mut tx = self.log.begin().await?;
            self.projection
                .reset(&mut tx)
                .await
                .map_err(|e| StoreError::InvalidEvent(format!("reset failed: {e}")))?;
            self.log.delete_checkpoint_in(&mut tx, &key).await?;
            self.log.clear_skips_in(&mut tx, &key).await?;
            tx.commit().await?;
            let total = self.log.count_after(Cursor::START, Position(u64::MAX)).await?;
            progress(RebuildProgress { applied: 0, total });
            let mut report =
                |applied| progress(RebuildProgress { applied, total: total.max(applied) });
            self.follow(true, &mut report).await
        };
        let result = tokio::select! {
            biased;
            () = lease.keep() => Err(StoreError::LeaseHeld(key.clone())),
            result = work => result,
        };
        lease.release().await;
        result
    }

    async fn follow(
        &self,
        stop_when_caught_up: bool,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64> {
        let key = self.key();
        let mut stored = self.log.checkpoint(&key).await?;
        let from = stored.unwrap_or(Cursor::START);
        let options = SubscribeOptions { stop_when_caught_up, ..self.options };
        let log: Arc<dyn EventLog> = self.log.clone();
        let mut pages = subscribe(log, from, self.projection.filter(), options);
        let mut applied = 0u64;
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(projection = %key, %error, "reading the log failed; retrying");
                    continue;
                }
            };
            let mut backoff = Duration::from_millis(50);
            let mut skips = HashMap::new();
            loop {
                match self.apply_page(&key, stored, &page, &skips).await {
                    Ok(()) => break,
                    Err(PageError::Moved(error)) => return Err(error),
                    Err(PageError::Unreadable { index, label, reason }) => {
                        let event = &page.events[index];
                        tracing::warn!(projection = %key, event = %event.event.id(), position = %event.cursor, %reason, "skipping an event the projection cannot read");
                        count_skip(&key, label);
                        skips.insert(index, reason);
                    }
                    Err(PageError::Failed(error)) => {
                        tracing::error!(projection = %key, %error, ?backoff, "projection failed; retrying the page");
                        metrics::counter!("keel_projection_failures_total", "projection" => key.clone()).increment(1);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            if let Some(last) = page.events.last() {
                stored = Some(last.cursor);
            }
            applied += page.events.len() as u64;
            metrics::counter!("keel_projection_applied_total", "projection" => key.clone())
                .increment(page.events.len() as u64);
            progress(applied);
        }
        Ok(applied)
    }

    /// One transaction: every event of the page, then the checkpoint, moved from
    /// `stored` (where this runner left it) to the page's last event.
    /// The events at the indexes in `skips` are recorded as skipped (with the reason)
    /// instead of applied.
    async fn apply_page(
        &self,
        key: &str,
        stored: Option<Cursor>,
        page: &Page,
        skips: &HashMap<usize, String>,
    ) -> Result<(), PageError> {
        let failed = |e: StoreError| PageError::Failed(e.to_string());
        let Some(last) = page.events.last() else { return Ok(()) };
        let mut tx = self.log.begin().await.map_err(failed)?;
        for (index, event) in page.events.iter().enumerate() {
            if let Some(reason) = skips.get(&index) {
                self.log.record_skip_in(&mut tx, key, event, reason).await.map_err(failed)?;
                continue;
            }
            if let Err(e) = self.projection.apply(&mut tx, &event.event).await {
                if e.is_unreadable() && self.projection.on_unreadable() != Unreadable::Stop {
                    return Err(PageError::Unreadable {
                        index,
                        label: e.unreadable_reason(),
                        reason: e.to_string(),
                    });
                }
                return Err(PageError::Failed(format!(
                    "event {} at {}: {e}",
                    event.event.id(),
                    event.cursor
                )));
            }
        }
        match self.log.move_checkpoint_in(&mut tx, key, stored, last.cursor).await {
            Ok(()) => {}
            Err(error @ StoreError::CheckpointMoved { .. }) => return Err(PageError::Moved(error)),
            Err(error) => return Err(failed(error)),
        }
        tx.commit().await.map_err(|e| failed(e.into()))
    }
}
