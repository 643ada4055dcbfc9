//! Projections: read models fed from the log, each change committed with its
//! checkpoint in one transaction, so a crash never applies an event twice or skips one.
//!
//! One runner per projection is active across processes: [`ProjectionRunner::run`]
//! holds the store's lease, renews it while it applies, and stands by again when it is
//! lost. The lease alone cannot rule out an overlap (a holder notices a loss only at its
//! next renewal), so every page's checkpoint write is also a compare-and-set from the
//! cursor the runner last stored: a page whose checkpoint someone else moved meanwhile
//! (another runner, a rebuild's switch) is rolled back whole, and its runner stops.
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
//!
//! A page goes to the projection whole, through [`Projection::apply_batch`], whose
//! default applies each event with [`Projection::apply`]. A projection that writes a
//! page in a few statements (a multi-row upsert) rebuilds several times faster on
//! PostgreSQL, where every statement is a round trip (docs/benchmarks.md). A page in
//! which `apply_batch` finds an unreadable event is rolled back and applied event by
//! event, so the policy above sees which event it was.
//!
//! # Blue/green rebuilds
//!
//! A rebuild never touches the live read model. It builds a new *generation* beside
//! it, in shadow tables: each table the projection declares ([`Projection::tables`])
//! gets an empty twin `<table>__keel_next` with the same columns, constraints and
//! indexes, and the generation its own checkpoint, `projection-rebuild:<name>`, and its
//! own skip records. The projection's `apply` is told which generation it writes
//! through [`Tables`] (with `keel_sql`, `{table}` in its SQL is replaced). Meanwhile
//! the live runner goes on serving and following the log into the live tables.
//!
//! Shadow tables rather than versioned names (`users_orders_v2`), because readers keep
//! querying a table by its one name: nothing in the service's queries, migrations or
//! dashboards learns about generations, and after the switch the new generation simply
//! *is* `users_orders`.
//!
//! When the generation has replayed the log up to its head, it is marked `ready`
//! (`keel_rebuilds`), and the switch happens in ONE transaction, by whoever holds both
//! the projection's lease (`projection:<name>`, so the live runner cannot write past
//! the switch) and the rebuild's (`projection-rebuild:<name>`, so no rebuild writes the
//! generation meanwhile): the rebuild itself when no live runner is running, else the
//! live runner, which looks for a ready generation every second. The switch first
//! applies the events that came in since (the tail), then in the transaction: each
//! live table is dropped and its shadow renamed to its name; the generation's
//! checkpoint becomes the projection's (both moved by compare-and-set, so a writer that
//! moved either meanwhile makes the switch roll back); the generation's skip records
//! become the projection's; the `keel_rebuilds` row goes. Readers see the old tables
//! or the new, never a mix or an empty model.
//!
//! A rebuild interrupted (killed, failed, its lease lost) leaves the live model and its
//! checkpoint as they were: running it again resumes the generation from its own
//! checkpoint, and [`ProjectionRunner::discard_rebuild`] drops it. Progress is reported
//! as [`RebuildProgress`]; `keel status` shows the generation's checkpoint and lag.

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
use crate::subscription::{SubscribeOptions, read_ahead, subscribe};

/// The suffix of a table's name in a generation being rebuilt: `users_orders` is built
/// as `users_orders__keel_next` until the switch renames it.
pub const NEXT_SUFFIX: &str = "__keel_next";

/// The names of a read model's tables in one generation (see the module docs): the
/// live generation's are the declared names, a rebuild's are `<table>__keel_next`.
///
/// ```
/// use keel_store::projection::Tables;
///
/// let next = Tables::next(&["task_stats"]);
/// assert_eq!(next.name("task_stats"), "task_stats__keel_next");
/// assert_eq!(
///     next.expand("UPDATE {task_stats} SET open = {task_stats}.open + 1"),
///     "UPDATE task_stats__keel_next SET open = task_stats__keel_next.open + 1"
/// );
/// assert_eq!(Tables::live(&["task_stats"]).name("task_stats"), "task_stats");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// (declared name, name in this generation).
    names: Vec<(String, String)>,
}

impl Tables {
    /// The live generation: each declared table under its own name.
    pub fn live(declared: &[&str]) -> Self {
        Self { names: declared.iter().map(|t| ((*t).to_owned(), (*t).to_owned())).collect() }
    }

    /// A generation being rebuilt: each declared table as `<table>__keel_next`.
    pub fn next(declared: &[&str]) -> Self {
        Self {
            names: declared
                .iter()
                .map(|t| ((*t).to_owned(), format!("{t}{NEXT_SUFFIX}")))
                .collect(),
        }
    }

    /// The name of the declared table `table` in this generation (any other name as
    /// it is).
    pub fn name<'a>(&'a self, table: &'a str) -> &'a str {
        self.names.iter().find(|(declared, _)| declared == table).map_or(table, |(_, n)| n)
    }

    /// `sql` with each `{table}` of a declared table replaced by its name in this
    /// generation (other braces are left alone).
    pub fn expand<'a>(&self, sql: &'a str) -> std::borrow::Cow<'a, str> {
        let mut sql = std::borrow::Cow::Borrowed(sql);
        for (declared, name) in &self.names {
            let braced = format!("{{{declared}}}");
            if sql.contains(&braced) {
                sql = std::borrow::Cow::Owned(sql.replace(&braced, name));
            }
        }
        sql
    }

    /// Each table as (declared name, name in this generation).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.names.iter().map(|(declared, name)| (declared.as_str(), name.as_str()))
    }
}

/// A read model built from events, in the same database as the log.
#[async_trait]
pub trait Projection<Db: sqlx::Database>: Send + Sync + 'static {
    /// Unique name; the checkpoint is stored as `projection:<name>`.
    fn name(&self) -> &str;

    /// The tables the read model writes (created by the service's migrations). A
    /// rebuild builds a new generation of each beside the live one and switches them
    /// in one transaction (see the module docs); `apply` writes the generation's
    /// [`Tables`].
    fn tables(&self) -> &[&str];

    /// Which events the projection reads (default: all).
    fn filter(&self) -> LogFilter {
        LogFilter::default()
    }

    /// Applies one event to the generation `tables` of the read model, inside the
    /// runner's transaction.
    async fn apply(
        &self,
        conn: &mut Db::Connection,
        tables: &Tables,
        event: &CloudEvent,
    ) -> Result<(), HandlerError>;

    /// Applies a page's events, in log order, to the generation `tables`, inside the
    /// runner's transaction. The default applies each with [`Projection::apply`].
    ///
    /// Override it to write a page in a few statements rather than one per event (a
    /// multi-row upsert of what the page changed): a rebuild replays the whole log
    /// through here, and per-event statements cost a round trip each. When it reports
    /// an event it cannot read ([`HandlerError::unreadable`]), the runner rolls the
    /// page back and applies it again one event at a time with `apply`, so the policy
    /// sees exactly which event it was; `apply` must therefore agree with it.
    async fn apply_batch(
        &self,
        conn: &mut Db::Connection,
        tables: &Tables,
        events: &[&CloudEvent],
    ) -> Result<(), HandlerError> {
        for event in events {
            self.apply(conn, tables, event).await?;
        }
        Ok(())
    }

    /// What the runner does with an event `apply` cannot read (see the module docs;
    /// default: skip and record).
    fn on_unreadable(&self) -> Unreadable {
        Unreadable::Skip
    }
}

/// Progress of a rebuild: events applied so far of the log's total when it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Events applied so far (a resumed rebuild counts those before it resumed).
    pub applied: u64,
    /// Events in the log when the rebuild started.
    pub total: u64,
}

/// Where a blue/green rebuild in progress is (`keel_rebuilds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RebuildState {
    /// The new generation is replaying the log (or was interrupted doing so: running
    /// the rebuild again resumes it).
    Building,
    /// The new generation caught up with the log; the holder of the projection's lease
    /// switches it in.
    Ready,
}

impl RebuildState {
    /// As stored: `building`, `ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Ready => "ready",
        }
    }

    /// From its stored form.
    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "building" => Some(Self::Building),
            "ready" => Some(Self::Ready),
            _ => None,
        }
    }
}

impl std::fmt::Display for RebuildState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`ProjectionRunner::rebuild`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    /// Events in the new generation (a resumed rebuild counts those before it resumed).
    pub applied: u64,
    /// Whether the new generation is live now. `false`: a live runner holds the
    /// projection's lease and switches the ready generation within a second or so
    /// ([`ProjectionRunner::wait_for_switch`] waits for it).
    pub switched: bool,
}

/// How often a standby runner asks for the lease.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often an active runner reads its lag into `keel_projection_lag_events`.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// A filtered projection's lag is counted by reading the matching events after its
/// checkpoint, up to this many (the gauge stops there).
const LAG_SCAN_LIMIT: usize = 1000;

/// How often an active runner looks for a rebuilt generation ready to switch.
const SWITCH_POLL: Duration = Duration::from_secs(1);
/// How long a rebuild waits before resuming after a former holder's late page.
const MOVED_RETRY: Duration = Duration::from_millis(50);

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
///     // After a change to the read model's code: build a new generation beside the
///     // live one, and switch it in once it caught up.
///     let rebuilt = runner.rebuild(|p| eprintln!("{}/{}", p.applied, p.total)).await?;
///     eprintln!("rebuilt from {} events", rebuilt.applied);
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
    /// `apply_batch` found an event it cannot read (which one, applying the page
    /// event by event tells), and the policy skips it.
    BatchUnreadable,
}

/// One generation of the read model: its checkpoint and its tables.
struct Generation {
    key: String,
    tables: Tables,
    /// A rebuild's generation, not the live one.
    rebuilt: bool,
}

/// Events a projection applies per transaction unless told otherwise
/// ([`ProjectionRunner::options`]). A page costs a read, a handful of statements and a
/// commit whatever it holds; a rebuild replays the whole log in pages, and on
/// PostgreSQL pages of 2,000 rebuilt at about 0.6x `keel replay`'s rate where pages
/// of 500 reached 0.35-0.42x (docs/benchmarks.md). A live projection's pages are
/// as large as what came in since the last one, so this only matters catching up.
pub const DEFAULT_BATCH_SIZE: usize = 2_000;

/// How [`ProjectionRunner::follow`] follows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Up to the log's head, then return.
    CatchUp,
    /// Live, until a rebuilt generation is ready to switch in.
    Live,
}

/// How [`ProjectionRunner::follow`] ended.
struct Followed {
    applied: u64,
    switch_ready: bool,
}

impl<L, P> ProjectionRunner<L, P>
where
    L: SqlEventLog,
    P: Projection<L::Db>,
    for<'c> &'c mut <L::Db as sqlx::Database>::Connection: sqlx::Executor<'c, Database = L::Db>,
{
    /// A runner of `projection` on `log`, with default subscription options and
    /// pages of [`DEFAULT_BATCH_SIZE`].
    pub fn new(log: Arc<L>, projection: Arc<P>) -> Self {
        Self {
            log,
            projection,
            options: SubscribeOptions {
                batch_size: DEFAULT_BATCH_SIZE,
                ..SubscribeOptions::default()
            },
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

    /// The checkpoint (and lease) name of a projection's generation being rebuilt.
    pub fn rebuild_checkpoint_name(name: &str) -> String {
        format!("projection-rebuild:{name}")
    }

    fn key(&self) -> String {
        Self::checkpoint_name(self.projection.name())
    }

    fn live(&self) -> Generation {
        Generation {
            key: self.key(),
            tables: Tables::live(self.projection.tables()),
            rebuilt: false,
        }
    }

    fn next(&self) -> Generation {
        Generation {
            key: Self::rebuild_checkpoint_name(self.projection.name()),
            tables: Tables::next(self.projection.tables()),
            rebuilt: true,
        }
    }

    /// Whether [`ProjectionRunner::run`] holds the lease and applies events now (not
    /// standing by).
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    /// Follows the log until `shutdown`, as the only runner of this projection across
    /// processes: stands by while another holds the lease, renews the lease while
    /// applying, and stands by again when the lease is lost or another writer moved
    /// the checkpoint. While active it switches in a rebuilt generation once it is
    /// ready (see the module docs). Failures are logged and retried; it returns at
    /// `shutdown`.
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
            let work = async {
                let live = self.live();
                let mut ignore = |_| {};
                loop {
                    let followed = self.follow(&live, Mode::Live, &mut ignore).await?;
                    if !followed.switch_ready {
                        return Ok(());
                    }
                    self.switch_if_free().await?;
                }
            };
            let ended = tokio::select! {
                biased;
                () = &mut shutdown => Ended::Shutdown,
                () = lease.keep() => Ended::LeaseLost,
                never = self.sample_lag(&key) => match never {},
                result = work => match result {
                    Ok(()) => Ended::Shutdown,
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
        Ok(self.follow(&self.live(), Mode::CatchUp, &mut ignore).await?.applied)
    }

    /// The state of this projection's rebuild, if one is in progress (or was
    /// interrupted).
    pub async fn rebuild_state(&self) -> Result<Option<RebuildState>> {
        let name = self.projection.name();
        Ok(self.log.rebuilds().await?.into_iter().find(|(n, _)| n == name).map(|(_, s)| s))
    }

    /// Builds a new generation of the read model beside the live one by replaying the
    /// log, reporting progress, and switches it in once it caught up (see the module
    /// docs): at once if no live runner holds the projection's lease, else that runner
    /// does it ([`Rebuilt::switched`] is then `false`). Resumes an interrupted rebuild
    /// from its own checkpoint. The live read model and its checkpoint are untouched
    /// until the switch, whatever happens before. Fails with [`StoreError::LeaseHeld`]
    /// while another rebuild of this projection runs. A page an interrupted rebuild
    /// committed late (its commit was in flight when it crashed or lost the lease)
    /// does not fail this one: the compare-and-set of the checkpoint rolls back the
    /// page it meets, and the rebuild resumes after the late one.
    pub async fn rebuild(
        &self,
        mut progress: impl FnMut(RebuildProgress) + Send,
    ) -> Result<Rebuilt> {
        let name = self.projection.name().to_owned();
        if self.projection.tables().is_empty() {
            return Err(StoreError::Config(format!(
                "projection `{name}` declares no tables (Projection::tables): a rebuild \
                 builds a new generation of each table beside the live one"
            )));
        }
        let next = self.next();
        let Some(mut lease) = self.log.try_lease(&next.key).await? else {
            return Err(StoreError::LeaseHeld(next.key));
        };
        let work = async {
            if self.rebuild_state().await?.is_none() {
                self.start_generation(&next).await?;
            }
            let total = self.log.count_after(Cursor::START, Position(u64::MAX)).await?;
            let applied = loop {
                let stored = self.log.checkpoint(&next.key).await?;
                let before = match stored {
                    Some(at) => {
                        total.saturating_sub(self.log.count_after(at, Position(u64::MAX)).await?)
                    }
                    None => 0,
                };
                progress(RebuildProgress { applied: before, total });
                let mut report = |applied: u64| {
                    let applied = before + applied;
                    progress(RebuildProgress { applied, total: total.max(applied) });
                };
                match self.follow_from(&next, stored, Mode::CatchUp, &mut report).await {
                    Ok(followed) => break before + followed.applied,
                    // This call holds the rebuild's lease, so the page that moved the
                    // generation's checkpoint is a former holder's, committed late (it
                    // crashed or lost the lease with a commit in flight). The
                    // compare-and-set rolled this call's page back: resume from there.
                    Err(error @ StoreError::CheckpointMoved { .. }) => {
                        tracing::warn!(projection = %name, %error, "a former rebuild's page landed late; resuming after it");
                        tokio::time::sleep(MOVED_RETRY).await;
                    }
                    Err(error) => return Err(error),
                }
            };
            let mut tx = self.log.begin().await?;
            self.log.set_rebuild_in(&mut tx, &name, Some(RebuildState::Ready)).await?;
            tx.commit().await?;
            tracing::info!(projection = %name, "the rebuilt generation caught up; switching");
            let switched = match self.log.try_lease(&self.key()).await? {
                Some(mut live) => {
                    let switched = tokio::select! {
                        biased;
                        () = live.keep() => Err(StoreError::LeaseHeld(self.key())),
                        switched = self.switch() => switched,
                    };
                    live.release().await;
                    switched?;
                    true
                }
                None => false,
            };
            Ok(Rebuilt { applied, switched })
        };
        let result = tokio::select! {
            biased;
            () = lease.keep() => Err(StoreError::LeaseHeld(next.key.clone())),
            result = work => result,
        };
        lease.release().await;
        result
    }

    /// After a [`rebuild`](Self::rebuild) that left the switch to the live runner:
    /// waits until the generation is switched in, by that runner or, if it stopped
    /// meanwhile, by this call.
    pub async fn wait_for_switch(&self) -> Result<()> {
        loop {
            if self.rebuild_state().await? != Some(RebuildState::Ready) {
                return Ok(());
            }
            if let Some(mut live) = self.log.try_lease(&self.key()).await? {
                let switched = tokio::select! {
                    biased;
                    () = live.keep() => Err(StoreError::LeaseHeld(self.key())),
                    switched = self.switch_if_free() => switched,
                };
                live.release().await;
                switched?;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Drops an interrupted (or unwanted) rebuild's generation: its tables, checkpoint
    /// and skip records, in one transaction; the live read model is untouched. Fails
    /// with [`StoreError::LeaseHeld`] while a rebuild of this projection runs. Returns
    /// whether there was a generation to drop.
    pub async fn discard_rebuild(&self) -> Result<bool> {
        let next = self.next();
        let Some(lease) = self.log.try_lease(&next.key).await? else {
            return Err(StoreError::LeaseHeld(next.key));
        };
        let discard = async {
            let existed = self.rebuild_state().await?.is_some();
            let mut tx = self.log.begin().await?;
            for (_, table) in next.tables.iter() {
                self.log.drop_table_in(&mut tx, table).await?;
            }
            self.log.delete_checkpoint_in(&mut tx, &next.key).await?;
            self.log.clear_skips_in(&mut tx, &next.key).await?;
            self.log.set_rebuild_in(&mut tx, self.projection.name(), None).await?;
            tx.commit().await?;
            Ok(existed)
        };
        let result = discard.await;
        lease.release().await;
        result
    }

    /// Creates the new generation's empty tables, without checkpoint or skip
    /// records, and marks the rebuild `building`, in one transaction.
    async fn start_generation(&self, next: &Generation) -> Result<()> {
        let mut tx = self.log.begin().await?;
        for (live, shadow) in next.tables.iter() {
            self.log.create_shadow_table_in(&mut tx, live, shadow).await?;
        }
        self.log.delete_checkpoint_in(&mut tx, &next.key).await?;
        self.log.clear_skips_in(&mut tx, &next.key).await?;
        self.log
            .set_rebuild_in(&mut tx, self.projection.name(), Some(RebuildState::Building))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live runner's switch: with the projection's lease held, takes the
    /// rebuild's lease too (none is running then) and switches; leaves it for later
    /// if a rebuild runs.
    async fn switch_if_free(&self) -> Result<()> {
        let next = self.next();
        let Some(mut lease) = self.log.try_lease(&next.key).await? else {
            return Ok(());
        };
        let switched = tokio::select! {
            biased;
            () = lease.keep() => Err(StoreError::LeaseHeld(next.key.clone())),
            switched = async {
                if self.rebuild_state().await? == Some(RebuildState::Ready) {
                    self.switch().await?;
                }
                Ok(())
            } => switched,
        };
        lease.release().await;
        switched
    }

    /// Switches the ready generation in; the caller holds the projection's lease and
    /// the rebuild's. Applies the tail (what came in since the generation caught up),
    /// then, in one transaction: the live tables are replaced by the generation's, the
    /// generation's checkpoint becomes the projection's (both by compare-and-set), its
    /// skip records the projection's, and the rebuild's row goes.
    async fn switch(&self) -> Result<()> {
        let (live, next) = (self.live(), self.next());
        let mut ignore = |_| {};
        self.follow(&next, Mode::CatchUp, &mut ignore).await?;
        let live_at = self.log.checkpoint(&live.key).await?;
        let next_at = self.log.checkpoint(&next.key).await?;
        let at = next_at.unwrap_or(Cursor::START);
        let mut tx = self.log.begin().await?;
        self.log.move_checkpoint_in(&mut tx, &next.key, next_at, at).await?;
        self.log.delete_checkpoint_in(&mut tx, &next.key).await?;
        self.log.move_checkpoint_in(&mut tx, &live.key, live_at, at).await?;
        for (table, shadow) in next.tables.iter() {
            self.log.swap_table_in(&mut tx, table, shadow).await?;
        }
        self.log.move_skips_in(&mut tx, &next.key, &live.key).await?;
        self.log.set_rebuild_in(&mut tx, self.projection.name(), None).await?;
        tx.commit().await?;
        tracing::info!(projection = %live.key, at = %at, "switched in the rebuilt generation");
        metrics::counter!("keel_projection_switches_total", "projection" => live.key).increment(1);
        Ok(())
    }

    /// Applies pages to `generation` from its checkpoint: up to the head
    /// ([`Mode::CatchUp`]), or live until a rebuilt generation is ready to switch in
    /// ([`Mode::Live`], which looks every [`SWITCH_POLL`]).
    async fn follow(
        &self,
        generation: &Generation,
        mode: Mode,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Followed> {
        let stored = self.log.checkpoint(&generation.key).await?;
        self.follow_from(generation, stored, mode, progress).await
    }

    /// [`follow`](Self::follow) from `stored`, the generation's checkpoint as the
    /// caller read it: a page fails with [`StoreError::CheckpointMoved`] if it moved
    /// since.
    async fn follow_from(
        &self,
        generation: &Generation,
        mut stored: Option<Cursor>,
        mode: Mode,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Followed> {
        let key = &generation.key;
        let from = stored.unwrap_or(Cursor::START);
        let options =
            SubscribeOptions { stop_when_caught_up: mode == Mode::CatchUp, ..self.options };
        let log: Arc<dyn EventLog> = self.log.clone();
        // The next page is read while this one is applied.
        let mut pages = read_ahead(subscribe(log, from, self.projection.filter(), options));
        let mut applied = 0u64;
        // The first look after a poll interval: a switch left for later (a rebuild
        // still holds its lease) is not retried at once.
        let mut look =
            tokio::time::interval_at(tokio::time::Instant::now() + SWITCH_POLL, SWITCH_POLL);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let page = if mode == Mode::Live {
                tokio::select! {
                    // Cancel-safe: the subscription keeps its read in flight.
                    page = pages.next() => page,
                    _ = look.tick() => {
                        match self.rebuild_state().await {
                            Ok(Some(RebuildState::Ready)) => {
                                return Ok(Followed { applied, switch_ready: true });
                            }
                            Ok(_) => {}
                            Err(error) => {
                                tracing::warn!(projection = %key, %error, "could not look for a rebuilt generation");
                            }
                        }
                        continue;
                    }
                }
            } else {
                pages.next().await
            };
            let Some(page) = page else { break };
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(projection = %key, %error, "reading the log failed; retrying");
                    continue;
                }
            };
            let mut backoff = Duration::from_millis(50);
            let mut skips = HashMap::new();
            // Whole pages go through `apply_batch`; one with an event the projection
            // cannot read is applied event by event, to find it.
            let mut batched = true;
            loop {
                match self.apply_page(generation, stored, &page, &skips, batched).await {
                    Ok(()) => break,
                    Err(PageError::Moved(error)) => return Err(error),
                    Err(PageError::BatchUnreadable) => batched = false,
                    Err(PageError::Unreadable { index, label, reason }) => {
                        let event = &page.events[index];
                        tracing::warn!(projection = %key, event = %event.event.id(), position = %event.cursor, %reason, "skipping an event the projection cannot read");
                        count_skip(key, label);
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
        Ok(Followed { applied, switch_ready: false })
    }

    /// One transaction: every event of the page, then the checkpoint, moved from
    /// `stored` (where this runner left it) to the page's last event.
    /// The events at the indexes in `skips` are recorded as skipped (with the reason)
    /// instead of applied. `batched`: the page (which then has no skips) in one
    /// [`Projection::apply_batch`]; else each event with [`Projection::apply`].
    async fn apply_page(
        &self,
        generation: &Generation,
        stored: Option<Cursor>,
        page: &Page,
        skips: &HashMap<usize, String>,
        batched: bool,
    ) -> Result<(), PageError> {
        let failed = |e: StoreError| PageError::Failed(e.to_string());
        let key = generation.key.as_str();
        let Some(last) = page.events.last() else { return Ok(()) };
        let mut tx = self.log.begin().await.map_err(failed)?;
        if generation.rebuilt {
            // A rebuild's page: after a crash the rebuild resumes from its checkpoint,
            // so it need not wait for the disk (see `SqlEventLog::relax_commit_in`).
            self.log.relax_commit_in(&mut tx).await.map_err(failed)?;
        }
        if batched && skips.is_empty() {
            let events: Vec<&CloudEvent> = page.events.iter().map(|e| &e.event).collect();
            if let Err(e) = self.projection.apply_batch(&mut tx, &generation.tables, &events).await
            {
                if e.is_unreadable() && self.projection.on_unreadable() != Unreadable::Stop {
                    return Err(PageError::BatchUnreadable);
                }
                return Err(PageError::Failed(format!(
                    "page {}..={}: {e}",
                    page.events[0].cursor, last.cursor
                )));
            }
        } else {
            self.apply_each(&mut tx, generation, page, skips).await?;
        }
        match self.log.move_checkpoint_in(&mut tx, key, stored, last.cursor).await {
            Ok(()) => {}
            Err(error @ StoreError::CheckpointMoved { .. }) => return Err(PageError::Moved(error)),
            Err(error) => return Err(failed(error)),
        }
        tx.commit().await.map_err(|e| failed(e.into()))
    }

    /// The page's events one at a time in `conn`, recording those in `skips` as skipped.
    async fn apply_each(
        &self,
        conn: &mut <L::Db as sqlx::Database>::Connection,
        generation: &Generation,
        page: &Page,
        skips: &HashMap<usize, String>,
    ) -> Result<(), PageError> {
        let failed = |e: StoreError| PageError::Failed(e.to_string());
        let key = generation.key.as_str();
        for (index, event) in page.events.iter().enumerate() {
            if let Some(reason) = skips.get(&index) {
                self.log.record_skip_in(conn, key, event, reason).await.map_err(failed)?;
                continue;
            }
            if let Err(e) = self.projection.apply(conn, &generation.tables, &event.event).await {
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
        Ok(())
    }
}
