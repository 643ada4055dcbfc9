//! Keel's SQLite event log: the embedded default store (`sqlite://keel-data/keel.db`).
//!
//! SQLite runs one write transaction at a time (appends start with `BEGIN IMMEDIATE`),
//! so positions are assigned in commit order and a subscription's cursor is simply
//! the position: none of PostgreSQL's ordering traps exist here. The database runs in
//! WAL mode with `synchronous = NORMAL`: a killed process loses nothing it committed
//! (a power cut may lose the last transactions).
//!
//! Layout:
//! - `lib.rs`: [`SqliteEventLog`]: opening (creating the file and its directory,
//!   migrating; or read-only, creating and migrating nothing) and the
//!   [`keel_store::EventLog`] and [`keel_store::SqlEventLog`] implementations.
//! - [`append`]: appends with optimistic concurrency.
//! - [`read`]: row decoding and read queries.
//! - [`lease`]: leases as rows with an expiry, renewed while held (and kept through a
//!   busy database until they expire).
//! - `relay_dead_letters`: the relay's dead letters as rows.
//! - `skipped`: the events projections skipped as unreadable, as rows.
//! - `generation`: blue/green rebuilds' shadow tables, their swap, and `keel_rebuilds`.
//! - [`inbox`]: [`SqliteInbox`], the transactional inbox for `keel_bus`.
#![warn(missing_docs)]

pub mod append;
mod generation;
pub mod inbox;
pub mod lease;
pub mod read;
mod relay_dead_letters;
mod skipped;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keel_core::envelope::ext;
use keel_core::{CloudEvent, ExpectedVersion, Position, StreamId, StreamVersion};
use keel_store::{
    AppendResult, Changes, Cursor, Direction, EventLog, Lease, LogEvent, LogFilter, LogQuery, Page,
    RelayDeadLetter, Result, Skipped, SqlEventLog, StoreError,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{Semaphore, watch};

pub use inbox::SqliteInbox;

/// The migrations of Keel's tables (unknown migrations are ignored, so a service can
/// keep its own in the same database).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Whether `url` names a database that lives only as long as its process:
/// `sqlite::memory:`, `mode=memory`, or `sqlite:` with no file (SQLite then makes a
/// private temporary database per connection).
pub fn is_in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database.is_empty()
        || database == ":memory:"
        || params.split('&').any(|param| param == "mode=memory")
}

/// The SQLite event log. Cheap to clone.
#[derive(Clone)]
pub struct SqliteEventLog {
    inner: Arc<Inner>,
    lease_ttl: Duration,
}

struct Inner {
    pool: SqlitePool,
    /// Where write transactions run: one connection of its own (see
    /// [`SqliteEventLog::write_pool`]).
    writer: SqlitePool,
    /// The one place in the writer's queue that requests' transactions share (see
    /// [`SqliteEventLog::begin_request`]).
    requests: Arc<Semaphore>,
    changes: Changes,
}

impl std::fmt::Debug for SqliteEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEventLog").field("lease_ttl", &self.lease_ttl).finish_non_exhaustive()
    }
}

impl SqliteEventLog {
    /// Opens (creating if needed) the database at `url` (`sqlite://path/to/file.db` or
    /// `sqlite::memory:`) and migrates it.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("KEEL_DATABASE_URL `{url}`: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let filename = options.get_filename().to_owned();
        let in_memory = filename.as_os_str().is_empty() || filename == Path::new(":memory:");
        if !in_memory && let Some(dir) = filename.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Config(format!("cannot create the directory {}: {e}", dir.display()))
            })?;
        }
        // An in-memory database exists once per connection: keep to one.
        let max = if in_memory { 1 } else { 8 };
        let pool = SqlitePoolOptions::new().max_connections(max).connect_with(options).await?;
        Self::from_pool(pool).await
    }

    /// Opens the existing database at `url` for reading only: no file, directory or
    /// table is created and no migration runs, so inspection works on a database this
    /// user may not write (a write through it fails with SQLite's "attempt to write a
    /// readonly database"). Fails with [`StoreError::Config`] when there is no database
    /// there, when it is in memory (it would be empty), or when Keel's migrations have
    /// not all been applied to it.
    ///
    /// SQLite cannot open a WAL database read-only when its `-shm` file is missing and
    /// cannot be created (a read-only directory, after a clean shutdown removed it).
    /// Then, if no `-wal` file exists either, the database file holds everything
    /// committed and is read as immutable: fit for a database nobody is writing (a
    /// writer would have to be able to create the `-wal` file), not for following one.
    pub async fn open_read_only(url: &str) -> Result<Self> {
        if is_in_memory(url) {
            return Err(StoreError::Config(format!(
                "KEEL_DATABASE_URL `{url}` is a database in memory: opened on its own it is empty"
            )));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("KEEL_DATABASE_URL `{url}`: {e}")))?
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(30));
        let filename = options.get_filename().to_owned();
        let cannot_read = |error: &dyn std::fmt::Display| {
            StoreError::Config(format!(
                "cannot read the database at {}: {error}",
                filename.display()
            ))
        };
        match std::fs::metadata(&filename) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Config(format!(
                    "there is no database at {} (KEEL_DATABASE_URL); `keel migrate` creates it",
                    filename.display()
                )));
            }
            Err(e) => return Err(cannot_read(&e)),
        }
        let pool = match read_only_pool(options.clone()).await {
            Ok(pool) => pool,
            Err(error) => {
                let mut wal = filename.clone().into_os_string();
                wal.push("-wal");
                if Path::new(&wal).exists() {
                    return Err(cannot_read(&error));
                }
                read_only_pool(options.immutable(true)).await.map_err(|_| cannot_read(&error))?
            }
        };
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&pool)
                .await
            {
                Ok(applied) => applied,
                Err(e) if e.to_string().contains("no such table") => Vec::new(),
                Err(e) => return Err(cannot_read(&e)),
            };
        let missing = migrator().iter().filter(|m| !applied.contains(&m.version)).count();
        if missing > 0 {
            return Err(StoreError::Config(format!(
                "the database at {} lacks {missing} of Keel's migrations; `keel migrate` applies them",
                filename.display()
            )));
        }
        let writer = pool.clone();
        Ok(Self::with_pools(pool, writer))
    }

    /// Uses an existing pool; migrates it. Write transactions get a pool of one
    /// connection of their own, opened with the same options (see
    /// [`SqliteEventLog::write_pool`]), unless `pool` holds a database in memory,
    /// which exists once per connection.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        migrator().run(&pool).await?;
        let options = pool.connect_options();
        let filename = options.get_filename();
        let in_memory = filename.as_os_str().is_empty() || filename == Path::new(":memory:");
        let writer = if in_memory || pool.options().get_max_connections() <= 1 {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(WRITE_QUEUE_TIMEOUT)
                .connect_with(SqliteConnectOptions::clone(&options))
                .await?
        };
        Ok(Self::with_pools(pool, writer))
    }

    fn with_pools(pool: SqlitePool, writer: SqlitePool) -> Self {
        let inner = Inner {
            pool,
            writer,
            requests: Arc::new(Semaphore::new(1)),
            changes: Changes::default(),
        };
        Self { inner: Arc::new(inner), lease_ttl: lease::DEFAULT_TTL }
    }

    /// The pool that write transactions ([`SqlEventLog::begin`], appends, the
    /// inbox) run on: one connection, so the writers of this process queue for it in
    /// order. SQLite runs one write transaction at a time; writers on several
    /// connections would instead wait in its busy handler, which sleeps 1, 2, 5 ...
    /// up to 100 ms between looks, and a queue of them shows up as latency in the
    /// hundreds of milliseconds. Other processes' writers still meet the busy handler.
    pub fn write_pool(&self) -> &SqlitePool {
        &self.inner.writer
    }

    /// Starts a write transaction for a request: new work from outside (an HTTP
    /// request placing an order), as opposed to work already in the log (a consumer's
    /// inbox transaction, the bus's progress, a projection's page, a due timer), which
    /// starts with [`SqlEventLog::begin`].
    ///
    /// Requests' transactions all share one place in the writer's queue: while one
    /// waits for the writer, the next waits behind it, outside the queue. With the
    /// writer busy, each round of the queue then serves every transaction of work in
    /// flight once and one request, so the consumers settle what was accepted before
    /// more is accepted, and the backlog (and with it the time from accepted to
    /// settled) stays bounded however many clients send requests. The writer's own
    /// queue is first come, first served, so requests are never starved: a request
    /// waits for at most one transaction of each task of work in flight.
    pub async fn begin_request(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        Ok(begin_immediate_after(&self.inner.writer, Some(self.inner.requests.clone())).await?)
    }

    /// How long a lease taken through this handle stays valid when its holder stops
    /// renewing it (default 15 s): how long a crashed holder's relay, projection or
    /// consumer group waits before another process takes over.
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    fn appended(&self, topics: &[&str]) {
        self.inner.changes.appended(topics.iter().copied());
    }
}

/// A pool on `options` whose first connection has read the schema (opening alone
/// does not show whether SQLite can read the file).
async fn read_only_pool(
    options: SqliteConnectOptions,
) -> std::result::Result<SqlitePool, sqlx::Error> {
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
    sqlx::query("SELECT count(*) FROM sqlite_master").execute(&pool).await?;
    Ok(pool)
}

/// `BEGIN IMMEDIATE` on a connection from `pool`, safe to cancel.
///
/// sqlx's `begin_with` is not: dropped after SQLite ran the statement but before the
/// `Transaction` exists (it still checks that the connection is in a transaction), it
/// hands the connection back to the pool inside the transaction, holding the
/// database's write lock for good. On a task of its own the begin always finishes,
/// and a transaction that nobody awaits any more is dropped, which rolls it back.
pub(crate) async fn begin_immediate(
    pool: &SqlitePool,
) -> std::result::Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
    begin_immediate_after(pool, None).await
}

/// [`begin_immediate`], waiting first for a permit of `place` (held until the
/// transaction has begun) when there is one.
async fn begin_immediate_after(
    pool: &SqlitePool,
    place: Option<Arc<Semaphore>>,
) -> std::result::Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
    let pool = pool.clone();
    let begin = async move {
        let _place = match place {
            Some(place) => Some(place.acquire_owned().await.map_err(|_| sqlx::Error::PoolClosed)?),
            None => None,
        };
        pool.begin_with("BEGIN IMMEDIATE").await
    };
    match tokio::spawn(begin).await {
        Ok(begun) => begun,
        Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
        // Only a runtime shutting down cancels the task.
        Err(_) => Err(sqlx::Error::PoolClosed),
    }
}

/// How long a write transaction waits for its turn on the write connection: as long
/// as a writer waits for SQLite's lock (the busy timeout).
const WRITE_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[async_trait]
impl EventLog for SqliteEventLog {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[CloudEvent],
    ) -> Result<AppendResult> {
        // The append refuses an invalid topic too, before writing anything.
        let topics: Vec<String> =
            events.iter().map(|e| keel_store::topic_of(stream, e)).collect::<Result<_>>()?;
        let mut tx = begin_immediate(&self.inner.writer).await?;
        let result = append::append(&mut tx, stream, expected, events).await?;
        tx.commit().await?;
        self.appended(&topics.iter().map(String::as_str).collect::<Vec<_>>());
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<CloudEvent>> {
        read::stream(&self.inner.pool, stream, from, direction, limit).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM keel_streams WHERE stream_id = ?")
                .bind(stream.as_str())
                .fetch_optional(&self.inner.pool)
                .await?;
        Ok(StreamVersion(version.map_or(0, unsigned)))
    }

    async fn categories(&self) -> Result<Vec<keel_store::Category>> {
        read::categories(&self.inner.pool).await
    }

    async fn streams(
        &self,
        category: Option<&str>,
        limit: usize,
    ) -> Result<Vec<keel_store::StreamSummary>> {
        read::streams(&self.inner.pool, category, limit).await
    }

    async fn event_by_id(&self, id: &str) -> Result<Option<LogEvent>> {
        read::by_id(&self.inner.pool, id).await
    }

    async fn caused_by(&self, id: &str, limit: usize) -> Result<Vec<LogEvent>> {
        read::by_extension(&self.inner.pool, ext::CAUSATION_ID, id, limit).await
    }

    async fn correlated(&self, id: &str, limit: usize) -> Result<Vec<LogEvent>> {
        read::by_extension(&self.inner.pool, ext::CORRELATION_ID, id, limit).await
    }

    async fn read_all(&self, query: &LogQuery) -> Result<Vec<LogEvent>> {
        read::all(&self.inner.pool, query).await
    }

    async fn head(&self) -> Result<Position> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM keel_events")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(Position(unsigned(head)))
    }

    async fn read_after(&self, cursor: Cursor, filter: &LogFilter, limit: usize) -> Result<Page> {
        read::after(&self.inner.pool, cursor, filter, limit).await
    }

    async fn count_after(&self, cursor: Cursor, up_to: Position) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM keel_events WHERE position > ? AND position <= ?",
        )
        .bind(cursor.position)
        .bind(i64::try_from(up_to.0).unwrap_or(i64::MAX))
        .fetch_one(&self.inner.pool)
        .await?;
        Ok(unsigned(count))
    }

    async fn cursor_before(&self, position: Position) -> Result<Cursor> {
        Ok(Cursor { epoch: 0, txid: 0, position: i64::try_from(position.0).unwrap_or(i64::MAX) })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn topic_changes(&self, topic: &str) -> watch::Receiver<u64> {
        self.inner.changes.subscribe_topic(topic)
    }

    fn notified_appends_are_visible(&self) -> bool {
        // One writer at a time: positions follow commit order, and a read that starts
        // after a commit sees it.
        true
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<Cursor>> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM keel_checkpoints WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.inner.pool)
                .await?;
        Ok(position.map(|position| Cursor { epoch: 0, txid: 0, position }))
    }

    async fn save_checkpoint(&self, name: &str, cursor: Cursor) -> Result<()> {
        let mut conn = self.inner.pool.acquire().await?;
        save_checkpoint(&mut conn, name, cursor).await
    }

    async fn checkpoints(&self) -> Result<Vec<(String, Cursor, DateTime<Utc>)>> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT name, position, updated_at FROM keel_checkpoints ORDER BY name")
                .fetch_all(&self.inner.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(name, position, at)| {
                let at = DateTime::parse_from_rfc3339(&at)
                    .map_or_else(|_| Utc::now(), |t| t.with_timezone(&Utc));
                (name, Cursor { epoch: 0, txid: 0, position }, at)
            })
            .collect())
    }

    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>> {
        lease::try_lease(&self.inner.pool, name, self.lease_ttl).await
    }

    async fn skipped_counts(&self) -> Result<Vec<(String, u64)>> {
        skipped::counts(&self.inner.pool).await
    }

    async fn skipped(&self, subscriber: Option<&str>, limit: usize) -> Result<Vec<Skipped>> {
        skipped::list(&self.inner.pool, subscriber, limit).await
    }

    async fn save_relay_dead_letter(&self, letter: &RelayDeadLetter) -> Result<()> {
        relay_dead_letters::save(&self.inner.pool, letter).await
    }

    async fn relay_dead_letters(
        &self,
        relay: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RelayDeadLetter>> {
        relay_dead_letters::list(&self.inner.pool, relay, limit).await
    }

    async fn delete_relay_dead_letter(&self, relay: &str, position: Position) -> Result<bool> {
        relay_dead_letters::delete(&self.inner.pool, relay, position).await
    }

    async fn purge_relay_dead_letters(&self, relay: &str) -> Result<u64> {
        relay_dead_letters::purge(&self.inner.pool, relay).await
    }
}

async fn save_checkpoint(conn: &mut SqliteConnection, name: &str, cursor: Cursor) -> Result<()> {
    sqlx::query(
        "INSERT INTO keel_checkpoints (name, position, updated_at) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(cursor.position)
    .bind(Utc::now().to_rfc3339())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl SqlEventLog for SqliteEventLog {
    type Db = Sqlite;

    fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        Ok(begin_immediate(&self.inner.writer).await?)
    }

    async fn append_in(
        &self,
        conn: &mut SqliteConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[CloudEvent],
    ) -> Result<AppendResult> {
        append::append(conn, stream, expected, events).await
    }

    async fn save_checkpoint_in(
        &self,
        conn: &mut SqliteConnection,
        name: &str,
        cursor: Cursor,
    ) -> Result<()> {
        save_checkpoint(conn, name, cursor).await
    }

    async fn move_checkpoint_in(
        &self,
        conn: &mut SqliteConnection,
        name: &str,
        from: Option<Cursor>,
        to: Cursor,
    ) -> Result<()> {
        let now = Utc::now().to_rfc3339();
        let moved = match from {
            None => sqlx::query(
                "INSERT INTO keel_checkpoints (name, position, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(to.position)
            .bind(now),
            Some(from) => sqlx::query(
                "UPDATE keel_checkpoints SET position = ?, updated_at = ?
                 WHERE name = ? AND position = ?",
            )
            .bind(to.position)
            .bind(now)
            .bind(name)
            .bind(from.position),
        }
        .execute(&mut *conn)
        .await?;
        if moved.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::CheckpointMoved { name: name.to_owned() })
        }
    }

    async fn delete_checkpoint_in(&self, conn: &mut SqliteConnection, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM keel_checkpoints WHERE name = ?")
            .bind(name)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn record_skip_in(
        &self,
        conn: &mut SqliteConnection,
        subscriber: &str,
        event: &LogEvent,
        reason: &str,
    ) -> Result<()> {
        skipped::record(conn, subscriber, event, reason).await
    }

    async fn clear_skips_in(&self, conn: &mut SqliteConnection, subscriber: &str) -> Result<()> {
        skipped::clear(conn, subscriber).await
    }

    async fn move_skips_in(&self, conn: &mut SqliteConnection, from: &str, to: &str) -> Result<()> {
        generation::move_skips(conn, from, to).await
    }

    async fn create_shadow_table_in(
        &self,
        conn: &mut SqliteConnection,
        live: &str,
        shadow: &str,
    ) -> Result<()> {
        generation::create_shadow(conn, live, shadow).await
    }

    async fn swap_table_in(
        &self,
        conn: &mut SqliteConnection,
        live: &str,
        shadow: &str,
    ) -> Result<()> {
        keel_store::sql::swap_table::<Sqlite>(conn, live, shadow).await
    }

    async fn drop_table_in(&self, conn: &mut SqliteConnection, table: &str) -> Result<()> {
        keel_store::sql::drop_table::<Sqlite>(conn, table).await
    }

    async fn rebuilds(&self) -> Result<Vec<(String, keel_store::projection::RebuildState)>> {
        generation::rebuilds(&self.inner.pool).await
    }

    async fn set_rebuild_in(
        &self,
        conn: &mut SqliteConnection,
        projection: &str,
        state: Option<keel_store::projection::RebuildState>,
    ) -> Result<()> {
        generation::set_rebuild(conn, projection, state).await
    }

    fn notify_appended(&self) {
        self.inner.changes.appended_anywhere();
    }

    fn notify_appended_to(&self, topics: &[&str]) {
        self.appended(topics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_urls_are_recognised() {
        for url in ["sqlite::memory:", "sqlite:", "sqlite://", "sqlite://x.db?mode=memory"] {
            assert!(is_in_memory(url), "{url}");
        }
        for url in ["sqlite://keel-data/keel.db", "sqlite:keel.db", "sqlite:///tmp/k.db?mode=ro"] {
            assert!(!is_in_memory(url), "{url}");
        }
    }

    #[tokio::test]
    async fn read_only_opening_creates_and_migrates_nothing() {
        let dir = std::env::temp_dir().join(format!("keel-sqlite-ro-{}", uuid::Uuid::now_v7()));
        let url = format!("sqlite://{}/keel.db", dir.display());
        let missing = SqliteEventLog::open_read_only(&url).await.err().map(|e| e.to_string());
        assert!(missing.as_deref().is_some_and(|e| e.contains("no database")), "{missing:?}");
        assert!(!dir.exists(), "opening read-only created the directory");

        let log = SqliteEventLog::connect(&url).await.expect("created");
        let stream = StreamId::new("ro-1").expect("valid");
        let event = CloudEvent::builder("t.t", "/t").build().expect("valid");
        log.append(&stream, ExpectedVersion::Any, &[event]).await.expect("appended");
        let reader = SqliteEventLog::open_read_only(&url).await.expect("opened");
        assert_eq!(reader.head().await.expect("head"), Position(1));
        let event = CloudEvent::builder("t.t", "/t").build().expect("valid");
        let refused = reader.append(&stream, ExpectedVersion::Any, &[event]).await;
        assert!(refused.is_err(), "a read-only log appended");

        let empty = dir.join("empty.db");
        std::fs::File::create(&empty).expect("file");
        let url = format!("sqlite://{}", empty.display());
        let bare = SqliteEventLog::open_read_only(&url).await.err().map(|e| e.to_string());
        assert!(bare.as_deref().is_some_and(|e| e.contains("keel migrate")), "{bare:?}");
    }
}
