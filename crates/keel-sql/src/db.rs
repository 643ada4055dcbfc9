//! One database seam for both stores.
//!
//! A service writes each query once, with `$1..$n` placeholders in order of
//! appearance (PostgreSQL's syntax; SQLite reads `$1` as a parameter named `$1` and
//! numbers parameters by first appearance, so the same text binds the same way), and
//! with argument and column types both dialects share: `TEXT` and 64-bit integers.
//! [`Db`] and [`Tx`] dispatch to the concrete sqlx types, so the service code has no
//! generics and no per-dialect copies.

use std::sync::Arc;

use keel_bus::HandlerError;
use keel_bus::layer::Inbox;
use keel_core::{CloudEvent, ExpectedVersion, Namespace, StreamId, StreamVersion};
#[cfg(feature = "postgres")]
use keel_postgres::{PgEventLog, PgInbox, PgOptions};
#[cfg(feature = "sqlite")]
use keel_sqlite::{SqliteEventLog, SqliteInbox};
use keel_store::{AppendResult, Direction, EventLog, SqlEventLog as _};
use sqlx::Transaction;
#[cfg(feature = "postgres")]
use sqlx::{Postgres, postgres::PgRow};
#[cfg(feature = "sqlite")]
use sqlx::{Sqlite, sqlite::SqliteRow};

use crate::error::{Error, Result};

/// A query argument of a type both dialects bind the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A text value.
    Text(String),
    /// An integer value.
    Int(i64),
    /// A text `NULL`.
    NullText,
    /// A list of texts, for a statement that takes a whole page of rows at once: a
    /// `TEXT[]` on PostgreSQL (read it with `unnest($1)`), a JSON array text on SQLite
    /// (read it with `json_each($1)`). The two read it differently, so a statement
    /// with a list is written per [`Dialect`].
    TextList(Vec<String>),
    /// A list of integers: a `BIGINT[]` on PostgreSQL, a JSON array text on SQLite (see
    /// [`Arg::TextList`]).
    IntList(Vec<i64>),
}

/// The SQL dialect of a [`Db`], for the few statements worth writing once per dialect
/// (a page of rows bound as [`Arg::TextList`] and [`Arg::IntList`], say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<&String> for Arg {
    fn from(value: &String) -> Self {
        Self::Text(value.clone())
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<Vec<String>> for Arg {
    fn from(value: Vec<String>) -> Self {
        Self::TextList(value)
    }
}

impl From<Vec<i64>> for Arg {
    fn from(value: Vec<i64>) -> Self {
        Self::IntList(value)
    }
}

impl From<Option<String>> for Arg {
    fn from(value: Option<String>) -> Self {
        value.map_or(Self::NullText, Self::Text)
    }
}

/// Query arguments: `args![id, name, 3_i64]`.
#[macro_export]
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        ::std::vec![$($crate::Arg::from($arg)),*]
    };
}

/// Binds `args` to a query of the dialect named first (`sqlite:` or `postgres:`); the
/// scalar arguments bind alike, lists as arrays on PostgreSQL and as JSON on SQLite.
macro_rules! bind_all {
    (sqlite: $query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Text(s) => query.bind(s),
                Arg::Int(i) => query.bind(i),
                Arg::NullText => query.bind(None::<String>),
                // Lists of strings and integers always serialise.
                Arg::TextList(list) => query.bind(serde_json::to_string(&list).unwrap_or_default()),
                Arg::IntList(list) => query.bind(serde_json::to_string(&list).unwrap_or_default()),
            };
        }
        query
    }};
    (postgres: $query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Text(s) => query.bind(s),
                Arg::Int(i) => query.bind(i),
                Arg::NullText => query.bind(None::<String>),
                Arg::TextList(list) => query.bind(list),
                Arg::IntList(list) => query.bind(list),
            };
        }
        query
    }};
}

pub(crate) use bind_all;

/// A row type every enabled dialect can decode (derive `sqlx::FromRow` with `String`,
/// `i64` and `Option<String>` fields, or use a tuple).
pub trait Row: SqliteRowType + PgRowType + Send + Unpin + 'static {}

impl<T> Row for T where T: SqliteRowType + PgRowType + Send + Unpin + 'static {}

/// Decodable from a SQLite row (with the `sqlite` feature; anything without it).
#[cfg(feature = "sqlite")]
pub trait SqliteRowType: for<'r> sqlx::FromRow<'r, SqliteRow> {}
#[cfg(feature = "sqlite")]
impl<T> SqliteRowType for T where T: for<'r> sqlx::FromRow<'r, SqliteRow> {}
/// Decodable from a SQLite row (with the `sqlite` feature; anything without it).
#[cfg(not(feature = "sqlite"))]
pub trait SqliteRowType {}
#[cfg(not(feature = "sqlite"))]
impl<T> SqliteRowType for T {}

/// Decodable from a PostgreSQL row (with the `postgres` feature; anything without it).
#[cfg(feature = "postgres")]
pub trait PgRowType: for<'r> sqlx::FromRow<'r, PgRow> {}
#[cfg(feature = "postgres")]
impl<T> PgRowType for T where T: for<'r> sqlx::FromRow<'r, PgRow> {}
/// Decodable from a PostgreSQL row (with the `postgres` feature; anything without it).
#[cfg(not(feature = "postgres"))]
pub trait PgRowType {}
#[cfg(not(feature = "postgres"))]
impl<T> PgRowType for T {}

/// The event log of either store, which also holds the services' tables. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Db {
    #[cfg(feature = "sqlite")]
    /// The SQLite log.
    Sqlite(SqliteEventLog),
    #[cfg(feature = "postgres")]
    /// The PostgreSQL log.
    Postgres(PgEventLog),
}

impl Db {
    /// Which SQL dialect this store speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => Dialect::Sqlite,
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Opens the store at `url` (`sqlite://...`, `sqlite::memory:`, `postgres://...`)
    /// and applies the event log's migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_in(url, &Namespace::none()).await
    }

    /// [`Db::connect`] within `namespace` (`KEEL_NAMESPACE`): on PostgreSQL the
    /// namespace's schema holds the log and the service's tables
    /// ([`PgOptions::namespace`]); a SQLite file is one deployment's already, and is
    /// opened as it is (the runtime's configuration picks a file per namespace).
    pub async fn connect_in(url: &str, namespace: &Namespace) -> Result<Self> {
        let _ = namespace;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Ok(Self::Postgres(
                PgEventLog::connect(
                    url,
                    PgOptions { namespace: namespace.clone(), ..PgOptions::default() },
                )
                .await?,
            ));
            #[cfg(not(feature = "postgres"))]
            return Err(Error::Config(
                "KEEL_DATABASE_URL is a postgres:// URL, but this build has no PostgreSQL \
                 support: enable the `postgres` feature of keel"
                    .to_owned(),
            ));
        }
        if url.starts_with("sqlite:") {
            #[cfg(feature = "sqlite")]
            return Ok(Self::Sqlite(SqliteEventLog::connect(url).await?));
            #[cfg(not(feature = "sqlite"))]
            return Err(Error::Config(
                "KEEL_DATABASE_URL is a sqlite: URL, but this build has no SQLite support: \
                 enable the `sqlite` feature of keel"
                    .to_owned(),
            ));
        }
        Err(Error::Config("KEEL_DATABASE_URL must start with sqlite: or postgres://".to_owned()))
    }

    /// Applies a service's migrations (one set per dialect; they ignore the others'
    /// migrations in the shared database).
    pub async fn migrate(
        &self,
        sqlite: &sqlx::migrate::Migrator,
        postgres: &sqlx::migrate::Migrator,
    ) -> Result<()> {
        // Each migrator is used only if its dialect is compiled in.
        let _ = (sqlite, postgres);
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(log) => sqlite.run(log.pool()).await?,
            #[cfg(feature = "postgres")]
            Self::Postgres(log) => postgres.run(log.pool()).await?,
        }
        Ok(())
    }

    /// The event log as a trait object (relays, subscriptions, reads).
    pub fn log(&self) -> Arc<dyn EventLog> {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(log) => Arc::new(log.clone()),
            #[cfg(feature = "postgres")]
            Self::Postgres(log) => Arc::new(log.clone()),
        }
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(log) => Tx::new(TxInner::Sqlite(log.begin().await?, log.clone())),
            #[cfg(feature = "postgres")]
            Self::Postgres(log) => Tx::new(TxInner::Postgres(log.begin().await?, log.clone())),
        })
    }

    /// Starts a write transaction for a request: new work from outside, such as an
    /// HTTP request placing an order (`keel_service`'s idempotent requests use it).
    ///
    /// Requests' transactions share one place in the queue for the database: on
    /// SQLite the one writer connection, on PostgreSQL the pool's connections. So work
    /// already in the log (consumers' inbox transactions, projections, timers:
    /// everything started with [`Db::begin`]) keeps up under load instead of falling
    /// behind the clients (see `SqliteEventLog::begin_request` and
    /// `PgEventLog::begin_request`).
    pub async fn begin_request(&self) -> Result<Tx> {
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(log) => Tx::new(TxInner::Sqlite(log.begin_request().await?, log.clone())),
            #[cfg(feature = "postgres")]
            Self::Postgres(log) => {
                Tx::new(TxInner::Postgres(log.begin_request().await?, log.clone()))
            }
        })
    }

    /// One row or none, outside any transaction.
    pub async fn fetch_optional<T: Row>(&self, sql: &str, args: Vec<Arg>) -> Result<Option<T>> {
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(log) => {
                bind_all!(sqlite: sqlx::query_as::<Sqlite, T>(sql), args)
                    .fetch_optional(log.pool())
                    .await?
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(log) => {
                bind_all!(postgres: sqlx::query_as::<Postgres, T>(sql), args)
                    .fetch_optional(log.pool())
                    .await?
            }
        })
    }

    /// Every row, outside any transaction.
    pub async fn fetch_all<T: Row>(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<T>> {
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(log) => {
                bind_all!(sqlite: sqlx::query_as::<Sqlite, T>(sql), args)
                    .fetch_all(log.pool())
                    .await?
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(log) => {
                bind_all!(postgres: sqlx::query_as::<Postgres, T>(sql), args)
                    .fetch_all(log.pool())
                    .await?
            }
        })
    }

    /// The whole stream, oldest first (event-sourced aggregates load from it).
    pub async fn read_stream(&self, stream: &StreamId) -> Result<Vec<CloudEvent>> {
        const PAGE: usize = 1000;
        let log = self.log();
        let mut events = Vec::new();
        loop {
            let from = StreamVersion(u64::try_from(events.len()).unwrap_or(u64::MAX) + 1);
            let page = log.read_stream(stream, from, Direction::Forward, PAGE).await?;
            let done = page.len() < PAGE;
            events.extend(page);
            if done {
                return Ok(events);
            }
        }
    }

    /// The store's transactional inbox, for `keel_bus::layer::inbox_fn`.
    pub fn inbox(&self) -> Arc<DbInbox> {
        Arc::new(match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(log) => {
                DbInbox::Sqlite(SqliteInbox::new(log.write_pool().clone()), log.clone())
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(log) => DbInbox::Postgres(PgInbox::new(log.pool().clone()), log.clone()),
        })
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> Result<()> {
        let _: Option<(i64,)> = self.fetch_optional("SELECT CAST(1 AS BIGINT)", Vec::new()).await?;
        Ok(())
    }
}

/// An open write transaction on either store: service queries and event appends that
/// commit together. Dropping it uncommitted rolls everything back.
#[derive(Debug)]
pub struct Tx {
    inner: TxInner,
    /// The topics appended to: the commit wakes only their subscribers.
    topics: Vec<String>,
}

#[derive(Debug)]
enum TxInner {
    #[cfg(feature = "sqlite")]
    Sqlite(Transaction<'static, Sqlite>, SqliteEventLog),
    #[cfg(feature = "postgres")]
    Postgres(Transaction<'static, Postgres>, PgEventLog),
}

impl Tx {
    fn new(inner: TxInner) -> Self {
        Self { inner, topics: Vec::new() }
    }

    /// Which SQL dialect this transaction speaks.
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(..) => Dialect::Sqlite,
            #[cfg(feature = "postgres")]
            TxInner::Postgres(..) => Dialect::Postgres,
        }
    }

    /// Runs a statement; returns the number of rows it touched.
    pub async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64> {
        Ok(match &mut self.inner {
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(tx, _) => bind_all!(sqlite: sqlx::query::<Sqlite>(sql), args)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            #[cfg(feature = "postgres")]
            TxInner::Postgres(tx, _) => bind_all!(postgres: sqlx::query::<Postgres>(sql), args)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// One row or none.
    pub async fn fetch_optional<T: Row>(&mut self, sql: &str, args: Vec<Arg>) -> Result<Option<T>> {
        Ok(match &mut self.inner {
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(tx, _) => {
                bind_all!(sqlite: sqlx::query_as::<Sqlite, T>(sql), args)
                    .fetch_optional(&mut **tx)
                    .await?
            }
            #[cfg(feature = "postgres")]
            TxInner::Postgres(tx, _) => {
                bind_all!(postgres: sqlx::query_as::<Postgres, T>(sql), args)
                    .fetch_optional(&mut **tx)
                    .await?
            }
        })
    }

    /// Every row.
    pub async fn fetch_all<T: Row>(&mut self, sql: &str, args: Vec<Arg>) -> Result<Vec<T>> {
        Ok(match &mut self.inner {
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(tx, _) => {
                bind_all!(sqlite: sqlx::query_as::<Sqlite, T>(sql), args)
                    .fetch_all(&mut **tx)
                    .await?
            }
            #[cfg(feature = "postgres")]
            TxInner::Postgres(tx, _) => {
                bind_all!(postgres: sqlx::query_as::<Postgres, T>(sql), args)
                    .fetch_all(&mut **tx)
                    .await?
            }
        })
    }

    /// Appends events to a stream inside this transaction.
    pub async fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[CloudEvent],
    ) -> Result<AppendResult> {
        let appended = match &mut self.inner {
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(tx, log) => log.append_in(&mut **tx, stream, expected, events).await?,
            #[cfg(feature = "postgres")]
            TxInner::Postgres(tx, log) => {
                log.append_in(&mut **tx, stream, expected, events).await?
            }
        };
        for event in events {
            // The append checked the topic already.
            if let Ok(topic) = keel_store::topic_of(stream, event)
                && !self.topics.contains(&topic)
            {
                self.topics.push(topic);
            }
        }
        Ok(appended)
    }

    /// Commits, then wakes the subscribers of the topics it appended to.
    pub async fn commit(self) -> Result<()> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        match self.inner {
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(tx, log) => {
                tx.commit().await?;
                if !topics.is_empty() {
                    log.notify_appended_to(&topics);
                }
            }
            #[cfg(feature = "postgres")]
            TxInner::Postgres(tx, log) => {
                tx.commit().await?;
                if !topics.is_empty() {
                    log.notify_appended_to(&topics);
                }
            }
        }
        Ok(())
    }
}

/// The store's inbox (processed event ids per consumer group, in `keel_inbox`) whose
/// unit of work is a [`Tx`]: a handler's queries, its appended events and the
/// processed mark commit together.
#[derive(Debug)]
pub enum DbInbox {
    #[cfg(feature = "sqlite")]
    /// The SQLite inbox and log.
    Sqlite(SqliteInbox, SqliteEventLog),
    #[cfg(feature = "postgres")]
    /// The PostgreSQL inbox and log.
    Postgres(PgInbox, PgEventLog),
}

impl Inbox for DbInbox {
    type Tx = Tx;

    async fn begin(&self, group: &str, event_id: &str) -> Result<Option<Tx>, HandlerError> {
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(inbox, log) => inbox
                .begin(group, event_id)
                .await?
                .map(|tx| Tx::new(TxInner::Sqlite(tx, log.clone()))),
            #[cfg(feature = "postgres")]
            Self::Postgres(inbox, log) => inbox
                .begin(group, event_id)
                .await?
                .map(|tx| Tx::new(TxInner::Postgres(tx, log.clone()))),
        })
    }

    async fn commit(&self, tx: Tx) -> Result<(), HandlerError> {
        tx.commit().await.map_err(HandlerError::transient)
    }
}
