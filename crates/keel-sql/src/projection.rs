//! Projections written once for both stores.
//!
//! [`keel_store::Projection`] is generic over the sqlx database; a service on [`Db`]
//! implements [`Projection`] instead, whose `apply` and `reset` get a [`Conn`] (the
//! runner's open transaction, with the same query methods as [`crate::Tx`]). A
//! [`ProjectionSpec`] is a registered projection with its options: it runs one
//! (leased, checkpointed) [`ProjectionRunner`] on whichever store the [`Db`] is.

use std::sync::Arc;

use async_trait::async_trait;
use keel_bus::HandlerError;
use keel_core::CloudEvent;
use keel_store::{LogFilter, ProjectionRunner, RebuildProgress, SubscribeOptions};
#[cfg(feature = "postgres")]
use sqlx::{PgConnection, Postgres};
#[cfg(feature = "sqlite")]
use sqlx::{Sqlite, SqliteConnection};

use crate::db::{Arg, Db, Row, bind_all};
use crate::error::Result;

/// The projection runner's open transaction on either store. Statements use the
/// `$1..$n` placeholders and the argument types of [`crate::args!`], as on [`crate::Tx`].
#[derive(Debug)]
pub enum Conn<'a> {
    /// A SQLite connection inside the runner's transaction.
    #[cfg(feature = "sqlite")]
    Sqlite(&'a mut SqliteConnection),
    /// A PostgreSQL connection inside the runner's transaction.
    #[cfg(feature = "postgres")]
    Postgres(&'a mut PgConnection),
}

impl Conn<'_> {
    /// Runs a statement; returns the number of rows it touched.
    pub async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64> {
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(conn) => {
                bind_all!(sqlx::query(sql), args).execute(&mut **conn).await?.rows_affected()
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(conn) => {
                bind_all!(sqlx::query(sql), args).execute(&mut **conn).await?.rows_affected()
            }
        })
    }

    /// One row or none.
    pub async fn fetch_optional<T: Row>(&mut self, sql: &str, args: Vec<Arg>) -> Result<Option<T>> {
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(conn) => {
                bind_all!(sqlx::query_as::<Sqlite, T>(sql), args)
                    .fetch_optional(&mut **conn)
                    .await?
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(conn) => {
                bind_all!(sqlx::query_as::<Postgres, T>(sql), args)
                    .fetch_optional(&mut **conn)
                    .await?
            }
        })
    }

    /// Every row.
    pub async fn fetch_all<T: Row>(&mut self, sql: &str, args: Vec<Arg>) -> Result<Vec<T>> {
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(conn) => {
                bind_all!(sqlx::query_as::<Sqlite, T>(sql), args).fetch_all(&mut **conn).await?
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(conn) => {
                bind_all!(sqlx::query_as::<Postgres, T>(sql), args).fetch_all(&mut **conn).await?
            }
        })
    }
}

/// A read model in the service's database, fed from the log: every event the
/// [`filter`](Projection::filter) selects is applied in log order, each page of
/// events committed with the projection's checkpoint (`projection:<name>`) in one
/// transaction, so a crash never applies an event twice or skips one.
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
///     fn filter(&self) -> LogFilter {
///         LogFilter::topic("note")
///     }
///
///     async fn apply(&self, conn: &mut Conn<'_>, event: &CloudEvent) -> Result<(), HandlerError> {
///         let sql = "INSERT INTO counts (ty, n) VALUES ($1, 1)
///                    ON CONFLICT (ty) DO UPDATE SET n = counts.n + 1";
///         conn.execute(sql, args![event.ty()]).await?;
///         Ok(())
///     }
///
///     async fn reset(&self, conn: &mut Conn<'_>) -> Result<(), HandlerError> {
///         conn.execute("DELETE FROM counts", args![]).await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Unique name (`users-orders`); the checkpoint and lease are `projection:<name>`.
    fn name(&self) -> &str;

    /// Which events the projection reads (default: all).
    fn filter(&self) -> LogFilter {
        LogFilter::default()
    }

    /// Applies one event inside the runner's transaction. A transient error retries
    /// the page; so does, today, a permanent one (the runner never skips an event).
    async fn apply(&self, conn: &mut Conn<'_>, event: &CloudEvent) -> Result<(), HandlerError>;

    /// Empties the read model (before a rebuild), inside the rebuild's transaction.
    async fn reset(&self, conn: &mut Conn<'_>) -> Result<(), HandlerError>;
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

impl ProjectionSpec {
    /// `projection` with the default options.
    pub fn new(projection: impl Projection) -> Self {
        Self { projection: Arc::new(projection), options: SubscribeOptions::default() }
    }

    /// Events applied per transaction (default 500; at least 1).
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

    /// Follows the log until `shutdown`, as the only active runner of this projection
    /// across processes (see [`ProjectionRunner::run`]: the others stand by).
    pub async fn run(
        &self,
        db: &Db,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let adapter = Arc::new(Adapter(self.projection.clone()));
        match db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(log) => {
                ProjectionRunner::new(Arc::new(log.clone()), adapter)
                    .options(self.options)
                    .run(shutdown)
                    .await?
            }
            #[cfg(feature = "postgres")]
            Db::Postgres(log) => {
                ProjectionRunner::new(Arc::new(log.clone()), adapter)
                    .options(self.options)
                    .run(shutdown)
                    .await?
            }
        }
        Ok(())
    }

    /// Applies everything up to now; returns how many events it applied. Make sure
    /// no runner of this projection is active meanwhile (see
    /// [`ProjectionRunner::catch_up`]).
    pub async fn catch_up(&self, db: &Db) -> Result<u64> {
        let adapter = Arc::new(Adapter(self.projection.clone()));
        Ok(match db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(log) => {
                ProjectionRunner::new(Arc::new(log.clone()), adapter)
                    .options(self.options)
                    .catch_up()
                    .await?
            }
            #[cfg(feature = "postgres")]
            Db::Postgres(log) => {
                ProjectionRunner::new(Arc::new(log.clone()), adapter)
                    .options(self.options)
                    .catch_up()
                    .await?
            }
        })
    }

    /// Empties the read model and its checkpoint in one transaction, then replays the
    /// whole log into it, reporting progress; refused while a runner of this
    /// projection holds its lease (stop the service first).
    pub async fn rebuild(
        &self,
        db: &Db,
        progress: impl FnMut(RebuildProgress) + Send,
    ) -> Result<u64> {
        let adapter = Arc::new(Adapter(self.projection.clone()));
        Ok(match db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(log) => {
                ProjectionRunner::new(Arc::new(log.clone()), adapter)
                    .options(self.options)
                    .rebuild(progress)
                    .await?
            }
            #[cfg(feature = "postgres")]
            Db::Postgres(log) => {
                ProjectionRunner::new(Arc::new(log.clone()), adapter)
                    .options(self.options)
                    .rebuild(progress)
                    .await?
            }
        })
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

    fn filter(&self) -> LogFilter {
        self.0.filter()
    }

    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        event: &CloudEvent,
    ) -> Result<(), HandlerError> {
        self.0.apply(&mut Conn::Sqlite(conn), event).await
    }

    async fn reset(&self, conn: &mut SqliteConnection) -> Result<(), HandlerError> {
        self.0.reset(&mut Conn::Sqlite(conn)).await
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl keel_store::Projection<Postgres> for Adapter {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn filter(&self) -> LogFilter {
        self.0.filter()
    }

    async fn apply(&self, conn: &mut PgConnection, event: &CloudEvent) -> Result<(), HandlerError> {
        self.0.apply(&mut Conn::Postgres(conn), event).await
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        self.0.reset(&mut Conn::Postgres(conn)).await
    }
}
