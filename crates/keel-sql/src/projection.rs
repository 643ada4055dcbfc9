//! Projections written once for both stores.
//!
//! [`keel_store::Projection`] is generic over the sqlx database; a service on [`Db`]
//! implements [`Projection`] instead, whose `apply` gets a [`Conn`] (the runner's open
//! transaction, with the same query methods as [`crate::Tx`], writing the generation of
//! the read model the runner builds: live, or rebuilt beside it). A
//! [`ProjectionSpec`] is a registered projection with its options: it runs one
//! (leased, checkpointed) [`ProjectionRunner`] on whichever store the [`Db`] is.

use std::sync::Arc;

use async_trait::async_trait;
use keel_bus::HandlerError;
use keel_core::CloudEvent;
use keel_store::{
    LogFilter, ProjectionRunner, RebuildProgress, RebuildState, Rebuilt, SubscribeOptions, Tables,
};
#[cfg(feature = "postgres")]
use sqlx::{PgConnection, Postgres};
#[cfg(feature = "sqlite")]
use sqlx::{Sqlite, SqliteConnection};

use crate::db::{Arg, Db, Dialect, Row, bind_all};
use crate::error::Result;

/// The projection runner's open transaction on either store, writing one generation
/// of the read model. Statements use the `$1..$n` placeholders and the argument types
/// of [`crate::args!`], as on [`crate::Tx`], and name the projection's tables in braces,
/// `{users_orders}`: the runner writes them as the generation's names (the live table,
/// or its twin being rebuilt, see [`Projection::tables`]). Other braces are left alone.
#[derive(Debug)]
pub struct Conn<'a> {
    inner: Inner<'a>,
    tables: &'a Tables,
}

#[derive(Debug)]
enum Inner<'a> {
    #[cfg(feature = "sqlite")]
    Sqlite(&'a mut SqliteConnection),
    #[cfg(feature = "postgres")]
    Postgres(&'a mut PgConnection),
}

impl Conn<'_> {
    /// Which SQL dialect this connection speaks.
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            #[cfg(feature = "sqlite")]
            Inner::Sqlite(_) => Dialect::Sqlite,
            #[cfg(feature = "postgres")]
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The name of the projection's table `table` in the generation being written
    /// (for SQL built without the `{table}` form).
    pub fn table<'t>(&'t self, table: &'t str) -> &'t str {
        self.tables.name(table)
    }

    /// Runs a statement; returns the number of rows it touched.
    pub async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64> {
        let sql = self.tables.expand(sql);
        Ok(match &mut self.inner {
            #[cfg(feature = "sqlite")]
            Inner::Sqlite(conn) => bind_all!(sqlite: sqlx::query::<Sqlite>(&sql), args)
                .execute(&mut **conn)
                .await?
                .rows_affected(),
            #[cfg(feature = "postgres")]
            Inner::Postgres(conn) => bind_all!(postgres: sqlx::query::<Postgres>(&sql), args)
                .execute(&mut **conn)
                .await?
                .rows_affected(),
        })
    }

    /// One row or none.
    pub async fn fetch_optional<T: Row>(&mut self, sql: &str, args: Vec<Arg>) -> Result<Option<T>> {
        let sql = self.tables.expand(sql);
        Ok(match &mut self.inner {
            #[cfg(feature = "sqlite")]
            Inner::Sqlite(conn) => {
                bind_all!(sqlite: sqlx::query_as::<Sqlite, T>(&sql), args)
                    .fetch_optional(&mut **conn)
                    .await?
            }
            #[cfg(feature = "postgres")]
            Inner::Postgres(conn) => {
                bind_all!(postgres: sqlx::query_as::<Postgres, T>(&sql), args)
                    .fetch_optional(&mut **conn)
                    .await?
            }
        })
    }

    /// Every row.
    pub async fn fetch_all<T: Row>(&mut self, sql: &str, args: Vec<Arg>) -> Result<Vec<T>> {
        let sql = self.tables.expand(sql);
        Ok(match &mut self.inner {
            #[cfg(feature = "sqlite")]
            Inner::Sqlite(conn) => {
                bind_all!(sqlite: sqlx::query_as::<Sqlite, T>(&sql), args)
                    .fetch_all(&mut **conn)
                    .await?
            }
            #[cfg(feature = "postgres")]
            Inner::Postgres(conn) => {
                bind_all!(postgres: sqlx::query_as::<Postgres, T>(&sql), args)
                    .fetch_all(&mut **conn)
                    .await?
            }
        })
    }
}

/// A read model in the service's database, fed from the log: every event the
/// [`filter`](Projection::filter) selects is applied in log order, each page of
/// events committed with the projection's checkpoint (`projection:<name>`) in one
/// transaction, so a crash never applies an event twice or skips one.
///
/// The projection declares its [`tables`](Projection::tables) (created by the
/// service's migrations) and names them in braces in its SQL: a rebuild builds a new
/// generation of each beside the live one while the live one keeps serving, and
/// switches it in one transaction once it caught up (see [`ProjectionSpec::rebuild`]).
///
/// ```
/// use keel_bus::HandlerError;
/// use keel_core::CloudEvent;
/// use keel_sql::{Conn, Projection, args};
/// use keel_store::LogFilter;
///
/// /// How many events each stream category has seen.
/// struct Counts;
///
/// #[async_trait::async_trait]
/// impl Projection for Counts {
///     fn name(&self) -> &str {
///         "counts"
///     }
///
///     fn tables(&self) -> &[&str] {
///         &["counts"]
///     }
///
///     fn filter(&self) -> LogFilter {
///         LogFilter::topic("note")
///     }
///
///     async fn apply(&self, conn: &mut Conn<'_>, event: &CloudEvent) -> Result<(), HandlerError> {
///         let sql = "INSERT INTO {counts} AS c (ty, n) VALUES ($1, 1)
///                    ON CONFLICT (ty) DO UPDATE SET n = c.n + 1";
///         conn.execute(sql, args![event.ty()]).await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Unique name (`users-orders`); the checkpoint and lease are `projection:<name>`.
    fn name(&self) -> &str;

    /// The tables of the read model, as the service's migrations create them; the
    /// projection's SQL names each in braces (`{users_orders}`) and reads and writes
    /// no other table.
    fn tables(&self) -> &[&str];

    /// Which events the projection reads (default: all).
    fn filter(&self) -> LogFilter {
        LogFilter::default()
    }

    /// Applies one event inside the runner's transaction. A transient error retries
    /// the page; an event it cannot read ([`HandlerError::unreadable`], what decode
    /// errors convert to) is skipped and recorded (`keel_skipped`).
    async fn apply(&self, conn: &mut Conn<'_>, event: &CloudEvent) -> Result<(), HandlerError>;

    /// Applies a page's events in log order inside the runner's transaction; the
    /// default applies each with [`Projection::apply`]. Override it to write a page in
    /// a few statements (a multi-row upsert of what the page changed) rather than one
    /// round trip per event: a rebuild replays the whole log through here. A page in
    /// which it reports an unreadable event is applied again event by event with
    /// `apply`, which finds the event for the skip policy (see
    /// [`keel_store::Projection::apply_batch`]).
    async fn apply_batch(
        &self,
        conn: &mut Conn<'_>,
        events: &[&CloudEvent],
    ) -> Result<(), HandlerError> {
        for event in events {
            self.apply(conn, event).await?;
        }
        Ok(())
    }
}

/// A registered projection and how it runs: what a service hands its runner, what
/// `<bin> projections rebuild NAME` rebuilds. Options grow here (the page size today).
#[derive(Clone)]
pub struct ProjectionSpec {
    projection: Arc<dyn Projection>,
    options: SubscribeOptions,
}

impl std::fmt::Debug for ProjectionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionSpec")
            .field("name", &self.name())
            .field("options", &self.options)
            .finish()
    }
}

impl<P: Projection> From<P> for ProjectionSpec {
    fn from(projection: P) -> Self {
        Self::new(projection)
    }
}

/// Runs `$call` on a [`ProjectionRunner`] of the spec on whichever store `$db` is.
macro_rules! on_runner {
    ($spec:expr, $db:expr, |$runner:ident| $call:expr) => {
        match $db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(log) => {
                let $runner = ProjectionRunner::new(
                    Arc::new(log.clone()),
                    Arc::new(Adapter($spec.projection.clone())),
                )
                .options($spec.options);
                $call
            }
            #[cfg(feature = "postgres")]
            Db::Postgres(log) => {
                let $runner = ProjectionRunner::new(
                    Arc::new(log.clone()),
                    Arc::new(Adapter($spec.projection.clone())),
                )
                .options($spec.options);
                $call
            }
        }
    };
}

impl ProjectionSpec {
    /// `projection` with the default options.
    pub fn new(projection: impl Projection) -> Self {
        Self {
            projection: Arc::new(projection),
            options: SubscribeOptions {
                batch_size: keel_store::projection::DEFAULT_BATCH_SIZE,
                ..SubscribeOptions::default()
            },
        }
    }

    /// Events applied per transaction (default
    /// [`keel_store::projection::DEFAULT_BATCH_SIZE`], 2,000; at least 1).
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.options.batch_size = events.max(1);
        self
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        self.projection.name()
    }

    /// The checkpoint (and lease) this projection keeps: `projection:<name>`.
    pub fn checkpoint_name(&self) -> String {
        format!("projection:{}", self.name())
    }

    /// The checkpoint (and lease) of a generation being rebuilt:
    /// `projection-rebuild:<name>`.
    pub fn rebuild_checkpoint_name(&self) -> String {
        format!("projection-rebuild:{}", self.name())
    }

    /// Follows the log until `shutdown`, as the only active runner of this projection
    /// across processes (see [`ProjectionRunner::run`]: the others stand by); switches
    /// in a rebuilt generation once it is ready.
    pub async fn run(
        &self,
        db: &Db,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        on_runner!(self, db, |runner| runner.run(shutdown).await?);
        Ok(())
    }

    /// Applies everything up to now; returns how many events it applied. Make sure
    /// no runner of this projection is active meanwhile (see
    /// [`ProjectionRunner::catch_up`]).
    pub async fn catch_up(&self, db: &Db) -> Result<u64> {
        Ok(on_runner!(self, db, |runner| runner.catch_up().await?))
    }

    /// Builds a new generation of the read model beside the live one, which keeps
    /// serving and following the log meanwhile, reporting progress; once it caught
    /// up, switches it in (one transaction), or leaves the switch to the service's
    /// running replica that holds the projection ([`Rebuilt::switched`] is then
    /// `false`; see [`ProjectionSpec::wait_for_switch`]). Resumes an interrupted
    /// rebuild. See [`keel_store::projection`].
    pub async fn rebuild(
        &self,
        db: &Db,
        progress: impl FnMut(RebuildProgress) + Send,
    ) -> Result<Rebuilt> {
        Ok(on_runner!(self, db, |runner| runner.rebuild(progress).await?))
    }

    /// Waits until a rebuilt generation is switched in (see
    /// [`ProjectionRunner::wait_for_switch`]).
    pub async fn wait_for_switch(&self, db: &Db) -> Result<()> {
        on_runner!(self, db, |runner| runner.wait_for_switch().await?);
        Ok(())
    }

    /// Drops an interrupted rebuild's generation; the live read model is untouched.
    /// Returns whether there was one.
    pub async fn discard_rebuild(&self, db: &Db) -> Result<bool> {
        Ok(on_runner!(self, db, |runner| runner.discard_rebuild().await?))
    }

    /// The state of this projection's rebuild, if one is in progress or interrupted.
    pub async fn rebuild_state(&self, db: &Db) -> Result<Option<RebuildState>> {
        Ok(on_runner!(self, db, |runner| runner.rebuild_state().await?))
    }
}

/// A [`Projection`] as the store's projection of each dialect.
struct Adapter(Arc<dyn Projection>);

#[cfg(feature = "sqlite")]
#[async_trait]
impl keel_store::Projection<Sqlite> for Adapter {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn tables(&self) -> &[&str] {
        self.0.tables()
    }

    fn filter(&self) -> LogFilter {
        self.0.filter()
    }

    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        tables: &Tables,
        event: &CloudEvent,
    ) -> Result<(), HandlerError> {
        self.0.apply(&mut Conn { inner: Inner::Sqlite(conn), tables }, event).await
    }

    async fn apply_batch(
        &self,
        conn: &mut SqliteConnection,
        tables: &Tables,
        events: &[&CloudEvent],
    ) -> Result<(), HandlerError> {
        self.0.apply_batch(&mut Conn { inner: Inner::Sqlite(conn), tables }, events).await
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl keel_store::Projection<Postgres> for Adapter {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn tables(&self) -> &[&str] {
        self.0.tables()
    }

    fn filter(&self) -> LogFilter {
        self.0.filter()
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        event: &CloudEvent,
    ) -> Result<(), HandlerError> {
        self.0.apply(&mut Conn { inner: Inner::Postgres(conn), tables }, event).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        events: &[&CloudEvent],
    ) -> Result<(), HandlerError> {
        self.0.apply_batch(&mut Conn { inner: Inner::Postgres(conn), tables }, events).await
    }
}
